"""What both faces of the gateway do, whatever their shapes: InvokeFunction (async through
the broker, sync through a reply), finding, listing and stopping the tasks of task
mode (FC 2.0's stateful async invocations), and the live configuration's Put, Get, Delete
and List (``ConfigOperations``). The 2023-03-30 routes (``app``, ``configroutes``) and FC
2.0's (``fc2routes``) parse their requests, call these, and shape the answers; triggers
will add their operations here, for both faces.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from asyncinvoke import contract, record_codec
from asyncinvoke.client import CallTimeout, Client, FunctionError, TaskExistsError
from asyncinvoke.clock import new_id
from asyncinvoke.contract import UNHANDLED, ErrorInfo
from asyncinvoke.errors import PayloadTooLarge, PublishInterrupted
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.gateway import fcapi
from asyncinvoke.gateway.fcapi import ASYNC_TASK_ID, REQUEST_ID, EntityTooLarge
from asyncinvoke.liveconfig import model
from asyncinvoke.liveconfig.live import LiveConfig
from asyncinvoke.liveconfig.model import Effective
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Page, Task, TaskFinished

# A sync invocation waits for the function's timeout plus this, for the trip through the
# broker and the reply; after that it is a FunctionTimeout answer, never a hang.
SYNC_MARGIN_S = 5.0
# How long a request waits for the client to fail over to another node before a 503.
FAILOVER_WAIT_S = 5.0


class Operations:
    def __init__(self, client: Client, sync_margin_s: float = SYNC_MARGIN_S):
        self.client = client
        self.sync_margin_s = sync_margin_s

    # -- InvokeFunction ----------------------------------------------------------------

    async def invoke(
        self, spec: FunctionSpec, invocation: fcapi.Invocation, body: bytes
    ) -> web.Response:
        """An InvokeFunction of either face: 202 once the broker took it, or the result."""
        # A failover to another node of the cluster takes a second or two: wait it out.
        if not await self.client.broker.wait_connected(FAILOVER_WAIT_S):
            raise fcapi.ServiceUnavailable("RabbitMQ is not reachable now; try again shortly")
        alarm = self.client.broker.blocked_reason
        if alarm is not None:
            raise fcapi.ServiceUnavailable(
                f"RabbitMQ blocks publishing: resource alarm ({alarm}); the invocation was "
                "not accepted. Try again once the broker's memory or disk alarm clears"
            )
        try:
            if invocation.asynchronous:
                return await self._invoke_async(spec, invocation, body)
            return await self._invoke_sync(spec, body, dict(invocation.meta) or None)
        except PayloadTooLarge as exc:
            raise EntityTooLarge(str(exc)) from None

    async def _invoke_async(
        self, spec: FunctionSpec, invocation: fcapi.Invocation, body: bytes
    ) -> web.Response:
        # A caller-chosen task id means task mode for this invocation (FC's stateful
        # async invocation), whatever the function's setting; FC 2.0's header may also
        # ask for task mode, or refuse it.
        task = invocation.task if invocation.task is not None else spec.task_mode or None
        if invocation.task_id is not None:
            task = True
        try:
            invocation_id = await self._invoke_once_more_on_failover(
                spec.name, body, invocation, task
            )
        except TaskExistsError as exc:
            raise fcapi.Conflict(
                f"{ASYNC_TASK_ID} '{exc.task_id}': {exc}", code="AsyncTaskAlreadyExists"
            ) from None
        return web.Response(status=202, headers={REQUEST_ID: invocation_id})

    async def _invoke_once_more_on_failover(
        self, function: str, body: bytes, invocation: fcapi.Invocation, task: bool | None
    ) -> str:
        """Invoke; should the connection be lost before the confirm, publish once more,
        with the same id, on the node the client fails over to. The first copy may have
        reached the broker: at least once allows that (a task is not sent twice)."""
        invocation_id = invocation.task_id or new_id()
        meta = dict(invocation.meta) or None
        try:
            return await self.client.invoke(
                function, body, delay=invocation.delay_s, id=invocation_id, task=task, meta=meta
            )
        except PublishInterrupted:
            if task or not await self.client.broker.wait_connected(FAILOVER_WAIT_S):
                raise
        return await self.client.invoke(
            function, body, delay=invocation.delay_s, id=invocation_id, task=task, meta=meta
        )

    async def _invoke_sync(
        self, spec: FunctionSpec, body: bytes, meta: dict[str, str] | None
    ) -> web.Response:
        invocation_id = new_id()
        timeout = spec.timeout_s + self.sync_margin_s
        try:
            result = await self.client.call(
                spec.name, body, timeout=timeout, id=invocation_id, meta=meta
            )
        except FunctionError as exc:
            error_type = exc.function_error or UNHANDLED
            return fcapi.function_error_response(invocation_id, exc.info, error_type)
        except CallTimeout:
            raise fcapi.InvocationTimeout(
                f"no reply for invocation {invocation_id} of function '{spec.name}' within "
                f"{timeout:g} s (its timeout + {self.sync_margin_s:g} s): is a worker serving it?"
            ) from None
        try:
            payload, content_type = fcapi.result_body(result)
        except record_codec.ENCODE_ERRORS as exc:
            # msgpack carried a result JSON cannot (bytes map keys, deep nesting): the
            # caller is told so as a function error, not with a 500 and a stack trace.
            error = ErrorInfo.result_not_serializable(
                f"function '{spec.name}' returned a value JSON cannot carry "
                f"({exc}): {record_codec.render(result)}"
            )
            return fcapi.function_error_response(invocation_id, error, UNHANDLED)
        return web.Response(
            status=200,
            body=payload,
            headers={REQUEST_ID: invocation_id, "Content-Type": content_type},
        )

    # -- tasks -------------------------------------------------------------------------

    async def find_task(self, spec: FunctionSpec, task_id: str) -> Task | None:
        """The task ``task_id`` if it is a task of ``spec``'s function."""
        if not contract.ID_RE.fullmatch(task_id):  # no such task; and no NUL for the store
            return None
        store = await self.client.tasks()
        task = await store.get(task_id)
        return task if task is not None and task.function == spec.name else None

    async def list_page(self, spec: FunctionSpec, query: fcapi.ListQuery) -> Page:
        store = await self.client.tasks()
        try:
            page = await store.list(
                function=spec.name,
                status=query.status,
                prefix=query.prefix,
                started_from=query.started_from,
                started_to=query.started_to,
                limit=query.limit,
                next_token=query.next_token,
                newest_first=query.newest_first,
            )
        except ValueError as exc:
            raise fcapi.InvalidArgument(str(exc)) from None
        return page

    async def stop(self, task: Task, finished_code: str) -> None:
        try:
            await self.client.stop_task(task.id)
        except TaskFinished as exc:
            if exc.task.status is not Status.STOPPED:  # stopping a stopped task is no error
                raise fcapi.Conflict(str(exc), code=finished_code) from None


class ConfigOperations:
    """Live configuration (async-invoke config, concurrency) for both faces: bodies are
    validated by ``liveconfig.model`` (an ``InvalidConfig`` is a 400 naming the field and
    its range), an unknown function is a 404, a store that cannot confirm is a 503."""

    def __init__(self, live: LiveConfig):
        self.live = live

    def effective(self, function: str) -> Effective:
        return self.live.effective(function)

    async def put_async_config(
        self, function: str, body: bytes, qualifier: str | None, *, stateful_key: str = ""
    ) -> Effective:
        """PutAsyncInvokeConfig; ``stateful_key``: FC 2.0's name for asyncTask."""
        document = _json_body(body)
        if stateful_key and isinstance(document, dict) and stateful_key in document:
            document = {**document}
            document[model.ASYNC_TASK] = document.pop(stateful_key)
        return await self.live.put_async_config(function, document, qualifier)

    async def delete_async_config(self, function: str, qualifier: str | None) -> None:
        if not await self.live.delete_async_config(function, qualifier):
            raise fcapi.NotFound(
                f"function '{function}' has no async invoke config set through the API "
                "(its functions-file values apply)",
                code="AsyncConfigNotFound",
            )

    def list_async_configs(
        self, function: str | None, limit: str | None, next_token: str | None
    ) -> tuple[list[Effective], str | None]:
        return self.live.list_page(function, _limit(limit), next_token)

    async def put_concurrency(self, function: str, body: bytes) -> Effective:
        return await self.live.put_concurrency(function, _json_body(body))

    async def delete_concurrency(self, function: str) -> None:
        if not await self.live.delete_concurrency(function):
            raise fcapi.NotFound(
                f"function '{function}' has no concurrency config set through the API",
                code="ConcurrencyConfigNotFound",
            )


def _json_body(body: bytes) -> Any:
    try:
        return orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise fcapi.InvalidArgument(f"the body is not JSON: {exc}") from None


def _limit(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6:
        raise fcapi.InvalidArgument(f"limit must be an integer from 1 to 100, got {raw[:20]!r}")
    return int(raw)
