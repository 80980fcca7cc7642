"""A task as people and scripts read it: the shape of Function Compute's AsyncTask."""

from __future__ import annotations

from typing import Any

from asyncinvoke import contract, record_codec
from asyncinvoke.tasks.store import Task


def _text(packed: bytes | None) -> str | None:
    """A stored msgpack value as FC shows payloads: text as is, anything else as JSON
    (or, where JSON cannot carry it, a JSON string with a readable rendering)."""
    if packed is None:
        return None
    value = contract.unpack(packed)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    # msgpack carries what JSON cannot (bytes map keys, deep nesting): such a payload
    # shows as a rendering rather than breaking 'task get' and GetAsyncTask.
    return record_codec.json_or_rendering(value).decode()


def async_task(task: Task, *, include_payload: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "taskId": task.id,
        "requestId": task.id,
        "functionName": task.function,
        "status": task.status.value,
        "alreadyRetriedTimes": max(0, task.attempts - 1),
        "startedTime": task.started_at,
        "endTime": task.ended_at,
        "durationMs": task.duration_ms,
        "taskErrorMessage": task.error,
        "events": [
            {
                "status": event.status.value,
                "timestamp": event.timestamp,
                "eventDetail": event.detail,
            }
            for event in task.events
        ],
    }
    if include_payload:
        view["taskPayload"] = _text(task.payload)
        view["returnPayload"] = (
            "(result larger than the stored limit)" if task.result_truncated else _text(task.result)
        )
    return view
