"""Live function configuration over the configuration store: what workers, gateways and
the CLI share.

``LiveConfig`` joins the functions file (the base) with the store's documents of kinds
``async-config`` and ``concurrency``: ``effective(name)`` is the configuration in force,
``listen`` hears every function whose configuration changed, and the put/get/delete
operations validate (``model``), refuse unknown functions, and write through the store.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from asyncinvoke.docstore import Change, DocumentStore, Entry
from asyncinvoke.errors import FunctionNotConfigured, InvalidConfig
from asyncinvoke.functions import SOURCE_DEFAULT, FunctionsFile
from asyncinvoke.liveconfig import model
from asyncinvoke.liveconfig.model import ASYNC_CONFIG, CONCURRENCY, Effective, Stored
from asyncinvoke.observability import get_logger

log = get_logger(component="liveconfig")
Listener = Callable[[str, Effective], None]
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20


def _stored(entry: Entry | None) -> Stored | None:
    if entry is None:
        return None
    return Stored(entry.document, entry.version, entry.created_ms, entry.modified_ms)


def file_sources(functions_file: FunctionsFile) -> dict[str, dict[str, str]]:
    """Per function, where each overridable key's file value came from: the file's table,
    its ``[defaults]``, code (``--app``), or the built-in default."""
    if functions_file.sources:
        return {name: dict(keys) for name, keys in functions_file.sources.items()}
    path = str(functions_file.path)
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {name: {} for name in functions_file.functions}
    defaults = document.get("defaults", {})
    tables = document.get("functions", {})
    sources: dict[str, dict[str, str]] = {}
    for name in functions_file.functions:
        table = tables.get(name, {})
        sources[name] = {
            key: path
            if key in table
            else f"{path} [defaults]"
            if key in defaults
            else SOURCE_DEFAULT
            for key in model.FILE_KEYS.values()
        }
    return sources


class LiveConfig:
    """The functions file's functions with the namespace's live configuration over them."""

    def __init__(self, store: DocumentStore, functions_file: FunctionsFile):
        self.store = store
        self.path = str(functions_file.path)
        self.base = dict(functions_file.functions)
        self.base_sources = file_sources(functions_file)
        try:
            self.file_modified_ms = int(Path(self.path).stat().st_mtime * 1000)
        except OSError:
            self.file_modified_ms = 0
        self._listeners: list[Listener] = []
        # Each function's configuration in force, built once per change: the gateway asks
        # for it on every invocation.
        self._cache: dict[str, Effective] = {}
        self._unsubscribe = store.subscribe(self._on_change)

    def close(self) -> None:
        self._unsubscribe()

    # -- reading -------------------------------------------------------------------------

    def known(self, name: str) -> None:
        if name not in self.base:
            raise FunctionNotConfigured(name, self.path)

    def effective(self, name: str) -> Effective:
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        self.known(name)
        live = self._cache[name] = model.effective(
            self.base[name],
            self.base_sources.get(name, {}),
            _stored(self.store.get(ASYNC_CONFIG, name)),
            _stored(self.store.get(CONCURRENCY, name)),
        )
        return live

    def all(self) -> dict[str, Effective]:
        return {name: self.effective(name) for name in sorted(self.base)}

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(function, effective)`` whenever a function's live configuration
        changes (on the event loop; it must not block). Returns the call that stops it."""
        self._listeners.append(listener)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return stop

    def _on_change(self, change: Change) -> None:
        if change.kind not in (ASYNC_CONFIG, CONCURRENCY) or change.name not in self.base:
            return
        self._cache.pop(change.name, None)
        live = self.effective(change.name)
        log.info(
            "config_changed",
            function=change.name,
            kind=change.kind,
            version=change.version,
            deleted=change.entry is None,
            paused=live.paused,
        )
        for listener in list(self._listeners):
            try:
                listener(change.name, live)
            except Exception:
                log.exception("config_listener_failed", function=change.name)

    def list_page(
        self, function: str | None, limit: int | None, next_token: str | None
    ) -> tuple[list[Effective], str | None]:
        """Every known function's configuration by name (FC's ListAsyncInvokeConfigs):
        ``function`` filters, ``next_token`` is the first name of the next page."""
        limit = DEFAULT_LIST_LIMIT if limit is None else limit
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidConfig(
                "limit", f"limit must be an integer from 1 to {MAX_LIST_LIMIT}, got {limit}"
            )
        names = sorted(self.base) if not function else [function] if function in self.base else []
        if next_token:
            names = [name for name in names if name >= next_token]
        page, rest = names[:limit], names[limit:]
        return [self.effective(name) for name in page], (rest[0] if rest else None)

    # -- writing -------------------------------------------------------------------------

    async def put_async_config(
        self, name: str, body: object, qualifier: str | None = None
    ) -> Effective:
        """PutAsyncInvokeConfig: validate, store; the configuration in force once stored
        (a later writer's, when one came after)."""
        model.check_qualifier(qualifier)
        self.known(name)
        document = model.parse_async_config(body)
        await self.store.put(ASYNC_CONFIG, name, document)
        return self.effective(name)

    async def delete_async_config(self, name: str, qualifier: str | None = None) -> bool:
        """DeleteAsyncInvokeConfig: back to the file's values. Whether one was stored."""
        model.check_qualifier(qualifier)
        self.known(name)
        return await self.store.delete(ASYNC_CONFIG, name) is not None

    async def put_concurrency(self, name: str, body: object) -> Effective:
        self.known(name)
        document = model.parse_concurrency(body)
        await self.store.put(CONCURRENCY, name, document)
        return self.effective(name)

    async def delete_concurrency(self, name: str) -> bool:
        self.known(name)
        return await self.store.delete(CONCURRENCY, name) is not None

    def stored_documents(self, name: str) -> Mapping[str, Any]:
        """The API's documents for ``name`` as stored (the CLI's ``--json`` shows them)."""
        self.known(name)
        shown: dict[str, Any] = {}
        for kind in (ASYNC_CONFIG, CONCURRENCY):
            entry = self.store.get(kind, name)
            if entry is not None:
                shown[kind] = {"document": dict(entry.document), "version": entry.version}
        return shown
