"""Every exchange and queue name, with its arguments, in one place; declare and show.

    {ns}.invoke ─(fn)─► {ns}.fn.<fn> ◄─(#.fn)─ {ns}.delay.deliver ◄─ {ns}.delay.00 ◄ … .16
        │ alternate                                │ alternate
        └──────────► {ns}.unrouted ◄───────────────┘   (worker: UnknownFunction records)
    {ns}.fn.<fn> ─(delivery limit)─► {ns}.dead          (worker: DeliveryLimitExceeded records)
    {ns}.failed (topic, key = fn) ─(#)─► {ns}.failed    (the failure-destination queue)
    {ns}.triggers.leader          single active consumer: the worker it delivers to schedules timers
    {ns}.config (stream)          the namespace's live configuration and triggers (docstore)

Quorum queues everywhere: replicated on a cluster, at-least-once dead-lettering,
and a delivery limit for poison messages. The system queues that hold records
({ns}.failed, .dead, .unrouted) must have no delivery limit at all, and what says
so depends on the broker's version (``system_queue_arguments``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq

from asyncinvoke import ladder
from asyncinvoke.errors import ConfigError
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.observability import get_logger

log = get_logger(component="topology")

# On a cluster, each new queue's leader goes to the node that leads the fewest
# ("balanced": accepted by 3.10 and later; 3.10's default, client-local, put every leader
# of a namespace on the node the declaring worker happened to use). The replica count is
# left to the broker: min(3, cluster nodes) by default, which fits 3 and 5 nodes.
LEADER_LOCATOR = "x-queue-leader-locator"
QUORUM = {"x-queue-type": "quorum", LEADER_LOCATOR: "balanced"}
# No retention arguments: the configuration log is the configuration (docstore.py).
STREAM = {"x-queue-type": "stream"}
AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
DIRECT, TOPIC, FANOUT = "direct", "topic", "fanout"
UNLIMITED_DELIVERIES = {"x-delivery-limit": -1}
SINGLE_ACTIVE = {"x-single-active-consumer": True}
# The first RabbitMQ with a default delivery limit (20) on quorum queues.
DEFAULT_DELIVERY_LIMIT_SINCE = (4, 0)


@dataclass(frozen=True, slots=True)
class Names:
    """The names of one namespace's exchanges and queues."""

    ns: str

    @property
    def invoke(self) -> str:
        return f"{self.ns}.invoke"

    @property
    def failed(self) -> str:
        return f"{self.ns}.failed"

    @property
    def unrouted(self) -> str:
        return f"{self.ns}.unrouted"

    @property
    def dead(self) -> str:
        return f"{self.ns}.dead"

    @property
    def control(self) -> str:
        """Fanout to every worker: task stop requests."""
        return f"{self.ns}.control"

    @property
    def trigger_leader(self) -> str:
        """Single-active-consumer queue: its active consumer is the timers' scheduler."""
        return f"{self.ns}.triggers.leader"

    @property
    def config_stream(self) -> str:
        """The stream of configuration changes: async-invoke config, concurrency, triggers."""
        return f"{self.ns}.config"

    @property
    def deliver(self) -> str:
        return f"{self.ns}.delay.deliver"

    def function_queue(self, function: str) -> str:
        return f"{self.ns}.fn.{function}"

    def suspect_queue(self, function: str) -> str:
        """Deliveries whose worker died while they ran: run alone, one at a time."""
        return f"{self.ns}.suspect.{function}"

    def level(self, level: int) -> str:
        return f"{self.ns}.delay.{level:02d}"

    def below(self, level: int) -> str:
        """Where level's expired messages and clear bits go: the next level, or delivery."""
        return self.level(level - 1) if level > 0 else self.deliver


@dataclass(frozen=True, slots=True)
class ExchangeDecl:
    name: str
    type: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueueDecl:
    name: str
    arguments: dict[str, Any]
    # Holds state by design, so it is never drained: the configuration log (a stream
    # keeps what it was given) and the timers' leader queue (its baton, for as long as
    # the namespace lives). Checks that a namespace was left empty skip these.
    holds_state: bool = False


@dataclass(frozen=True, slots=True)
class Binding:
    source: str
    destination: str
    routing_key: str
    to_exchange: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    exchanges: list[ExchangeDecl]
    queues: list[QueueDecl]
    bindings: list[Binding]


def function_queue_arguments(names: Names, spec: FunctionSpec) -> dict[str, Any]:
    # A redelivery is moved to the suspect queue at once, so this limit is only a
    # backstop for a delivery that cannot even be moved.
    return {
        **QUORUM,
        **AT_LEAST_ONCE,
        "x-dead-letter-exchange": names.dead,
        "x-delivery-limit": spec.delivery_limit,
    }


def suspect_queue_arguments(names: Names, spec: FunctionSpec) -> dict[str, Any]:
    # A suspect came here after one death in the function queue; here it is delivered
    # delivery_limit more times at most (x-delivery-limit N-1 delivers N times), so a
    # poison message runs delivery_limit + 1 times in all before it is dead-lettered.
    return {
        **QUORUM,
        **AT_LEAST_ONCE,
        "x-dead-letter-exchange": names.dead,
        "x-delivery-limit": spec.delivery_limit - 1,
    }


def parse_version(version: str | None) -> tuple[int, int] | None:
    """``(major, minor)`` of a RabbitMQ version string ("3.10.8", "4.0.0-rc.2"), or None."""
    match = re.match(r"\s*(\d+)\.(\d+)", version or "")
    return (int(match[1]), int(match[2])) if match else None


def server_version(connection: Any) -> str | None:
    """The version an aiormq connection's broker announced at connect, if any."""
    properties = getattr(connection, "server_properties", None) or {}
    version = properties.get("version")
    if isinstance(version, bytes):
        version = version.decode(errors="replace")
    return version if isinstance(version, str) else None


def system_queue_arguments(broker_version: tuple[int, int] | None) -> dict[str, Any]:
    """Arguments of the queues that keep records: {ns}.failed, {ns}.dead, {ns}.unrouted.

    Browsing {ns}.failed (the dlq tool) and a consumer's retries return messages to
    these queues, and a delivery limit would drop a record after so many returns.
    RabbitMQ 4.x limits quorum queues to 20 deliveries unless the queue is declared
    with ``x-delivery-limit: -1`` (a policy cannot lift it). RabbitMQ 3.x has no limit
    by default and reads a negative limit as 0, which would drop every record on its
    first return: there the argument must be left out. An unknown version is treated
    as 3.x, the choice that cannot drop everything.
    """
    if broker_version is not None and broker_version >= DEFAULT_DELIVERY_LIMIT_SINCE:
        return {**QUORUM, **UNLIMITED_DELIVERIES}
    return dict(QUORUM)


def core_plan(names: Names, broker_version: tuple[int, int] | None = None) -> Plan:
    """What every namespace has, whatever its functions, on a broker of that version."""
    system = system_queue_arguments(broker_version)
    exchanges = [
        ExchangeDecl(names.unrouted, FANOUT),
        ExchangeDecl(names.dead, FANOUT),
        ExchangeDecl(names.failed, TOPIC),
        ExchangeDecl(names.control, FANOUT),
        ExchangeDecl(names.invoke, DIRECT, {"alternate-exchange": names.unrouted}),
        ExchangeDecl(names.deliver, TOPIC, {"alternate-exchange": names.unrouted}),
    ]
    queues = [
        QueueDecl(names.unrouted, dict(system)),
        QueueDecl(names.dead, dict(system)),
        QueueDecl(names.failed, dict(system)),
        # No delivery limit either: the baton in it returns each time a leader dies.
        QueueDecl(names.trigger_leader, {**system, **SINGLE_ACTIVE}, holds_state=True),
        QueueDecl(names.config_stream, dict(STREAM), holds_state=True),
    ]
    bindings = [
        Binding(names.unrouted, names.unrouted, ""),
        Binding(names.dead, names.dead, ""),
        Binding(names.failed, names.failed, "#"),
    ]
    # Lowest level first, so that each level's dead-letter target exists when it is declared.
    for level in range(ladder.LEVELS):
        name = names.level(level)
        exchanges.append(ExchangeDecl(name, TOPIC))
        queues.append(
            QueueDecl(
                name,
                {
                    **QUORUM,
                    **AT_LEAST_ONCE,
                    "x-message-ttl": (2**level) * 1000,
                    "x-dead-letter-exchange": names.below(level),
                },
            )
        )
        bindings.append(Binding(name, name, ladder.park_pattern(level)))
        bindings.append(
            Binding(name, names.below(level), ladder.pass_pattern(level), to_exchange=True)
        )
    return Plan(exchanges, queues, bindings)


def functions_plan(names: Names, specs: Iterable[FunctionSpec]) -> Plan:
    queues, bindings = [], []
    for spec in specs:
        queue = names.function_queue(spec.name)
        queues.append(QueueDecl(queue, function_queue_arguments(names, spec)))
        queues.append(
            QueueDecl(names.suspect_queue(spec.name), suspect_queue_arguments(names, spec))
        )
        bindings.append(Binding(names.invoke, queue, spec.name))
        bindings.append(Binding(names.deliver, queue, ladder.deliver_pattern(spec.name)))
    return Plan([], queues, bindings)


async def apply(channel: aio_pika.abc.AbstractChannel, plan: Plan) -> None:
    """Declare a plan idempotently; a clash with what exists is a ConfigError that says why.

    Once: everything goes through the aiormq channel under ``channel``, which aio-pika
    does not track, so a reconnect never declares it again (a robust channel would, and
    bring back a namespace deleted meanwhile: subscription.py)."""
    for exchange in plan.exchanges:
        underlay = await channel.get_underlay_channel()
        try:
            await underlay.exchange_declare(
                exchange.name,
                exchange_type=exchange.type,
                durable=True,
                arguments=exchange.arguments,
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise _clash("exchange", exchange.name, exc) from None
    for queue in plan.queues:
        try:
            await _declare_queue(channel, queue.name, queue.arguments)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            if LEADER_LOCATOR in str(exc):
                await _declare_as_it_is(channel, queue)
                continue
            if (
                "x-delivery-limit" in str(exc)
                and UNLIMITED_DELIVERIES.items() <= queue.arguments.items()
            ):
                raise _limited(queue.name, exc) from None
            raise _clash("queue", queue.name, exc) from None
    underlay = await channel.get_underlay_channel()
    for binding in plan.bindings:
        if binding.to_exchange:
            await underlay.exchange_bind(
                destination=binding.destination,
                source=binding.source,
                routing_key=binding.routing_key,
            )
        else:
            await underlay.queue_bind(
                binding.destination, binding.source, routing_key=binding.routing_key
            )


async def _declare_queue(
    channel: aio_pika.abc.AbstractChannel, name: str, arguments: dict[str, Any]
) -> None:
    underlay = await channel.get_underlay_channel()
    await underlay.queue_declare(name, durable=True, arguments=arguments)


async def _declare_as_it_is(channel: aio_pika.abc.AbstractChannel, queue: QueueDecl) -> None:
    """A queue declared before leaders were placed ("balanced") keeps its leader where it
    is: the locator only matters when a queue is made, and the broker refuses to change
    a queue's arguments. Declared without it, the rest is still checked."""
    await channel.reopen()  # the refusal closed the channel
    arguments = {key: value for key, value in queue.arguments.items() if key != LEADER_LOCATOR}
    try:
        await _declare_queue(channel, queue.name, arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise _clash("queue", queue.name, exc) from None
    log.info("queue_leader_stays", queue=queue.name,
             reason="declared before asyncinvoke placed leaders; the broker keeps its leader")


def _clash(kind: str, name: str, exc: Exception) -> ConfigError:
    return ConfigError(
        f"{kind} {name!r} exists with other settings than asyncinvoke declares ({exc}); "
        f"drain and delete it (rabbitmqctl delete_queue / a policy) or use another "
        f"ASYNCINVOKE_NAMESPACE"
    )


def _limited(name: str, exc: Exception) -> ConfigError:
    return ConfigError(
        f"queue {name!r} was declared with a delivery limit, or without one on RabbitMQ 3.x "
        f"({exc}); on RabbitMQ 4.x such a queue drops a record once it was returned 20 times "
        f"(a dlq browse returns it). Move its messages out ('asyncinvoke dlq export FILE' for "
        f"{{ns}}.failed), delete the queue, and start again: it is then declared with "
        f"x-delivery-limit -1"
    )


async def declare(
    channel: aio_pika.abc.AbstractChannel, names: Names, specs: Iterable[FunctionSpec]
) -> None:
    """Declare the namespace, shaped for the version of the broker ``channel`` is on."""
    underlay = await channel.get_underlay_channel()
    version = parse_version(server_version(underlay.connection))
    await apply(channel, core_plan(names, version))
    await apply(channel, functions_plan(names, specs))


def definitions(
    names: Names,
    specs: Iterable[FunctionSpec],
    vhost: str = "/",
    broker_version: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The namespace as a RabbitMQ definitions document, for ``load_definitions`` at boot
    on a broker of ``broker_version`` (3.x when not given)."""
    plans = [core_plan(names, broker_version), functions_plan(names, specs)]
    return {
        "exchanges": [
            {
                "name": exchange.name,
                "vhost": vhost,
                "type": exchange.type,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": exchange.arguments,
            }
            for plan in plans
            for exchange in plan.exchanges
        ],
        "queues": [
            {
                "name": queue.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": queue.arguments,
            }
            for plan in plans
            for queue in plan.queues
        ],
        "bindings": [
            {
                "source": binding.source,
                "vhost": vhost,
                "destination": binding.destination,
                "destination_type": "exchange" if binding.to_exchange else "queue",
                "routing_key": binding.routing_key,
                "arguments": {},
            }
            for plan in plans
            for binding in plan.bindings
        ],
        "policies": [cluster_policy(names, vhost)],
    }


def cluster_policy(names: Names, vhost: str = "/") -> dict[str, Any]:
    """The namespace's policy for a cluster: quorum queue leaders spread over the nodes
    ("balanced") for any queue of the namespace, also one declared without the argument
    (by hand, or by an older asyncinvoke). Priority 0: a policy of your own for these
    queues with a higher priority replaces it, so add ``queue-leader-locator`` to yours."""
    return {
        "name": f"{names.ns}.cluster",
        "vhost": vhost,
        "pattern": f"^{re.escape(names.ns)}\\.",
        "apply-to": "queues",
        "definition": {"queue-leader-locator": "balanced"},
        "priority": 0,
    }


async def delete(connection: aio_pika.abc.AbstractConnection, plan: Plan) -> None:
    """Remove what a plan declares (the tests); missing parts are fine."""
    for queue in plan.queues:
        async with connection.channel() as channel:
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.queue_delete(queue.name)
    for exchange in plan.exchanges:
        async with connection.channel() as channel:
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.exchange_delete(exchange.name)


async def function_exists(
    connection: aio_pika.abc.AbstractConnection | None, names: Names, function: str
) -> bool:
    """Whether ``function`` has a queue in the namespace, asked of the broker (a passive
    declare): the client refuses to invoke, and the dead-letter tool to replay, without one."""
    assert connection is not None, "connect first (use 'async with Client()' or connect())"
    return await queue_depth(connection, names.function_queue(function)) is not None


async def queue_depth(connection: aio_pika.abc.AbstractConnection, queue: str) -> int | None:
    """Messages ready in ``queue``, or None when it does not exist."""
    async with connection.channel() as channel:
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        return declared.declaration_result.message_count
