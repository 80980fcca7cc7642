from __future__ import annotations

import click

from asyncinvoke.cli._common import (
    app_option,
    config_option,
    load_functions,
    load_settings,
    run,
    shutdown_grace_option,
)
from asyncinvoke.worker import Worker


@click.command()
@config_option
@app_option
@click.option(
    "--function",
    "only",
    multiple=True,
    metavar="NAME",
    help="Serve only this function (repeatable); default: all in the file.",
)
@shutdown_grace_option
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    metavar="P",
    help="Serve /metrics, /healthz and /readyz on this port.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    metavar="H",
    help="Address for --metrics-port (0.0.0.0 in a container).",
)
def worker(
    config_path: str | None,
    app_ref: str | None,
    only: tuple[str, ...],
    shutdown_grace: float | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run a worker: consume the functions' queues and run their invocations."""
    settings = load_settings(config_path=config_path, shutdown_grace_s=shutdown_grace)
    functions_file = load_functions(settings, config_path, app_ref)
    worker = Worker(
        settings,
        functions_file,
        only=list(only),
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    run(worker.run())
