"""Functions defined in code: ``app = App()`` and ``@app.function(...)``.

The decorator's keywords are the functions file's keys, checked by the same code with
the same messages; a functions file given as well overrides them key by key
(``functions.combine``). The decorator returns the function itself, unchanged but for
two added methods, so it keeps its signature for type checkers and for the worker's
runner (sync or async), and a worker finds it as the file would name it:
``module:qualname``. Only registered functions run: a message names a function, never
code.

``f.invoke(...)`` and ``f.invoke_sync(...)`` are ``Client.invoke(f's name, ...)``: the
same envelope, to the same queue.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

from asyncinvoke import functions
from asyncinvoke.client import Client
from asyncinvoke.errors import ConfigError
from asyncinvoke.settings import Settings
from asyncinvoke.sync_client import SyncClient

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
T = TypeVar("T")


class Function(Protocol[P, R_co]):
    """What ``@app.function`` returns: the function as written, plus ``invoke`` and
    ``invoke_sync``, which hand an invocation of it to RabbitMQ."""

    function_name: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    async def invoke(
        self,
        payload: Any = None,
        *,
        delay: float = 0,
        id: str | None = None,
        task: bool | None = None,
        meta: Mapping[str, str] | None = None,
        client: Client | None = None,
    ) -> str: ...

    def invoke_sync(
        self,
        payload: Any = None,
        *,
        delay: float = 0,
        id: str | None = None,
        task: bool | None = None,
        meta: Mapping[str, str] | None = None,
        client: SyncClient | None = None,
    ) -> str: ...


class _Invoker(Generic[P, R]):
    """The two methods ``@app.function`` adds, bound to the app and the function's name."""

    def __init__(self, app: App, name: str):
        self.app = app
        self.name = name

    async def invoke(
        self,
        payload: Any = None,
        *,
        delay: float = 0,
        id: str | None = None,
        task: bool | None = None,
        meta: Mapping[str, str] | None = None,
        client: Client | None = None,
    ) -> str:
        """Invoke asynchronously through ``client``, or the app's own shared connection."""
        if client is not None:
            return await client.invoke(self.name, payload, delay=delay, id=id, task=task, meta=meta)

        def publish(shared: Client) -> Coroutine[Any, Any, str]:
            return shared.invoke(self.name, payload, delay=delay, id=id, task=task, meta=meta)

        return await self.app.sync_client.run_async(publish)

    def invoke_sync(
        self,
        payload: Any = None,
        *,
        delay: float = 0,
        id: str | None = None,
        task: bool | None = None,
        meta: Mapping[str, str] | None = None,
        client: SyncClient | None = None,
    ) -> str:
        """Invoke from synchronous code; returns once the broker confirmed it."""
        return (client or self.app.sync_client).invoke(
            self.name, payload, delay=delay, id=id, task=task, meta=meta
        )


class App:
    """A set of functions defined in code, served with ``asyncinvoke worker --app
    module:app``. ``url``, ``namespace`` and ``settings`` are for invoking them from
    this process (``f.invoke_sync``); the worker takes its own from the environment."""

    def __init__(
        self,
        *,
        url: str | None = None,
        namespace: str | None = None,
        settings: Settings | None = None,
    ):
        self._client_args = (url, namespace, settings)
        self._tables: dict[str, dict[str, Any]] = {}
        self._origins: dict[str, str] = {}
        self._sync_client: SyncClient | None = None
        self._lock = threading.Lock()

    @property
    def tables(self) -> Mapping[str, Mapping[str, Any]]:
        """Each registered function as a table of the functions file's keys."""
        return self._tables

    @property
    def sync_client(self) -> SyncClient:
        """The process's shared client of this app, made on first use."""
        with self._lock:
            if self._sync_client is None:
                url, namespace, settings = self._client_args
                self._sync_client = SyncClient(url, namespace, settings=settings)
            return self._sync_client

    def close(self) -> None:
        """Close the shared client (it is also closed at interpreter exit)."""
        with self._lock:
            client, self._sync_client = self._sync_client, None
        if client is not None:
            client.close()

    @overload
    def function(self, fn: Callable[P, R], /) -> Function[P, R]: ...

    @overload
    def function(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        max_event_age: int | None = None,
        concurrency: int | None = None,
        delivery_limit: int | None = None,
        backoff: Mapping[str, float] | None = None,
        task_mode: bool | None = None,
        on_success: str | None = None,
        on_failure: str | None = None,
        executor: Literal["thread", "process"] | None = None,
    ) -> Callable[[Callable[P, R]], Function[P, R]]: ...

    def function(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        **keys: Any,
    ) -> Any:
        """Register ``fn`` as a function (its ``__name__`` unless ``name`` is given).

        The keywords are the functions file's keys (``timeout``, ``max_retries``,
        ``max_event_age``, ``concurrency``, ``delivery_limit``, ``backoff``,
        ``task_mode``, ``on_success``, ``on_failure``, ``executor``); a keyword left out
        takes the file's ``[defaults]`` or the built-in default. A bad value raises
        ConfigError here, with the message the file would get.
        """
        given = {key: value for key, value in keys.items() if value is not None}

        def register(target: Callable[..., Any]) -> Any:
            return self._register(target, name, given)

        return register if fn is None else register(fn)

    def _register(self, fn: Callable[..., Any], name: str | None, keys: dict[str, Any]) -> Any:
        module = getattr(fn, "__module__", None) or "?"
        origin = code_origin(module)
        if not inspect.isfunction(fn):
            raise ConfigError(
                f"@app.function takes a function (def or async def), got {fn!r}", path=origin
            )
        name = name if name is not None else fn.__name__
        if "<locals>" in fn.__qualname__:
            raise ConfigError(
                "defined inside another function: a worker imports a handler by module and "
                "name, so define it at module level",
                path=origin,
                function=name,
            )
        if name in self._tables:
            raise ConfigError(
                f"registered twice (as {self._tables[name]['handler']!r} before)",
                path=origin,
                function=name,
            )
        table = {"handler": f"{module}:{fn.__qualname__}", **keys}
        functions.check_code_table(origin, name, table)
        self._tables[name] = table
        self._origins[name] = origin
        invoker: _Invoker[Any, Any] = _Invoker(self, name)
        fn.function_name = name  # type: ignore[attr-defined]
        fn.invoke = invoker.invoke  # type: ignore[attr-defined]
        fn.invoke_sync = invoker.invoke_sync  # type: ignore[attr-defined]
        return fn

    def functions_file(self, path: str | Path | None = None) -> functions.FunctionsFile:
        """The effective functions: these, overridden key by key by the file at ``path``."""
        first = next(iter(self._tables.values()), None)
        module = first["handler"].partition(":")[0] if first else ""
        return functions.combine(
            self._tables, origins=self._origins, origin_path=_module_file(module), file=path
        )


def code_origin(module: str) -> str:
    """How messages and ``topology show`` name values set in code."""
    return f"{module} (@app.function)"


def _module_file(module: str) -> Path:
    file = getattr(sys.modules.get(module), "__file__", None)
    return Path(file) if file else Path.cwd()


def load_app(reference: str) -> App:
    """``package.module:attribute`` → the App there (``--app``). The current folder is
    importable, as with ``python -m``, after everything else on ``sys.path``."""
    module_name, colon, attribute = reference.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigError(f"--app {reference!r}: use package.module:attribute, such as tasks:app")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # a SyntaxError or anything the module raises at import
        raise ConfigError(
            f"--app {reference!r}: cannot import module {module_name!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if not isinstance(target, App):
        raise ConfigError(
            f"--app {reference!r}: {attribute!r} in {module_name!r} is not an asyncinvoke.App "
            f"(got {type(target).__name__})"
        )
    return target
