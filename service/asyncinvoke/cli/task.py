from __future__ import annotations

import click
import orjson
from rich.markup import escape
from rich.table import Table

from asyncinvoke import clock
from asyncinvoke.cli._common import cells, json_option, load_settings, run, when
from asyncinvoke.cli._common import console as terminal
from asyncinvoke.client import Client
from asyncinvoke.errors import TaskNotFound
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.views import async_task


@click.group()
def task() -> None:
    """Read and stop tasks (invocations in task mode)."""


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return when(ms)


@task.command()
@click.argument("task_id")
@json_option
def get(task_id: str, as_json: bool) -> None:
    """Show one task: status, attempts, times, error, result and its events."""
    settings = load_settings()

    async def go() -> dict[str, object]:
        async with Client(settings=settings) as client:
            found = await (await client.tasks()).get(task_id)
        if found is None:
            raise TaskNotFound(task_id)
        return async_task(found)

    view = run(go())
    if as_json:
        click.echo(orjson.dumps(view).decode())
        return
    console = terminal()
    for key in (
        "taskId",
        "functionName",
        "status",
        "alreadyRetriedTimes",
        "durationMs",
        "taskErrorMessage",
        "taskPayload",
        "returnPayload",
    ):
        # Error texts and payloads come from handlers: shown as they are, never as markup.
        console.print(f"[bold]{key}[/bold]: {escape(str(view[key]))}", highlight=False)
    console.print(f"[bold]startedTime[/bold]: {_when(view['startedTime'])}")  # type: ignore[arg-type]
    console.print(f"[bold]endTime[/bold]: {_when(view['endTime'])}")  # type: ignore[arg-type]
    table = Table(title="events")
    for column in ("time (UTC)", "status", "detail"):
        table.add_column(column)
    for event in view["events"]:  # type: ignore[attr-defined]
        table.add_row(*cells(_when(event["timestamp"]), event["status"], event["eventDetail"]))
    console.print(table)


@task.command(name="list")
@click.option("--function", "function", metavar="FN", help="Only this function's tasks.")
@click.option(
    "--status",
    type=click.Choice([status.value for status in Status]),
    help="Only tasks in this status.",
)
@click.option("--prefix", metavar="P", help="Only task ids starting with P.")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@json_option
def list_(
    function: str | None, status: str | None, prefix: str | None, limit: int, as_json: bool
) -> None:
    """List tasks, newest first (JSON lines with --json)."""
    settings = load_settings()

    async def go() -> list[dict[str, object]]:
        async with Client(settings=settings) as client:
            page = await (await client.tasks()).list(
                function=function,
                status=Status(status) if status else None,
                prefix=prefix,
                limit=limit,
            )
        return [async_task(found, include_payload=as_json) for found in page.tasks]

    views = run(go())
    if as_json:
        for view in views:
            click.echo(orjson.dumps(view).decode())
        return
    table = Table()
    for column in ("task id", "function", "status", "retries", "started (UTC)", "ms", "error"):
        table.add_column(column)
    for view in views:
        error = str(view["taskErrorMessage"] or "").splitlines()
        table.add_row(
            *cells(
                view["taskId"],
                view["functionName"],
                view["status"],
                view["alreadyRetriedTimes"],
                _when(view["startedTime"]),  # type: ignore[arg-type]
                view["durationMs"] if view["durationMs"] is not None else "-",
                error[0][:80] if error else "",
            )
        )
    terminal().print(table)


@task.command()
@click.argument("task_id")
@json_option
def stop(task_id: str, as_json: bool) -> None:
    """Stop a task: one not yet started never starts; a running one is cancelled."""
    settings = load_settings()

    async def go() -> dict[str, object]:
        async with Client(settings=settings) as client:
            stopped = await client.stop_task(task_id)
        return async_task(stopped, include_payload=False)

    view = run(go())
    if as_json:
        click.echo(orjson.dumps(view).decode())
    else:
        click.echo(f"{task_id}: {view['status']} at {_when(clock.now_ms())}")


@task.command()
@click.argument("task_id")
@json_option
def rerun(task_id: str, as_json: bool) -> None:
    """Run an ended task again: its original payload, the same id, a new attempt sequence
    (its events are kept). A task that has not ended is refused."""
    settings = load_settings()

    async def go() -> dict[str, object]:
        async with Client(settings=settings) as client:
            enqueued = await client.rerun_task(task_id)
        return async_task(enqueued, include_payload=False)

    view = run(go())
    if as_json:
        click.echo(orjson.dumps(view).decode())
    else:
        click.echo(f"{task_id}: {view['status']} again at {_when(clock.now_ms())}")
