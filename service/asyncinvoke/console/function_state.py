"""Each function as the functions page shows it: running or paused, its policy in force
and where each field of it comes from; pause and resume.

With live configuration (the gateway's ``liveconfig.LiveConfig``) these are the
namespace's, the same the workers apply, and pause and resume are the calls
``asyncinvoke function pause|resume`` makes (a concurrency of 0 put, then deleted).
Without it (a console made without one) they are the functions file's, always running.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from asyncinvoke.console.policy_sources import with_live
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.liveconfig import model
from asyncinvoke.liveconfig.live import LiveConfig

PAUSED = "paused"
RUNNING = "running"

Shown = Callable[[FunctionSpec], dict[str, Any]]  # a spec's policy as it may be shown


class FunctionState:
    def __init__(
        self,
        policies: Mapping[str, dict[str, Any]],
        file_sources: Mapping[str, dict[str, str]],
        live: LiveConfig | None,
        shown: Shown,
    ):
        self.policies = policies  # the file's, as shown: what a console without live has
        self.file_sources = file_sources
        self.live = live
        self.shown = shown

    @property
    def can_pause(self) -> bool:
        return self.live is not None

    def state(self, name: str) -> str:
        if self.live is None:
            return RUNNING
        return PAUSED if self.live.effective(name).paused else RUNNING

    def policy(self, name: str) -> list[tuple[str, str, str]]:
        """(field, value as text, where it comes from) of the policy in force."""
        if self.live is None:
            policy, where = self.policies[name], self.file_sources[name]
        else:
            live = self.live.effective(name)
            policy = self.shown(live.spec)
            if live.paused:  # the spec keeps the file's concurrency for the resume
                policy["concurrency"] = "0 (paused)"
            where = with_live(
                self.file_sources[name], live.sources, model.SOURCE_API, live.version
            )
        return [(field, _text(value), where.get(field, "-")) for field, value in policy.items()]

    async def pause(self, name: str) -> None:
        """``asyncinvoke function pause``: every worker stops starting its invocations."""
        assert self.live is not None
        await self.live.put_concurrency(name, {model.RESERVED: 0})

    async def resume(self, name: str) -> None:
        """``asyncinvoke function resume``: the pause goes; a concurrency set otherwise stays."""
        assert self.live is not None
        if self.live.effective(name).paused:
            await self.live.delete_concurrency(name)


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {item}" for key, item in value.items())
    if value is None:
        return "-"
    return str(value).lower() if isinstance(value, bool) else str(value)
