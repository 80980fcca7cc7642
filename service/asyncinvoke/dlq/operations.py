"""The dead-letter tool's commands: stats, list, show, export, purge, replay.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from asyncinvoke import contract, dispatch, record_codec, topology
from asyncinvoke.broker import Broker
from asyncinvoke.client import new_id
from asyncinvoke.contract import Envelope
from asyncinvoke.dlq.browse import (
    REPLAY_WINDOW,
    WRITE_SLICE,
    Delivery,
    Progress,
    _browse,
    _no_progress,
)
from asyncinvoke.dlq.errors import (
    BadReplayFile,
    DlqError,
    NothingSelected,
    RecordNotFound,
    ReplayIncomplete,
)
from asyncinvoke.dlq.records import (
    ALL,
    NotReplayable,
    Selector,
    Summary,
    facts_of_record,
    now_ms,
    replay_envelope,
    summarize,
)
from asyncinvoke.settings import Settings

# -- reading commands --------------------------------------------------------------------


@dataclass(slots=True)
class Group:
    function: str | None
    condition: str | None
    count: int = 0
    oldest_ms: int | None = None
    newest_ms: int | None = None

    def add(self, timestamp_ms: int | None) -> None:
        self.count += 1
        if timestamp_ms is None:
            return
        if self.oldest_ms is None or timestamp_ms < self.oldest_ms:
            self.oldest_ms = timestamp_ms
        if self.newest_ms is None or timestamp_ms > self.newest_ms:
            self.newest_ms = timestamp_ms


@dataclass(slots=True)
class Stats:
    queue: str
    total: int
    groups: list[Group]
    other_consumers: int

    @property
    def oldest_ms(self) -> int | None:
        return min((g.oldest_ms for g in self.groups if g.oldest_ms is not None), default=None)

    @property
    def newest_ms(self) -> int | None:
        return max((g.newest_ms for g in self.groups if g.newest_ms is not None), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "total": self.total,
            "oldest": self.oldest_ms,
            "newest": self.newest_ms,
            "other_consumers": self.other_consumers,
            "groups": [dataclasses.asdict(group) for group in self.groups],
        }


async def stats(settings: Settings, progress: Progress = _no_progress) -> Stats:
    """Counts by function and condition, with the oldest and newest record of each."""
    groups: dict[tuple[str | None, str | None], Group] = {}
    total = 0
    async with _browse(settings, require_records=False) as (_, browser):
        async for delivery in browser.deliveries():
            facts = delivery.facts(need_timestamp=True)
            key = (facts.function, facts.condition)
            if key not in groups:
                groups[key] = Group(facts.function, facts.condition)
            groups[key].add(facts.timestamp_ms)
            total += 1
            progress(total, browser.count)
        other_consumers = browser.consumers
    ordered = sorted(groups.values(), key=lambda g: (-g.count, str(g.function), str(g.condition)))
    return Stats(topology.Names(settings.namespace).failed, total, ordered, other_consumers)


async def list_records(
    settings: Settings,
    selector: Selector,
    emit: Callable[[Summary], None],
    *,
    limit: int | None = None,
) -> tuple[int, int]:
    """Emit a summary of each selected record, in queue order; (listed, in the queue)."""
    listed = 0
    async with _browse(settings) as (_, browser):
        async for delivery in browser.deliveries():
            facts = delivery.facts(need_timestamp=selector.needs_timestamp)
            if not selector.matches(facts):
                continue
            emit(summarize(delivery.record(), facts))
            listed += 1
            if limit is not None and listed >= limit:
                break
        if not listed:
            raise NothingSelected(browser.queue, selector, browser.count)
        return listed, browser.count


async def show(settings: Settings, invocation_id: str) -> list[Any]:
    """Every record of this invocation id (normally one), decoded whole."""
    found: list[Any] = []
    scanned = 0
    async with _browse(settings) as (_, browser):
        async for delivery in browser.deliveries():
            scanned += 1
            if delivery.facts().id == invocation_id:
                record = delivery.record()
                found.append(record if record is not None else {"undecodable": delivery.body})
        if not found:
            raise RecordNotFound(browser.queue, invocation_id, scanned)
    return found


def export_line(record: Any, body: bytes) -> bytes:
    """One line of an export: the record as JSON, and its exact bytes for a lossless replay.

    A record JSON cannot carry whole (bytes map keys, deep nesting) is shown degraded
    (record_codec.py); its exact bytes are in the line all the same.
    """
    exact = base64.b64encode(body).decode()
    try:
        return contract.to_json({"record": record, "msgpack": exact}) + b"\n"
    except record_codec.ENCODE_ERRORS as exc:
        problem = f"the record cannot be shown as JSON: {exc}"
    if isinstance(record, dict):
        degraded = record_codec.degrade(
            record,
            lambda value: contract.to_json({"record": value, "msgpack": exact}),
            record_codec.RECORD_MAX_BYTES + len(exact),
            problem,
        )
        with contextlib.suppress(*record_codec.ENCODE_ERRORS):
            return contract.to_json({"record": degraded, "msgpack": exact}) + b"\n"
    # Not even the shape of a record (anyone may publish to the failure queue).
    shown = f"({problem}) {record_codec.render(record)}"
    return contract.to_json({"record": shown, "msgpack": exact}) + b"\n"


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[bytes]]:
    """The file written whole or not at all (via FILE.partial); ``-`` is stdout."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    partial_path = Path(path + ".partial")
    try:
        try:
            stream = partial_path.open("wb", buffering=1 << 20)
        except OSError as exc:
            raise DlqError(f"cannot write {partial_path}: {exc.strerror or exc}") from None
        with stream:
            yield stream
        try:
            os.replace(partial_path, path)
        except OSError as exc:
            raise DlqError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        partial_path.unlink(missing_ok=True)


def _write(stream: IO[bytes], data: bytes, path: str) -> None:
    try:
        stream.write(data)
    except OSError as exc:
        raise DlqError(f"cannot write {path}: {exc.strerror or exc}") from None


async def export(
    settings: Settings, path: str, selector: Selector = ALL, progress: Progress = _no_progress
) -> int:
    """Write the selected records to ``path`` as JSON lines; returns how many."""
    written = scanned = 0
    async with _browse(settings) as (_, browser):
        with _output(path) as stream:
            async for delivery in browser.deliveries():
                scanned += 1
                if selector is ALL or selector.matches(
                    delivery.facts(need_timestamp=selector.needs_timestamp)
                ):
                    _write(stream, export_line(delivery.record(), delivery.body), path)
                    written += 1
                progress(scanned, browser.count)
            if not written:
                raise NothingSelected(browser.queue, selector, scanned)
    return written


async def count(
    settings: Settings, selector: Selector, progress: Progress = _no_progress
) -> int:
    """How many records a purge or replay with ``selector`` would take now."""
    selected = scanned = 0
    async with _browse(settings) as (_, browser):
        async for delivery in browser.deliveries():
            scanned += 1
            if selector.matches(delivery.facts(need_timestamp=selector.needs_timestamp)):
                selected += 1
            progress(scanned, browser.count)
        if not selected:
            raise NothingSelected(browser.queue, selector, browser.count)
    return selected


@dataclass(slots=True)
class PurgeReport:
    queue: str
    scanned: int
    purged: int


async def purge(
    settings: Settings, selector: Selector, progress: Progress = _no_progress
) -> PurgeReport:
    """Remove the selected records for good."""
    scanned = purged = 0
    async with _browse(settings, base_slice=WRITE_SLICE) as (_, browser):
        async for delivery in browser.deliveries():
            scanned += 1
            if selector.matches(delivery.facts(need_timestamp=selector.needs_timestamp)):
                await browser.ack(delivery)
                purged += 1
            progress(scanned, browser.count)
        if not purged:
            raise NothingSelected(browser.queue, selector, scanned)
    return PurgeReport(browser.queue, scanned, purged)


# -- replay ------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayReport:
    source: str  # the queue, or the file replayed from
    dry_run: bool
    scanned: int = 0
    selected: int = 0
    replayed: int = 0  # confirmed by the broker (dry run: would be)
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
            "by_function": self.by_function,
            "skipped": [{"id": i, "reason": why} for i, why in self.skipped],
            "new_ids": self.new_ids,
        }


class _Replayer:
    """Publishes replays with a window of confirms in flight; acks each after its confirm."""

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

    async def _function_exists(self, function: str) -> bool:
        if function not in self._functions:
            assert self.broker.connection is not None
            depth = await topology.queue_depth(
                self.broker.connection, self.names.function_queue(function)
            )
            self._functions[function] = depth is not None
        return self._functions[function]

    async def offer(self, record: Any, delivery: Delivery | None, fallback_id: str | None) -> None:
        """Replay one selected record, or note why it is skipped."""
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
        task = asyncio.create_task(self._publish(envelope, delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, envelope: Envelope) -> None:
        self.report.replayed += 1
        self.report.by_function[envelope.fn] = self.report.by_function.get(envelope.fn, 0) + 1

    async def _publish(self, envelope: Envelope, delivery: Delivery | None) -> None:
        try:
            await dispatch.send(self.broker, self.names, envelope)
        except Exception as exc:  # refused, returned, timed out, or the connection is gone
            self.error = self.error or exc
            return
        finally:
            self._window.release()
        self._count(envelope)
        if delivery is not None and self.on_confirmed is not None:
            try:
                await self.on_confirmed(delivery)  # only now: the record outlives a crash
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
    report = ReplayReport(path, dry_run)
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
