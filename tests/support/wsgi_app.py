"""A synchronous web app, as users run them: gunicorn workers sharing one module-level
``SyncClient``. Each request invokes the function ``work`` and answers with the
invocation id and the pid of the worker process that made it.

Under ``--preload`` the master imports this module and uses the client (it connects)
before it forks the workers: each worker must leave that connection alone and open its
own on its first request.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from asyncinvoke import SyncClient

client = SyncClient()  # ASYNCINVOKE_AMQP_URL, ASYNCINVOKE_NAMESPACE from the environment
if os.environ.get("WSGI_APP_CONNECT_BEFORE_FORK") == "1":
    client.connect()
MASTER_PID = os.getpid()


def application(
    environ: dict[str, Any], start_response: Callable[[str, list[tuple[str, str]]], Any]
) -> Iterable[bytes]:
    serial = environ.get("PATH_INFO", "/").strip("/")
    invocation_id = client.invoke("work", {"serial": serial})
    body = orjson.dumps({"id": invocation_id, "pid": os.getpid(), "master": MASTER_PID})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
