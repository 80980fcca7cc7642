"""The dead-letter tool's errors, by their old address: they live in ``asyncinvoke.errors``."""

from asyncinvoke.errors import (
    BadReplayFile,
    BrowseInterrupted,
    Busy,
    DlqError,
    EmptyQueue,
    NothingSelected,
    QueueMissing,
    RecordNotFound,
    RecordsSkipped,
    ReplayIncomplete,
)

__all__ = [
    "BadReplayFile",
    "BrowseInterrupted",
    "Busy",
    "DlqError",
    "EmptyQueue",
    "NothingSelected",
    "QueueMissing",
    "RecordNotFound",
    "RecordsSkipped",
    "ReplayIncomplete",
]
