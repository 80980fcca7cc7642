"""The functions file (TOML) → frozen ``FunctionSpec`` values, validated at start.

Every message names the file, the function and the key, so a bad file is fixed
in one reading. Loading a handler's module is separate (``load_handler``): only
handlers configured here ever run, never anything a message names.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncinvoke.errors import ConfigError, InvalidTrigger
from asyncinvoke.ladder import HOLD_LIMIT_MS
from asyncinvoke.triggers import definitions as trigger_definitions
from asyncinvoke.triggers.definitions import Trigger

FUNCTION_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")
HANDLER_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
# FC 2.0's service names; no dot, which separates a service from its qualifier in a path.
SERVICE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$")

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_EVENT_AGE_S = 86400
DEFAULT_CONCURRENCY = 16
DEFAULT_DELIVERY_LIMIT = 5
DEFAULT_SERVICE = "default"
MAX_RETRIES_LIMIT = 8
# How long throttles (HTTP 429/503, no connection, ``Throttled``) are retried, counted from
# the first: 5 hours, as Function Compute's. At most a day, within the ladder's reach.
DEFAULT_THROTTLE_BUDGET_S = 18000
THROTTLE_BUDGET_LIMIT_S = 86400
MAX_EVENT_AGE_LIMIT_S = 604800
# Where a sync handler runs: a thread of the worker process, or a process of its own.
EXECUTORS = ("thread", "process")


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 1.0
    multiplier: float = 2.0
    max: float = 300.0
    jitter: float = 0.2


DEFAULT_BACKOFF = Backoff()


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a record goes: ``queue:NAME``, ``function:NAME`` or an HTTP(S) URL."""

    kind: str  # "queue" | "function" | "http"
    target: str

    def __str__(self) -> str:
        return self.target if self.kind == "http" else f"{self.kind}:{self.target}"


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    name: str
    handler: str | None = None
    url: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    max_event_age_s: int = DEFAULT_MAX_EVENT_AGE_S
    concurrency: int = DEFAULT_CONCURRENCY
    backoff: Backoff = DEFAULT_BACKOFF
    task_mode: bool = False
    on_success: Destination | None = None
    on_failure: Destination | None = None  # None: the failure queue {ns}.failed
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    service: str = DEFAULT_SERVICE  # FC 2.0's grouping: /2016-08-15/services/{service}/...
    executor: str = "thread"
    triggers: tuple[Trigger, ...] = ()  # [[functions.NAME.triggers]]
    throttle_budget_s: int = DEFAULT_THROTTLE_BUDGET_S

    def policy(self) -> dict[str, Any]:
        """The effective policy, as ``topology show`` prints it."""
        return {
            "kind": "handler" if self.handler else "http",
            "target": self.handler or self.url,
            "timeout": self.timeout_s,
            "max_retries": self.max_retries,
            "max_event_age": self.max_event_age_s,
            "concurrency": self.concurrency,
            "backoff": {
                "initial": self.backoff.initial,
                "multiplier": self.backoff.multiplier,
                "max": self.backoff.max,
                "jitter": self.backoff.jitter,
            },
            "task_mode": self.task_mode,
            "on_success": str(self.on_success) if self.on_success else None,
            "on_failure": str(self.on_failure) if self.on_failure else "(failure queue)",
            "delivery_limit": self.delivery_limit,
            "service": self.service,
            "executor": self.executor,
            "throttle_budget": self.throttle_budget_s,
        }


@dataclass(frozen=True, slots=True)
class FunctionsFile:
    path: Path
    functions: Mapping[str, FunctionSpec] = field(default_factory=dict)
    # Functions from code and a file (``combine``): function → key → where its value
    # came from. Empty for a file alone.
    sources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def services(self) -> dict[str, list[str]]:
        """Each service (FC 2.0's grouping) with its functions, both sorted by name."""
        return services_of(self.functions.values())


def services_of(specs: Iterable[FunctionSpec]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for spec in sorted(specs, key=lambda spec: (spec.service, spec.name)):
        grouped.setdefault(spec.service, []).append(spec.name)
    return grouped


_KEYS = {
    "handler",
    "url",
    "timeout",
    "max_retries",
    "max_event_age",
    "concurrency",
    "backoff",
    "task_mode",
    "on_success",
    "on_failure",
    "delivery_limit",
    "service",
    "executor",
    "triggers",
    "throttle_budget",
}
_DEFAULT_KEYS = _KEYS - {"handler", "url", "triggers"}
_BACKOFF_KEYS = {"initial", "multiplier", "max", "jitter"}


class _Reader:
    """Validates one table of the file, naming path, function and key on error."""

    def __init__(self, path: str, function: str, table: Mapping[str, Any]):
        self.path = path
        self.function = function
        self.table = table

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, path=self.path, function=self.function, key=key)

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {value!r}")
        if not math.isfinite(value) or not low <= value <= high:
            raise self.error(key, f"must be between {low:g} and {high:g}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise self.error(key, f"must be between {low} and {high}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.table.get(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return str(value)

    def backoff(self, default: Backoff) -> Backoff:
        raw = self.table.get("backoff")
        if raw is None:
            return default
        if not isinstance(raw, dict):
            raise self.error("backoff", "must be a table like { initial = 1.0, multiplier = 2.0 }")
        unknown = set(raw) - _BACKOFF_KEYS
        if unknown:
            raise self.error(
                "backoff", f"unknown key(s) {sorted(unknown)}; known: {sorted(_BACKOFF_KEYS)}"
            )
        # Errors name the nested key: "key 'backoff.jitter': must be between 0 and 1".
        sub = _Reader(self.path, self.function, {f"backoff.{k}": v for k, v in raw.items()})
        return Backoff(
            initial=sub.number("backoff.initial", default.initial, 0.0, 3600.0),
            multiplier=sub.number("backoff.multiplier", default.multiplier, 1.0, 100.0),
            max=sub.number("backoff.max", default.max, 0.0, 86400.0),
            jitter=sub.number("backoff.jitter", default.jitter, 0.0, 1.0),
        )

    def triggers(self) -> tuple[Trigger, ...]:
        raw = self.table.get("triggers", [])
        if not isinstance(raw, list) or not all(isinstance(table, dict) for table in raw):
            raise self.error("triggers", "must be an array of tables: [[functions.NAME.triggers]]")
        found: dict[str, Trigger] = {}
        for table in raw:
            try:
                trigger = trigger_definitions.from_table(self.function, table, self.path)
            except InvalidTrigger as exc:
                where = f"triggers.{exc.trigger}.{exc.field}" if exc.trigger else "triggers.name"
                raise self.error(where, exc.reason) from None
            if trigger.name in found:
                raise self.error(f"triggers.{trigger.name}", "a second trigger of that name")
            found[trigger.name] = trigger
        return tuple(found.values())

    def service(self, default: str) -> str:
        value = self.table.get("service", default)
        if not isinstance(value, str) or not SERVICE_NAME_RE.fullmatch(value):
            raise self.error(
                "service", f"must be a name matching {SERVICE_NAME_RE.pattern}, got {value!r}"
            )
        return value

    def destination(self, key: str) -> Destination | None:
        raw = self.table.get(key)
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise self.error(key, f"must be a string, got {raw!r}")
        try:
            return parse_destination(raw)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None


def parse_destination(raw: str) -> Destination:
    """``queue:NAME`` | ``function:NAME`` | ``http(s)://URL``, or ValueError saying the forms."""
    if raw.startswith(("http://", "https://")):
        return Destination("http", raw)
    kind, sep, target = raw.partition(":")
    if sep and kind == "queue" and QUEUE_NAME_RE.fullmatch(target):
        return Destination("queue", target)
    if sep and kind == "function" and FUNCTION_NAME_RE.fullmatch(target):
        return Destination("function", target)
    raise ValueError(
        f"{raw!r} is not a destination; use queue:NAME, function:NAME or an http(s):// URL"
    )


def _spec(
    path: str,
    name: str,
    table: Mapping[str, Any],
    defaults: FunctionSpec,
    *,
    is_defaults: bool = False,
) -> FunctionSpec:
    reader = _Reader(path, name, table)
    known = _DEFAULT_KEYS if is_defaults else _KEYS
    unknown = set(table) - known
    if unknown:
        key = sorted(unknown)[0]
        raise reader.error(key, f"unknown key; known keys: {', '.join(sorted(known))}")
    handler, url = table.get("handler"), table.get("url")
    if not is_defaults and (handler is None) == (url is None):
        raise reader.error("handler", "a function needs exactly one of 'handler' or 'url'")
    if handler is not None and (not isinstance(handler, str) or not HANDLER_RE.fullmatch(handler)):
        raise reader.error("handler", f"must look like 'package.module:callable', got {handler!r}")
    if url is not None and (
        not isinstance(url, str) or not url.startswith(("http://", "https://"))
    ):
        raise reader.error("url", f"must be an http:// or https:// URL, got {url!r}")
    return FunctionSpec(
        name=name,
        handler=handler,
        url=url,
        timeout_s=reader.number("timeout", defaults.timeout_s, 0.001, 86400.0),
        max_retries=reader.integer("max_retries", defaults.max_retries, 0, MAX_RETRIES_LIMIT),
        max_event_age_s=reader.integer(
            "max_event_age", defaults.max_event_age_s, 1, MAX_EVENT_AGE_LIMIT_S
        ),
        concurrency=reader.integer("concurrency", defaults.concurrency, 1, 10000),
        backoff=reader.backoff(defaults.backoff),
        task_mode=reader.boolean("task_mode", defaults.task_mode),
        on_success=reader.destination("on_success") or defaults.on_success,
        on_failure=reader.destination("on_failure") or defaults.on_failure,
        delivery_limit=reader.integer("delivery_limit", defaults.delivery_limit, 1, 1000),
        service=reader.service(defaults.service),
        executor=reader.choice("executor", defaults.executor, EXECUTORS),
        triggers=reader.triggers(),
        throttle_budget_s=reader.integer(
            "throttle_budget", defaults.throttle_budget_s, 1, THROTTLE_BUDGET_LIMIT_S
        ),
    )


def parse(text: str, path: str = "<string>") -> FunctionsFile:
    """Parse and validate the functions file's text."""
    raw_defaults, raw_functions = _tables(_document(text, path), path)
    if not raw_functions:
        raise ConfigError("no functions: add at least one [functions.NAME] table", path=path)
    defaults = _spec(path, "[defaults]", raw_defaults, FunctionSpec(""), is_defaults=True)
    specs = {name: _spec(path, name, table, defaults) for name, table in raw_functions.items()}
    return FunctionsFile(path=Path(path), functions=specs)


def _document(text: str, path: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from None


def _tables(
    document: Mapping[str, Any], path: str
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The file's [defaults] and [functions.NAME] tables, their shape and names checked."""
    unknown = set(document) - {"defaults", "functions"}
    if unknown:
        raise ConfigError(
            f"unknown table(s) {sorted(unknown)}; use [defaults] and [functions.NAME]", path=path
        )
    raw_defaults = document.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        raise ConfigError("[defaults] must be a table", path=path)
    raw_functions = document.get("functions", {})
    if not isinstance(raw_functions, dict):
        raise ConfigError("no functions: add at least one [functions.NAME] table", path=path)
    for name, table in raw_functions.items():
        check_name(name, path)
        if not isinstance(table, dict):
            raise ConfigError("must be a table", path=path, function=name)
    return raw_defaults, raw_functions


def check_name(name: str, path: str) -> None:
    if not FUNCTION_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"bad function name; names match {FUNCTION_NAME_RE.pattern}",
            path=path,
            function=name,
        )


# -- functions defined in code (asyncinvoke.App), and a file over them ----------------------

SOURCE_DEFAULT = "default"


def check_code_table(origin: str, name: str, table: Mapping[str, Any]) -> None:
    """Validate one function defined in code as the file's table would be; the error
    names ``origin`` where the file's would name the file."""
    check_name(name, origin)
    _spec(origin, name, table, FunctionSpec(""))


def combine(
    code: Mapping[str, Mapping[str, Any]],
    *,
    origins: Mapping[str, str],
    origin_path: Path,
    file: str | Path | None = None,
) -> FunctionsFile:
    """Functions defined in code (as tables of the file's keys), with the functions file
    at ``file``, if any, over them key by key.

    A key set in the file's table for a function wins; then the code's value; then the
    file's ``[defaults]``; then the built-in default. ``handler`` and ``url`` count as one
    key (what runs): a file that names either replaces the code's handler. The file may
    add functions of its own. ``sources`` says, per function and key, where the value
    came from: the file's path, ``PATH [defaults]``, the code's origin, or ``default``.
    """
    raw_defaults: dict[str, Any] = {}
    raw_functions: dict[str, dict[str, Any]] = {}
    where = str(origin_path)
    if file is not None:
        where = str(file)
        raw_defaults, raw_functions = _tables(_document(_read(Path(file)), where), where)
    if not code and not raw_functions:
        raise ConfigError("no functions: register one with @app.function", path=where)
    defaults = _spec(where, "[defaults]", raw_defaults, FunctionSpec(""), is_defaults=True)
    for name, table in code.items():
        _spec(origins[name], name, table, defaults)  # a code error names the code
    specs: dict[str, FunctionSpec] = {}
    sources: dict[str, dict[str, str]] = {}
    for name in [*code, *(name for name in raw_functions if name not in code)]:
        code_table = dict(code.get(name, {}))
        file_table = raw_functions.get(name, {})
        if {"handler", "url"} & set(file_table):
            code_table.pop("handler", None)
            code_table.pop("url", None)
        merged = {**code_table, **file_table}
        told_by = where if name in raw_functions else origins[name]
        specs[name] = _spec(told_by, name, merged, defaults)
        sources[name] = {
            key: where if key in file_table
            else origins[name] if key in code_table
            else f"{where} [defaults]" if key in raw_defaults
            else SOURCE_DEFAULT
            for key in sorted(_KEYS)
            if key in merged or key in _DEFAULT_KEYS
        }
    return FunctionsFile(path=Path(where), functions=specs, sources=sources)


def check_consumer_timeout(
    specs: Iterable[FunctionSpec], consumer_timeout_s: float, path: str = ""
) -> None:
    """Refuse a function whose delivery could stay unacknowledged past the broker's
    consumer_timeout: the broker would close the worker's channel in the middle of the
    attempt and hand the invocation to another worker, again and again.

    A delivery waits up to the hold (the last fraction of a second of a delay) and then
    runs for up to the function's timeout before it is acknowledged.
    """
    hold_s = HOLD_LIMIT_MS / 1000
    for spec in specs:
        longest_s = spec.timeout_s + hold_s
        if longest_s <= consumer_timeout_s:
            continue
        needed_s = math.ceil(longest_s)
        raise ConfigError(
            f"a timeout of {spec.timeout_s:g} s, plus up to {hold_s:g} s that a delivery "
            f"is held before it runs, is longer than the broker's consumer_timeout of "
            f"{consumer_timeout_s:g} s: the broker would close the channel mid-attempt and "
            f"run the invocation again. Raise consumer_timeout in rabbitmq.conf to at least "
            f"{needed_s * 1000} (milliseconds) and set "
            f"ASYNCINVOKE_BROKER_CONSUMER_TIMEOUT={needed_s} to match, or lower this "
            f"function's timeout to {consumer_timeout_s - hold_s:g} s or less",
            path=path,
            function=spec.name,
            key="timeout",
        )


def load(path: str | Path) -> FunctionsFile:
    """Read and validate the functions file at ``path``."""
    return parse(_read(Path(path)), str(path))


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "file not found; pass --config or set ASYNCINVOKE_CONFIG", path=str(file)
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(file)) from None


def load_handler(spec: FunctionSpec, config_dir: Path | None = None) -> Callable[..., Any]:
    """Import the configured handler's module and take the callable from it.

    The functions file's folder is importable too, but after everything else on
    ``sys.path``: a module dropped into a writable config folder cannot shadow the
    standard library or an installed package that the worker (or a handler) imports.
    """
    assert spec.handler is not None
    if config_dir is not None and str(config_dir) not in sys.path:
        sys.path.append(str(config_dir))
    module_name, _, attr_path = spec.handler.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # a SyntaxError or anything the module raises at import
        raise ConfigError(
            f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}",
            function=spec.name,
            key="handler",
        ) from None
    if config_dir is not None:
        _refuse_shadowed(spec, module_name, config_dir)
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise ConfigError(
                f"module {module_name!r} has no attribute {attr_path!r}",
                function=spec.name,
                key="handler",
            ) from None
    if not callable(target):
        raise ConfigError(f"{spec.handler!r} is not callable", function=spec.name, key="handler")
    return target  # type: ignore[no-any-return]


def _refuse_shadowed(spec: FunctionSpec, module_name: str, config_dir: Path) -> None:
    """The handler's module sits beside the functions file, but a module of the same name
    earlier on ``sys.path`` was imported instead: say so, rather than run other code."""
    top = module_name.split(".")[0]
    folder = config_dir.resolve()
    beside = [path for path in (folder / f"{top}.py", folder / top) if path.exists()]
    module = sys.modules.get(top)
    if not beside or module is None:
        return
    origin = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), "")
    # A module file, a package's __init__.py, or a namespace package's folder.
    if origin and {Path(origin).resolve(), Path(origin).resolve().parent} & set(beside):
        return
    raise ConfigError(
        f"module {top!r} was imported from {origin or 'a built-in module'}, not from "
        f"{beside[0]}: a module of that name installed or earlier on sys.path comes first; "
        "rename the one beside the functions file",
        function=spec.name,
        key="handler",
    )
