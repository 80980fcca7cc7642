"""One delivery's path, from bytes to acknowledgement, and every way it is settled:

    receive: a redelivery this worker settled already? a suspect? → handle
    handle:  contract.decode → policy.admit → task claim → runner → policy.settle
             → follow-up (retry, record, destination), confirmed → task end → ack

Nothing here decides: ``policy`` decides, ``tasks.mode`` answers for task mode, and
this module carries it out in order, so that a crash at any point leaves the delivery
unacknowledged (it runs again) rather than lost. Every ack and nack of a delivery is
given here, through ``acks``; the worker never touches a delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import aiormq

from asyncinvoke import _testpoints, contract, dispatch, policy, record_codec, records, tracing
from asyncinvoke.acks import Acks, lingering_acks
from asyncinvoke.broker import Broker
from asyncinvoke.clock import now_ms
from asyncinvoke.consumer import Callback, Message
from asyncinvoke.contract import Envelope, ErrorInfo, Outcome, Reply
from asyncinvoke.destinations import Destinations
from asyncinvoke.errors import FunctionPaused, InvalidMessage, TaskStoreUnavailable
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.gate import Gate
from asyncinvoke.journal import Journal
from asyncinvoke.observability import get_logger
from asyncinvoke.redelivery import VOUCH_WAIT_S, Redeliveries
from asyncinvoke.runners import Runner, make_context
from asyncinvoke.settings import Settings
from asyncinvoke.slots import Slots
from asyncinvoke.tasks import mode
from asyncinvoke.tasks.mode import NO_TASKS, TaskMode
from asyncinvoke.tasks.tracker import STOPPED_RESULT_DISCARDED
from asyncinvoke.topology import Names

SETTLE_RETRY_PAUSE_S = 1.0

log = get_logger(component="worker")


@dataclass(slots=True)
class Function:
    # The configuration in force now: the functions file's, with the live configuration
    # over it (liveconfig), replaced as it changes. An attempt takes it once, when it
    # starts, and runs and settles under that one (``version``: 0 for the file alone).
    spec: FunctionSpec
    runner: Runner
    # Attempts in flight are capped at the function's concurrency here, not by the
    # prefetch: deliveries held for their last fraction of a second must not take the
    # places of those due now (worker.prefetch_for gives the consumer room for both).
    slots: Slots
    version: int = 0
    paused: bool = False  # reservedConcurrency 0: nothing starts; deliveries go back


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        names: Names,
        broker: Broker,
        destinations: Destinations,
        tasks: TaskMode,
        journal: Journal,
        acks: Acks,
        barrier: Callable[[], Awaitable[None]],
    ):
        self.settings = settings
        self.names = names
        self.broker = broker
        self.destinations = destinations
        self.tasks = tasks
        self.journal = journal
        self.acks = acks
        self.barrier = barrier  # returns once the broker has every ack sent so far
        # Each delivery being handled, with the queue it came from.
        self.in_flight: dict[asyncio.Task[Any], tuple[Message, str]] = {}
        self.redeliveries = Redeliveries()
        self.gate = Gate()

    # -- receiving ---------------------------------------------------------------------

    def consumer(self, function: Function, queue: str, *, suspect: bool = False) -> Callback:
        """The callback of a function's queue, or (``suspect``) of its suspect queue."""
        in_flight = self.journal.metrics.in_flight.labels(function.spec.name)

        async def on_message(message: Message) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.in_flight[task] = (message, queue)
            in_flight.inc()
            settled = False
            try:
                settled = await self._receive(message, function, suspect)
            except asyncio.CancelledError:
                raise  # shutdown: left unacknowledged, closing the channel requeues it
            except TaskStoreUnavailable as exc:
                settled = await self.store_unavailable(message, queue, exc)
            except Exception as exc:
                await self.settle_failed(message, exc)
            finally:
                tracing.finish_delivery(settled)
                self.redeliveries.ended(message, settled)
                self.in_flight.pop(task, None)
                in_flight.dec()

        return on_message

    async def _receive(self, message: Message, function: Function, suspect: bool) -> bool:
        known = None  # True: settled already; False: handled, not settled; None: unknown
        if message.redelivered:
            known = await self.redeliveries.outcome(message, self._running())
            if known:
                # Handled and settled here; only its ack was lost with a connection.
                self.acks.ack(message)
                log.info("redelivery_already_settled", message_id=message.message_id)
                return True
        vouched = None  # what another worker, alive, said of it (redelivery.py)
        if known is None and suspect:
            vouched = self.redeliveries.vouched(message)  # it may come after the move
            if vouched is None:
                async with self.gate.exclusive():
                    # Acknowledgements of the attempts that just ended must reach the
                    # broker before a suspect runs: if it kills the process, they would
                    # otherwise be redelivered and run again.
                    await self.barrier()
                    await self.handle(message, function, suspect=True)
                return True
        elif known is None and message.redelivered:
            vouched = await self.redeliveries.wait_for_voucher(message, VOUCH_WAIT_S)
            if vouched is None:
                async with self.gate.shared():
                    await self.move_to_suspects(message, function)
                return True
        if vouched:
            # Settled by the worker that held it; its ack was lost with its connection.
            self.acks.ack(message)
            log.info("redelivery_settled_elsewhere", message_id=message.message_id)
            return True
        if vouched is False:
            # Handled by a worker that is alive (it said so): no suspect, it runs again.
            log.info("redelivery_vouched", message_id=message.message_id)
        async with self.gate.shared():
            await self.handle(message, function)
        return True

    def _running(self) -> Iterable[tuple[asyncio.Task[Any], Message]]:
        return ((task, message) for task, (message, _) in self.in_flight.items())

    # -- one delivery ------------------------------------------------------------------

    async def handle(self, message: Message, function: Function, *, suspect: bool = False) -> None:
        """Carry one delivery through; ``suspect``: it runs alone (the suspect queue's)."""
        spec = function.spec
        received = now_ms()
        envelope = await self._decoded(message, spec)
        if envelope is None:
            return
        tracing.start_process(envelope, self.names, received, len(message.body))
        if function.paused:
            await self._return_paused(message, function, suspect)
            return
        if message.reply_to:
            await self._call(message, envelope, function)
            return
        tasks = self.tasks if policy.task_mode(envelope, spec) else NO_TASKS
        match policy.admit(envelope, spec, received):
            case policy.Forward(delay_s):
                await tasks.forwarded(envelope)
                await self._forward(message, envelope, delay_s)
                return
            case policy.Expire(age_ms):
                await self._expire(message, envelope, spec, tasks, age_ms, received)
                return
            case policy.Hold(ms):
                await tasks.held(envelope, received, ms)
                await _testpoints.pause("hold")
                await asyncio.sleep(ms / 1000)
        self.journal.lateness(envelope)
        claimed = await self._claim(message, envelope, function, tasks, suspect)
        if claimed is None:
            return
        try:
            await self._attempt(message, envelope, function, tasks)
        except FunctionPaused:
            await tasks.released(envelope, "function paused", claimed.lease_until)
            await self._return_paused(message, function, suspect)
        except BaseException as exc:
            # Cut short (shutdown) or not settled (a publish that failed, the store down):
            # the delivery runs again.
            await tasks.released(envelope, repr(exc), claimed.lease_until)
            raise

    async def _decoded(self, message: Message, spec: FunctionSpec) -> Envelope | None:
        """The envelope, or None once an invalid message was recorded and acknowledged."""
        try:
            envelope = self.decode(message, now_ms())
            if envelope.fn != spec.name:
                raise InvalidMessage(
                    f"envelope names function {envelope.fn!r} but arrived on the queue of "
                    f"{spec.name!r}; publish with routing key = fn",
                    partial=envelope.to_wire(),
                )
        except InvalidMessage as exc:
            await self.reject_invalid(message, exc, spec.name, spec.task_mode)
            return None
        return envelope

    def decode(self, message: Message, received_ms: int) -> Envelope:
        return contract.decode(
            message.body,
            received_at_ms=received_ms,
            max_payload_bytes=self.settings.max_payload_bytes,
            max_delay_s=self.settings.max_delay_s,
        )

    async def _forward(self, message: Message, envelope: Envelope, delay_s: int) -> None:
        envelope.due_at = envelope.due_at_ms()
        await _testpoints.pause("forward")
        await dispatch.send(self.broker, self.names, envelope)
        self.acks.ack(message)
        log.info("forwarded", invocation_id=envelope.id, function=envelope.fn, delay_s=delay_s)
        tracing.forwarded(delay_s)

    async def _expire(
        self,
        message: Message,
        envelope: Envelope,
        spec: FunctionSpec,
        tasks: TaskMode,
        age_ms: int,
        now: int,
    ) -> None:
        record = records.expired(envelope, age_ms, spec.max_event_age_s, now)
        await tasks.expired(envelope, now, record.error_message)
        await self.destinations.send(record, spec.on_failure)
        self.acks.ack(message)
        self.journal.attempt(envelope, contract.EVENT_AGE_EXCEEDED)

    async def _claim(
        self,
        message: Message,
        envelope: Envelope,
        function: Function,
        tasks: TaskMode,
        suspect: bool,
    ) -> mode.Claimed | None:
        """The claim to run this attempt, or None when the delivery must not run here (and
        was settled)."""
        match await tasks.admit(envelope, function.spec, alone=suspect):
            case mode.Claimed() as claimed:
                return claimed
            case mode.Poisoned(died):
                await self._give_up_poison(message, envelope, function.spec, tasks, died)
            case mode.Orphaned():
                # Its last attempt's worker died: this copy (back from a deferral) runs alone.
                await self.move_to_suspects(message, function)
            case mode.Busy(retry_at):
                # Another worker runs it now. By ``retry_at`` it has finished (and this
                # copy is acknowledged) or died (and this copy runs). The task is running,
                # so it was reopened already: this copy is no replay.
                await dispatch.send(
                    self.broker, self.names, replace(envelope, due_at=retry_at, replay=False)
                )
                self.acks.ack(message)
                self.journal.attempt(envelope, "deferred_duplicate")
            case mode.NotRun(status):
                self.acks.ack(message)
                self.journal.attempt(envelope, f"not_run_task_{status}")
        return None

    async def _attempt(
        self, message: Message, envelope: Envelope, function: Function, tasks: TaskMode
    ) -> None:
        """Run the attempt, then settle it, under the configuration in force when it
        started (taken once, with its slot)."""
        async with function.slots:
            if function.paused:
                raise FunctionPaused
            spec, version = function.spec, function.version
            outcome, stop_asked = await tasks.run(
                envelope,
                function.runner.run(envelope, make_context(envelope, spec)),
                cancellable=function.runner.cancellable,
            )
        if outcome is None or stop_asked:
            # Stopped by request while it ran; a sync handler's result is discarded.
            detail = "stopped while running" if outcome is None else STOPPED_RESULT_DISCARDED
            await tasks.stopped(envelope, detail)
            self.acks.ack(message)
            self.journal.attempt(envelope, "stopped", outcome, config_version=version)
            return
        if outcome.ok and outcome.result is not None and (tasks is not NO_TASKS or spec.on_success):
            outcome = _checked_result(outcome)
        finished = now_ms()
        settlement = policy.settle(outcome, envelope, spec, finished)
        if await tasks.before_follow_up(envelope, outcome, settlement, finished):
            self.acks.ack(message)  # stopped meanwhile: its retry is not sent
            self.journal.attempt(envelope, "stopped", outcome, config_version=version)
            return
        await self._follow_up(envelope, spec, outcome, settlement, finished, version)
        await tasks.after_follow_up(envelope, outcome, settlement, finished)
        # Where the runner allows it, the ack may wait to share a frame; the prefetch has
        # room for those waiting (acks.lingering_acks, worker.prefetch_for).
        linger = lingering_acks(function.slots.limit) if function.runner.ack_linger else 0
        self.acks.ack(message, linger_below=linger)
        self.journal.settled(envelope, settlement, outcome, config_version=version)

    async def _follow_up(
        self,
        envelope: Envelope,
        spec: FunctionSpec,
        outcome: Outcome,
        settlement: policy.Settlement,
        finished: int,
        version: int = 0,
    ) -> None:
        """Publish what follows an attempt (record or retry) and wait for its confirm; a
        record names the configuration version the attempt ran under."""
        match settlement:
            case policy.Done():
                if spec.on_success is not None:
                    record = records.of_outcome(envelope, outcome, contract.SUCCESS, finished)
                    record = replace(record, config_version=version)
                    await self.destinations.send(record, spec.on_success)
            case policy.Retry(due_at):
                # A retry is no replay: if the task fails for good meanwhile, a stray copy
                # of this retry must not reopen it.
                retry = replace(envelope, attempt=envelope.attempt + 1, due_at=due_at,
                                replay=False)
                await _testpoints.pause("retry")
                await dispatch.send(self.broker, self.names, retry)
            case policy.Throttle():
                # The function was busy: the same attempt again later, on its own budget.
                await dispatch.send(self.broker, self.names, settlement.next_envelope(envelope))
            case policy.GiveUp(condition):
                record = records.of_outcome(envelope, outcome, condition, finished)
                record = replace(record, config_version=version)
                await self.destinations.send(record, spec.on_failure)

    async def _give_up_poison(
        self, message: Message, envelope: Envelope, spec: FunctionSpec, tasks: TaskMode,
        died: int,
    ) -> None:
        """Its worker died each time it ran: not again. One record, and the task Failed."""
        record = records.delivery_limit(envelope, died, now_ms())
        await self.destinations.send(record, spec.on_failure)
        # After the record, as in handle: this delivery's claim holds the task meanwhile.
        await tasks.poisoned(envelope, record)
        self.acks.ack(message)
        self.journal.attempt(envelope, contract.DELIVERY_LIMIT_EXCEEDED)

    async def _call(self, message: Message, envelope: Envelope, function: Function) -> None:
        """A synchronous call: run once, answer the caller, no retries, no destinations."""
        if policy.caller_gone(envelope, now_ms()):
            self.acks.ack(message)
            self.journal.attempt(envelope, "caller_gone", sync=True)
            return
        async with function.slots:
            outcome = await function.runner.run(envelope, make_context(envelope, function.spec))
        try:
            body = contract.pack(Reply.of(outcome).to_wire())
        except record_codec.ENCODE_ERRORS as exc:
            unsendable = Reply(
                ok=False,
                error=ErrorInfo.result_not_serializable(str(exc)),
                function_error=contract.UNHANDLED,
                status_code=500,
            )
            body = contract.pack(unsendable.to_wire())
        assert message.reply_to is not None
        # The caller may have given up (its reply queue is gone): not mandatory, not an error.
        await self.broker.publish(
            "", message.reply_to, body, mandatory=False, correlation_id=message.correlation_id
        )
        self.acks.ack(message)
        self.journal.attempt(envelope, "success" if outcome.ok else "error", outcome, sync=True)

    # -- other ways to settle a delivery -----------------------------------------------

    def ack(self, message: Message) -> None:
        """``message`` is settled: everything that follows from it was confirmed."""
        self.acks.ack(message)

    async def reject_invalid(
        self, message: Message, exc: InvalidMessage, function: str, task_mode: bool = False
    ) -> None:
        """A message that breaks the contract: its record, and its task Invalid."""
        received = now_ms()
        record = records.invalid(
            message.body, exc, function=function, message_id=message.message_id, now_ms=received
        )
        partial = exc.partial or {}
        if (task_mode or partial.get("task") is True) and record.request_id == partial.get("id"):
            await self.tasks.invalid(record.request_id, record.function, received, exc.reason)
        await self.destinations.to_failed(record)
        self.acks.ack(message)
        self.journal.failure_record(record.function, contract.INVALID_MESSAGE)
        log.warning(
            "invalid_message",
            function=function,
            invocation_id=record.request_id,
            reason=exc.reason,
        )

    async def republish(self, message: Message, queue: str) -> None:
        """Put a delivery into ``queue`` as a new message (confirmed), then acknowledge it."""
        await self.broker.publish(
            "",
            queue,
            message.body,
            message_id=message.message_id,
            reply_to=message.reply_to,
            correlation_id=message.correlation_id,
        )
        self.acks.ack(message)

    async def _return_paused(self, message: Message, function: Function, suspect: bool) -> None:
        """The function is paused: its consumer is (being) cancelled, and what it had
        received goes back to its queue as new messages, to wait there for the resume."""
        name = function.spec.name
        queue = self.names.suspect_queue(name) if suspect else self.names.function_queue(name)
        await self.republish(message, queue)
        log.info("returned_paused", function=name, message_id=message.message_id)

    async def move_to_suspects(self, message: Message, function: Function) -> None:
        """A redelivery: its worker died (or stopped) while it was in flight. It goes to
        the suspect queue, where it runs alone, so that a message that kills its worker
        takes no innocent attempt down with it again."""
        await self.republish(message, self.names.suspect_queue(function.spec.name))
        log.warning("suspect", function=function.spec.name, message_id=message.message_id)

    async def settle_failed(self, message: Message, exc: Exception) -> None:
        """What follows from a delivery could not be confirmed: return it, to try again."""
        log.error(
            "settle_failed",
            error=str(exc),
            error_type=type(exc).__name__,
            message_id=message.message_id,
        )
        await asyncio.sleep(SETTLE_RETRY_PAUSE_S)
        # A channel that is gone returns the delivery by itself.
        with contextlib.suppress(aiormq.exceptions.AMQPError, RuntimeError):
            await self.acks.nack(message)

    async def store_unavailable(
        self, message: Message, queue: str, exc: TaskStoreUnavailable
    ) -> bool:
        """The task store stayed down for ASYNCINVOKE_TASK_STORE_RETRY. The delivery goes
        back to its queue as a new message: a redelivery would make it a suspect, and its
        worker did not die of it. Whether it was settled."""
        log.warning("task_store_unavailable_returned", message_id=message.message_id,
                    queue=queue, error=str(exc))
        # Not straight back: with a short ASYNCINVOKE_TASK_STORE_RETRY that would spin.
        await asyncio.sleep(SETTLE_RETRY_PAUSE_S)
        try:
            await self.republish(message, queue)
        except Exception as publish_exc:
            await self.settle_failed(message, publish_exc)
            return False
        return True

    async def return_unfinished(self, grace_s: float) -> None:
        """At shutdown: wait up to ``grace_s`` for the deliveries in flight, then put the
        rest back in their queues as new messages, and send every ack noted.

        A plain requeue would mark them redelivered, and a redelivery is treated as a
        suspect (run alone, one at a time). These are known innocent, so they go back
        fresh: published (confirmed), then acknowledged. Any that cannot be are returned
        by closing the connection, as suspects.
        """
        if self.in_flight:
            _, pending = await asyncio.wait(set(self.in_flight), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                unsettled = [self.in_flight[task] for task in pending if task in self.in_flight]
                await asyncio.wait(pending, timeout=5)
                returned = 0
                for message, queue in unsettled:
                    try:
                        await self.republish(message, queue)
                        returned += 1
                    except Exception as exc:
                        log.warning("return_failed", message_id=message.message_id,
                                    error=str(exc))
                log.warning("returned_to_queue", count=len(unsettled), fresh=returned)
        # The acks noted so far go out before the connection closes (that returns every
        # unacknowledged delivery to its queue).
        with contextlib.suppress(Exception):
            await self.barrier()


def _checked_result(outcome: Outcome) -> Outcome:
    """A result that msgpack cannot carry fails the attempt for good (retrying won't help)."""
    try:
        contract.pack(outcome.result)
    except record_codec.ENCODE_ERRORS as exc:
        return replace(
            outcome,
            ok=False,
            result=None,
            error=ErrorInfo.result_not_serializable(
                f"the handler returned {type(outcome.result).__name__}, which "
                f"msgpack cannot encode ({exc}); return None, bool, numbers, str, bytes, "
                "lists and dicts"
            ),
            function_error=contract.UNHANDLED,
            status_code=500,
            retryable=False,
        )
    return outcome
