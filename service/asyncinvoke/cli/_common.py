"""What every command shares: settings from env + flags, errors as one line."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.text import Text

from asyncinvoke import functions, tracing
from asyncinvoke import settings as settings_module
from asyncinvoke.errors import AsyncInvokeError
from asyncinvoke.observability import configure_logging, get_logger

T = TypeVar("T")

config_option = click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="Functions file (default: $ASYNCINVOKE_CONFIG or functions.toml).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
shutdown_grace_option = click.option(
    "--shutdown-grace",
    type=float,
    default=None,
    metavar="S",
    help="Seconds in-flight attempts may finish after SIGTERM "
    f"(default {settings_module.DEFAULT_SHUTDOWN_GRACE_S:g}).",
)


app_option = click.option(
    "--app",
    "app_ref",
    metavar="MODULE:APP",
    help="Functions defined in code (an asyncinvoke.App); a functions file given with "
    "--config or ASYNCINVOKE_CONFIG overrides them key by key.",
)


def console() -> Console:
    """Rich output for people. Piped into a file or another program, tables get room to
    keep ids on one line instead of wrapping at 80 columns."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def cells(*values: object) -> list[Text]:
    """Table cells shown literally. Values from messages, stores and files are never read
    as Rich markup: an error text with ``[/path]`` in it would otherwise end the command
    with a MarkupError, and ``[bold]`` would change what the operator sees."""
    return [value if isinstance(value, Text) else Text(str(value)) for value in values]


def when(timestamp_ms: int) -> str:
    """The one way the CLI shows a moment: ISO 8601 in UTC to the millisecond
    (``2026-11-29T22:23:03.120Z``), as ``dlq --since`` takes it back."""
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def load_settings(**overrides: Any) -> settings_module.Settings:
    settings = settings_module.from_env(tty=sys.stderr.isatty()).with_overrides(**overrides)
    configure_logging(settings.log_format)
    # Traces go where the standard OTEL_* variables say (docs/tracing.md); nothing without them.
    exporter = tracing.configure_from_env()
    if exporter is not None:
        get_logger(component="cli").info("tracing_configured", exporter=exporter)
    return settings


def load_functions(
    settings: settings_module.Settings, config_path: str | None, app_ref: str | None
) -> functions.FunctionsFile:
    """The functions file; with ``--app``, the app's functions under the file, if one was
    named (a functions.toml that merely lies in the current folder is not read)."""
    if app_ref is None:
        return functions.load(settings.config_path)
    from asyncinvoke.app import load_app

    file = config_path or os.environ.get("ASYNCINVOKE_CONFIG") or None
    return load_app(app_ref).functions_file(file)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on the event loop ASYNCINVOKE_EVENT_LOOP names (asyncio's own by default)."""
    try:
        event_loop = settings_module.from_env().event_loop
        factory = settings_module.loop_factory(event_loop)
    except AsyncInvokeError:
        coroutine.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def run_cli(group: click.Group) -> int:
    """Run the command; an AsyncInvokeError is one line on stderr and exit status 1."""
    try:
        group.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except AsyncInvokeError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
