"""The HTTP gateway: Function Compute's OpenAPI (2023-03-30 subset) over asyncinvoke,
and FC 2.0's (2016-08-15, 2021-04-06: ``fc2routes``) over the same implementation.

One ``Client`` (one broker connection) serves every request. Async invocations
are answered 202 only after the broker confirmed them; sync invocations go through
RabbitMQ too (``Client.call``, direct reply-to) and the worker that runs one replies.
What is fixed for the process (functions, keys) is read once at start; the functions'
policy is the functions file's with the namespace's live configuration over it
(``liveconfig``, read from the configuration store and followed while it runs).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import uuid4

import orjson
from aiohttp import web
from prometheus_client import Counter

from asyncinvoke import topology, tracing
from asyncinvoke.client import Client
from asyncinvoke.clock import now_ms
from asyncinvoke.console.app import Console
from asyncinvoke.docstore import DocumentStore
from asyncinvoke.functions import FunctionsFile, FunctionSpec
from asyncinvoke.gateway import fc2api, fcapi, local
from asyncinvoke.gateway.auth import SignedRequest, Verifier, refuse_replay
from asyncinvoke.gateway.auth2 import Fc2Verifier
from asyncinvoke.gateway.configroutes import ConfigRoutes
from asyncinvoke.gateway.fc2routes import INVOKE_ROUTES, Fc2Routes
from asyncinvoke.gateway.fcapi import (
    JSON,
    REQUEST_ID,
    FcError,
)
from asyncinvoke.gateway.operations import SYNC_MARGIN_S, ConfigOperations, Operations
from asyncinvoke.gateway.triggerroutes import TriggerRoutes
from asyncinvoke.liveconfig.live import LiveConfig
from asyncinvoke.metrics import Metrics, health_routes
from asyncinvoke.observability import get_logger
from asyncinvoke.settings import Settings
from asyncinvoke.systemd import Notifier, supervised
from asyncinvoke.tasks.store import Task
from asyncinvoke.triggers.stored import TriggerStore

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000
LOOPBACK = "127.0.0.1"
log = get_logger(component="gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Gateway:
    def __init__(
        self,
        settings: Settings,
        functions_file: FunctionsFile,
        access_keys: dict[str, str],
        *,
        metrics: Metrics | None = None,
        ready: Callable[[], bool] | None = None,
        sync_margin_s: float = SYNC_MARGIN_S,
    ):
        self.settings = settings
        self.specs: dict[str, FunctionSpec] = dict(functions_file.functions)
        self.names = topology.Names(settings.namespace)
        self.client = Client(settings=settings)
        self.operations = Operations(self.client, sync_margin_s)
        # The namespace's live configuration and triggers, read whole at start.
        self.store = DocumentStore(self.client.broker, self.names)
        self.live = LiveConfig(self.store, functions_file)
        self.config = ConfigOperations(self.live)
        self.triggers = TriggerStore(
            self.store, [trigger for spec in self.specs.values() for trigger in spec.triggers]
        )
        self.verifier = Verifier(access_keys) if access_keys else None
        self.fc2_verifier = Fc2Verifier(access_keys) if access_keys else None
        self.config_modified_ms = _modified_ms(functions_file.path)
        self.metrics = metrics or Metrics()
        if metrics is None:
            self.metrics.watch_broker(self.client.broker)
        self.requests = Counter(
            "asyncinvoke_gateway_requests",
            "HTTP requests by operation and status.",
            ["operation", "status"],
            registry=self.metrics.registry,
        )
        self._also_ready = ready
        self.console = Console(
            settings,
            self.client,
            {name: fcapi.shown_policy(spec) for name, spec in self.specs.items()},
            functions_file.path,
            access_keys,
            self.metrics,
            counts_worker=metrics is not None,  # serve shares its worker's metrics
            live=self.live,
            shown=fcapi.shown_policy,
        )
        self._runner: web.AppRunner | None = None
        self.host = ""
        self.port = 0
        self.app = self._make_app()

    # -- start and stop ----------------------------------------------------------------

    async def start(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        if self.verifier is None and not local.is_loopback(host):
            log.warning(
                "gateway_loopback_only",
                requested_host=host,
                reason="no access keys: set ASYNCINVOKE_ACCESS_KEYS or "
                "ASYNCINVOKE_ACCESS_KEYS_FILE to accept requests from other hosts",
            )
            host = LOOPBACK
        await self.client.connect()
        # Declared here too, so invocations are kept even before any worker started.
        await topology.declare(self.client.broker.publisher, self.names, self.specs.values())
        await self.store.start()
        for name in self.specs:
            await self.client.ensure_function(name)
        # Once, before any request: two first sync calls at once would both subscribe.
        await self.client.prepare_calls()
        if self.verifier is not None or any(spec.task_mode for spec in self.specs.values()):
            # A bad ASYNCINVOKE_TASK_STORE fails at start. With keys the store is needed
            # for every request: it keeps the signature nonces (auth.refuse_replay).
            await self.client.tasks()
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=self.settings.shutdown_grace_s
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.console.start()
        self.host, self.port = host, self._bound_port(port)
        # What start-up made lives as long as the process: keep it out of the collector's
        # full passes, which otherwise show up as pauses in the request latency's tail.
        gc.freeze()
        log.info(
            "gateway_started",
            url=self.url,
            namespace=self.names.ns,
            functions=sorted(self.specs),
            services=sorted({spec.service for spec in self.specs.values()}),
            authentication=(
                f"ACS3-HMAC-SHA256 ({self.verifier.key_count} access keys)"
                if self.verifier is not None
                else "off: no access keys configured, listening on loopback only"
            ),
        )

    def _bound_port(self, requested: int) -> int:
        assert self._runner is not None
        for address in self._runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                return int(address[1])
        return requested

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def ready(self) -> bool:
        """Listening, connected to the broker, the task store up (if it is used), and in
        ``serve`` the worker ready."""
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        """Why the gateway cannot do its work now (what /readyz lists); empty when it can."""
        reasons = []
        if self._runner is None:
            reasons.append("not listening")
        if not self.client.broker.is_connected:
            reasons.append("RabbitMQ: not connected")
        if self.client.task_store_outage is not None:
            reasons.append(f"task store: {self.client.task_store_outage}")
        if self.store.problem is not None:
            reasons.append(f"live configuration: {self.store.problem}")
        if self._also_ready is not None and not self._also_ready():
            reasons.append("worker: not ready")
        return reasons

    async def stop(self) -> None:
        """Stop listening; requests in flight finish (within the shutdown grace)."""
        await self.console.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.live.close()
        await self.store.close()
        await self.client.close()
        log.info("gateway_stopped")

    # -- routes ------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_payload_bytes,
            middlewares=[self._middleware],
        )
        base = fcapi.API_PREFIX + "/{fn}"
        app.add_routes(
            [
                *Fc2Routes(self).routes(),
                *TriggerRoutes(self, self.triggers).routes(),
                web.post(base + "/invocations", self.invoke, name="InvokeFunction"),
                web.get(base + "/async-tasks", self.list_tasks, name="ListAsyncTasks"),
                web.get(base + "/async-tasks/{task_id}", self.get_task, name="GetAsyncTask"),
                web.put(base + "/async-tasks/{task_id}/stop", self.stop_task, name="StopAsyncTask"),
                # Our own extension, beside FC's task paths: run an ended task again.
                web.post(
                    base + "/async-tasks/{task_id}/rerun", self.rerun_task, name="RerunAsyncTask"
                ),
                *ConfigRoutes(self).routes(),
                *health_routes(self.metrics, self.not_ready),
                *self.console.routes(),
            ]
        )
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authentication, and every error as FC's JSON error with its status."""
        try:
            if self.verifier is None:
                local.check_unsigned_request(request.path, request.headers)
                if request.match_info.route.name in INVOKE_ROUTES:
                    local.check_unsigned_invocation(request.headers, request.content_type)
            else:
                signed = await self._verify(request)
                if signed is not None:
                    await refuse_replay(await self.client.tasks(), signed, now_ms())
            matched = request.match_info.route
            if matched.name in INVOKE_ROUTES:
                # The caller's traceparent header is the parent of what the invocation does.
                path = matched.resource.canonical if matched.resource else request.path
                with tracing.serving(request.method, path, request.headers):
                    response = await handler(request)
            else:
                response = await handler(request)
        except web.HTTPException as exc:
            response = self._error_response(
                request, fcapi.from_http_exception(exc, request.method, request.path)
            )
        except Exception as exc:
            error = fcapi.from_error(exc)
            if error is None:
                log.exception("gateway_error", path=request.path, method=request.method)
                error = FcError(f"an internal error occurred: {type(exc).__name__}")
            response = self._error_response(request, error)
        if REQUEST_ID not in response.headers:
            response.headers[REQUEST_ID] = uuid4().hex
        route = request.match_info.route.name or "other"
        self.requests.labels(route, str(response.status)).inc()
        return response

    async def _verify(self, request: web.Request) -> SignedRequest | None:
        """The signature of an API request, checked; None for the FC scheme (no nonce)
        and for paths that need none (probes, metrics)."""
        assert self.verifier is not None and self.fc2_verifier is not None
        url = request.rel_url
        if fc2api.is_fc2_path(request.path):
            return self.fc2_verifier.verify(
                request.method, request.path, url.raw_path, url.query.items(),
                request.headers, await request.read(),
            )
        if request.path.startswith(f"/{fcapi.API_VERSION}/"):
            return self.verifier.verify(
                request.method, url.raw_path, url.query.items(), request.headers,
                await request.read(),
            )
        return None

    def _error_response(self, request: web.Request, error: FcError) -> web.Response:
        request_id = uuid4().hex
        level = log.error if error.status >= 500 else log.info
        level(
            "gateway_refused",
            method=request.method,
            path=request.path,
            status=error.status,
            code=error.code,
            reason=error.message,
            request_id=request_id,
        )
        shape = fc2api if fc2api.is_fc2_path(request.path) else fcapi
        return web.Response(
            status=error.status,
            body=shape.error_body(error, request_id),
            content_type=JSON,
            headers={REQUEST_ID: request_id},
        )

    def _spec(self, request: web.Request) -> FunctionSpec:
        """The function the path names, with the live configuration in force now."""
        name = request.match_info["fn"]
        if name not in self.specs:
            raise fcapi.function_not_found(name)
        return self.live.effective(name).spec

    # -- InvokeFunction ----------------------------------------------------------------

    async def invoke(self, request: web.Request) -> web.Response:
        spec = self._spec(request)
        invocation = fcapi.parse_invocation(request.headers, self.settings.max_delay_s)
        return await self.operations.invoke(spec, invocation, await request.read())


    # -- async tasks -------------------------------------------------------------------

    async def _task(self, request: web.Request) -> Task:
        """The task the path names, if it is a task of the function the path names."""
        spec = self._spec(request)
        task_id = request.match_info["task_id"]
        task = await self.operations.find_task(spec, task_id)
        if task is None:
            raise fcapi.task_not_found(spec.name, task_id)
        return task

    async def get_task(self, request: web.Request) -> web.Response:
        task = await self._task(request)
        return _json(fcapi.task_output(task))

    async def list_tasks(self, request: web.Request) -> web.Response:
        spec = self._spec(request)
        query = fcapi.parse_list_query(request.query)
        page = await self.operations.list_page(spec, query)
        return _json(fcapi.list_output(page, query.include_payload))

    async def stop_task(self, request: web.Request) -> web.Response:
        task = await self._task(request)
        await self.operations.stop(task, "AsyncTaskFinished")
        return web.Response(status=200)

    async def rerun_task(self, request: web.Request) -> web.Response:
        """POST .../async-tasks/{id}/rerun (our extension): 202 with the task, Enqueued
        again; 409 (AsyncTaskNotEnded) for a task that has not ended."""
        task = await self._task(request)
        rerun = await self.client.rerun_task(task.id)
        response = _json(fcapi.task_output(rerun))
        response.set_status(202)
        response.headers[REQUEST_ID] = rerun.id
        return response

    # -- running -----------------------------------------------------------------------

    async def run(
        self, host: str, port: int, stop: asyncio.Event, notifier: Notifier | None = None
    ) -> None:
        """Serve until ``stop`` is set, then stop. Tells systemd (if it is listening)."""
        try:
            async with supervised(notifier or Notifier(), self.status) as supervision:
                await self.start(host, port)
                supervision.ready(f"listening on {self.url}")
                await stop.wait()
        finally:
            await self.stop()

    def status(self) -> str:
        broker = self.client.broker
        state = f"connected to {broker.node}" if broker.is_connected else "reconnecting to RabbitMQ"
        return f"{state}; listening on {self.url}"


def _json(value: object) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type=JSON)


def _modified_ms(path: Path) -> int:
    try:
        return int(path.stat().st_mtime * 1000)
    except OSError:
        return now_ms()
