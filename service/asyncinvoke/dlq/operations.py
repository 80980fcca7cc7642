"""The dead-letter tool's commands that read or remove: stats, list, show, export, purge.

Replay has its own module (``replay``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from asyncinvoke import contract, record_codec, topology
from asyncinvoke.dlq.browse import (
    WRITE_SLICE,
    Progress,
    _browse,
    _no_progress,
)
from asyncinvoke.dlq.errors import (
    DlqError,
    NothingSelected,
    RecordNotFound,
)
from asyncinvoke.dlq.records import (
    ALL,
    Selector,
    Summary,
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


async def count(settings: Settings, selector: Selector, progress: Progress = _no_progress) -> int:
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
