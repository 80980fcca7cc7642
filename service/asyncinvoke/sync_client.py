"""A blocking producer for synchronous code (Django, Flask, anything under gunicorn or
uWSGI): ``SyncClient``, the async ``Client`` behind plain method calls.

Built on the async ``Client`` itself, running on one event loop in one background
thread per process: every call submits a coroutine to that loop and waits for its
answer. So there is one implementation of the contract, of publishing with confirms,
of reconnecting and of the errors, and a connection per process that all threads
share, with publishes from many threads pipelined on it. A blocking AMQP library
(pika's BlockingConnection) is not thread-safe, would need a connection or a lock per
call, and would duplicate all of that.

- **Thread-safe:** the loop serialises everything; callers only wait on futures.
- **Fork-safe:** nothing is connected until the first call (or ``connect()``). A
  process forked after that (gunicorn ``--preload``) forgets its parent's loop, thread
  and socket without touching them, and connects anew on its first call.
- **Reconnecting:** the async client's robust connection; a call made while the
  connection is down raises, as it does there.
- **Never hangs at exit:** the loop thread is a daemon, and an ``atexit`` hook closes
  every client within ``CLOSE_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from asyncinvoke.client import DEFAULT_WINDOW, Client
from asyncinvoke.errors import BrokerUnavailable, SyncClientClosed
from asyncinvoke.nodes import parse_nodes
from asyncinvoke.settings import Settings, from_env, loop_factory
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Page, Task

T = TypeVar("T")

CLOSE_TIMEOUT_S = 5.0  # what closing (also at interpreter exit) may take at most
WAKE_S = 1.0  # how often a waiting caller checks that the loop thread still lives


class _Runtime:
    """One process's event loop thread and the connected async client on it."""

    def __init__(self, settings: Settings):
        self.pid = os.getpid()
        factory = loop_factory(settings.event_loop)
        self.loop = factory() if factory is not None else asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self._serve, name="asyncinvoke-sync-client", daemon=True
        )
        self.client: Client | None = None

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def start(self, settings: Settings) -> None:
        self.thread.start()

        async def open_client() -> Client:
            client = Client(settings=settings)
            await client.connect()
            return client

        try:
            self.client = self.wait(open_client())
        except BaseException:
            self.stop()
            raise

    def wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.get_ident() == self.thread.ident:
            coroutine.close()
            raise RuntimeError("a SyncClient cannot be called from its own event loop")
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        except RuntimeError:  # the loop is closed: the thread ended
            coroutine.close()
            raise BrokerUnavailable("the SyncClient's event loop has stopped") from None
        try:
            while True:
                try:
                    return future.result(timeout=WAKE_S)
                except concurrent.futures.TimeoutError:
                    if not self.thread.is_alive():
                        raise BrokerUnavailable(
                            "the SyncClient's event loop thread died"
                        ) from None
        except BaseException:
            future.cancel()  # a KeyboardInterrupt in the caller cancels the operation too
            raise

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Close the client and end the thread, within ``timeout`` whatever the broker does."""
        client = self.client
        self.client = None
        if client is not None and self.thread.is_alive():
            future = self.submit(client.close())
            try:
                future.result(timeout=timeout)
            except Exception:  # a dead connection or a timeout: the process is leaving anyway
                future.cancel()
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=1.0)


class SyncClient:
    """The async ``Client``'s operations as blocking calls, safe to share between threads.

    Settings come from the ``ASYNCINVOKE_*`` variables unless given. It connects on the
    first call (or ``connect()``), so a module-level instance in a web app made before
    the server forks its workers is fine. Errors are the async client's.
    """

    def __init__(
        self,
        url: str | None = None,
        namespace: str | None = None,
        *,
        settings: Settings | None = None,
    ):
        base = settings or from_env()
        self.settings = base.with_overrides(amqp_url=url, namespace=namespace)
        parse_nodes(self.settings.amqp_url)  # a bad URL list is refused here, not at first use
        self._lock = threading.Lock()
        self._runtime: _Runtime | None = None
        self._closed = False
        _LIVE.add(self)

    # -- lifecycle --------------------------------------------------------------------

    def connect(self) -> None:
        """Connect now rather than on the first call (to fail early on a bad URL)."""
        self._ready()

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Close the connection and stop the loop thread; never takes longer than
        ``timeout`` (plus a second). A closed client refuses further calls."""
        with self._lock:
            self._closed = True
            runtime, self._runtime = self._runtime, None
        if runtime is not None and runtime.pid == os.getpid():
            runtime.stop(timeout)

    def __enter__(self) -> SyncClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _ready(self) -> _Runtime:
        runtime = self._runtime
        if runtime is not None and runtime.pid == os.getpid():
            return runtime
        with self._lock:
            if self._closed:
                raise SyncClientClosed()
            if self._runtime is not None and self._runtime.pid != os.getpid():
                _forget(self._runtime)  # inherited through fork(): never touch its socket
                self._runtime = None
            if self._runtime is None:
                runtime = _Runtime(self.settings)
                runtime.start(self.settings)
                self._runtime = runtime
            return self._runtime

    def _run(self, operation: Callable[[Client], Coroutine[Any, Any, T]]) -> T:
        runtime = self._ready()
        client = runtime.client
        if client is None:
            raise SyncClientClosed()
        return runtime.wait(operation(client))

    async def run_async(self, operation: Callable[[Client], Coroutine[Any, Any, T]]) -> T:
        """Run ``operation`` on this client's loop from another event loop, without
        blocking it (``Function.invoke`` uses this)."""
        runtime = self._runtime
        if runtime is None or runtime.pid != os.getpid():
            runtime = await asyncio.to_thread(self._ready)  # connecting blocks
        client = runtime.client
        if client is None:
            raise SyncClientClosed()
        return await asyncio.wrap_future(runtime.submit(operation(client)))

    # -- the operations ---------------------------------------------------------------

    def invoke(
        self,
        function: str,
        payload: Any = None,
        *,
        delay: float = 0,
        id: str | None = None,
        task: bool | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> str:
        """Hand over one invocation; returns its id once the broker confirmed it."""
        return self._run(
            lambda client: client.invoke(
                function, payload, delay=delay, id=id, task=task, meta=meta
            )
        )

    def invoke_many(
        self,
        invocations: Iterable[tuple[str, Any]],
        *,
        delay: float = 0,
        window: int = DEFAULT_WINDOW,
    ) -> list[str]:
        """Hand over many invocations, pipelined; their ids once all were confirmed."""
        batch = list(invocations)
        return self._run(lambda client: client.invoke_many(batch, delay=delay, window=window))

    def call(
        self,
        function: str,
        payload: Any = None,
        *,
        timeout: float = 30.0,
        id: str | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> Any:
        """Run ``function`` through RabbitMQ and return its result (one attempt)."""
        return self._run(
            lambda client: client.call(function, payload, timeout=timeout, id=id, meta=meta)
        )

    def get_task(self, task_id: str) -> Task | None:
        """The task of a task-mode invocation, or None."""

        async def get(client: Client) -> Task | None:
            return await (await client.tasks()).get(task_id)

        return self._run(get)

    def list_tasks(
        self,
        *,
        function: str | None = None,
        status: Status | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """Tasks, newest first, optionally of one function or in one status."""

        async def list_(client: Client) -> list[Task]:
            store = await client.tasks()
            page: Page = await store.list(function=function, status=status, limit=limit)
            return list(page.tasks)

        return self._run(list_)

    def stop_task(self, task_id: str) -> Task:
        """Stop a task: one not started never starts; a running one is cancelled."""
        return self._run(lambda client: client.stop_task(task_id))

    def rerun_task(self, task_id: str) -> Task:
        """Run an ended task again with its payload, same id, as a new attempt sequence."""
        return self._run(lambda client: client.rerun_task(task_id))


# Every SyncClient of this process, for the fork and exit hooks; weak, so that a client
# dropped by its owner is not kept alive by them.
_LIVE: weakref.WeakSet[SyncClient] = weakref.WeakSet()
# Runtimes inherited through fork(), kept referenced (see _forget).
_INHERITED: list[_Runtime] = []


def _forget(runtime: _Runtime) -> None:
    """Let go of a runtime inherited through fork(), closing this process's copies of its
    file descriptors (the broker's socket, the loop's own) without a word on them: the
    parent's connection goes on, and does not outlive the parent because a child still
    holds its socket. The objects stay referenced so that no finaliser closes those
    numbers again once they have been reused."""
    _INHERITED.append(runtime)
    selector = getattr(runtime.loop, "_selector", None)  # asyncio's loops; not uvloop
    if selector is None:
        return
    for key in list(selector.get_map().values()):
        with contextlib.suppress(OSError):
            os.close(key.fd)
    with contextlib.suppress(OSError, ValueError):
        os.close(selector.fileno())


def _after_fork_in_child() -> None:
    """The child has no loop thread (only the forking thread survives) and must not use
    the parent's socket: every client starts afresh on its next call. A lock a parent's
    thread held at the fork would stay held forever here, so each gets a new one."""
    for client in list(_LIVE):
        client._lock = threading.Lock()
        if client._runtime is not None:
            _forget(client._runtime)
            client._runtime = None


def _close_all_at_exit() -> None:
    for client in list(_LIVE):
        client.close(timeout=CLOSE_TIMEOUT_S)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
