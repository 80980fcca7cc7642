"""Live function configuration (issue 15): FC's async-invoke and concurrency configs,
stored in the namespace's configuration store and applied by every worker without a
restart. ``model`` is pure; ``live.LiveConfig`` joins the functions file and the store."""

from asyncinvoke.liveconfig.live import LiveConfig
from asyncinvoke.liveconfig.model import ASYNC_CONFIG, CONCURRENCY, Effective

__all__ = ["ASYNC_CONFIG", "CONCURRENCY", "Effective", "LiveConfig"]
