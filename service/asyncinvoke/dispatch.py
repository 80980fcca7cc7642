"""Where an invocation goes next: its function's queue now, or the delay ladder.

Used by the client (``invoke``, ``invoke_many``), by the pipeline (forwarding a delayed
invocation a plain producer sent, scheduling a retry, deferring a copy of a task another
worker runs), by a function destination, and by ``dlq replay``. Whole seconds wait in
the ladder, ending at least ``ladder.LEAD_MS`` before the due time; the rest is held
by the worker that receives it (``policy.Hold``), so an invocation is never early, and
the broker's latency along the ladder does not make it late.
Every message is built anew from the envelope: broker headers such as
``x-death`` are never carried over, so RabbitMQ's dead-letter cycle detection
cannot drop a republished message.
"""

from __future__ import annotations

from asyncinvoke import clock, contract, ladder, tracing
from asyncinvoke.broker import Broker
from asyncinvoke.contract import Envelope
from asyncinvoke.topology import Names


async def send(
    broker: Broker, names: Names, envelope: Envelope, body: bytes | None = None
) -> None:
    """Publish ``envelope`` towards its function, through the ladder if it is due later.

    The ladder's seconds are reckoned at the moment of publishing, not when the
    envelope was made: in a burst the two lie a hundred milliseconds and more apart.
    ``body`` is the envelope already encoded, when the caller has it; a caller that
    encodes it has put the trace context in its meta and holds the publish span itself
    (``tracing.publishing``). Otherwise this publish is a span, and the envelope sent
    carries it: a retry, a forward, a deferral, a replay.
    """
    delay_s = ladder.seconds_to_wait(envelope.due_at_ms() - clock.now_ms())
    if delay_s > 0:
        exchange = names.level(ladder.entry_level(delay_s))
        routing_key = ladder.routing_key(delay_s, envelope.fn)
    else:
        exchange, routing_key = names.invoke, envelope.fn
    if body is not None:
        await broker.publish(exchange, routing_key, body, message_id=envelope.id)
        return
    with tracing.publishing(exchange, routing_key, envelope):
        body = contract.encode(tracing.traced(envelope))
        await broker.publish(exchange, routing_key, body, message_id=envelope.id)
