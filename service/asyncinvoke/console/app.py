"""The web console at ``/console``: functions, tasks and failures, served by the gateway.

Server-rendered HTML (Jinja2, autoescaped) with one small script of ours for the live
refresh (``static/console.js``, polling ``live.json`` every 2 s); every page works
without it. The routes are added to the gateway's aiohttp application, so without access
keys the gateway's keyless guard (``gateway.local``: loopback Host, no foreign Origin)
covers them too; ``guard`` checks sessions and CSRF tokens. The failures page and its
actions are in ``failure_views``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import orjson
from aiohttp import web

from asyncinvoke import clock, topology
from asyncinvoke.client import Client
from asyncinvoke.console import sessions
from asyncinvoke.console.depths import Depths
from asyncinvoke.console.failure_views import FailureViews
from asyncinvoke.console.failures import FailureQueue
from asyncinvoke.console.function_state import FunctionState, Shown
from asyncinvoke.console.guard import (
    CSRF_FIELD,
    PREFIX,
    Guard,
    Handler,
    View,
    Visit,
    after_login,
    see_other,
)
from asyncinvoke.console.history import FAILURES, INVOCATIONS, THROTTLES, History, read_totals
from asyncinvoke.console.management import Management, endpoint
from asyncinvoke.console.policy_sources import read_document, sources
from asyncinvoke.console.shown import bars, when
from asyncinvoke.console.task_views import TaskViews
from asyncinvoke.errors import AsyncInvokeError, ManagementUnavailable, QueueBusy
from asyncinvoke.liveconfig.live import LiveConfig
from asyncinvoke.metrics import Metrics
from asyncinvoke.observability import get_logger
from asyncinvoke.settings import Settings

SAMPLE_EVERY_S = 5.0
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}

log = get_logger(component="console")


class Console:
    def __init__(
        self,
        settings: Settings,
        client: Client,
        policies: dict[str, dict[str, Any]],
        config_path: Path,
        access_keys: dict[str, str],
        metrics: Metrics,
        *,
        counts_worker: bool,
        live: LiveConfig | None,
        shown: Shown,
    ):
        self.settings = settings
        self.client = client
        # Each function's effective policy as it may be shown (passwords of URLs out).
        self.policies = policies
        self.names = topology.Names(settings.namespace)
        self.keys = access_keys
        self.guard = Guard(access_keys, self._expired_form)
        self.counts_worker = counts_worker
        self.metrics = metrics
        document = read_document(config_path)
        file_sources = {name: sources(document, name) for name in policies}
        # ``shown``: how the gateway shows a spec's policy (passwords of URLs out).
        self.state = FunctionState(policies, file_sources, live, shown)
        self.history = History(lambda: read_totals(metrics.registry))
        self.depths = Depths(client.broker, self.names)
        self.management = Management(endpoint(settings))
        self.failures = FailureQueue(settings)
        self.failure_views = FailureViews(
            self.failures, self.depths, sorted(policies), self._render
        )
        self.task_views = TaskViews(client, sorted(policies), self._render)
        self._sampler: asyncio.Task[None] | None = None
        self._sampled_at = 0.0
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("asyncinvoke.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["when"] = when
        self.templates.globals.update(prefix=PREFIX, csrf_field=CSRF_FIELD)

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        self.history.sample(time.time())
        self._sampler = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        await self.management.close()
        await self.failures.close()

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            self.history.sample(time.time())

    def routes(self) -> list[web.RouteDef]:
        page = self._page
        return [
            web.get(PREFIX, page(self.home)),
            web.get(PREFIX + "/", page(self.home)),
            web.get(PREFIX + "/login", page(self.login_form, public=True)),
            web.post(PREFIX + "/login", page(self.login, public=True)),
            web.post(PREFIX + "/logout", page(self.logout)),
            web.get(PREFIX + "/functions", page(self.functions)),
            web.post(PREFIX + "/functions/{name}/pause", page(self.pause)),
            web.post(PREFIX + "/functions/{name}/resume", page(self.resume)),
            *self.task_views.routes(page),
            *self.failure_views.routes(page),
            web.get(PREFIX + "/live.json", page(self.live)),
            web.get(PREFIX + "/static/{name}", self.static),
        ]

    def _page(self, view: View, *, public: bool = False) -> Handler:
        """``view`` behind the guard; what it cannot do now is a page that says why."""

        async def shown(request: web.Request, visit: Visit) -> web.StreamResponse:
            try:
                return await view(request, visit)
            except (AsyncInvokeError, QueueBusy, ConnectionError, OSError) as exc:
                return self._render(
                    "message.html", visit, title="Not done", status=503,
                    message=str(exc) or type(exc).__name__,
                )

        return self.guard.wrap(shown, public=public)

    def _expired_form(self, visit: Visit) -> web.StreamResponse:
        return self._render(
            "message.html", visit, title="Form expired", status=403,
            message="This form's security token is missing or out of date (a new session "
            "began, or the form came from elsewhere). Go back, reload the page, and try again.",
        )

    def _render(
        self, template: str, visit: Visit, *, status: int = 200, **context: Any
    ) -> web.Response:
        body = self.templates.get_template(template).render(
            csrf=visit.csrf,
            logged_in=visit.session.key_id,
            keys_required=bool(self.keys),
            **context,
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    # -- login -------------------------------------------------------------------------

    async def login_form(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        if not self.keys:
            return see_other(PREFIX + "/functions")
        target = after_login(request.query.get("next"))
        return self._render("login.html", visit, title="Log in", error=None, next=target)

    async def login(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        form = await request.post()
        key_id, secret = str(form.get("key_id", "")), str(form.get("secret", ""))
        target = after_login(str(form.get("next", "")))
        if not self.keys or not sessions.check_secret(self.keys, key_id, secret):
            log.info("console_login_refused", key_id=key_id)
            return self._render(
                "login.html", visit, title="Log in", status=403, next=target,
                error="That key id and secret do not match a configured access key.",
            )
        self.guard.new_session(visit, key_id)
        log.info("console_login", key_id=key_id)
        return see_other(target)

    async def logout(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        self.guard.new_session(visit, None)
        return see_other(PREFIX + "/login" if self.keys else PREFIX + "/functions")

    async def home(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        return see_other(PREFIX + "/functions")

    # -- functions ---------------------------------------------------------------------

    async def _function_rows(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        queues = [self.names.function_queue(name) for name in self.policies]
        ladder = self.depths.ladder_queues()
        depths, (unacked, unacked_source) = await asyncio.gather(
            self.depths.read([*queues, *ladder, self.names.failed]), self._unacked()
        )
        now_s = time.time()
        rows = []
        for name in sorted(self.policies):
            queue = self.names.function_queue(name)
            depth = depths.get(queue)
            invocations = self.history.per_minute(name, INVOCATIONS, now_s)
            failures = self.history.per_minute(name, FAILURES, now_s)
            throttles = self.history.per_minute(name, THROTTLES, now_s)
            rows.append(
                {
                    "name": name,
                    "state": self.state.state(name),
                    "ready": "missing" if depth is None else depth.ready,
                    "consumers": "-" if depth is None else depth.consumers,
                    # The API has no statistics for a queue declared seconds ago: "…".
                    "unacked": (
                        self._in_flight(name) if unacked is None else unacked.get(queue, "…")
                    ),
                    "invocations": sum(invocations),
                    "failures": sum(failures),
                    "throttles": sum(throttles),
                    "invocation_bars": bars(invocations, "invocations"),
                    "failure_bars": bars(failures, "failures"),
                    "throttle_bars": bars(throttles, "throttles"),
                    "policy": self.state.policy(name),
                }
            )
        waiting = sum(d.ready for q in ladder if (d := depths.get(q)) is not None)
        failed = depths.get(self.names.failed)
        totals = {
            "ladder": waiting,
            "failed": "missing" if failed is None else failed.ready,
            "unacked_source": unacked_source,
        }
        return rows, totals

    async def _unacked(self) -> tuple[dict[str, int] | None, str]:
        """The broker's unacknowledged counts by queue (None when the management API
        gives none), and a sentence saying where the shown figures come from."""
        try:
            counts = await self.management.unacked(self.names.function_queue(""))
        except ManagementUnavailable as exc:
            shown = (
                "shown instead: the attempts in flight in this process's worker"
                if self.counts_worker
                else "no worker runs in this process, so none is shown"
            )
            hint = "" if self.management.where.configured else (
                "; set ASYNCINVOKE_MANAGEMENT_URL, or enable the rabbitmq_management plugin"
            )
            return None, f"not known: {exc}{hint}; {shown}"
        return counts, (
            f"the broker's count over every consumer, from {self.management.source} "
            "(which refreshes it every few seconds)"
        )

    def _in_flight(self, function: str) -> int | str:
        if not self.counts_worker:
            return "-"
        return int(self.metrics.in_flight.labels(function)._value.get())

    async def functions(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        rows, totals = await self._function_rows()
        return self._render(
            "functions.html", visit, title="Functions", rows=rows, totals=totals,
            counts_worker=self.counts_worker, chart_macro=True, can_pause=self.state.can_pause,
        )

    async def pause(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        return await self._pause_or_resume(request, visit, self.state.pause)

    async def resume(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        return await self._pause_or_resume(request, visit, self.state.resume)

    async def _pause_or_resume(
        self, request: web.Request, visit: Visit, change: Callable[[str], Awaitable[None]]
    ) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self.policies or not self.state.can_pause:
            return self._render(
                "message.html", visit, title="Not done", status=404,
                message=f"No function {name!r} can be paused or resumed here (it is not in "
                "the functions file, or this console has no live configuration).",
            )
        await change(name)  # returns once the configuration store holds the change
        log.info("console_function_state", function=name, action=request.path.rsplit("/")[-1])
        return see_other(PREFIX + "/functions")

    # -- live --------------------------------------------------------------------------

    async def live(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        """Counts and depths for the live refresh; each keyed as the pages' data-live."""
        now_s = time.time()
        if now_s - self._sampled_at >= 1.0:  # fresh counts, whatever the sampler's pace
            self._sampled_at = now_s
            self.history.sample(now_s)
        rows, totals = await self._function_rows()
        values: dict[str, Any] = {
            key: totals[key] for key in ("ladder", "failed", "unacked_source")
        }
        charts = {}
        chart = self.templates.get_template("chart.html")
        for row in rows:
            for key in (
                "state", "ready", "consumers", "unacked", "invocations", "failures", "throttles"
            ):
                values[f"{row['name']}.{key}"] = row[key]
            charts[row["name"]] = chart.render(row=row)
        if request.query.get("page") == "failures":
            failed = totals["failed"]
            self.failures.watch(failed if isinstance(failed, int) else None)
        values["as_of"] = when(clock.now_ms())
        return web.Response(
            body=orjson.dumps({"values": values, "charts": charts}),
            content_type="application/json",
        )

    # -- static ------------------------------------------------------------------------

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        suffix = Path(name).suffix
        if name not in STATIC_FILES or suffix not in STATIC_TYPES:
            return web.Response(status=404, text="not found")
        return web.Response(
            body=STATIC_FILES[name],
            content_type=STATIC_TYPES[suffix],
            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
        )


def _load_static() -> dict[str, bytes]:
    folder = resources.files("asyncinvoke.console") / "static"
    return {item.name: item.read_bytes() for item in folder.iterdir() if item.is_file()}


STATIC_FILES = _load_static()
