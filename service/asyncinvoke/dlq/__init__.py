"""The dead-letter tool: read, replay, purge and export the records in ``{ns}.failed``.

- ``browse``: reading the queue without taking anything away (why it is safe:
  docs/dlq.md);
- ``records``: what a record says (its function, condition, error line), selections,
  and the invocation a replay sends again;
- ``operations``: the reading commands (stats, list, show, export) and purge;
- ``replay``: sending failed invocations again, from the queue or an export file;
- ``copies``: which records are copies of one failure (delivery is at least once);
- its errors (``DlqError`` and below) are drawn with every other error at the top of
  ``asyncinvoke.errors``; each is one line that says what to do.
"""

from asyncinvoke.clock import now_ms
from asyncinvoke.dlq.browse import Browser, Delivery, Progress
from asyncinvoke.dlq.copies import Copies, FailureKey, failure_key
from asyncinvoke.dlq.operations import (
    Exported,
    Group,
    Listing,
    PurgeReport,
    Stats,
    count,
    export,
    list_records,
    purge,
    show,
    stats,
)
from asyncinvoke.dlq.records import (
    ALL,
    Facts,
    NotReplayable,
    Selector,
    Summary,
    error_line,
    facts_of_record,
    parse_since,
    replay_envelope,
    summarize,
)
from asyncinvoke.dlq.replay import ReplayReport, replay, replay_file
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
    "ALL",
    "BadReplayFile",
    "BrowseInterrupted",
    "Browser",
    "Busy",
    "Copies",
    "Delivery",
    "DlqError",
    "EmptyQueue",
    "Exported",
    "Facts",
    "FailureKey",
    "Group",
    "Listing",
    "NotReplayable",
    "NothingSelected",
    "Progress",
    "PurgeReport",
    "QueueMissing",
    "RecordNotFound",
    "RecordsSkipped",
    "ReplayIncomplete",
    "ReplayReport",
    "Selector",
    "Stats",
    "Summary",
    "count",
    "error_line",
    "export",
    "facts_of_record",
    "failure_key",
    "list_records",
    "now_ms",
    "parse_since",
    "purge",
    "replay",
    "replay_envelope",
    "replay_file",
    "show",
    "stats",
    "summarize",
]
