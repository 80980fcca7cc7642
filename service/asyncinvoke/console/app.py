"""The web console at ``/console``: functions, tasks and failures, served by the gateway.

Server-rendered HTML (Jinja2, autoescaped) with one small script of ours for the live
refresh (``static/console.js``, polling ``live.json`` every 2 s); every page works
without it. Routes are added to the gateway's aiohttp application, so without access
keys the gateway's keyless guard (``gateway.local``: loopback Host, no foreign Origin)
covers them too. With keys, a session (``sessions``) is required: a request without one
is sent to the login page. Every POST carries the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import orjson
from aiohttp import web

from asyncinvoke import contract, dlq, topology
from asyncinvoke.client import Client
from asyncinvoke.console import sessions
from asyncinvoke.console.depths import Depths
from asyncinvoke.console.failures import PAGE_SIZE, FailureQueue, QueueBusy
from asyncinvoke.console.history import FAILURES, INVOCATIONS, History, read_totals
from asyncinvoke.console.policy_sources import read_document, sources
from asyncinvoke.console.shown import bars, packed_text, parse_when, when
from asyncinvoke.errors import AsyncInvokeError
from asyncinvoke.metrics import Metrics
from asyncinvoke.observability import get_logger
from asyncinvoke.settings import Settings
from asyncinvoke.tasks.states import TERMINAL, Status
from asyncinvoke.tasks.store import MAX_PAGE_LIMIT, TaskFinished, TaskNotFound

PREFIX = "/console"
SAMPLE_EVERY_S = 5.0
TASKS_PER_PAGE = 50
CSRF_FIELD = "csrf"
PURGE_WORD = "purge"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}

log = get_logger(component="console")
View = Callable[[web.Request, "Visit"], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Visit:
    """One request's session, and the cookie to send back if it is new."""

    session: sessions.Session
    csrf: str
    fresh: bool


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
    ):
        self.settings = settings
        self.client = client
        # Each function's effective policy as it may be shown (passwords of URLs out).
        self.policies = policies
        self.names = topology.Names(settings.namespace)
        self.keys = access_keys
        self.signer = sessions.Signer(sessions.signing_key(access_keys))
        self.counts_worker = counts_worker
        self.metrics = metrics
        document = read_document(config_path)
        self.sources = {name: sources(document, name) for name in policies}
        self.history = History(lambda: read_totals(metrics.registry))
        self.depths = Depths(client.broker, self.names)
        self.failures = FailureQueue(settings)
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
            web.get(PREFIX + "/tasks", page(self.tasks)),
            web.get(PREFIX + "/tasks/{task_id}", page(self.task)),
            web.post(PREFIX + "/tasks/{task_id}/stop", page(self.stop_task)),
            web.get(PREFIX + "/failures", page(self.failures_page)),
            web.post(PREFIX + "/failures/replay", page(self.replay)),
            web.post(PREFIX + "/failures/purge", page(self.purge)),
            web.post(PREFIX + "/failures/recount", page(self.recount)),
            web.get(PREFIX + "/failures/export", page(self.export)),
            web.get(PREFIX + "/live.json", page(self.live)),
            web.get(PREFIX + "/static/{name}", self.static),
        ]

    # -- sessions, CSRF, headers -------------------------------------------------------

    def _page(self, view: View, *, public: bool = False) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            now_ms = time.time_ns() // 1_000_000
            session = self.signer.load(request.cookies.get(sessions.COOKIE), now_ms)
            fresh = session is None
            if session is None or (self.keys and session.key_id not in (None, *self.keys)):
                session, fresh = self.signer.new(now_ms), True
            visit = Visit(session, self.signer.csrf_token(session), fresh)
            if self.keys and session.key_id is None and not public:
                response = self._refuse_anonymous(request)
            elif request.method == "POST" and not await self._csrf_ok(request, visit):
                response = self._render(
                    "message.html", visit, title="Form expired", status=403,
                    message="This form's security token is missing or out of date "
                    "(a new session began, or the form came from elsewhere). "
                    "Go back, reload the page, and try again.",
                )
            else:
                try:
                    response = await view(request, visit)
                except (AsyncInvokeError, QueueBusy, ConnectionError, OSError) as exc:
                    response = self._render(
                        "message.html", visit, title="Not done", status=503,
                        message=str(exc) or type(exc).__name__,
                    )
            if visit.fresh:
                self._set_cookie(request, response, visit.session)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return handler

    def _refuse_anonymous(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith(".json"):
            return web.json_response({"error": "log in first"}, status=401)
        if request.method != "GET":
            return web.Response(status=403, text="log in first")
        return _see_other(f"{PREFIX}/login?" + urlencode({"next": request.path_qs}))

    async def _csrf_ok(self, request: web.Request, visit: Visit) -> bool:
        if visit.fresh:
            return False
        form = await request.post()
        token = form.get(CSRF_FIELD)
        return isinstance(token, str) and self.signer.csrf_ok(visit.session, token)

    def _set_cookie(
        self, request: web.Request, response: web.StreamResponse, session: sessions.Session
    ) -> None:
        response.set_cookie(
            sessions.COOKIE,
            self.signer.dump(session),
            max_age=self.signer.ttl_s,
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
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
            return _see_other(PREFIX + "/functions")
        return self._render(
            "login.html", visit, title="Log in", error=None, next=_next(request.query.get("next"))
        )

    async def login(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        form = await request.post()
        key_id, secret = str(form.get("key_id", "")), str(form.get("secret", ""))
        target = _next(str(form.get("next", "")))
        if not self.keys or not sessions.check_secret(self.keys, key_id, secret):
            log.info("console_login_refused", key_id=key_id)
            return self._render(
                "login.html", visit, title="Log in", status=403, next=target,
                error="That key id and secret do not match a configured access key.",
            )
        # A new session id at login: a session planted before it is worth nothing after.
        visit.session = self.signer.new(time.time_ns() // 1_000_000, key_id)
        visit.fresh = True
        log.info("console_login", key_id=key_id)
        return _see_other(target)

    async def logout(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        visit.session, visit.fresh = self.signer.new(time.time_ns() // 1_000_000), True
        return _see_other(PREFIX + "/login" if self.keys else PREFIX + "/functions")

    async def home(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        return _see_other(PREFIX + "/functions")

    # -- functions ---------------------------------------------------------------------

    async def _function_rows(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        queues = [self.names.function_queue(name) for name in self.policies]
        ladder = self.depths.ladder_queues()
        depths = await self.depths.read([*queues, *ladder, self.names.failed])
        now_s = time.time()
        rows = []
        for name, policy in sorted(self.policies.items()):
            depth = depths.get(self.names.function_queue(name))
            invocations = self.history.per_minute(name, INVOCATIONS, now_s)
            failures = self.history.per_minute(name, FAILURES, now_s)
            rows.append(
                {
                    "name": name,
                    "ready": "missing" if depth is None else depth.ready,
                    "consumers": "-" if depth is None else depth.consumers,
                    "in_flight": self._in_flight(name),
                    "invocations": sum(invocations),
                    "failures": sum(failures),
                    "invocation_bars": bars(invocations, "invocations"),
                    "failure_bars": bars(failures, "failures"),
                    "policy": [
                        (field, _policy_text(value), self.sources[name].get(field, "-"))
                        for field, value in policy.items()
                    ],
                }
            )
        waiting = sum(d.ready for q in ladder if (d := depths.get(q)) is not None)
        failed = depths.get(self.names.failed)
        totals = {"ladder": waiting, "failed": "missing" if failed is None else failed.ready}
        return rows, totals

    def _in_flight(self, function: str) -> int | str:
        if not self.counts_worker:
            return "-"
        return int(self.metrics.in_flight.labels(function)._value.get())

    async def functions(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        rows, totals = await self._function_rows()
        return self._render(
            "functions.html", visit, title="Functions", rows=rows, totals=totals,
            counts_worker=self.counts_worker, chart_macro=True,
        )

    # -- live --------------------------------------------------------------------------

    async def live(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        """Counts and depths for the live refresh; each keyed as the pages' data-live."""
        now_s = time.time()
        if now_s - self._sampled_at >= 1.0:  # fresh counts, whatever the sampler's pace
            self._sampled_at = now_s
            self.history.sample(now_s)
        rows, totals = await self._function_rows()
        values: dict[str, Any] = {"ladder": totals["ladder"], "failed": totals["failed"]}
        charts = {}
        chart = self.templates.get_template("chart.html")
        for row in rows:
            for key in ("ready", "consumers", "in_flight", "invocations", "failures"):
                values[f"{row['name']}.{key}"] = row[key]
            charts[row["name"]] = chart.render(row=row)
        if request.query.get("page") == "failures":
            failed = totals["failed"]
            self.failures.watch(failed if isinstance(failed, int) else None)
        values["as_of"] = when(time.time_ns() // 1_000_000)
        return web.Response(
            body=orjson.dumps({"values": values, "charts": charts}),
            content_type="application/json",
        )

    # -- tasks -------------------------------------------------------------------------

    async def tasks(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        query = request.query
        wanted_id = query.get("id", "").strip()
        store = await self.client.tasks()
        if wanted_id and contract.ID_RE.fullmatch(wanted_id):
            found = await store.get(wanted_id)
            if found is not None:
                return _see_other(f"{PREFIX}/tasks/{found.id}")
        function = query.get("function") or None
        status_text = query.get("status") or None
        status = Status(status_text) if status_text in set(Status) else None
        started_from = parse_when(query.get("from"))
        started_to = parse_when(query.get("to"))
        token = query.get("token") or None
        try:
            page = await store.list(
                function=function,
                status=status,
                prefix=wanted_id or None,
                started_from=started_from,
                started_to=started_to,
                limit=min(TASKS_PER_PAGE, MAX_PAGE_LIMIT),
                next_token=token,
            )
            problem = None
        except ValueError as exc:
            page, problem = None, str(exc)
        filters = {
            "function": function or "",
            "status": status.value if status else "",
            "from": query.get("from", ""),
            "to": query.get("to", ""),
            "id": wanted_id,
        }
        next_link = None
        if page is not None and page.next_token:
            next_link = "?" + urlencode({**filters, "token": page.next_token})
        return self._render(
            "tasks.html", visit, title="Tasks", tasks=page.tasks if page else [],
            filters=filters, functions=sorted(self.policies), statuses=[s.value for s in Status],
            next_link=next_link, paged=token is not None, problem=problem,
        )

    async def task(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        store = await self.client.tasks()
        task = await store.get(task_id) if contract.ID_RE.fullmatch(task_id) else None
        if task is None:
            return self._render(
                "message.html", visit, title="No such task", status=404,
                message=f"No task {task_id!r} is in the task store (it may have been "
                "purged after the retention period, or never ran in task mode).",
            )
        return self._render(
            "task.html", visit, title=f"Task {task.id}", task=task,
            payload=packed_text(task.payload), result=packed_text(task.result),
            can_stop=task.status not in TERMINAL and task.status is not Status.STOPPING,
        )

    async def stop_task(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        with contextlib.suppress(TaskFinished, TaskNotFound):
            # Already ended or gone: the task page shows how it ended.
            await self.client.stop_task(task_id)
        return _see_other(f"{PREFIX}/tasks/{task_id}")

    # -- failures ----------------------------------------------------------------------

    async def failures_page(
        self, request: web.Request, visit: Visit, notice: str | None = None
    ) -> web.StreamResponse:
        offset = _int(request.query.get("start"), 0)
        depths = await self.depths.read([self.names.failed])
        depth = depths.get(self.names.failed)
        in_queue = None if depth is None else depth.ready
        page = problem = None
        try:
            page = await self.failures.page(offset)
        except QueueBusy:
            problem = (
                "The failure queue is being read by another operation now (a recount, a "
                "replay, or an asyncinvoke dlq command); its records show once it is done."
            )
        except dlq.DlqError as exc:
            problem = str(exc)
        self.failures.watch(in_queue)
        return self._render(
            "failures.html", visit, title="Failures", page=page, problem=problem,
            notice=notice, in_queue=in_queue, summary=self.failures.summary,
            summary_error=self.failures.summary_error, page_size=PAGE_SIZE,
            queue=self.names.failed, purge_word=PURGE_WORD,
            functions=sorted(self.policies),
        )

    async def _selector(self, request: web.Request) -> dlq.Selector | None:
        form = await request.post()
        one = form.get("one")
        if isinstance(one, str) and one:
            return dlq.Selector(ids=frozenset({one}))
        ids = frozenset(str(value) for value in form.getall("id", []) if value)
        if ids:
            return dlq.Selector(ids=ids)
        if form.get("scope") == "all":
            function = str(form.get("function", "")) or None
            return dlq.ALL if function is None else dlq.Selector(function=function)
        return None

    async def replay(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        selector = await self._selector(request)
        if selector is None:
            return await self.failures_page(request, visit, "Select a record to replay first.")
        try:
            report = await self.failures.replay(selector)
        except dlq.ReplayIncomplete as exc:
            return await self.failures_page(request, visit, str(exc))
        except dlq.DlqError as exc:
            return await self.failures_page(request, visit, str(exc))
        notice = (
            f"Replayed {report.replayed} of {report.selected} selected failures: each "
            "republish was confirmed by the broker before its record left the queue."
        )
        if report.skipped:
            notice += f" {len(report.skipped)} could not be replayed and stay: " + "; ".join(
                f"{record_id}: {why}" for record_id, why in report.skipped
            )
        return await self.failures_page(request, visit, notice)

    async def purge(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        form = await request.post()
        if str(form.get("confirm", "")).strip().lower() != PURGE_WORD:
            return await self.failures_page(
                request, visit,
                f"Nothing purged: type {PURGE_WORD!r} in the confirmation box to purge.",
            )
        selector = await self._selector(request)
        if selector is None:
            return await self.failures_page(request, visit, "Select records to purge first.")
        try:
            report = await self.failures.purge(selector)
        except dlq.DlqError as exc:
            return await self.failures_page(request, visit, str(exc))
        return await self.failures_page(
            request, visit, f"Purged {report.purged} records for good."
        )

    async def recount(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        await self.failures.refresh()
        return _see_other(PREFIX + "/failures")

    async def export(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        function = request.query.get("function") or None
        selector = dlq.ALL if function is None else dlq.Selector(function=function)
        try:
            path = await self.failures.export(selector)
        except dlq.NothingSelected:
            path = None
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson",
                "Content-Disposition": f'attachment; filename="{self.names.failed}.jsonl"',
            }
        )
        await response.prepare(request)
        if path is not None:
            try:
                with path.open("rb") as stream:
                    while chunk := stream.read(1 << 20):
                        await response.write(chunk)
            finally:
                path.unlink(missing_ok=True)
        await response.write_eof()
        return response

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


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _next(target: str | None) -> str:
    """Where to go after login: a console path, never another site."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        return target
    return PREFIX + "/functions"


def _int(text: str | None, default: int) -> int:
    try:
        return max(0, int(text)) if text else default
    except ValueError:
        return default


def _policy_text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {item}" for key, item in value.items())
    if value is None:
        return "-"
    return str(value).lower() if isinstance(value, bool) else str(value)
