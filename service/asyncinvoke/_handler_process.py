"""A handler process of ``executor = "process"``: runs one function's sync handler, one
attempt at a time, for the worker process that started it (``process_executor.py``,
``handler_link.py``).

    python -m asyncinvoke._handler_process FUNCTION HANDLER

The worker hands over an inherited socket (its descriptor in ``ASYNCINVOKE_HANDLER_FD``)
and its own ``sys.path`` (``ASYNCINVOKE_HANDLER_SYS_PATH``, JSON), so the handler is
imported by its configured name exactly as the worker imported it. Nothing but msgpack
crosses the socket: a request is the event and the context's fields, an answer the
result or the error; each is a frame of a 4-byte big-endian length and the msgpack
bytes. Requests are answered in the order they came, one answer each (``{"skipped":
true}`` for one the worker withdrew before it began). Only the configured handler ever
runs here.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import struct
import sys
import time
from collections import deque
from typing import Any

FRAME = struct.Struct(">I")
FD_ENV = "ASYNCINVOKE_HANDLER_FD"
SYS_PATH_ENV = "ASYNCINVOKE_HANDLER_SYS_PATH"
PARENT_ENV = "ASYNCINVOKE_HANDLER_PARENT"
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL when the worker process dies, even in the middle of a handler (Linux):
    a worker killed with -9 must not leave a handler running on that no one will ask
    for its result."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(1)


class Requests:
    """The requests the worker sent, in order, read ahead of the one that runs.

    The worker may send the next request while this process runs one (a pipeline), and
    may then ask it to skip a request not begun yet (``{"skip": seq}``: stopped while it
    waited). So before each request starts, everything that arrived meanwhile is read: a
    skip sent before that moment is always seen.
    """

    def __init__(self, sock: socket.socket):
        from asyncinvoke import contract

        self.unpack = contract.unpack
        self.sock = sock
        self.buffer = bytearray()
        self.waiting: deque[dict[str, Any]] = deque()
        self.open = True

    def _receive(self, flags: int = 0) -> None:
        data = self.sock.recv(1 << 16, flags)
        if not data:
            self.open = False
        self.buffer += data
        while len(self.buffer) >= FRAME.size:
            size = FRAME.unpack_from(self.buffer)[0]
            if len(self.buffer) < FRAME.size + size:
                return
            frame = self.unpack(bytes(self.buffer[FRAME.size : FRAME.size + size]))
            del self.buffer[: FRAME.size + size]
            if "skip" in frame:
                for request in self.waiting:
                    if request["seq"] == frame["skip"]:
                        request["skipped"] = True
            else:
                self.waiting.append(frame)

    def next(self) -> dict[str, Any] | None:
        """The next request; None once the worker closed the socket."""
        with contextlib.suppress(BlockingIOError):  # nothing more has arrived
            while self.open:
                self._receive(socket.MSG_DONTWAIT)
        while self.open and not self.waiting:
            self._receive()
        return self.waiting.popleft() if self.open and self.waiting else None


def serve(sock: socket.socket, handler: Any) -> None:
    """Answer requests, in order, until the worker closes the socket."""
    from asyncinvoke import contract
    from asyncinvoke.context import Context
    from asyncinvoke.errors import NonRetryableError, Throttled

    requests = Requests(sock)
    while (request := requests.next()) is not None:
        if request.get("skipped"):
            _send(sock, contract.pack({"skipped": True}))
            continue
        context = Context(
            invocation_id=request["id"],
            function=request["fn"],
            attempt=request["attempt"],
            deadline=time.time() + request["timeout"],  # its timeout starts now
            meta=request["meta"],
        )
        try:
            answer: dict[str, Any] = {"ok": True, "result": handler(request["payload"], context)}
        except Exception as exc:
            answer = {
                "ok": False,
                "error": contract.ErrorInfo.of(exc).to_wire(),
                "retryable": not isinstance(exc, NonRetryableError),
            }
            if isinstance(exc, Throttled):
                answer["throttled"] = True
                answer["retry_after"] = exc.retry_after
        try:
            frame = contract.pack(answer)
        except Exception as exc:  # a result msgpack cannot carry
            frame = contract.pack({
                "ok": False,
                "error": contract.ErrorInfo.result_not_serializable(
                    f"the handler's result cannot cross to the worker as "
                    f"msgpack ({type(exc).__name__}: {exc}); return msgpack-shaped data "
                    "(None, bool, numbers, str, bytes, lists, maps)"
                ).to_wire(),
                "retryable": False,
            })  # fmt: skip
        _send(sock, frame)


def main() -> None:
    function, handler_path = sys.argv[1], sys.argv[2]
    _die_with_parent(int(os.environ.pop(PARENT_ENV)))
    # Ctrl-C reaches the whole process group, and systemd may signal every process: the
    # worker decides when an attempt ends (it kills this process), not a stray signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(os.environ.pop(FD_ENV)))
    sys.path[:] = json.loads(os.environ.pop(SYS_PATH_ENV))
    # What a handler prints goes to the log stream, like the worker's own output.
    os.dup2(2, 1)

    from asyncinvoke import contract
    from asyncinvoke.functions import FunctionSpec, load_handler
    from asyncinvoke.observability import configure_logging
    from asyncinvoke.settings import from_env

    configure_logging(from_env().log_format)
    try:
        handler = load_handler(FunctionSpec(function, handler=handler_path))
    except Exception as exc:
        _send(sock, contract.pack({"ready": False, "error": f"{type(exc).__name__}: {exc}"}))
        raise SystemExit(1) from None
    _send(sock, contract.pack({"ready": True}))
    serve(sock, handler)


def _send(sock: socket.socket, frame: bytes) -> None:
    sock.sendall(FRAME.pack(len(frame)) + frame)


if __name__ == "__main__":
    main()
