"""The failures page and its actions: replay, purge, recount, export.

Each action goes through ``failures.FailureQueue``, which calls the dead-letter tool.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from asyncinvoke import dlq
from asyncinvoke.console.depths import Depths
from asyncinvoke.console.failures import MAX_OFFSET, PAGE_SIZE, FailureQueue
from asyncinvoke.console.guard import PREFIX, Handler, View, Visit, see_other
from asyncinvoke.errors import QueueBusy

PURGE_WORD = "purge"


class FailureViews:
    def __init__(
        self,
        failures: FailureQueue,
        depths: Depths,
        functions: list[str],
        render: Callable[..., web.Response],
    ):
        self.failures = failures
        self.queue = failures.queue
        self.depths = depths
        self.functions = functions
        self.render = render

    def routes(self, wrap: Callable[[View], Handler]) -> list[web.RouteDef]:
        return [
            web.get(PREFIX + "/failures", wrap(self.failures_page)),
            web.post(PREFIX + "/failures/replay", wrap(self.replay)),
            web.post(PREFIX + "/failures/purge", wrap(self.purge)),
            web.post(PREFIX + "/failures/recount", wrap(self.recount)),
            web.get(PREFIX + "/failures/export", wrap(self.export)),
        ]

    async def failures_page(
        self, request: web.Request, visit: Visit, notice: str | None = None
    ) -> web.StreamResponse:
        offset = _int(request.query.get("start"), 0)
        await self.failures.settled()
        # Fresh: a page of records read before is shown again only if the depth is the same.
        depth = (await self.depths.read([self.queue], fresh=True)).get(self.queue)
        in_queue = None if depth is None else depth.ready
        page = problem = None
        try:
            page = await self.failures.page(offset, in_queue)
        except QueueBusy:
            problem = (
                "The failure queue is being read by another operation now (a recount, a "
                "replay, or an asyncinvoke dlq command); its records show once it is done."
            )
        except dlq.DlqError as exc:
            problem = str(exc)
        self.failures.watch(in_queue)
        return self.render(
            "failures.html", visit, title="Failures", page=page, problem=problem,
            notice=notice, in_queue=in_queue, summary=self.failures.summary,
            summary_error=self.failures.summary_error, page_size=PAGE_SIZE, max_offset=MAX_OFFSET,
            queue=self.queue, purge_word=PURGE_WORD,
            functions=self.functions,
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
        return see_other(PREFIX + "/failures")

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
                "Content-Disposition": f'attachment; filename="{self.queue}.jsonl"',
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


def _int(text: str | None, default: int) -> int:
    try:
        return max(0, int(text)) if text else default
    except ValueError:
        return default
