"""``asyncinvoke gateway`` (the HTTP gateway alone) and ``asyncinvoke serve`` (worker and
gateway in one process and one event loop, for a single host)."""

from __future__ import annotations

import asyncio
import os
import signal

import click

from asyncinvoke.cli._common import (
    app_option,
    config_option,
    load_functions,
    load_settings,
    run,
    shutdown_grace_option,
)
from asyncinvoke.gateway import DEFAULT_HOST, DEFAULT_PORT, Gateway, load_access_keys
from asyncinvoke.systemd import Notifier, supervised
from asyncinvoke.worker import Worker

host_option = click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    metavar="H",
    help="Address to listen on; without access keys only loopback is used.",
)
port_option = click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    metavar="P",
    help="Port to listen on (0: any free port).",
)


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


@click.command()
@config_option
@app_option
@host_option
@port_option
def gateway(config_path: str | None, app_ref: str | None, host: str, port: int) -> None:
    """Serve Function Compute's OpenAPI over HTTP: invoke (Async and Sync), async tasks.

    Requests are checked against ASYNCINVOKE_ACCESS_KEYS (ID:SECRET,...) or
    ASYNCINVOKE_ACCESS_KEYS_FILE (one 'ID SECRET' a line); with neither, the gateway
    accepts unsigned requests and listens on loopback only.
    """
    settings = load_settings(config_path=config_path)
    functions_file = load_functions(settings, config_path, app_ref)
    keys = load_access_keys(os.environ)

    async def go() -> None:
        await Gateway(settings, functions_file, keys).run(host, port, _stop_on_signals())

    run(go())


@click.command()
@config_option
@app_option
@host_option
@port_option
@shutdown_grace_option
def serve(
    config_path: str | None,
    app_ref: str | None,
    host: str,
    port: int,
    shutdown_grace: float | None,
) -> None:
    """Run a worker and the HTTP gateway in one process, for a single host."""
    settings = load_settings(config_path=config_path, shutdown_grace_s=shutdown_grace)
    functions_file = load_functions(settings, config_path, app_ref)
    keys = load_access_keys(os.environ)

    async def go() -> None:
        stop = _stop_on_signals()
        # One process, one READY: once both the worker and the gateway are up.
        worker = Worker(settings, functions_file, notifier=Notifier({}))
        http = Gateway(settings, functions_file, keys, metrics=worker.metrics, ready=worker.ready)
        try:
            async with supervised(Notifier(), worker.status) as supervision:
                await worker.start()
                await http.start(host, port)
                supervision.ready(f"{worker.status()}; gateway on {http.url}")
                await stop.wait()
        finally:
            # The gateway first: no new invocations while the worker winds down.
            await http.stop()
            await worker.stop()

    run(go())
