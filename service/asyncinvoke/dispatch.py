"""Where an invocation goes next: its function's queue now, or the delay ladder.

Used by the client (first publish), and by the worker (forwarding a delayed
invocation a plain producer sent, and scheduling a retry). Whole seconds wait in
the ladder; a sub-second remainder is held by the worker that receives it
(``policy.Hold``), so an invocation is never early and never a second late.
Every message is built anew from the envelope: broker headers such as
``x-death`` are never carried over, so RabbitMQ's dead-letter cycle detection
cannot drop a republished message.
"""

from __future__ import annotations

from asyncinvoke import contract, ladder
from asyncinvoke.broker import Broker
from asyncinvoke.contract import Envelope
from asyncinvoke.topology import Names


def ladder_seconds(envelope: Envelope, now_ms: int) -> int:
    """Whole seconds this invocation should wait in the ladder from now.

    Capped at the ladder's reach: anything due later comes out and goes round again.
    """
    whole_s, _ = ladder.split_ms(envelope.due_at_ms() - now_ms)
    return min(whole_s, ladder.MAX_DELAY_S)


async def send(
    broker: Broker, names: Names, envelope: Envelope, now_ms: int, body: bytes | None = None
) -> None:
    """Publish ``envelope`` towards its function, through the ladder if it is due later.

    ``body`` is the envelope already encoded, when the caller has it.
    """
    delay_s = ladder_seconds(envelope, now_ms)
    if body is None:
        body = contract.encode(envelope)
    if delay_s > 0:
        await broker.publish(
            names.ladder_entry,
            ladder.routing_key(delay_s, envelope.fn),
            body,
            message_id=envelope.id,
        )
    else:
        await broker.publish(names.invoke, envelope.fn, body, message_id=envelope.id)
