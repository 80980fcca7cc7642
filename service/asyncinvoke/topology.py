"""Every exchange and queue name, with its arguments, in one place; declare and show.

    {ns}.invoke ─(fn)─► {ns}.fn.<fn> ◄─(#.fn)─ {ns}.delay.deliver ◄─ {ns}.delay.00 ◄ … .16
        │ alternate                                │ alternate
        └──────────► {ns}.unrouted ◄───────────────┘   (worker: UnknownFunction records)
    {ns}.fn.<fn> ─(delivery limit)─► {ns}.dead          (worker: DeliveryLimitExceeded records)
    {ns}.failed (topic, key = fn) ─(#)─► {ns}.failed    (the failure-destination queue)

Quorum queues everywhere: replicated on a cluster, at-least-once dead-lettering,
and a delivery limit for poison messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq

from asyncinvoke import ladder
from asyncinvoke.errors import ConfigError
from asyncinvoke.functions import FunctionSpec

QUORUM = {"x-queue-type": "quorum"}
AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
DIRECT, TOPIC, FANOUT = "direct", "topic", "fanout"


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


def core_plan(names: Names) -> Plan:
    """What every namespace has, whatever its functions."""
    exchanges = [
        ExchangeDecl(names.unrouted, FANOUT),
        ExchangeDecl(names.dead, FANOUT),
        ExchangeDecl(names.failed, TOPIC),
        ExchangeDecl(names.control, FANOUT),
        ExchangeDecl(names.invoke, DIRECT, {"alternate-exchange": names.unrouted}),
        ExchangeDecl(names.deliver, TOPIC, {"alternate-exchange": names.unrouted}),
    ]
    queues = [
        QueueDecl(names.unrouted, dict(QUORUM)),
        QueueDecl(names.dead, dict(QUORUM)),
        QueueDecl(names.failed, dict(QUORUM)),
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
    """Declare a plan idempotently; a clash with what exists is a ConfigError that says why."""
    for exchange in plan.exchanges:
        try:
            await channel.declare_exchange(
                exchange.name, exchange.type, durable=True, arguments=exchange.arguments
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise _clash("exchange", exchange.name, exc) from None
    for queue in plan.queues:
        try:
            await channel.declare_queue(queue.name, durable=True, arguments=queue.arguments)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
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


def _clash(kind: str, name: str, exc: Exception) -> ConfigError:
    return ConfigError(
        f"{kind} {name!r} exists with other settings than asyncinvoke declares ({exc}); "
        f"drain and delete it (rabbitmqctl delete_queue / a policy) or use another "
        f"ASYNCINVOKE_NAMESPACE"
    )


async def declare(
    channel: aio_pika.abc.AbstractChannel, names: Names, specs: Iterable[FunctionSpec]
) -> None:
    await apply(channel, core_plan(names))
    await apply(channel, functions_plan(names, specs))


def definitions(names: Names, specs: Iterable[FunctionSpec], vhost: str = "/") -> dict[str, Any]:
    """The namespace as a RabbitMQ definitions document, for ``load_definitions`` at boot."""
    plans = [core_plan(names), functions_plan(names, specs)]
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
    }


async def delete(connection: aio_pika.abc.AbstractConnection, plan: Plan) -> None:
    """Remove what a plan declares (tests and ``topology delete``); missing parts are fine."""
    for queue in plan.queues:
        async with connection.channel() as channel:
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.queue_delete(queue.name)
    for exchange in plan.exchanges:
        async with connection.channel() as channel:
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.exchange_delete(exchange.name)


async def queue_depth(connection: aio_pika.abc.AbstractConnection, queue: str) -> int | None:
    """Messages ready in ``queue``, or None when it does not exist."""
    async with connection.channel() as channel:
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        return declared.declaration_result.message_count
