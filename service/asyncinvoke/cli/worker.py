from __future__ import annotations

import click

from asyncinvoke import supervisor
from asyncinvoke.cli._common import (
    app_option,
    config_option,
    load_functions,
    load_settings,
    run,
    shutdown_grace_option,
)
from asyncinvoke.errors import AsyncInvokeError
from asyncinvoke.settings import parse_processes
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
@click.option(
    "--processes",
    "processes_text",
    default=None,
    metavar="N|auto",
    help="Worker processes under one supervisor; auto: one per CPU "
    "(default $ASYNCINVOKE_PROCESSES or 1).",
)
def worker(
    config_path: str | None,
    app_ref: str | None,
    only: tuple[str, ...],
    shutdown_grace: float | None,
    metrics_port: int | None,
    metrics_host: str,
    processes_text: str | None,
) -> None:
    """Run a worker: consume the functions' queues and run their invocations."""
    processes = None if processes_text is None else parse_processes(processes_text, "--processes")
    settings = load_settings(
        config_path=config_path, shutdown_grace_s=shutdown_grace, processes=processes
    )
    functions_file = load_functions(settings, config_path, app_ref)
    worker = Worker(
        settings,
        functions_file,
        only=list(only),
        metrics_port=None if settings.processes > 1 else metrics_port,
        metrics_host=metrics_host,
    )
    if settings.processes > 1:
        # The file, the names and the timeouts were checked above (Worker's constructor):
        # a bad file fails here once, not in every child.
        boss = supervisor.Supervisor(
            settings,
            config_path=settings.config_path,
            only=list(only),
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        if run(boss.run()) != 0:
            raise AsyncInvokeError("a worker process did not stop cleanly (see the log)")
        return
    parent = supervisor.parent_fd()
    run(worker.run() if parent is None else supervisor.run_supervised(worker, parent))
