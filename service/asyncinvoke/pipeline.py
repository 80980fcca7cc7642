"""One delivery's path, from bytes to acknowledgement:

    contract.decode → policy.admit → (task mode: claim) → runners.run → policy.settle
      → destinations / dispatch, each publish confirmed → (task mode: the task's end)
      → ack, only now

Nothing here decides: ``policy`` decides, this module carries it out, in order,
so that a crash at any point leaves the delivery unacknowledged (it runs again)
rather than lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, replace
from typing import Any

from asyncinvoke import _testpoints, contract, dispatch, policy, record_codec, records
from asyncinvoke.acks import Acks
from asyncinvoke.broker import Broker
from asyncinvoke.consumer import Message
from asyncinvoke.contract import Envelope
from asyncinvoke.destinations import Destinations
from asyncinvoke.errors import InvalidMessage
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.metrics import Metrics
from asyncinvoke.observability import get_logger, hot_info
from asyncinvoke.runners import Runner, make_context
from asyncinvoke.settings import Settings
from asyncinvoke.tasks.running import RunningAttempts
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Claim
from asyncinvoke.tasks.tracker import STOPPED_RESULT_DISCARDED, TaskTracker, deaths
from asyncinvoke.topology import Names

log = get_logger(component="worker")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Function:
    spec: FunctionSpec
    runner: Runner
    # Attempts in flight are capped at the function's concurrency here, not by the
    # prefetch: deliveries held for their last fraction of a second must not take the
    # places of those due now (worker.py gives the consumer room for both).
    slots: asyncio.Semaphore


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        names: Names,
        broker: Broker,
        destinations: Destinations,
        tracker: TaskTracker,
        metrics: Metrics,
    ):
        self.settings = settings
        self.names = names
        self.broker = broker
        self.destinations = destinations
        self.tracker = tracker
        self.metrics = metrics
        self.acks = Acks()
        self._counters: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.attempts = RunningAttempts()  # task mode's, so a stop can reach them

    def decode(self, message: Message, received_ms: int) -> Envelope:
        return contract.decode(
            message.body,
            received_at_ms=received_ms,
            max_payload_bytes=self.settings.max_payload_bytes,
            max_delay_s=self.settings.max_delay_s,
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

    async def move_to_suspects(self, message: Message, function: Function) -> None:
        """A redelivery: its worker died (or stopped) while it was in flight. It goes to
        the suspect queue, where it runs alone, so that a message that kills its worker
        takes no innocent attempt down with it again."""
        await self.republish(message, self.names.suspect_queue(function.spec.name))
        log.warning("suspect", function=function.spec.name, message_id=message.message_id)

    async def handle(self, message: Message, function: Function, *, suspect: bool = False) -> None:
        """Carry one delivery through; ``suspect``: it runs alone (the suspect queue's)."""
        spec = function.spec
        received = now_ms()
        try:
            envelope = self.decode(message, received)
            if envelope.fn != spec.name:
                raise InvalidMessage(
                    f"envelope names function {envelope.fn!r} but arrived on the queue of "
                    f"{spec.name!r}; publish with routing key = fn",
                    partial=envelope.to_wire(),
                )
        except InvalidMessage as exc:
            await self.reject_invalid(message, exc, spec.name, spec.task_mode)
            return
        if message.reply_to:
            await self._call(message, envelope, function)
            return
        task_mode = policy.task_mode(envelope, spec)
        decision = policy.admit(envelope, spec, received)
        if type(decision) is policy.Forward:
            if task_mode:
                # A plain producer's invocation is first seen here: its task must exist
                # while it waits in the ladder, or it could not be read or stopped.
                await self.tracker.enqueued(envelope)
            envelope.due_at = envelope.due_at_ms()
            await _testpoints.pause("forward")
            await dispatch.send(self.broker, self.names, envelope)
            self.acks.ack(message)
            log.info(
                "forwarded", invocation_id=envelope.id, function=spec.name, delay_s=decision.delay_s
            )
            return
        if type(decision) is policy.Expire:
            record = records.expired(envelope, decision.age_ms, spec.max_event_age_s, received)
            if task_mode:
                await self.tracker.expired(
                    envelope, received, record["responsePayload"]["errorMessage"]
                )
            await self.destinations.send(record, spec.on_failure)
            self.acks.ack(message)
            self._log_attempt(envelope, contract.EVENT_AGE_EXCEEDED)
            return
        if type(decision) is policy.Hold:
            if task_mode:
                await self.tracker.dequeued(envelope, received, f"due in {decision.ms} ms")
            await _testpoints.pause("hold")
            await asyncio.sleep(decision.ms / 1000)
        if envelope.due_at is not None or envelope.delay:
            self.metrics.delay_lateness.observe(max(0, now_ms() - envelope.due_at_ms()) / 1000)
        if task_mode:
            lease_until = await self._claim(message, envelope, function, suspect)
            if lease_until is None:
                return
            try:
                await self._run_task(message, envelope, function)
            except BaseException as exc:
                # Cut short (shutdown) or not settled (a publish that failed, the store
                # down): this worker lives on, so its claim must not pass for a death.
                # The delivery runs again.
                with contextlib.suppress(Exception):  # the store may be what failed
                    await asyncio.shield(self.tracker.released(
                        envelope, now_ms(), repr(exc), lease_until=lease_until
                    ))
                raise
        else:
            async with function.slots:
                outcome = await function.runner.run(envelope, make_context(envelope, spec))
            await self._settle(message, envelope, spec, outcome, task_mode=False)

    async def _run_task(self, message: Message, envelope: Envelope, function: Function) -> None:
        """Run a claimed task-mode attempt and settle it."""
        async with function.slots:
            outcome, stop_asked = await self.attempts.run(
                envelope.id,
                function.runner.run(envelope, make_context(envelope, function.spec)),
                cancellable=function.runner.cancellable,
            )
        if outcome is None:  # stopped by request while running
            await self.tracker.stopped(envelope, now_ms(), "stopped while running")
            self.acks.ack(message)
            self._log_attempt(envelope, "stopped")
            return
        if stop_asked:  # a sync handler, stopped while it ran on: what it did is discarded
            await self.tracker.stopped(envelope, now_ms(), STOPPED_RESULT_DISCARDED)
            self.acks.ack(message)
            self._log_attempt(envelope, "stopped", outcome)
            return
        await self._settle(message, envelope, function.spec, outcome, task_mode=True)

    async def _settle(
        self,
        message: Message,
        envelope: Envelope,
        spec: FunctionSpec,
        outcome: policy.Outcome,
        *,
        task_mode: bool,
    ) -> None:
        """Send what follows an attempt, record it in its task, then acknowledge it."""
        if outcome.ok and outcome.result is not None and (task_mode or spec.on_success):
            outcome = _checked_result(outcome)
        finished = now_ms()
        settlement = policy.settle(outcome, envelope, spec, finished)
        retry = type(settlement) is policy.Retry
        if task_mode and retry:
            # Before the retry is sent, whose copy may be claimed at once: it must find the
            # task Retrying. A worker that dies in between leaves it so: it runs again.
            task = await self.tracker.settled(envelope, outcome, settlement, finished)
            if task is not None and task.status is Status.STOPPED:
                self.acks.ack(message)
                self._log_attempt(envelope, "stopped", outcome)
                return
        await self._follow_up(envelope, spec, outcome, settlement, finished)
        if task_mode and not retry:
            # An end state only once its record is confirmed: a worker that dies in between
            # leaves the task Running, and the delivery runs again. Written first, it made
            # the delivery's next copy be acknowledged unrun, its record never sent.
            await self.tracker.settled(envelope, outcome, settlement, finished)
        self.acks.ack(message)
        result = (
            settlement.condition
            if type(settlement) is policy.GiveUp
            else ("success" if type(settlement) is policy.Done else "retry")
        )
        self._log_attempt(envelope, result, outcome)

    async def _follow_up(
        self,
        envelope: Envelope,
        spec: FunctionSpec,
        outcome: policy.Outcome,
        settlement: policy.Settlement,
        finished: int,
    ) -> None:
        """Publish what follows an attempt (record or retry) and wait for its confirm."""
        if type(settlement) is policy.Done:
            if spec.on_success is not None:
                await self.destinations.send(
                    records.of_outcome(envelope, outcome, contract.SUCCESS, finished),
                    spec.on_success,
                )
        elif type(settlement) is policy.Retry:
            # A retry is no replay: if the task fails for good meanwhile, a stray copy of
            # this retry must not reopen it.
            retry = replace(
                envelope, attempt=envelope.attempt + 1, due_at=settlement.due_at, replay=False
            )
            await _testpoints.pause("retry")
            await dispatch.send(self.broker, self.names, retry)
        else:
            assert type(settlement) is policy.GiveUp
            await self.destinations.send(
                records.of_outcome(envelope, outcome, settlement.condition, finished),
                spec.on_failure,
            )

    async def _claim(
        self, message: Message, envelope: Envelope, function: Function, suspect: bool
    ) -> int | None:
        """Claim the task: until when the claim holds, or None when this delivery must not
        run (and was settled)."""
        spec = function.spec
        claimed = await self.tracker.claim(envelope, spec, now_ms(), alone=suspect)
        if claimed.claim is Claim.CLAIMED:
            assert claimed.task is not None
            # Deaths are counted in the task's history, so they add up across the
            # deferrals below, each of which sends the delivery on as a new message.
            died = deaths(claimed.task)
            if policy.poisoned(died, spec):
                await self._give_up_poison(message, envelope, spec, died)
                return None
            return claimed.task.lease_until or now_ms()
        if claimed.claim is Claim.ORPHANED:
            # Its last attempt's worker died: this copy (back from a deferral) runs alone.
            await self.move_to_suspects(message, function)
            return None
        if claimed.claim is Claim.BUSY and claimed.task is not None:
            # Another worker runs it now. Come back when its claim runs out: by then it
            # has finished (and this copy is acknowledged) or died (and this copy runs).
            lease_until = claimed.task.lease_until or now_ms()
            # The task is running, so it was reopened already: this copy is a duplicate.
            later = replace(envelope, due_at=lease_until + 1000, replay=False)
            await dispatch.send(self.broker, self.names, later)
            self.acks.ack(message)
            self._log_attempt(envelope, "deferred_duplicate")
            return None
        self.acks.ack(message)
        status = claimed.task.status if claimed.task is not None else "missing"
        self._log_attempt(envelope, f"not_run_task_{status}")
        return None

    async def _give_up_poison(
        self, message: Message, envelope: Envelope, spec: FunctionSpec, died: int
    ) -> None:
        """Its worker died each time it ran: not again. One record, and the task Failed."""
        finished = now_ms()
        record = records.delivery_limit(envelope, died, finished)
        await self.destinations.send(record, spec.on_failure)
        # After the record, as in handle: this delivery's claim holds the task meanwhile.
        await self.task_poisoned(envelope, spec, record)
        self.acks.ack(message)
        self._log_attempt(envelope, contract.DELIVERY_LIMIT_EXCEEDED)

    async def task_poisoned(
        self, envelope: Envelope, spec: FunctionSpec | None, record: dict[str, Any]
    ) -> None:
        """A poison message's task (if in task mode) ends Failed with the record's reason."""
        if policy.task_mode(envelope, spec):
            response = record["responsePayload"]
            await self.tracker.gave_up(
                envelope, contract.DELIVERY_LIMIT_EXCEEDED, response["errorMessage"], now_ms()
            )

    def stop(self, task_id: str) -> bool:
        """Stop a task-mode attempt running here; whether it was here."""
        return self.attempts.stop(task_id)

    async def _call(self, message: Message, envelope: Envelope, function: Function) -> None:
        """A synchronous call: run once, answer the caller, no retries, no destinations."""
        if envelope.reply_by is not None and now_ms() > envelope.reply_by:
            self.acks.ack(message)  # its caller has given up: running it would answer no one
            self._log_attempt(envelope, "caller_gone", sync=True)
            return
        async with function.slots:
            outcome = await function.runner.run(envelope, make_context(envelope, function.spec))
        try:
            body = contract.reply(
                ok=outcome.ok,
                result=outcome.result,
                error=outcome.error,
                function_error=outcome.function_error,
                status_code=outcome.status_code,
            )
        except record_codec.ENCODE_ERRORS as exc:
            body = contract.reply(
                ok=False,
                result=None,
                error={
                    "errorType": "ResultNotSerializable",
                    "errorMessage": str(exc),
                    "stackTrace": [],
                },
                function_error=contract.UNHANDLED,
                status_code=500,
            )
        assert message.reply_to is not None
        # The caller may have given up (its reply queue is gone): not mandatory, not an error.
        await self.broker.publish(
            "", message.reply_to, body, mandatory=False, correlation_id=message.correlation_id
        )
        self.acks.ack(message)
        self._log_attempt(envelope, "success" if outcome.ok else "error", outcome, sync=True)

    async def reject_invalid(
        self, message: Message, exc: InvalidMessage, function: str, task_mode: bool = False
    ) -> None:
        received = now_ms()
        record = records.invalid(
            message.body, exc, function=function, message_id=message.message_id, now_ms=received
        )
        context = record["requestContext"]
        partial = exc.partial or {}
        if (task_mode or partial.get("task") is True) and context["requestId"] == partial.get("id"):
            await self.tracker.invalid(
                context["requestId"], context["functionName"], received, exc.reason
            )
        await self.destinations.to_failed(record)
        self.acks.ack(message)
        self.metrics.count_failure_record(context["functionName"], contract.INVALID_MESSAGE)
        log.warning(
            "invalid_message",
            function=function,
            invocation_id=context["requestId"],
            reason=exc.reason,
        )

    def _log_attempt(
        self,
        envelope: Envelope,
        result: str,
        outcome: policy.Outcome | None = None,
        **extra: Any,
    ) -> None:
        """The one log line of an attempt (and its metrics)."""
        self._observe(envelope.fn, result, outcome)
        fields: dict[str, object] = {
            "component": "worker",
            "invocation_id": envelope.id,
            "function": envelope.fn,
            "attempt": envelope.attempt,
            "outcome": result,
        }
        if outcome is not None:
            fields["duration_ms"] = round(outcome.duration_ms, 3)
            if not outcome.ok:
                error = outcome.error or {}
                fields["error_type"] = error.get("errorType")
                fields["error"] = str(error.get("errorMessage"))[:500]
        if extra:
            fields.update(extra)
        hot_info("attempt", fields)

    def _observe(self, function: str, result: str, outcome: policy.Outcome | None) -> None:
        counters = self._counters.get((function, result))
        if counters is None:  # first time for this pair: look the labelled children up once
            counters = self._counters[(function, result)] = self._children(function, result)
        for counter in counters[1:]:
            counter.inc()
        if outcome is not None:
            counters[0].observe(outcome.duration_ms / 1000)

    def _children(self, function: str, result: str) -> tuple[Any, ...]:
        metrics = self.metrics
        children: list[Any] = [
            metrics.attempt_duration.labels(function),
            metrics.invocations.labels(function, result),
        ]
        if result == "retry":
            children.append(metrics.retries.labels(function))
        elif result in FAILURE_CONDITIONS:
            children.append(metrics.failure_records.labels(function, result))
        return tuple(children)


FAILURE_CONDITIONS = frozenset(contract.CONDITIONS) - {contract.SUCCESS}


def _checked_result(outcome: policy.Outcome) -> policy.Outcome:
    """A result that msgpack cannot carry fails the attempt for good (retrying won't help)."""
    try:
        contract.pack(outcome.result)
    except record_codec.ENCODE_ERRORS as exc:
        return replace(
            outcome,
            ok=False,
            result=None,
            error={
                "errorType": "ResultNotSerializable",
                "errorMessage": f"the handler returned {type(outcome.result).__name__}, which "
                f"msgpack cannot encode ({exc}); return None, bool, numbers, str, bytes, "
                "lists and dicts",
                "stackTrace": [],
            },
            function_error=contract.UNHANDLED,
            status_code=500,
            retryable=False,
        )
    return outcome
