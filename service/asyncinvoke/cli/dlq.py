"""``asyncinvoke dlq``: the dead-letter tool. Thin: parse, call ``asyncinvoke.dlq``, print.

Tables and a progress bar (on a terminal, on stderr) for people; ``--json`` for scripts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from asyncinvoke import contract, record_codec, topology
from asyncinvoke import dlq as logic
from asyncinvoke import settings as settings_module
from asyncinvoke.cli._common import cells, json_option, load_settings, run, when
from asyncinvoke.cli._common import console as terminal
from asyncinvoke.observability import configure_logging

F = TypeVar("F", bound=Callable[..., Any])

PEOPLE_LIMIT = 50  # rows `dlq list` shows without --limit (scripts with --json get all)
SKIPPED_SHOWN = 20


# -- options -----------------------------------------------------------------------------


def _filter_options(command: F) -> F:
    """--function, --condition, --since: narrow a reading command."""
    for option in reversed(
        (
            click.option("--function", metavar="F", help="Only records of function F."),
            click.option(
                "--condition",
                type=click.Choice(contract.CONDITIONS),
                help="Only records that ended with this condition.",
            ),
            click.option(
                "--since",
                metavar="T",
                help="Only records made since T: a duration back from now (90s, 15m, 2h, 7d) "
                "or an ISO 8601 time (local time without an offset).",
            ),
        )
    ):
        command = option(command)
    return command


def _selector_options(command: F) -> F:
    """--id ... | --function | --condition | --since | --all: what a changing command takes."""
    command = _filter_options(command)
    command = click.option(
        "--id", "ids", multiple=True, metavar="ID", help="This invocation id (repeatable)."
    )(command)
    return click.option("--all", "everything", is_flag=True, help="Every record.")(command)


def _selector(
    *,
    ids: tuple[str, ...] = (),
    function: str | None = None,
    condition: str | None = None,
    since: str | None = None,
    everything: bool = False,
    required_for: str | None = None,
) -> logic.Selector:
    narrowed = bool(ids or function or condition or since)
    if everything and narrowed:
        raise click.UsageError("--all selects every record: give it alone")
    if required_for and not (everything or narrowed):
        raise click.UsageError(
            f"choose the records to {required_for}: --id ID, --function F, --condition C, "
            "--since T, or --all"
        )
    since_ms = None
    if since is not None:
        try:
            since_ms = logic.parse_since(since, logic.now_ms())
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    return logic.Selector(frozenset(ids), function, condition, since_ms)


def _settings() -> settings_module.Settings:
    """Settings, with logging quiet: every failure reaches the operator as one
    'error: ...' line, which warnings about the same failure would only bury."""
    settings = load_settings()
    configure_logging(settings.log_format, level=logging.ERROR)
    for library in ("aiormq", "aio_pika"):
        logging.getLogger(library).setLevel(logging.CRITICAL)
    return settings


# -- output helpers ----------------------------------------------------------------------


def _age(timestamp_ms: int | None, now_ms: int) -> str:
    if timestamp_ms is None:
        return "?"
    seconds = max(0, (now_ms - timestamp_ms) // 1000)
    for unit, size, smaller, smaller_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if seconds >= size:
            rest = (seconds % size) // smaller_size
            return f"{seconds // size}{unit}" + (f" {rest}{smaller}" if rest else "")
    return f"{seconds}s"


def _when(timestamp_ms: int | None) -> str:
    if timestamp_ms is None:
        return "?"
    return when(timestamp_ms)


def _copies(count: int) -> str:
    return f"{count} duplicate cop{'y' if count == 1 else 'ies'}"


def _echo_json(value: Any, *, indent: bool = False) -> None:
    option = orjson.OPT_INDENT_2 if indent else 0
    shown = orjson.loads(record_codec.json_or_rendering(value))
    click.echo(orjson.dumps(shown, option=option).decode())


@contextlib.contextmanager
def _progress(label: str) -> Iterator[logic.Progress]:
    """A progress bar on stderr when it is a terminal; a no-op otherwise."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda done, total: None
        return
    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


# -- commands ----------------------------------------------------------------------------


@click.group()
def dlq() -> None:
    """Inspect, replay, purge and export failed invocations (the queue {ns}.failed).

    Reading (stats, list, show, export) removes nothing and keeps the queue's order:
    records are held while read and returned at the end. One dlq command at a time.
    """


@dlq.command()
@json_option
def stats(as_json: bool) -> None:
    """Count the failure records by function and condition, with the oldest and newest.

    A failure recorded twice (at-least-once delivery across a lost connection) counts
    once; the copies are counted apart ("duplicates").
    """
    settings = _settings()
    with _progress("reading") as progress:
        result = run(logic.stats(settings, progress))
    if as_json:
        _echo_json(result.to_dict())
        return
    if not result.total:
        click.echo(f"{result.queue} is empty: no failed invocations")
        return
    now = logic.now_ms()
    table = Table(title=f"{result.total} failure(s) in {escape(result.queue)}")
    for column in ("function", "condition", "failures", "oldest", "newest"):
        table.add_column(column, justify="right" if column == "failures" else "left")
    for group in result.groups:
        # Function and condition come from the records' headers: any producer's text.
        table.add_row(
            *cells(
                group.function,
                group.condition,
                group.count,
                f"{_age(group.oldest_ms, now)} ago",
                f"{_age(group.newest_ms, now)} ago",
            )
        )
    console = terminal()
    console.print(table)
    console.print(
        f"oldest {_when(result.oldest_ms)}, newest {_when(result.newest_ms)}", highlight=False
    )
    if result.duplicates:
        console.print(
            f"{result.records} records: {result.duplicates} of them a duplicate copy of a "
            "failure above (recorded twice across a lost connection), counted once; list "
            "and replay take each failure once, 'dlq show ID' shows every copy",
            highlight=False,
        )
    if result.other_consumers:
        console.print(
            f"[yellow]{result.other_consumers} other consumer(s) on {escape(result.queue)}: "
            "records they hold are not counted[/]"
        )


@dlq.command(name="list")
@_filter_options
@click.option(
    "--limit",
    type=click.IntRange(0),
    default=None,
    metavar="N",
    help=f"Show at most N records, oldest first; 0: all (default: {PEOPLE_LIMIT} in the "
    "table, all with --json).",
)
@json_option
def list_(
    function: str | None,
    condition: str | None,
    since: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List failure records in queue order: id, function, condition, attempts, age, error.

    Each failure once: a duplicate copy of a failure listed above is left out (and
    counted). With --json: one JSON document per failure and line, for scripts.
    """
    settings = _settings()
    selector = _selector(function=function, condition=condition, since=since)
    if limit is None:
        limit = 0 if as_json else PEOPLE_LIMIT
    now = logic.now_ms()
    if as_json:
        run(
            logic.list_records(
                settings,
                selector,
                lambda summary: _echo_json(summary.to_dict(now)),
                limit=limit or None,
            )
        )
        return
    rows: list[logic.Summary] = []
    listing = run(logic.list_records(settings, selector, rows.append, limit=limit or None))
    table = Table(title=f"failure records in {escape(topology.Names(settings.namespace).failed)}")
    for column in ("id", "function", "condition", "attempts", "age", "error"):
        table.add_column(column, overflow="fold" if column == "id" else "ellipsis")
    for row in rows:
        # Every value comes from a record or its headers: any producer's text.
        table.add_row(
            *cells(
                row.id,
                row.function,
                row.condition,
                "?" if row.attempts is None else row.attempts,
                _age(row.timestamp_ms, now),
                Text(row.error, no_wrap=True, overflow="ellipsis"),
            )
        )
    console = terminal()
    console.print(table)
    more = " (--limit reached; --limit 0 shows all)" if limit and listing.listed >= limit else ""
    copies = (
        f"; {_copies(listing.duplicates)} of a failure shown left out ('dlq show ID' shows "
        "every copy)"
        if listing.duplicates
        else ""
    )
    console.print(
        f"{listing.listed} shown, {listing.in_queue} record(s) in the queue{copies}{more}",
        highlight=False,
    )


@dlq.command()
@click.argument("invocation_id", metavar="ID")
@json_option
def show(invocation_id: str, as_json: bool) -> None:
    """Show the whole record of invocation ID: payload, error, stack trace, invocation.

    Every record of that id, a duplicate copy of the same failure included (it says so).
    """
    settings = _settings()
    found = run(logic.show(settings, invocation_id))
    if as_json:
        for record in found:
            _echo_json(record)
        return
    console = terminal()
    now = logic.now_ms()
    first_of: dict[logic.FailureKey, int] = {}
    for number, record in enumerate(found, 1):
        if len(found) > 1:
            key = logic.failure_key(record)
            copy_of = first_of.setdefault(key, number) if key is not None else number
            same = f": a duplicate copy of record {copy_of}" if copy_of != number else ""
            console.rule(f"record {number} of {len(found)} with id {escape(invocation_id)}{same}")
        _print_record(console, record, now)


def _print_record(console: Console, record: Any, now: int) -> None:
    if not isinstance(record, dict):
        console.print("the message is not a record:")
        console.print_json(record_codec.json_or_rendering(record).decode())
        return
    facts = logic.facts_of_record(record)
    context = record.get("requestContext") or {}
    response = record.get("responseContext") or {}
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    for label, value in (
        ("id", facts.id),
        ("function", facts.function),
        ("condition", facts.condition),
        ("attempts", context.get("approximateInvokeCount")),
        ("failed at", f"{_when(facts.timestamp_ms)} ({_age(facts.timestamp_ms, now)} ago)"),
        ("status", f"{response.get('statusCode')} {response.get('functionError') or ''}"),
    ):
        head.add_row(*cells(label, value))
    console.print(head)
    payload = record.get("responsePayload")
    trace: list[Any] = []
    if isinstance(payload, dict) and "stackTrace" in payload:
        trace = payload.get("stackTrace") or []
        payload = {key: value for key, value in payload.items() if key != "stackTrace"}
    sections = [
        ("payload", record.get("requestPayload")),
        ("error" if trace or isinstance(payload, dict) else "response", payload),
    ]
    if "deliveryError" in record:
        sections.append(("delivery error", record["deliveryError"]))
    for title, value in sections:
        console.rule(title, align="left")
        console.print_json(record_codec.json_or_rendering(value).decode())
    if trace:
        console.rule("stack trace", align="left")
        console.print(Text("".join(str(line) for line in trace).rstrip()))
    console.rule("invocation (what replay sends)", align="left")
    console.print_json(record_codec.json_or_rendering(record.get("invocation")).decode())


@dlq.command()
@_selector_options
@click.option(
    "--from-file",
    metavar="FILE",
    help="Replay the records of an export (or of 'show --json') instead of the queue.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; change nothing.")
@click.option("--new-id", is_flag=True, help="Give each replay a new invocation id.")
@json_option
def replay(
    everything: bool,
    ids: tuple[str, ...],
    function: str | None,
    condition: str | None,
    since: str | None,
    from_file: str | None,
    dry_run: bool,
    new_id: bool,
    as_json: bool,
) -> None:
    """Send failed invocations again, then remove their records.

    Each record's original invocation is published as a new one (now, no delay,
    attempt 0, the same id unless --new-id). A failure recorded twice is sent once;
    its duplicate copies are removed with it. A record is removed only after the
    broker confirmed its replay: if this command dies midway, a record is replayed,
    still in the queue, or both, never lost. Records that cannot be replayed (an
    undecodable message, a function without a queue) stay and are listed.
    """
    settings = _settings()
    selector = _selector(
        ids=ids,
        function=function,
        condition=condition,
        since=since,
        everything=everything,
        required_for=None if from_file else "replay",
    )
    with _progress("replaying" if not dry_run else "checking") as progress:
        if from_file is not None:
            job = logic.replay_file(
                settings, from_file, selector, dry_run=dry_run, fresh_ids=new_id, progress=progress
            )
        else:
            job = logic.replay(
                settings, selector, dry_run=dry_run, fresh_ids=new_id, progress=progress
            )
        report = run(job)
    if as_json:
        _echo_json(report.to_dict())
    else:
        _print_replay(report)
    if report.skipped and not dry_run:
        raise logic.RecordsSkipped(report)


def _print_replay(report: logic.ReplayReport) -> None:
    console = terminal()
    verb = "would replay" if report.dry_run else "replayed"
    console.print(
        f"{verb} {report.replayed} of {report.selected} selected record(s) from "
        f"{escape(report.source)}"
        + (f"; {len(report.skipped)} skipped" if report.skipped else ""),
        highlight=False,
    )
    if report.duplicates:
        fate = "" if report.dry_run or report.from_file else ", removed with it"
        console.print(
            f"{_copies(report.duplicates)} of a selected failure: not sent{fate}",
            highlight=False,
        )
    if report.by_function:
        table = Table("function", "invocations")
        for function, count in sorted(report.by_function.items()):
            table.add_row(*cells(function, count))
        console.print(table)
    if report.new_ids:
        console.print(f"{len(report.new_ids)} new id(s); --json lists old → new")
    if report.skipped:
        table = Table("skipped id", "why", title="not replayable (kept in the queue)")
        for invocation_id, reason in report.skipped[:SKIPPED_SHOWN]:
            table.add_row(*cells(invocation_id, reason))
        console.print(table)
        if len(report.skipped) > SKIPPED_SHOWN:
            console.print(f"… and {len(report.skipped) - SKIPPED_SHOWN} more (--json lists all)")


@dlq.command()
@_selector_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
def purge(
    everything: bool,
    ids: tuple[str, ...],
    function: str | None,
    condition: str | None,
    since: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Remove failure records for good, after asking (unless --yes).

    Export them first if you may need them: 'asyncinvoke dlq export FILE'.
    """
    settings = _settings()
    selector = _selector(
        ids=ids,
        function=function,
        condition=condition,
        since=since,
        everything=everything,
        required_for="purge",
    )
    queue = topology.Names(settings.namespace).failed
    if not yes:
        with _progress("counting") as progress:
            selected = run(logic.count(settings, selector, progress))
        click.confirm(
            f"Remove {selected} record(s) ({selector.describe()}) from {queue} for good?",
            abort=True,
            err=True,
        )
    with _progress("purging") as progress:
        report = run(logic.purge(settings, selector, progress))
    if as_json:
        _echo_json({"queue": report.queue, "scanned": report.scanned, "purged": report.purged})
        return
    click.echo(f"purged {report.purged} record(s) from {report.queue}")


@dlq.command()
@click.argument("file", metavar="FILE")
@_filter_options
def export(file: str, function: str | None, condition: str | None, since: str | None) -> None:
    """Write failure records to FILE as JSON lines (- for stdout); the queue keeps them.

    Each line is {"record": <the record as JSON>, "msgpack": <its exact bytes, base64>};
    'asyncinvoke dlq replay --from-file FILE' replays them. Every record is written: a
    duplicate copy of a failure written before is marked "duplicate": true. The file
    appears only when complete (it is written as FILE.partial first).
    """
    settings = _settings()
    selector = _selector(function=function, condition=condition, since=since)
    if selector == logic.Selector():
        selector = logic.ALL
    started = time.monotonic()
    with _progress("exporting") as progress:
        exported = run(logic.export(settings, file, selector, progress))
    elapsed = time.monotonic() - started
    copies = (
        f" ({exported.duplicates} of them a duplicate copy, marked \"duplicate\": true)"
        if exported.duplicates
        else ""
    )
    click.echo(
        f"exported {exported.written} record(s){copies} to {file} in {elapsed:.1f} s",
        err=file == "-",
    )
