"""The tasks pages and their actions: the list (filters, search, paging), one task's page,
Stop and Re-run. Each action is the same call the CLI makes (``Client.stop_task``,
``Client.rerun_task``), so it has the same guarantees."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from urllib.parse import urlencode

from aiohttp import web

from asyncinvoke import contract
from asyncinvoke.client import Client
from asyncinvoke.console.guard import PREFIX, Handler, View, Visit, see_other
from asyncinvoke.console.shown import packed_text, parse_when
from asyncinvoke.errors import TaskNotRerunnable
from asyncinvoke.tasks.states import TERMINAL, Status
from asyncinvoke.tasks.store import MAX_PAGE_LIMIT, Task, TaskFinished, TaskNotFound

TASKS_PER_PAGE = 50


def can_stop(task: Task) -> bool:
    return task.status not in TERMINAL and task.status is not Status.STOPPING


def can_rerun(task: Task) -> bool:
    """An ended task with a stored payload runs again (an Invalid message kept none)."""
    return task.status in TERMINAL and task.payload is not None


class TaskViews:
    def __init__(
        self, client: Client, functions: list[str], render: Callable[..., web.Response]
    ):
        self.client = client
        self.functions = functions
        self.render = render

    def routes(self, wrap: Callable[[View], Handler]) -> list[web.RouteDef]:
        return [
            web.get(PREFIX + "/tasks", wrap(self.tasks)),
            web.get(PREFIX + "/tasks/{task_id}", wrap(self.task)),
            web.post(PREFIX + "/tasks/{task_id}/stop", wrap(self.stop_task)),
            web.post(PREFIX + "/tasks/{task_id}/rerun", wrap(self.rerun_task)),
        ]

    async def tasks(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        query = request.query
        wanted_id = query.get("id", "").strip()
        store = await self.client.tasks()
        if wanted_id and contract.ID_RE.fullmatch(wanted_id):
            found = await store.get(wanted_id)
            if found is not None:
                return see_other(f"{PREFIX}/tasks/{found.id}")
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
        return self.render(
            "tasks.html", visit, title="Tasks", tasks=page.tasks if page else [],
            filters=filters, functions=self.functions, statuses=[s.value for s in Status],
            next_link=next_link, paged=token is not None, problem=problem,
        )

    async def task(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        store = await self.client.tasks()
        task = await store.get(task_id) if contract.ID_RE.fullmatch(task_id) else None
        if task is None:
            return self.render(
                "message.html", visit, title="No such task", status=404,
                message=f"No task {task_id!r} is in the task store (it may have been "
                "purged after the retention period, or never ran in task mode).",
            )
        return self.render(
            "task.html", visit, title=f"Task {task.id}", task=task,
            payload=packed_text(task.payload), result=packed_text(task.result),
            can_stop=can_stop(task), can_rerun=can_rerun(task),
        )

    async def stop_task(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        with contextlib.suppress(TaskFinished, TaskNotFound):
            # Already ended or gone: the task page shows how it ended.
            await self.client.stop_task(task_id)
        return see_other(f"{PREFIX}/tasks/{task_id}")

    async def rerun_task(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        try:
            await self.client.rerun_task(task_id)
        except TaskNotFound:
            pass  # the task page says it is not in the store
        except TaskNotRerunnable as exc:  # not ended (a second click), or no payload kept
            return self.render(
                "message.html", visit, title="Not run again", status=409, message=str(exc)
            )
        return see_other(f"{PREFIX}/tasks/{task_id}")
