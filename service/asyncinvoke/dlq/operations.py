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
from asyncinvoke.dlq.copies import Copies, failure_key
from asyncinvoke.dlq.records import (
    ALL,
    Selector,
    Summary,
    summarize,
)
from asyncinvoke.errors import (
    DlqError,
    NothingSelected,
    RecordNotFound,
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
    total: int  # failures: the copies of one failure count once
    groups: list[Group]
    other_consumers: int
    duplicates: int = 0  # records that are a further copy of a failure counted

    @property
    def records(self) -> int:
        return self.total + self.duplicates

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
            "duplicates": self.duplicates,
            "records": self.records,
            "oldest": self.oldest_ms,
            "newest": self.newest_ms,
            "other_consumers": self.other_consumers,
            "groups": [dataclasses.asdict(group) for group in self.groups],
        }


async def stats(settings: Settings, progress: Progress = _no_progress) -> Stats:
    """Failures by function and condition, with the oldest and newest of each.

    Copies of one failure (copies.py) count once, at the first copy in the queue; how
    many further copies there were is ``duplicates``.
    """
    groups: dict[tuple[str | None, str | None], Group] = {}
    total = scanned = 0
    copies = Copies()
    async with _browse(settings, require_records=False) as (_, browser):
        async for delivery in browser.deliveries():
            scanned += 1
            progress(scanned, browser.count)
            if not copies.first(failure_key(delivery.record())):
                continue
            facts = delivery.facts(need_timestamp=True)
            key = (facts.function, facts.condition)
            if key not in groups:
                groups[key] = Group(facts.function, facts.condition)
            groups[key].add(facts.timestamp_ms)
            total += 1
        other_consumers = browser.consumers
    ordered = sorted(groups.values(), key=lambda g: (-g.count, str(g.function), str(g.condition)))
    return Stats(
        topology.Names(settings.namespace).failed,
        total,
        ordered,
        other_consumers,
        copies.duplicates,
    )


@dataclass(frozen=True, slots=True)
class Listing:
    listed: int  # failures emitted
    in_queue: int  # records in the queue when the listing began
    duplicates: int  # further copies of a listed failure, read and not listed


async def list_records(
    settings: Settings,
    selector: Selector,
    emit: Callable[[Summary], None],
    *,
    limit: int | None = None,
) -> Listing:
    """Emit a summary of each selected failure, in queue order, once.

    A failure is listed at its first copy; later copies (copies.py) are counted, not
    listed. With a limit the read stops at the limit-th failure, and so does the count
    of copies: copies further down the queue are not read.
    """
    listed = 0
    copies = Copies()
    async with _browse(settings) as (_, browser):
        async for delivery in browser.deliveries():
            facts = delivery.facts(need_timestamp=selector.needs_timestamp)
            if not selector.matches(facts):
                continue
            record = delivery.record()
            if not copies.first(failure_key(record)):
                continue
            emit(summarize(record, facts))
            listed += 1
            if limit is not None and listed >= limit:
                break
        if not listed:
            raise NothingSelected(browser.queue, selector, browser.count)
        return Listing(listed, browser.count, copies.duplicates)


async def show(settings: Settings, invocation_id: str) -> list[Any]:
    """Every record of this invocation id, decoded whole: duplicate copies too.

    An id has several records when it failed again after a replay, or when a failure
    was recorded twice (copies.py); ``show`` is for looking closely, so it hides none.
    """
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


def export_line(record: Any, body: bytes, *, duplicate: bool = False) -> bytes:
    """One line of an export: the record as JSON, and its exact bytes for a lossless replay.

    A record JSON cannot carry whole (bytes map keys, deep nesting) is shown degraded
    (record_codec.py); its exact bytes are in the line all the same. A further copy of
    a failure already exported says ``"duplicate": true``.
    """
    exact = base64.b64encode(body).decode()

    def line(shown: Any) -> bytes:
        document: dict[str, Any] = {"record": shown, "msgpack": exact}
        if duplicate:
            document["duplicate"] = True
        return contract.to_json(document)

    try:
        return line(record) + b"\n"
    except record_codec.ENCODE_ERRORS as exc:
        problem = f"the record cannot be shown as JSON: {exc}"
    if isinstance(record, dict):
        degraded = record_codec.degrade(
            record, line, record_codec.RECORD_MAX_BYTES + len(exact), problem
        )
        with contextlib.suppress(*record_codec.ENCODE_ERRORS):
            return line(degraded) + b"\n"
    # Not even the shape of a record (anyone may publish to the failure queue).
    return line(f"({problem}) {record_codec.render(record)}") + b"\n"


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


@dataclass(frozen=True, slots=True)
class Exported:
    written: int  # records, every copy included
    duplicates: int  # of which further copies of a failure written before


async def export(
    settings: Settings, path: str, selector: Selector = ALL, progress: Progress = _no_progress
) -> Exported:
    """Write the selected records to ``path`` as JSON lines.

    An export is a backup: every record is written, a further copy of a failure
    (copies.py) marked ``"duplicate": true``; ``replay --from-file`` sends it once.
    """
    written = scanned = 0
    copies = Copies()
    async with _browse(settings) as (_, browser):
        with _output(path) as stream:
            async for delivery in browser.deliveries():
                scanned += 1
                if selector is ALL or selector.matches(
                    delivery.facts(need_timestamp=selector.needs_timestamp)
                ):
                    record = delivery.record()
                    duplicate = not copies.first(failure_key(record))
                    _write(stream, export_line(record, delivery.body, duplicate=duplicate), path)
                    written += 1
                progress(scanned, browser.count)
            if not written:
                raise NothingSelected(browser.queue, selector, scanned)
    return Exported(written, copies.duplicates)


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
