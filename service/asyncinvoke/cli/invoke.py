from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from asyncinvoke import record_codec
from asyncinvoke.cli._common import load_settings, run
from asyncinvoke.client import Client


def _payload(payload: str | None, payload_file: str | None) -> Any:
    if payload is not None and payload_file is not None:
        raise click.UsageError("give --payload or --payload-file, not both")
    if payload_file is not None:
        try:
            return Path(payload_file).read_bytes()
        except OSError as exc:
            raise click.BadParameter(
                f"{payload_file}: {exc.strerror}", param_hint="--payload-file"
            ) from None
    if payload is None:
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not valid JSON ({exc}); quote strings: --payload '\"text\"'", param_hint="--payload"
        ) from None


@click.command()
@click.argument("function")
@click.option("--payload", metavar="JSON", help="The event, as JSON.")
@click.option("--payload-file", metavar="FILE", help="The event: this file's bytes, unchanged.")
@click.option(
    "--delay",
    type=click.IntRange(0),
    default=0,
    metavar="S",
    help="Start no earlier than S seconds from now (0..3600).",
)
@click.option("--id", "invocation_id", metavar="ID", help="Invocation id (default: generated).")
@click.option("--task", is_flag=True, help="Task mode: record its status; the id is used once.")
@click.option("--sync", is_flag=True, help="Wait for the result and print it (one attempt).")
@click.option(
    "--timeout",
    type=float,
    default=60.0,
    show_default=True,
    metavar="S",
    help="With --sync: seconds to wait for the result.",
)
def invoke(
    function: str,
    payload: str | None,
    payload_file: str | None,
    delay: int,
    invocation_id: str | None,
    task: bool,
    sync: bool,
    timeout: float,
) -> None:
    """Invoke FUNCTION; prints the invocation id once the broker has it.

    With --sync, runs it now and prints its result (JSON, or the text/bytes as they are).
    """
    if sync and (delay or task):
        raise click.UsageError("--sync runs now and is not tracked: drop --delay and --task")
    settings = load_settings()
    event = _payload(payload, payload_file)

    async def go() -> Any:
        async with Client(settings=settings) as client:
            if sync:
                return await client.call(function, event, timeout=timeout, id=invocation_id)
            return await client.invoke(
                function, event, delay=delay, id=invocation_id, task=task or None
            )

    result = run(go())
    if not sync or isinstance(result, str):
        click.echo(result)
    elif isinstance(result, bytes):
        click.echo(result, nl=False)
    else:
        click.echo(record_codec.json_or_rendering(result).decode())
