"""What the CLI prints for people: text from handlers, records and stores is shown as it
is (never read as Rich markup), and URLs from the functions file without their passwords.

Each command runs as the operator runs it: ``python -m asyncinvoke ...`` in a subprocess,
against the real broker and a real SQLite task store.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aio_pika
import orjson

from asyncinvoke import contract
from asyncinvoke.tasks.sqlite import SqliteTaskStore
from asyncinvoke.tasks.states import Status
from tests.conftest import ROOT, Namespace, write_functions
from tests.integration.test_dlq import NOOP_FUNCTIONS, declare, failure_record, publish_records

# A handler's error text that Rich would read as a stray closing tag and a style.
HOSTILE = "no such file [/path] while [bold]writing[/bold] [link=http://x]"
NOW_MS = 1_700_000_000_000


def _run(namespace: Namespace, args: tuple[str, ...], env: dict[str, str]) -> (
    subprocess.CompletedProcess[str]
):
    return subprocess.run(
        [sys.executable, "-m", "asyncinvoke", *args],
        env=namespace.env(COLUMNS="250", **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def cli(namespace: Namespace, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    result = await asyncio.to_thread(_run, namespace, args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


async def test_task_get_and_list_show_error_and_payload_texts_literally(
    namespace: Namespace,
) -> None:
    path = namespace.tmp_path / "tasks.db"
    store = SqliteTaskStore(str(path))
    await store.open()
    try:
        await store.create("t1", "[red]fn", contract.pack(HOSTILE), NOW_MS)
        await store.claim("t1", 0, NOW_MS + 1, 60_000)
        await store.transition("t1", Status.FAILED, NOW_MS + 2, HOSTILE, error=HOSTILE)
    finally:
        await store.close()
    env = {"ASYNCINVOKE_TASK_STORE": f"sqlite:///{path}"}

    shown = await cli(namespace, "task", "get", "t1", **env)
    # The error line, the payload line and the event's detail: each exactly as stored.
    assert shown.stdout.count(HOSTILE) == 3, shown.stdout
    assert "[red]fn" in shown.stdout

    listed = await cli(namespace, "task", "list", **env)
    assert HOSTILE in listed.stdout and "[red]fn" in listed.stdout, listed.stdout


async def test_dlq_list_stats_and_show_print_record_texts_literally(
    namespace: Namespace,
) -> None:
    connection = await aio_pika.connect(namespace.settings.amqp_url)
    try:
        await declare(namespace, connection, NOOP_FUNCTIONS)
        record = failure_record(1, "alpha", condition="[/condition]")
        record["responsePayload"] = {"errorType": "[bold]OSError", "errorMessage": HOSTILE}
        await publish_records(connection, namespace.names, [record])
    finally:
        await connection.close()

    listed = await cli(namespace, "dlq", "list")
    assert "[/condition]" in listed.stdout, listed.stdout
    assert f"[bold]OSError: {HOSTILE}" in listed.stdout

    stats = await cli(namespace, "dlq", "stats")
    assert "[/condition]" in stats.stdout, stats.stdout

    shown = await cli(namespace, "dlq", "show", "r000001")
    assert "[/condition]" in shown.stdout and HOSTILE in shown.stdout, shown.stdout


async def test_topology_show_prints_urls_without_their_passwords(namespace: Namespace) -> None:
    config = write_functions(
        namespace.tmp_path,
        """
        [functions.hook]
        url = "http://u:hunter2@[fe80::1]/"
        on_success = "https://v:hunter3@h/ok"
        on_failure = "http://w:hunter4@h/bad"
        """,
    )
    namespace.function_names.add("hook")
    env = {"ASYNCINVOKE_CONFIG": str(config)}

    table = await cli(namespace, "topology", "show", **env)
    assert "hunter" not in table.stdout + table.stderr
    # Shown literally too: "[fe80::1]" is not markup. (The table is 200 columns wide
    # when printed to a pipe, so the URLs are short enough to show whole.)
    assert "http://u:***@[fe80::1]/" in table.stdout, table.stdout
    assert "https://v:***@h/ok" in table.stdout and "http://w:***@h/bad" in table.stdout

    document = await cli(namespace, "topology", "show", "--json", **env)
    assert "hunter" not in document.stdout
    hook = orjson.loads(document.stdout)["functions"]["hook"]
    assert hook["target"] == "http://u:***@[fe80::1]/"
    assert hook["on_failure"] == "http://w:***@h/bad"


async def test_topology_show_lists_each_functions_service(namespace: Namespace) -> None:
    config = write_functions(
        namespace.tmp_path,
        """
        [defaults]
        service = "shop"

        [functions.order]
        handler = "m:f"

        [functions.greet]
        handler = "m:f"
        service = "default"
        """,
    )
    namespace.function_names.update({"order", "greet"})
    env = {"ASYNCINVOKE_CONFIG": str(config)}
    document = await cli(namespace, "topology", "show", "--json", **env)
    shown = orjson.loads(document.stdout)
    assert shown["services"] == {"default": ["greet"], "shop": ["order"]}
    assert shown["functions"]["order"]["service"] == "shop"
    table = await cli(namespace, "topology", "show", **env)
    assert "services (FC 2.0 API): default (1), shop (1)" in table.stdout, table.stdout
