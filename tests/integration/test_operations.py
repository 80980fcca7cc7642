"""Running as a service: sd_notify to systemd, and Prometheus metrics that add up."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import aio_pika
import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncinvoke import Client, contract, subscription, topology
from asyncinvoke.settings import redact_url
from asyncinvoke.worker import Worker
from tests.conftest import AMQP_URL, Namespace, WorkerProcess, collect, running_worker
from tests.support import handlers
from tests.support.infrastructure import require_tool


async def test_the_worker_tells_systemd_ready_watchdog_and_stopping_in_order(
    namespace: Namespace, tmp_path: Path
) -> None:
    functions_file = namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:echo"
    """)
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    received: list[str] = []

    async def until(line: str) -> None:
        async with asyncio.timeout(20):
            while not any(line in message for message in received):
                received.append((await loop.sock_recv(sock, 4096)).decode())

    worker = WorkerProcess(
        namespace, functions_file.path, NOTIFY_SOCKET=address, WATCHDOG_USEC="200000"
    )
    try:
        await worker.start()
        await until("READY=1")
        await until("WATCHDOG=1")
        assert worker.process is not None
        worker.process.terminate()
        await until("STOPPING=1")
        assert await worker.wait_exit(timeout=20) == 0
    finally:
        await worker.kill()
        sock.close()
    order = [
        next(i for i, message in enumerate(received) if key in message)
        for key in ("READY=1", "WATCHDOG=1", "STOPPING=1")
    ]
    assert order == sorted(order)
    assert any("STATUS=" in message and "in flight" in message for message in received)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def test_metrics_agree_with_what_was_sent(namespace: Namespace, amqp) -> None:
    functions_file = namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:echo"

        [functions.broken]
        handler = "tests.support.handlers:always_fail"
        max_retries = 1
        backoff = { initial = 0.05, multiplier = 1.0, max = 0.05, jitter = 0.0 }
    """)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = Worker(namespace.settings, functions_file, metrics_port=port)
    await worker.start()
    try:
        async with Client(settings=namespace.settings) as client:
            await client.invoke_many([("echo", {"i": i}) for i in range(20)])
            await client.invoke_many([("broken", None) for _ in range(3)])
            await client.invoke("echo", None, delay=1)
        channel = await amqp.channel()
        exchange = await channel.get_exchange(namespace.names.invoke)
        for _ in range(2):
            await exchange.publish(aio_pika.Message(b"\xc1garbage"), routing_key="echo")
        failed = await collect(amqp, namespace.names.failed, 5, 30)  # 3 exhausted + 2 invalid
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(10):
                while True:
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                        assert response.status == 200
                        samples = _samples(await response.text())
                    if samples.get(
                        ("asyncinvoke_invocations_total", (("function", "echo"),
                                                           ("outcome", "success")))
                    ) == 21:
                        break
                    await asyncio.sleep(0.05)
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                assert response.status == 200
    finally:
        await worker.stop()
    assert len(failed) == 5

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("asyncinvoke_invocations_total", function="broken", outcome="retry") == 3
    assert value("asyncinvoke_invocations_total", function="broken",
                 outcome="RetriesExhausted") == 3
    assert value("asyncinvoke_retries_total", function="broken") == 3
    assert value("asyncinvoke_failure_records_total", function="broken",
                 condition="RetriesExhausted") == 3
    assert value("asyncinvoke_failure_records_total", function="echo",
                 condition="InvalidMessage") == 2
    assert value("asyncinvoke_attempt_duration_seconds_count", function="echo") == 21
    assert value("asyncinvoke_attempt_duration_seconds_count", function="broken") == 6
    # The delayed invocation and the three retries each started after their due time.
    assert value("asyncinvoke_delay_lateness_seconds_count") == 4
    assert value("asyncinvoke_broker_connected", node=redact_url(AMQP_URL)) == 1
    assert value("asyncinvoke_in_flight", function="echo") == 0


async def test_exported_definitions_load_into_the_broker_as_declare_would_make_them(
    namespace: Namespace, tmp_path: Path
) -> None:
    functions_file = namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        delivery_limit = 7
    """)
    definitions = tmp_path / "definitions.json"
    env = namespace.env()
    exported = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "asyncinvoke", "topology", "export", "--config",
         str(functions_file.path), str(definitions)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    require_tool("rabbitmqctl")
    # The broker's CLI runs as another user: give it a readable copy outside tmp_path.
    handle, readable = tempfile.mkstemp(prefix="asyncinvoke-defs-", suffix=".json", dir="/tmp")
    os.close(handle)
    try:
        shutil.copyfile(definitions, readable)
        os.chmod(readable, 0o644)
        imported = await asyncio.to_thread(
            subprocess.run, ["rabbitmqctl", "import_definitions", readable],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        os.unlink(readable)
    assert imported.returncode == 0, imported.stderr
    async with asyncio.timeout(30):  # the import runs asynchronously in the broker
        while True:
            connection = await aio_pika.connect(AMQP_URL)
            try:
                depth = await topology.queue_depth(
                    connection, namespace.names.function_queue("echo")
                )
            finally:
                await connection.close()
            if depth is not None:
                break
            await asyncio.sleep(0.2)
    # Declaring over the imported topology clashes nowhere (same arguments everywhere),
    # and the imported topology routes: an invocation runs.
    handlers.CALLS["echo"].clear()
    async with running_worker(namespace, functions_file), Client(
        settings=namespace.settings
    ) as client:
        inv_id = await client.invoke("echo", {"via": "definitions"})
        async with asyncio.timeout(10):
            while not handlers.CALLS["echo"]:
                await asyncio.sleep(0.01)
    assert handlers.CALLS["echo"][0][0] == inv_id


UNITS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=[unit.name for unit in UNITS])
def test_the_systemd_units_verify(unit: Path, tmp_path: Path) -> None:
    require_tool("systemd-analyze")
    # ExecStart must name an existing executable: point it at this checkout's command.
    command = Path(sys.executable).with_name("asyncinvoke")
    text = unit.read_text().replace("/opt/asyncinvoke/bin/asyncinvoke", str(command))
    copy = tmp_path / unit.name
    copy.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown key" not in result.stderr, result.stderr
    assert "Type=notify" in text and "WatchdogSec=" in text


def test_the_container_files_run_commands_and_flags_that_exist() -> None:
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    files = (deploy / "Dockerfile").read_text() + (deploy / "compose.yaml").read_text()
    files += (deploy / "container" / "entrypoint.sh").read_text()
    files += "".join(unit.read_text() for unit in UNITS)
    for command, flags in {
        "worker": ["--metrics-port", "--metrics-host", "--config"],
        "gateway": ["--host", "--port", "--config"],
    }.items():
        shown = subprocess.run(
            [sys.executable, "-m", "asyncinvoke", command, "--help"],
            capture_output=True, text=True, timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        for flag in flags:
            if flag in files:
                assert flag in shown.stdout, f"{command} has no {flag}, yet deploy/ uses it"


async def test_a_function_queue_deleted_under_the_worker_is_consumed_again_once_back(
    namespace: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker cancels a consumer whose queue is deleted; once the queue is declared
    again, the worker consumes it again without a restart."""
    monkeypatch.setattr(subscription, "RESUBSCRIBE_PAUSE_S", 0.2)
    results = namespace.queue_name("results")
    functions_file = namespace.functions(f"""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{results}"
    """)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        async with connection.channel() as channel:
            await channel.declare_queue(results, durable=True, arguments={"x-queue-type": "quorum"})
        async with running_worker(namespace, functions_file) as worker:
            async with connection.channel() as channel:
                await channel.queue_delete(namespace.names.function_queue("echo"))
            async with asyncio.timeout(10):
                while any(
                    consumer.tag is not None
                    for consumer in worker.consumers._consumers
                    if consumer.queue == namespace.names.function_queue("echo")
                ):
                    await asyncio.sleep(0.05)
            async with connection.channel() as channel:
                await topology.declare(channel, namespace.names, functions_file.functions.values())
            async with Client(settings=namespace.settings) as client:
                invocation_id = await client.invoke("echo", {"back": True})
            got = await collect(connection, results, 1, timeout=30)
            assert contract.unpack(got[0].body)["requestContext"]["requestId"] == invocation_id
            assert worker.ready()
    finally:
        await connection.close()


async def test_a_worker_on_uvloop_runs_invocations(namespace: Namespace) -> None:
    results = namespace.queue_name("results")
    functions_file = namespace.functions(f"""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{results}"
    """)
    connection = await aio_pika.connect(AMQP_URL)
    worker = WorkerProcess(namespace, functions_file.path, ASYNCINVOKE_EVENT_LOOP="uvloop")
    try:
        async with connection.channel() as channel:
            await channel.declare_queue(
                results, durable=True, arguments={"x-queue-type": "quorum"}
            )
        await worker.start()
        started = next(line for line in worker.lines if '"worker_started"' in line)
        assert '"event_loop":"uvloop"' in started
        async with Client(settings=namespace.settings) as client:
            ids = set(await client.invoke_many([("echo", {"n": n}) for n in range(20)]))
        got = await collect(connection, results, 20, timeout=30)
        assert {contract.unpack(m.body)["requestContext"]["requestId"] for m in got} == ids
    finally:
        await worker.kill()
        await connection.close()
