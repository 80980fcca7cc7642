"""The ``asyncinvoke`` command. Each command group is a module; all are thin:
parse, call, print (a table for people, ``--json`` for scripts)."""

from __future__ import annotations

import sys

import click

from asyncinvoke.cli._common import run_cli
from asyncinvoke.cli.dlq import dlq
from asyncinvoke.cli.function import function
from asyncinvoke.cli.gateway import gateway, serve
from asyncinvoke.cli.invoke import invoke
from asyncinvoke.cli.task import task
from asyncinvoke.cli.topology import topology
from asyncinvoke.cli.trigger import trigger
from asyncinvoke.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="asyncinvoke")
def cli() -> None:
    """Asynchronous function invocation on RabbitMQ.

    Settings come from ASYNCINVOKE_* environment variables (AMQP_URL, NAMESPACE,
    CONFIG, ...); flags override them.
    """


cli.add_command(worker)
cli.add_command(topology)
cli.add_command(invoke)
cli.add_command(dlq)
cli.add_command(task)
cli.add_command(function)
cli.add_command(gateway)
cli.add_command(serve)
cli.add_command(trigger)


def main() -> None:
    sys.exit(run_cli(cli))
