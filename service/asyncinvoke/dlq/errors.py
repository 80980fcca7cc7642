"""The dead-letter tool's errors: each one line that says what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asyncinvoke.errors import AsyncInvokeError

if TYPE_CHECKING:
    from asyncinvoke.dlq.records import Selector
    from asyncinvoke.dlq.replay import ReplayReport

# -- errors ------------------------------------------------------------------------------


class DlqError(AsyncInvokeError):
    """Base of the dead-letter tool's errors."""


class QueueMissing(DlqError):
    def __init__(self, queue: str):
        super().__init__(
            f"queue {queue!r} does not exist: nothing has failed in this namespace yet, or "
            "ASYNCINVOKE_NAMESPACE is wrong ('asyncinvoke topology declare' creates it)"
        )
        self.queue = queue


class EmptyQueue(DlqError):
    def __init__(self, queue: str):
        super().__init__(f"the failure queue {queue!r} is empty: no failed invocations")
        self.queue = queue


class NothingSelected(DlqError):
    def __init__(self, queue: str, selector: Selector, scanned: int):
        super().__init__(
            f"no record in {queue!r} matches {selector.describe()} ({scanned} records read)"
        )
        self.queue = queue
        self.selector = selector


class RecordNotFound(NothingSelected):
    def __init__(self, queue: str, invocation_id: str, scanned: int):
        DlqError.__init__(
            self,
            f"no record with id {invocation_id!r} in {queue!r} ({scanned} records read); "
            "'asyncinvoke dlq list' shows the ids",
        )
        self.queue = queue
        self.invocation_id = invocation_id


class Busy(DlqError):
    def __init__(self, queue: str):
        super().__init__(
            f"another 'asyncinvoke dlq' command is reading {queue!r} right now; run this one "
            "when it has finished (a reader holds the records it has read)"
        )
        self.queue = queue


class BrowseInterrupted(DlqError):
    def __init__(self, queue: str, reason: str):
        super().__init__(
            f"lost the broker while reading {queue!r} ({reason}); unsettled records "
            "went back to the queue, nothing was lost"
        )
        self.queue = queue


class BadReplayFile(DlqError):
    def __init__(self, path: str, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}; nothing was replayed")
        self.path = path
        self.line = line


class RecordsSkipped(DlqError):
    def __init__(self, report: ReplayReport):
        super().__init__(
            f"{len(report.skipped)} selected record(s) cannot be replayed and stay in "
            f"{report.source!r} (reasons above; 'asyncinvoke dlq show ID' has the details)"
        )
        self.report = report


class ReplayIncomplete(DlqError):
    def __init__(self, report: ReplayReport, error: BaseException):
        super().__init__(
            f"replay stopped after {report.replayed} of {report.selected} records: {error}; "
            f"the {report.selected - report.replayed} not replayed are still in "
            f"{report.source!r}"
        )
        self.report = report


