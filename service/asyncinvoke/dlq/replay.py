"""The dead-letter tool's replay: send failed invocations again, from the queue or a file.

Each record's invocation is republished as a new acceptance; a record leaves the queue
only after the broker confirmed its replay (the "possibly both" of docs/dlq.md).

A failure recorded twice (copies.py) is sent once per command: the first selected
copy is replayed, and the others, wherever they are in the queue, leave with it once
its replay is confirmed. The keys of the failures taken are remembered for the whole
command (a digest each, about 100 bytes a failure), so copies in different slices of the
browse, or on different lines of a file, are still recognised.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from asyncinvoke import contract, dispatch, topology
from asyncinvoke.broker import Broker
from asyncinvoke.clock import new_id, now_ms
from asyncinvoke.contract import Envelope
from asyncinvoke.dlq.browse import (
    REPLAY_WINDOW,
    WRITE_SLICE,
    Delivery,
    Progress,
    _browse,
    _no_progress,
)
from asyncinvoke.dlq.copies import FailureKey, failure_key
from asyncinvoke.dlq.records import (
    ALL,
    NotReplayable,
    Selector,
    facts_of_record,
    replay_envelope,
)
from asyncinvoke.errors import BadReplayFile, DlqError, NothingSelected, ReplayIncomplete
from asyncinvoke.settings import Settings


@dataclass(slots=True)
class ReplayReport:
    source: str  # the queue, or the file replayed from
    dry_run: bool
    from_file: bool = False
    scanned: int = 0
    selected: int = 0  # failures: the copies of one count once
    replayed: int = 0  # confirmed by the broker (dry run: would be)
    duplicates: int = 0  # further copies of a selected failure: never sent
    skipped: list[tuple[str | None, str]] = field(default_factory=list)  # (id, why)
    new_ids: dict[str, str] = field(default_factory=dict)  # old id → new id (--new-id)
    by_function: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "scanned": self.scanned,
            "selected": self.selected,
            "replayed": self.replayed,
            "duplicates": self.duplicates,
            "by_function": self.by_function,
            "skipped": [{"id": i, "reason": why} for i, why in self.skipped],
            "new_ids": self.new_ids,
        }


class _Replayer:
    """Publishes replays with a window of confirms in flight; acks each after its confirm.

    Each failure is offered once: a copy of one already taken is not sent; it is
    removed once that replay is confirmed, and stays when that failure stays.
    """

    def __init__(
        self,
        broker: Broker,
        report: ReplayReport,
        *,
        dry_run: bool,
        fresh_ids: bool,
        on_confirmed: Callable[[Delivery], Any] | None = None,
    ):
        self.broker = broker
        self.names = topology.Names(broker.settings.namespace)
        self.report = report
        self.dry_run = dry_run
        self.fresh_ids = fresh_ids
        self.on_confirmed = on_confirmed
        self.error: BaseException | None = None
        self._window = asyncio.Semaphore(REPLAY_WINDOW)
        self._tasks: set[asyncio.Task[None]] = set()
        self._functions: dict[str, bool] = {}
        self._taken: dict[FailureKey, bool] = {}  # failure → its copies go (replay confirmed)
        self._waiting: dict[FailureKey, list[Delivery]] = {}  # copies of a replay in flight

    async def _function_exists(self, function: str) -> bool:
        if function not in self._functions:
            self._functions[function] = await topology.function_exists(
                self.broker.connection, self.names, function
            )
        return self._functions[function]

    async def _copy_taken(self, key: FailureKey | None, delivery: Delivery | None) -> bool:
        """Whether this record is a copy of a failure this command took already."""
        if key is None or (key not in self._taken and key not in self._waiting):
            return False
        self.report.duplicates += 1
        if delivery is not None:
            if key in self._waiting:
                self._waiting[key].append(delivery)
            elif self._taken[key]:
                await self._remove(delivery)
        return True

    async def offer(self, record: Any, delivery: Delivery | None, fallback_id: str | None) -> None:
        """Replay one selected record, or note why it is skipped."""
        key = failure_key(record)
        if await self._copy_taken(key, delivery):
            return
        if key is not None:
            self._taken[key] = False  # until its replay is confirmed, copies stay
        self.report.selected += 1
        try:
            envelope = replay_envelope(
                record, now_ms=now_ms(), fresh_id=new_id() if self.fresh_ids else None
            )
        except NotReplayable as exc:
            self.report.skipped.append((facts_of_record(record).id or fallback_id, str(exc)))
            return
        original_id = facts_of_record(record).id or fallback_id or envelope.id
        if not await self._function_exists(envelope.fn):
            self.report.skipped.append(
                (
                    original_id,
                    f"function {envelope.fn!r} has no queue in namespace {self.names.ns!r}: "
                    "start its worker or run 'asyncinvoke topology declare', then replay",
                )
            )
            return
        if self.fresh_ids:
            self.report.new_ids[original_id] = envelope.id
        if self.dry_run:
            self._count(envelope)
            return
        await self._window.acquire()
        if key is not None:
            del self._taken[key]
            self._waiting[key] = []
        task = asyncio.create_task(self._publish(envelope, delivery, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, envelope: Envelope) -> None:
        self.report.replayed += 1
        self.report.by_function[envelope.fn] = self.report.by_function.get(envelope.fn, 0) + 1

    async def _publish(
        self, envelope: Envelope, delivery: Delivery | None, key: FailureKey | None
    ) -> None:
        try:
            await dispatch.send(self.broker, self.names, envelope)
        except Exception as exc:  # refused, returned, timed out, or the connection is gone
            self.error = self.error or exc
            if key is not None:
                self._taken[key] = False  # not replayed: its copies stay with it
                del self._waiting[key]
            return
        finally:
            self._window.release()
        self._count(envelope)
        copies: list[Delivery] = []
        if key is not None:
            self._taken[key] = True
            copies = self._waiting.pop(key)
        # Only now: until the confirm, the records outlive a crash.
        for held in (delivery, *copies):
            await self._remove(held)

    async def _remove(self, delivery: Delivery | None) -> None:
        if delivery is None or self.on_confirmed is None:
            return
        try:
            await self.on_confirmed(delivery)
        except DlqError as exc:
            self.error = self.error or exc

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.drain()


async def replay(
    settings: Settings,
    selector: Selector,
    *,
    dry_run: bool = False,
    fresh_ids: bool = False,
    progress: Progress = _no_progress,
) -> ReplayReport:
    """Republish the selected records' invocations, then remove each confirmed one."""
    async with _browse(settings, base_slice=WRITE_SLICE) as (broker, browser):
        report = ReplayReport(browser.queue, dry_run)
        replayer = _Replayer(
            broker, report, dry_run=dry_run, fresh_ids=fresh_ids, on_confirmed=browser.ack
        )
        try:
            async for delivery in browser.deliveries():
                report.scanned += 1
                facts = delivery.facts(need_timestamp=selector.needs_timestamp)
                if selector.matches(facts):
                    await replayer.offer(delivery.record(), delivery, facts.id)
                progress(report.scanned, browser.count)
                if replayer.error is not None:
                    break
            await replayer.drain()
        finally:
            await replayer.cancel()
        if replayer.error is not None:
            raise ReplayIncomplete(report, replayer.error)
        if not report.selected:
            raise NothingSelected(browser.queue, selector, report.scanned)
    return report


def _file_records(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, record) of an export; a record line (``show --json``) is taken too."""
    try:
        with open(path, "rb") as stream:
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    document = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise BadReplayFile(path, number, f"not JSON ({exc})") from None
                if isinstance(document, dict) and isinstance(document.get("msgpack"), str):
                    try:
                        record = contract.unpack(base64.b64decode(document["msgpack"]))
                    except Exception as exc:
                        raise BadReplayFile(path, number, f"bad 'msgpack' field ({exc})") from None
                elif isinstance(document, dict) and "requestContext" in document:
                    record = document  # a record as JSON: bytes were base64, they stay text
                else:
                    raise BadReplayFile(
                        path, number, "not a record ('asyncinvoke dlq export' writes them)"
                    )
                yield number, record
    except OSError as exc:
        raise DlqError(f"cannot read {path}: {exc.strerror or exc}") from None


async def replay_file(
    settings: Settings,
    path: str,
    selector: Selector = ALL,
    *,
    dry_run: bool = False,
    fresh_ids: bool = False,
    progress: Progress = _no_progress,
) -> ReplayReport:
    """Replay the records of an export file; the failure queue is not touched."""
    total = sum(1 for _ in _file_records(path))  # the whole file is checked before any publish
    report = ReplayReport(path, dry_run, from_file=True)
    async with Broker(settings, name=f"asyncinvoke-dlq-{os.getpid()}") as broker:
        replayer = _Replayer(broker, report, dry_run=dry_run, fresh_ids=fresh_ids)
        try:
            for _, record in _file_records(path):
                report.scanned += 1
                if selector.matches(facts_of_record(record)):
                    await replayer.offer(record, None, None)
                progress(report.scanned, total)
                if replayer.error is not None:
                    break
            await replayer.drain()
        finally:
            await replayer.cancel()
    if replayer.error is not None:
        raise ReplayIncomplete(report, replayer.error)
    if not report.selected:
        raise DlqError(f"no record in {path} matches {selector.describe()} ({total} records)")
    return report
