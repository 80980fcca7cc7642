"""``asyncinvoke function``: the live configuration of a function (FC's async-invoke config
and concurrency), read from and written to the namespace's configuration store.

    function config get|put|delete NAME, function config list
    function concurrency put|delete NAME [N]          (N is per worker; 0 pauses)
    function pause|resume NAME

A change applies to every running worker without a restart; ``--json`` prints the
configuration in force afterwards (``liveconfig.model.view``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson
from rich.markup import escape
from rich.table import Table

from asyncinvoke import topology
from asyncinvoke.broker import Broker
from asyncinvoke.cli._common import (
    app_option,
    cells,
    config_option,
    json_option,
    load_functions,
    load_settings,
    run,
)
from asyncinvoke.cli._common import console as terminal
from asyncinvoke.docstore import DocumentStore
from asyncinvoke.liveconfig import model
from asyncinvoke.liveconfig.live import LiveConfig

T = TypeVar("T")
name_argument = click.argument("name", metavar="NAME")


async def _with_live(
    config_path: str | None, app_ref: str | None, action: Callable[[LiveConfig], Awaitable[T]]
) -> T:
    settings = load_settings(config_path=config_path)
    functions_file = load_functions(settings, config_path, app_ref)
    async with Broker(settings, name="asyncinvoke-cli") as broker:
        store = DocumentStore(broker, topology.Names(settings.namespace))
        await store.start()
        live = LiveConfig(store, functions_file)
        try:
            return await action(live)
        finally:
            live.close()
            await store.close()


def _views(
    config_path: str | None,
    app_ref: str | None,
    action: Callable[[LiveConfig], Awaitable[list[str]]],
) -> list[dict[str, Any]]:
    async def go(live: LiveConfig) -> list[dict[str, Any]]:
        names = await action(live)
        return [model.view(live.effective(name), live.file_modified_ms) for name in names]

    return run(_with_live(config_path, app_ref, go))


def _change(
    name: str,
    config_path: str | None,
    app_ref: str | None,
    as_json: bool,
    change: Callable[[LiveConfig], Awaitable[object]],
) -> None:
    """Make one change to NAME's live configuration, then print its configuration in force."""

    async def changed(live: LiveConfig) -> list[str]:
        await change(live)
        return [name]

    _print(_views(config_path, app_ref, changed), as_json)


def _print(views: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for shown in views:  # one document, or JSON lines for a list
            click.echo(orjson.dumps(shown).decode())
        return
    console = terminal()
    table = Table(title="live configuration (API values over the functions file)")
    for column in ("function", "version", "state", "retries", "max age", "task mode",
                   "on_success", "on_failure", "concurrency/worker"):
        table.add_column(column)
    for shown in views:
        sources = shown["sources"]

        def cell(value: object, key: str, sources: dict[str, str] = sources) -> str:
            return f"{value} ({'api' if sources.get(key) == model.SOURCE_API else 'file'})"

        destinations = shown["destinationConfig"]
        table.add_row(*cells(
            shown["functionName"],
            shown["configVersion"],
            "paused" if shown["paused"] else "running",
            cell(shown[model.RETRIES], "max_retries"),
            cell(f"{shown[model.EVENT_AGE]}s", "max_event_age"),
            cell(shown[model.ASYNC_TASK], "task_mode"),
            cell(destinations[model.ON_SUCCESS] or "-", "on_success"),
            cell(destinations[model.ON_FAILURE] or "(failure queue)", "on_failure"),
            cell(shown[model.RESERVED], "concurrency"),
        ))
    console.print(table)
    console.print(escape("(api): set through the API or this command; (file): the functions "
                         "file, its [defaults], code or the built-in default"))


@click.group()
def function() -> None:
    """Live configuration of functions: async-invoke config, concurrency, pause/resume."""


@function.group()
def config() -> None:
    """A function's async-invoke config (FC's PutAsyncInvokeConfig and the rest)."""


@config.command(name="get")
@name_argument
@config_option
@app_option
@json_option
def config_get(name: str, config_path: str | None, app_ref: str | None, as_json: bool) -> None:
    """Show the configuration in force and where each value comes from."""

    async def names(live: LiveConfig) -> list[str]:
        live.known(name)
        return [name]

    _print(_views(config_path, app_ref, names), as_json)


@config.command(name="list")
@config_option
@app_option
@json_option
def config_list(config_path: str | None, app_ref: str | None, as_json: bool) -> None:
    """Show every function's configuration in force (JSON lines with --json)."""

    async def names(live: LiveConfig) -> list[str]:
        return sorted(live.base)

    _print(_views(config_path, app_ref, names), as_json)


@config.command(name="put")
@name_argument
@click.option("--max-retries", type=int, help="maxAsyncRetryAttempts, 0..8.")
@click.option("--max-event-age", type=int, help="maxAsyncEventAgeInSeconds, 1..604800.")
@click.option("--async-task/--no-async-task", default=None, help="Task mode (asyncTask).")
@click.option("--on-success", metavar="DEST",
              help="queue:NAME, function:NAME, http(s)://URL, or an FC/MNS ARN.")
@click.option("--on-failure", metavar="DEST", help="As --on-success.")
@config_option
@app_option
@json_option
def config_put(
    name: str,
    max_retries: int | None,
    max_event_age: int | None,
    async_task: bool | None,
    on_success: str | None,
    on_failure: str | None,
    config_path: str | None,
    app_ref: str | None,
    as_json: bool,
) -> None:
    """Set the fields given (the others keep the functions file's values). A put replaces
    the function's API config as a whole, as FC's PutAsyncInvokeConfig does."""
    body: dict[str, Any] = {}
    if max_retries is not None:
        body[model.RETRIES] = max_retries
    if max_event_age is not None:
        body[model.EVENT_AGE] = max_event_age
    if async_task is not None:
        body[model.ASYNC_TASK] = async_task
    destinations = {
        key: {"destination": value}
        for key, value in ((model.ON_SUCCESS, on_success), (model.ON_FAILURE, on_failure))
        if value is not None
    }
    if destinations:
        body["destinationConfig"] = destinations
    if not body:
        raise click.UsageError("name at least one field to set (see --help)")

    _change(name, config_path, app_ref, as_json, lambda live: live.put_async_config(name, body))


@config.command(name="delete")
@name_argument
@config_option
@app_option
@json_option
def config_delete(name: str, config_path: str | None, app_ref: str | None, as_json: bool) -> None:
    """Remove the API config: the functions file's values apply again."""

    _change(name, config_path, app_ref, as_json, lambda live: live.delete_async_config(name))


@function.group()
def concurrency() -> None:
    """A function's attempts in flight PER WORKER PROCESS (FC's reservedConcurrency is for
    the whole fleet); 0 pauses the function."""


@concurrency.command(name="put")
@name_argument
@click.argument("value", type=int)
@config_option
@app_option
@json_option
def concurrency_put(
    name: str, value: int, config_path: str | None, app_ref: str | None, as_json: bool
) -> None:
    """Set the per-worker concurrency (0 pauses)."""

    _change(
        name, config_path, app_ref, as_json,
        lambda live: live.put_concurrency(name, {model.RESERVED: value}),
    )


@concurrency.command(name="delete")
@name_argument
@config_option
@app_option
@json_option
def concurrency_delete(
    name: str, config_path: str | None, app_ref: str | None, as_json: bool
) -> None:
    """Remove the API concurrency (and a pause): the functions file's applies again."""

    _change(name, config_path, app_ref, as_json, lambda live: live.delete_concurrency(name))


@function.command()
@name_argument
@config_option
@app_option
@json_option
def pause(name: str, config_path: str | None, app_ref: str | None, as_json: bool) -> None:
    """Stop every worker from starting NAME's invocations; they wait in its queue (with the
    delays and retries that come due) until resume. Same as concurrency put NAME 0."""

    _change(
        name, config_path, app_ref, as_json,
        lambda live: live.put_concurrency(name, {model.RESERVED: 0}),
    )


@function.command()
@name_argument
@config_option
@app_option
@json_option
def resume(name: str, config_path: str | None, app_ref: str | None, as_json: bool) -> None:
    """Let NAME's invocations run again: the pause (an API concurrency of 0) is removed and
    the functions file's concurrency applies. A concurrency other than 0 is left alone."""

    async def remove_pause(live: LiveConfig) -> None:
        if live.effective(name).paused:
            await live.delete_concurrency(name)

    _change(name, config_path, app_ref, as_json, remove_pause)
