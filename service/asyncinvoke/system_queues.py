"""The system queues' consumers: each message there becomes one failure record.

``{ns}.unrouted`` holds invocations no function queue took (``UnknownFunction``);
``{ns}.dead`` holds deliveries the broker dead-lettered after their delivery limit, poison
messages (``DeliveryLimitExceeded``). A record that cannot be written is tried again; one
that keeps failing is replaced by the minimal record of ``last_resort``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from asyncinvoke import contract, policy, records
from asyncinvoke.clock import now_ms
from asyncinvoke.consumer import Message
from asyncinvoke.contract import Envelope
from asyncinvoke.errors import InvalidMessage, TaskStoreUnavailable
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.last_resort import LastResort
from asyncinvoke.observability import get_logger
from asyncinvoke.pipeline import Pipeline
from asyncinvoke.tasks.mode import NO_TASKS

log = get_logger(component="worker")


class SystemQueues:
    def __init__(
        self,
        pipeline: Pipeline,
        last_resort: LastResort,
        functions: Mapping[str, FunctionSpec],
    ):
        self.pipeline = pipeline
        self.last_resort = last_resort
        self.functions = functions  # every configured function, not only those run here

    async def on_unrouted(self, message: Message) -> None:
        """An invocation no function queue took: an UnknownFunction record."""
        # An invalid one is recorded under the routing key it was published with.
        await self._to_record(
            message, contract.UNKNOWN_FUNCTION, self._unknown_function, message.routing_key or ""
        )

    async def on_dead(self, message: Message) -> None:
        """A delivery the broker dead-lettered after its delivery limit: a poison message."""
        await self._to_record(message, contract.DELIVERY_LIMIT_EXCEEDED, self._poisoned, "")

    async def _unknown_function(self, envelope: Envelope) -> None:
        record = records.unknown_function(envelope, now_ms())
        await self.pipeline.destinations.to_failed(record)
        log.warning("unknown_function", invocation_id=envelope.id, function=envelope.fn)

    async def _poisoned(self, envelope: Envelope) -> None:
        spec = self.functions.get(envelope.fn)
        deliveries = policy.dead_lettered_deliveries(spec)
        record = records.delivery_limit(envelope, deliveries, now_ms())
        tasks = self.pipeline.tasks if policy.task_mode(envelope, spec) else NO_TASKS
        await tasks.poisoned(envelope, record)
        await self.pipeline.destinations.send(record, spec.on_failure if spec else None)
        log.error(
            "attempt",
            invocation_id=envelope.id,
            function=envelope.fn,
            attempt=envelope.attempt,
            outcome=contract.DELIVERY_LIMIT_EXCEEDED,
        )

    async def _to_record(
        self,
        message: Message,
        condition: str,
        write: Callable[[Envelope], Awaitable[None]],
        function_if_invalid: str,
    ) -> None:
        pipeline = self.pipeline
        try:
            try:
                envelope = pipeline.decode(message, now_ms())
            except InvalidMessage as exc:
                await pipeline.reject_invalid(message, exc, function_if_invalid)
                return
            await write(envelope)
            pipeline.ack(message)
            pipeline.journal.failure_record(envelope.fn, condition)
        except Exception as exc:
            await self._failed(message, condition, exc)

    async def _failed(self, message: Message, condition: str, exc: Exception) -> None:
        """The record could not be written: try again, up to a point, then write the minimal
        record that stands in for it (last_resort.py)."""
        # A store outage is waited out, not counted: the record is writable once it ends.
        if isinstance(exc, TaskStoreUnavailable) or not self.last_resort.failed(message):
            await self.pipeline.settle_failed(message, exc)
            return
        try:
            await self.last_resort.write(message, condition, exc)
        except Exception as again:
            await self.pipeline.settle_failed(message, again)
            return
        self.pipeline.ack(message)
