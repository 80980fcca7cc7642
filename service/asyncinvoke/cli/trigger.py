"""``asyncinvoke trigger create|get|list|update|delete``: the triggers the FC API manages,
in the namespace's configuration store, beside those of the functions file (when it is
found). ``--json`` prints FC's Trigger shape (``triggerConfig`` a JSON string), the
source URL redacted, with ``functionName`` added."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from rich.markup import escape
from rich.table import Table

from asyncinvoke import clock, functions, topology
from asyncinvoke.broker import Broker
from asyncinvoke.cli._common import cells, json_option, load_settings, run
from asyncinvoke.cli._common import console as terminal
from asyncinvoke.docstore import DocumentStore
from asyncinvoke.errors import UnknownFunctionError
from asyncinvoke.settings import Settings
from asyncinvoke.triggers import sources
from asyncinvoke.triggers.definitions import KINDS, SourceConfig, TimerConfig, Trigger
from asyncinvoke.triggers.stored import TriggerStore

T = TypeVar("T")


@click.group()
def trigger() -> None:
    """Timer (cron) and RabbitMQ source triggers: create, read, change, delete."""


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[tuple[TriggerStore, Broker]]:
    file_triggers: list[Trigger] = []
    if Path(settings.config_path).is_file():
        loaded = functions.load(settings.config_path)
        file_triggers = [t for spec in loaded.functions.values() for t in spec.triggers]
    async with (
        Broker(settings, name="asyncinvoke-cli-trigger") as broker,
        DocumentStore(broker, topology.Names(settings.namespace)) as store,
    ):
        yield TriggerStore(store, file_triggers), broker


def _with_store(settings: Settings, work: Callable[[TriggerStore, Broker], Awaitable[T]]) -> T:
    async def go() -> T:
        async with _store(settings) as (store, broker):
            return await work(store, broker)

    return run(go())


async def _check_function(broker: Broker, settings: Settings, function: str) -> None:
    names = topology.Names(settings.namespace)
    if not await topology.function_exists(broker.connection, names, function):
        raise UnknownFunctionError(function, names.ns)


def _config_from_flags(base: dict[str, Any], **flags: Any) -> dict[str, Any]:
    """``base`` with the flags that were given: the flat config keys."""
    keys = {
        "cron": "cronExpression",
        "payload": "payload",
        "enable": "enable",
        "queue": "queueName",
        "url": "url",
        "vhost": "virtualHostName",
        "batch_size": "batchSize",
        "batch_window": "batchWindow",
    }
    config = dict(base)
    config.update({keys[flag]: value for flag, value in flags.items() if value is not None})
    return config


def _flat(existing: Trigger) -> dict[str, Any]:
    """A trigger's config as the flat keys, the URL redacted (an update keeps the secret)."""
    config = existing.config
    if isinstance(config, TimerConfig):
        return config.to_fc()
    shown = config.to_fc()["eventSourceConfig"]["eventSourceParameters"]["sourceRabbitMQParameters"]
    flat: dict[str, Any] = {
        "queueName": config.queue,
        "batchSize": config.batch_size,
        "batchWindow": config.batch_window_s,
        "enable": config.enable,
    }
    if "Url" in shown:
        flat["url"] = shown["Url"]
    if config.vhost is not None:
        flat["virtualHostName"] = config.vhost
    return flat


_CONFIG_OPTIONS = [
    click.option(
        "--config",
        "config_json",
        metavar="JSON",
        help="triggerConfig as FC's JSON (the flags below add to it).",
    ),
    click.option("--cron", help="timer: cronExpression ('0 */5 * * * *', '@every 30s')."),
    click.option("--payload", help="timer: the payload string of each tick."),
    click.option("--enable/--disable", "enable", default=None, help="Fire/consume or not."),
    click.option("--queue", help="rabbitmq: the source queue."),
    click.option("--url", help="rabbitmq: another broker's amqp(s):// URL (a secret)."),
    click.option("--vhost", help="rabbitmq: the source vhost."),
    click.option("--batch-size", type=int, help="rabbitmq: messages per invocation, 1..1000."),
    click.option("--batch-window", type=float, help="rabbitmq: seconds a batch waits, 0..15."),
    click.option("--description", help="A note kept with the trigger."),
]


def _config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_CONFIG_OPTIONS):
        command = option(command)
    return command


def _base(config_json: str | None) -> dict[str, Any]:
    if not config_json:
        return {}
    try:
        base = orjson.loads(config_json)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--config") from None
    if not isinstance(base, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--config")
    return base


@trigger.command()
@click.argument("function")
@click.argument("name")
@click.option("--type", "kind", type=click.Choice(KINDS), required=True)
@_config_options
@json_option
def create(
    function: str,
    name: str,
    kind: str,
    config_json: str | None,
    description: str | None,
    as_json: bool,
    **flags: Any,
) -> None:
    """Create trigger NAME on FUNCTION."""
    settings = load_settings()
    body: dict[str, Any] = {
        "triggerName": name,
        "triggerType": kind,
        "triggerConfig": _config_from_flags(_base(config_json), **flags),
    }
    if description is not None:
        body["description"] = description

    async def work(store: TriggerStore, broker: Broker) -> Trigger:
        await _check_function(broker, settings, function)
        return await store.create(function, body, clock.now_ms())

    _show(_with_store(settings, work), as_json, settings)


@trigger.command()
@click.argument("function")
@click.argument("name")
@_config_options
@json_option
def update(
    function: str,
    name: str,
    config_json: str | None,
    description: str | None,
    as_json: bool,
    **flags: Any,
) -> None:
    """Change trigger NAME of FUNCTION: --config replaces its config, flags change keys."""
    settings = load_settings()

    async def work(store: TriggerStore, broker: Broker) -> Trigger:
        existing = store.get(function, name)
        body: dict[str, Any] = {}
        if config_json or any(value is not None for value in flags.values()):
            base = _base(config_json) or _flat(existing)
            body["triggerConfig"] = _config_from_flags(base, **flags)
        if description is not None:
            body["description"] = description
        return await store.update(function, name, body, clock.now_ms())

    _show(_with_store(settings, work), as_json, settings)


@trigger.command()
@click.argument("function")
@click.argument("name")
@json_option
def get(function: str, name: str, as_json: bool) -> None:
    """Show one trigger, with whether its source can be consumed now."""
    settings = load_settings()

    async def work(store: TriggerStore, _: Broker) -> Trigger:
        return store.get(function, name)

    _show(_with_store(settings, work), as_json, settings)


@trigger.command(name="list")
@click.argument("function", required=False)
@json_option
def list_(function: str | None, as_json: bool) -> None:
    """List triggers (of FUNCTION, or all), JSON lines with --json."""
    settings = load_settings()

    async def work(store: TriggerStore, _: Broker) -> list[Trigger]:
        return store.list(function)

    found = _with_store(settings, work)
    if as_json:
        for item in found:
            click.echo(orjson.dumps(_view(item, "Ready" if item.enabled else "Disabled")).decode())
        return
    table = Table()
    for column in ("function", "trigger", "type", "enabled", "schedule / source", "defined in"):
        table.add_column(column)
    for item in found:
        table.add_row(
            *cells(item.function, item.name, item.kind, item.enabled, _what(item), item.origin)
        )
    terminal().print(table)


@trigger.command()
@click.argument("function")
@click.argument("name")
def delete(function: str, name: str) -> None:
    """Delete trigger NAME of FUNCTION: it fires or consumes no more."""
    settings = load_settings()

    async def work(store: TriggerStore, _: Broker) -> Trigger:
        return await store.delete(function, name)

    _with_store(settings, work)
    click.echo(f"deleted trigger {name!r} of {function!r}")


def _what(item: Trigger) -> str:
    config = item.config
    if isinstance(config, SourceConfig):
        return f"{config.queue} (batch {config.batch_size}, {config.batch_window_s:g} s)"
    return config.cron_expression


def _view(item: Trigger, status: str, reason: str = "") -> dict[str, Any]:
    return {"functionName": item.function, **item.to_fc(status=status, reason=reason)}


def _show(item: Trigger, as_json: bool, settings: Settings) -> None:
    status, reason = run(sources.status(item, settings.amqp_url))
    view = _view(item, status, reason)
    if as_json:
        click.echo(orjson.dumps(view).decode())
        return
    console = terminal()
    for key in (
        "functionName",
        "triggerName",
        "triggerType",
        "status",
        "statusReason",
        "triggerConfig",
        "description",
        "createdTime",
        "lastModifiedTime",
    ):
        if key in view:
            console.print(f"[bold]{key}[/bold]: {escape(str(view[key]))}", highlight=False)
