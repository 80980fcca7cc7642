"""The failure queue as the console reads it: a page of records, a summary, and actions.

Reading and acting go through the dead-letter tool (``asyncinvoke.dlq``), so the console
has its guarantees: a browse never consumes, a replayed record leaves the queue only
after its republish is confirmed. One browse at a time: every browse holds the queue's
lock (dlq.browse), so the console's own reads and actions wait on one asyncio lock, and
a CLI command running meanwhile is reported, not fought.

Why the grouping is a summary, and how old it may be
-----------------------------------------------------
Grouping by function and condition (as ``dlq stats``) needs every record read: about
10 s for 100,000 (docs/benchmarks.md), far too slow for a page. So the grouping is a
summary taken by a full browse in the background and shown with its time and the number
of records it saw, beside the queue's depth now. A new summary is taken only while
someone looks at the failures (a page or its live refresh), only when the depth changed,
and no sooner than ``REFRESH_FACTOR`` times the last one's duration after it ended: the
queue is browsed for the summary at most 1/REFRESH_FACTOR of the time, so the CLI, whose
commands meet the lock, gets the rest. "Recount now" asks for one at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiormq

from asyncinvoke import clock, dlq, topology
from asyncinvoke.broker import Broker
from asyncinvoke.console.shown import RecordView, record_view
from asyncinvoke.dlq.browse import Browser
from asyncinvoke.errors import AsyncInvokeError, QueueBusy
from asyncinvoke.observability import get_logger
from asyncinvoke.settings import Settings

PAGE_SIZE = 25
MAX_OFFSET = 100  # deeper than this (a read costs about 0.4 to 1 ms a record), `dlq list`
PAGE_LOCK_WAIT_S = 1.0  # a page does not wait longer for a browse to end; it says so
ACTION_LOCK_WAIT_S = 60.0
PAGE_CACHE_S = 10.0
REFRESH_FACTOR = 10
MIN_REFRESH_S = 2.0

log = get_logger(component="console")


@dataclass(frozen=True, slots=True)
class Summary:
    stats: dlq.Stats
    taken_at_ms: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class Page:
    records: list[RecordView]
    offset: int
    in_queue: int  # when the page was read
    has_more: bool
    read_at_ms: int


class FailureQueue:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.queue = topology.Names(settings.namespace).failed
        self._lock = asyncio.Lock()
        self.summary: Summary | None = None
        self.summary_error: str | None = None
        self._summary_depth: int | None = None
        self._next_summary_at = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self._pages: dict[int, tuple[float, Page]] = {}  # offset → (read at, page)
        self._ending: asyncio.Task[None] | None = None  # a page's browse, ending

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def page(self, offset: int, depth: int | None) -> Page:
        """``PAGE_SIZE`` failures from ``offset`` in queue order (copies shown once).

        Reads ``offset + PAGE_SIZE`` records from the head with a consumer prefetch of
        about that much: the cost grows with the offset, and barely with the queue. A page
        read less than ``PAGE_CACHE_S`` ago is shown again (with its time) while the
        queue's depth is what it was then and no action of ours came in between: the
        head of a queue that neither grew nor shrank is the same, unless another process
        took and added records in one breath.
        """
        offset = max(0, min(offset, MAX_OFFSET))
        cached = self._pages.get(offset)
        if (
            cached is not None
            and time.monotonic() - cached[0] < PAGE_CACHE_S
            and depth == cached[1].in_queue
        ):
            return cached[1]
        # With a page to fall back on, do not wait for a browse (a summary: seconds) to end.
        wait_s = PAGE_LOCK_WAIT_S if cached is None else 0.0
        try:
            page = await self._read(offset, wait_s)
        except QueueBusy:
            if cached is None:
                raise
            return cached[1]  # read before the browse that holds the queue now: its time shows
        self._pages[offset] = (time.monotonic(), page)
        return page

    async def _read(self, offset: int, wait_s: float) -> Page:
        """A page, read under the lock. The page is returned as soon as its records are
        read; the browse ends after that, in the background and still under the lock:
        its records going back to the head and the lock queue's removal took 20 to 60 ms
        of every page (most of a browse), and nothing on the page depends on them."""
        await self._acquire(wait_s)
        browse = contextlib.AsyncExitStack()
        try:
            # A connection of its own, as every dlq command has: the browse's lock is an
            # exclusive queue, which only the end of its connection is sure to remove.
            broker = await browse.enter_async_context(
                Broker(self.settings, name=f"asyncinvoke-console-{os.getpid()}")
            )
            browser = await browse.enter_async_context(
                Browser(broker, self.queue, base_slice=offset + PAGE_SIZE + 1)
            )
            page = await _collect(browser, offset)
        except BaseException as exc:
            try:
                await browse.aclose()
            finally:
                self._lock.release()
            if isinstance(exc, dlq.Busy):
                raise QueueBusy(self.queue) from None
            raise
        self._ending = asyncio.create_task(self._end(browse))
        return page

    async def _end(self, browse: contextlib.AsyncExitStack) -> None:
        try:
            with contextlib.suppress(Exception):  # the connection's end returns the rest
                await browse.aclose()
        finally:
            self._lock.release()

    async def settled(self) -> None:
        """Until the last page's browse has ended: its records count in the queue's depth
        again (a page that compares depths reads them after this)."""
        if self._ending is not None and not self._ending.done():
            await asyncio.shield(self._ending)  # a request cancelled leaves the end alone

    async def close(self) -> None:
        """Wait for a page's browse to end (at shutdown)."""
        if self._ending is not None:
            await self._ending

    def watch(self, depth: int | None) -> None:
        """Someone looks at the failures: start a summary if one is due (not awaited)."""
        changed = depth != self._summary_depth
        due = self.summary is None or (changed and time.monotonic() >= self._next_summary_at)
        if due and not self.busy and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self.refresh())

    async def refresh(self) -> None:
        """Take a new summary (a full browse), unless another browse holds the queue."""
        try:
            async with self._held(ACTION_LOCK_WAIT_S):
                started = time.monotonic()
                stats = await dlq.stats(self.settings)
                duration = time.monotonic() - started
                self.summary = Summary(stats, clock.now_ms(), duration)
                self._summary_depth = stats.records
                self.summary_error = None
                self._next_summary_at = time.monotonic() + max(
                    MIN_REFRESH_S, REFRESH_FACTOR * duration
                )
        except (AsyncInvokeError, QueueBusy, aiormq.exceptions.AMQPError, OSError) as exc:
            self.summary_error = str(exc) or type(exc).__name__
            self._next_summary_at = time.monotonic() + MIN_REFRESH_S
            log.info("console_summary_failed", error=self.summary_error)

    async def replay(self, selector: dlq.Selector) -> dlq.ReplayReport:
        async with self._held(ACTION_LOCK_WAIT_S):
            try:
                return await dlq.replay(self.settings, selector)
            finally:
                self._stale()

    async def purge(self, selector: dlq.Selector) -> dlq.PurgeReport:
        async with self._held(ACTION_LOCK_WAIT_S):
            try:
                return await dlq.purge(self.settings, selector)
            finally:
                self._stale()

    async def export(self, selector: dlq.Selector) -> Path:
        """The selected records as JSON lines (``dlq export``'s format), in a temporary
        file the caller removes."""
        async with self._held(ACTION_LOCK_WAIT_S):
            descriptor, name = tempfile.mkstemp(prefix="asyncinvoke-console-", suffix=".jsonl")
            os.close(descriptor)
            path = Path(name)
            try:
                await dlq.export(self.settings, str(path), selector)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            return path

    def _stale(self) -> None:
        self._pages.clear()
        self._summary_depth = None
        self._next_summary_at = 0.0

    async def _acquire(self, wait_s: float) -> None:
        """The console's one browse at a time; QueueBusy if it is not ours within wait_s
        (0: only if free now)."""
        if wait_s <= 0 and self._lock.locked():
            raise QueueBusy(self.queue)
        try:
            await asyncio.wait_for(self._lock.acquire(), wait_s or None)
        except TimeoutError:
            raise QueueBusy(self.queue) from None

    @contextlib.asynccontextmanager
    async def _held(self, wait_s: float) -> AsyncIterator[None]:
        """The lock (``_acquire``) for an action; QueueBusy also if a dlq command holds
        the queue."""
        await self._acquire(wait_s)
        try:
            yield
        except dlq.Busy:
            raise QueueBusy(self.queue) from None
        finally:
            self._lock.release()


async def _collect(browser: Browser, offset: int) -> Page:
    """``PAGE_SIZE`` records from ``offset``, copies counted once."""
    wanted = offset + PAGE_SIZE
    copies = dlq.Copies()
    shown: list[RecordView] = []
    seen = 0
    async for delivery in browser.deliveries():
        record = delivery.record()
        if not copies.first(dlq.failure_key(record)):
            continue
        seen += 1
        if seen > wanted:
            break
        if seen > offset:
            shown.append(record_view(record, delivery.facts()))
    return Page(shown, offset, browser.count, seen > wanted, clock.now_ms())
