from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click
import orjson
from rich.markup import escape
from rich.table import Table

from asyncinvoke import placement, stranded
from asyncinvoke import topology as topo
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
from asyncinvoke.functions import FunctionsFile
from asyncinvoke.gateway.fcapi import shown_policy
from asyncinvoke.liveconfig import model
from asyncinvoke.liveconfig.live import LiveConfig, file_sources
from asyncinvoke.nodes import parse_nodes
from asyncinvoke.settings import Settings


def _rabbitmq_node_option(
    what: str, *, required: bool
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--rabbitmq-node",
        required=required,
        default=None,
        metavar="NODE",
        help=f"{what} (on a host that has the tools and the node's Erlang cookie), e.g. "
        "rabbit@rmq-1.",
    )


@click.group()
def topology() -> None:
    """Declare or show the exchanges and queues of the namespace."""


@topology.command()
@config_option
@app_option
def declare(config_path: str | None, app_ref: str | None) -> None:
    """Declare every exchange, queue and binding, idempotently."""
    settings = load_settings(config_path=config_path)
    functions_file = load_functions(settings, config_path, app_ref)
    names = topo.Names(settings.namespace)

    async def go() -> None:
        async with Broker(settings, name="asyncinvoke-topology") as broker:
            await topo.declare(broker.publisher, names, functions_file.functions.values())

    run(go())
    click.echo(
        f"declared namespace {settings.namespace!r}: {len(functions_file.functions)} function "
        f"queue(s), the delay ladder, {names.failed}, {names.unrouted}, {names.dead}"
    )


@topology.command()
@config_option
@app_option
@click.option("--vhost", default="/", show_default=True, help="Virtual host of the definitions.")
@click.option(
    "--rabbitmq-version",
    default="3.13",
    show_default=True,
    help="Version of the broker that loads them: 4.x needs x-delivery-limit -1 on the "
    "record queues, which 3.x must not get.",
)
@click.argument("output", type=click.File("wb"), default="-")
def export(
    config_path: str | None,
    app_ref: str | None,
    vhost: str,
    rabbitmq_version: str,
    output: Any,
) -> None:
    """Write the topology as a RabbitMQ definitions file (OUTPUT, default stdout).

    Load it at boot with `load_definitions = /path/definitions.json` in rabbitmq.conf,
    or once with `rabbitmqctl import_definitions FILE`.
    """
    version = topo.parse_version(rabbitmq_version)
    if version is None:
        raise click.BadParameter(
            f"{rabbitmq_version!r} is not a version such as 3.13 or 4.1",
            param_hint="--rabbitmq-version",
        )
    settings = load_settings(config_path=config_path)
    functions_file = load_functions(settings, config_path, app_ref)
    document = topo.definitions(
        topo.Names(settings.namespace), functions_file.functions.values(), vhost, version
    )
    output.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


async def _depths_and_live(
    settings: Settings, queues: list[str], functions_file: FunctionsFile
) -> tuple[dict[str, int | None], dict[str, model.Effective]]:
    """Each queue's depth, and each function's configuration in force: the file's, with
    the live configuration over it when the namespace has its configuration stream."""
    names = topo.Names(settings.namespace)
    async with Broker(settings, name="asyncinvoke-topology") as broker:
        assert broker.connection is not None
        depths = {queue: await topo.queue_depth(broker.connection, queue) for queue in queues}
        if await topo.queue_depth(broker.connection, names.config_stream) is None:
            sources = file_sources(functions_file)
            return depths, {
                name: model.effective(spec, sources.get(name, {}), None, None)
                for name, spec in functions_file.functions.items()
            }
        async with DocumentStore(broker, names) as store:
            live = LiveConfig(store, functions_file)
            return depths, live.all()


@topology.command()
@config_option
@app_option
@json_option
@_rabbitmq_node_option(
    "Also show each queue's leader and members, asked of this RabbitMQ node with "
    "rabbitmqctl", required=False,
)
def show(
    config_path: str | None, app_ref: str | None, as_json: bool, rabbitmq_node: str | None
) -> None:
    """Show each function's service, queue, depth and effective policy, and the system
    queues."""
    settings = load_settings(config_path=config_path)
    functions_file = load_functions(settings, config_path, app_ref)
    names = topo.Names(settings.namespace)
    specs = functions_file.functions
    system = [names.failed, names.unrouted, names.dead]
    ladder_queues = [names.level(level) for level in range(17)]
    queues = [names.function_queue(name) for name in specs] + system + ladder_queues
    depths, live = run(_depths_and_live(settings, queues, functions_file))
    specs = {name: live[name].spec for name in specs}
    sources = {
        name: {**functions_file.sources.get(name, {}), **live[name].sources} for name in specs
    }
    where = (
        placement.queue_placement(rabbitmq_node, parse_nodes(settings.amqp_url)[0].vhost)
        if rabbitmq_node
        else None
    )
    if as_json:
        document: dict[str, Any] = {
            "namespace": settings.namespace,
            "services": functions_file.services(),
            "functions": {
                name: {
                    **shown_policy(spec),
                    "queue": names.function_queue(name),
                    "messages": depths[names.function_queue(name)],
                    "paused": live[name].paused,
                    "configVersion": live[name].version,
                    "sources": dict(sorted(sources[name].items())),
                }
                for name, spec in specs.items()
            },
            "queues": {queue: depths[queue] for queue in system + ladder_queues},
        }
        if where is not None:
            document["placement"] = {
                queue: {"leader": where[queue].leader, "members": list(where[queue].members)}
                for queue in queues
                if queue in where
            }
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return
    console = terminal()
    table = Table(title=f"functions in namespace {escape(repr(settings.namespace))}")
    for column in (
        "service",
        "function",
        "runs",
        "queue",
        "ready",
        "timeout",
        "retries",
        "max age",
        "concurrency",
        "state",
        "backoff",
        "on_success",
        "on_failure",
    ):
        table.add_column(column)
    for name, spec in specs.items():
        policy = shown_policy(spec)
        depth = depths[names.function_queue(name)]
        backoff = policy["backoff"]
        # Literal cells: a URL such as http://[fe80::1]/ would otherwise read as markup.
        table.add_row(
            *cells(
                spec.service,
                name,
                policy["target"],
                names.function_queue(name),
                "missing" if depth is None else depth,
                f"{spec.timeout_s:g}s",
                spec.max_retries,
                f"{spec.max_event_age_s}s",
                spec.concurrency,
                f"paused (v{live[name].version})" if live[name].paused else "running",
                f"{backoff['initial']:g}s*{backoff['multiplier']:g} max {backoff['max']:g}s"
                f" ±{backoff['jitter']:.0%}",
                policy["on_success"] or "-",
                policy["on_failure"],
            )
        )
    console.print(table)
    services = functions_file.services()
    console.print(
        "services (FC 2.0 API): "
        + ", ".join(f"{escape(service)} ({len(names)})" for service, names in services.items())
    )
    console.print(_sources_table(sources))
    waiting = sum(depths[queue] or 0 for queue in ladder_queues)
    system_table = Table(title="system queues")
    system_table.add_column("queue")
    system_table.add_column("ready")
    for queue in system:
        depth = depths[queue]
        system_table.add_row(*cells(queue, "missing" if depth is None else depth))
    system_table.add_row(*cells(f"{names.ns}.delay.* (17 levels)", waiting))
    console.print(system_table)
    if where is not None:
        placement_table = Table(title=f"leaders and members (as {escape(rabbitmq_node or '')} "
                                      "tells)")
        for column in ("queue", "leader", "members"):
            placement_table.add_column(column)
        for queue in queues:
            if queue in where:
                placement_table.add_row(
                    *cells(queue, where[queue].leader, ", ".join(where[queue].members))
                )
        console.print(placement_table)


def _sources_table(sources: Mapping[str, Mapping[str, str]]) -> Table:
    """Where each value came from: the live configuration (api), the functions file, its
    [defaults], code (--app), or the built-in default."""
    table = Table(
        title=escape("where each value comes from (api over file over code over [defaults])")
    )
    for column in ("function", "key", "from"):
        table.add_column(column)
    for name, keys in sources.items():
        for key, source in keys.items():
            table.add_row(*cells(name, key, source))
    return table


HEAL_WAIT_S = 30.0  # for the backlogs of the queues whose leader moved to go


@topology.command()
@config_option
@app_option
@json_option
@_rabbitmq_node_option(
    "The RabbitMQ node to ask and act through, with rabbitmqctl and rabbitmq-queues",
    required=True,
)
@click.option(
    "--check",
    is_flag=True,
    help="Only report: exit status 1 when a queue holds stranded dead-letters (for a "
    "monitoring check or a cron job).",
)
@click.option(
    "--settle",
    "settle_s",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Seconds a queue's dead-letter backlog must stay unshrunk to count as stranded.",
)
def heal(
    config_path: str | None,
    app_ref: str | None,
    as_json: bool,
    rabbitmq_node: str,
    check: bool,
    settle_s: float,
) -> None:
    """Find the namespace's quorum queues whose dead-letters no longer move on (after a
    node's death RabbitMQ can lose a queue's dead-letter worker: delayed invocations then
    wait in a ladder level for ever) and set them moving by making each elect a new leader.

    Nothing is lost either way; see docs/cluster.md, "A third trap: stranded
    dead-letters"."""
    settings = load_settings(config_path=config_path)
    functions_file = load_functions(settings, config_path, app_ref)
    names = topo.Names(settings.namespace)
    vhost = parse_nodes(settings.amqp_url)[0].vhost
    plans = (topo.core_plan(names), topo.functions_plan(names, functions_file.functions.values()))
    queues = [queue.name for plan in plans for queue in plan.queues]
    found = stranded.stranded(rabbitmq_node, vhost, queues, settle_s)
    running = stranded.running_nodes(rabbitmq_node) if found else set()
    skipped = {item.queue: reason for item in found
               if (reason := stranded.why_not_movable(item, running)) is not None}
    healed: dict[str, int] = {}
    if not check:
        movable = [item for item in found if item.queue not in skipped]
        for item in movable:
            stranded.move_leader(rabbitmq_node, vhost, item.queue, item.leader)
        healed = stranded.wait_drained(rabbitmq_node, vhost, [item.queue for item in movable],
                                       HEAL_WAIT_S)
    if as_json:
        click.echo(orjson.dumps({
            "stranded": [{"queue": item.queue, "leader": item.leader, "held": item.held}
                         for item in found],
            "healed": check is False,
            "stillHeld": healed,
            "skipped": skipped,
        }, option=orjson.OPT_INDENT_2).decode())
    elif not found:
        click.echo(f"no stranded dead-letters in namespace {settings.namespace!r}")
    for item in [] if as_json else found:
        if item.queue in skipped:
            outcome = f"; not moved: {skipped[item.queue]}"
        elif check:
            outcome = ""
        else:
            outcome = f"; leader moved, {healed.get(item.queue, 0)} still held"
        click.echo(f"{item.queue}: {item.held} dead-letter(s) stranded (leader {item.leader})"
                   + outcome)
    if found and (check or skipped or any(healed.values())):
        raise SystemExit(1)
