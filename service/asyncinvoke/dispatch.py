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

from asyncinvoke import clock, contract, ladder
from asyncinvoke.broker import Broker
from asyncinvoke.contract import Envelope
from asyncinvoke.topology import Names


async def send(
    broker: Broker, names: Names, envelope: Envelope, body: bytes | None = None
) -> None:
    """Publish ``envelope`` towards its function, through the ladder if it is due later.

    The ladder's seconds are reckoned at the moment of publishing, not when the
    envelope was made: in a burst the two lie a hundred milliseconds and more apart.
    ``body`` is the envelope already encoded, when the caller has it.
    """
    delay_s = ladder.seconds_to_wait(envelope.due_at_ms() - clock.now_ms())
    if body is None:
        body = contract.encode(envelope)
    if delay_s > 0:
        await broker.publish(
            names.level(ladder.entry_level(delay_s)),
            ladder.routing_key(delay_s, envelope.fn),
            body,
            message_id=envelope.id,
        )
    else:
        await broker.publish(names.invoke, envelope.fn, body, message_id=envelope.id)
