"""One image, several roles, run for real with podman: a worker and a gateway container
serve invocations over HTTP (the official FC SDK, signed with keys from a secret file)
and over AMQP; the dead-letter tool runs as a one-off container; the image is non-root
and works on a read-only root filesystem."""

from __future__ import annotations

import asyncio
import io
import json
import re
import uuid

import orjson
import pytest
from alibabacloud_fc20230330 import models as fc
from alibabacloud_fc20230330.client import Client as FcClient
from alibabacloud_tea_openapi import models as openapi
from alibabacloud_tea_openapi.exceptions import ClientException
from darabonba.runtime import RuntimeOptions

from asyncinvoke import Client
from tests.conftest import AMQP_URL
from tests.container.conftest import (
    USER_ID,
    Deployment,
    Image,
    Results,
    podman,
    write_functions,
)

# The first test builds the image (and, on a fresh machine, the base: a few minutes).
pytestmark = pytest.mark.timeout(600)

ACCESS_KEY_ID = "container-key"
ACCESS_KEY_SECRET = "container-secret-" + uuid.uuid4().hex


def _sdk(port: int, secret: str = ACCESS_KEY_SECRET) -> FcClient:
    return FcClient(
        openapi.Config(
            access_key_id=ACCESS_KEY_ID,
            access_key_secret=secret,
            endpoint=f"127.0.0.1:{port}",
            protocol="http",
            read_timeout=30_000,
        )
    )


def _invoke(client: FcClient, kind: str, body: bytes) -> fc.InvokeFunctionResponse:
    return client.invoke_function_with_options(
        "work",
        fc.InvokeFunctionRequest(body=io.BytesIO(body)),
        fc.InvokeFunctionHeaders(x_fc_invocation_type=kind),
        RuntimeOptions(),
    )


def test_the_image_is_built_on_the_local_base_and_make_image_reports_its_size(
    image: Image,
) -> None:
    if image.build_log:  # empty when an image of these very sources was already there
        assert re.search(rf"{re.escape(image.name)}: \d+ MB \(base ", image.build_log)
    [inspected] = json.loads(podman("image", "inspect", image.name))
    config = inspected["Config"]
    assert config["User"] == f"{USER_ID}:{USER_ID}"
    assert config["StopSignal"] == "SIGTERM"
    assert inspected["Healthcheck"]["Test"] == ["CMD", "asyncinvoke-healthcheck"]
    assert config["Entrypoint"] == ["asyncinvoke-entrypoint"]
    # No installer in the final stage: the service's venv has no pip.
    listing = podman("run", "--rm", "--network=none", "--ulimit", "nofile=1024:4096",
                     "--ulimit", "nproc=1024:2048", "--entrypoint", "ls", image.name,
                     "/opt/asyncinvoke/bin")
    assert "asyncinvoke" in listing.split()
    assert not [name for name in listing.split() if name.startswith("pip")]


async def test_worker_and_gateway_containers_serve_http_and_amqp_and_dlq_runs_once(
    deployment: Deployment, amqp_connection
) -> None:
    results = deployment.namespace.queue_name("results")
    write_functions(deployment, f"""
        [functions.work]
        handler = "container_handlers:work"
        on_success = "queue:{results}"

        [functions.refuse]
        handler = "container_handlers:refuse"
        max_retries = 0
    """)
    secrets = deployment.folder.parent / "secrets"
    secrets.mkdir()
    secrets.chmod(0o755)
    (secrets / "access_keys").write_text(f"{ACCESS_KEY_ID} {ACCESS_KEY_SECRET}\n")
    (secrets / "amqp_url").write_text(AMQP_URL)
    for secret in secrets.iterdir():
        secret.chmod(0o644)
    worker = deployment.run("worker")
    # The gateway's broker URL and keys come from secret files only: its environment
    # names a port where nothing listens.
    gateway = deployment.run(
        "gateway",
        amqp_url="amqp://guest:guest@127.0.0.1:1/",
        ASYNCINVOKE_AMQP_URL_FILE="/run/secrets/amqp_url",
        ASYNCINVOKE_ACCESS_KEYS_FILE="/run/secrets/access_keys",
        extra=("-v", f"{secrets}:/run/secrets:ro"),
    )
    async with Results(amqp_connection, results) as seen:
        await asyncio.gather(worker.ready(), gateway.ready())
        sdk = _sdk(gateway.port)

        # HTTP, Sync: the result is the response body.
        answer = await asyncio.to_thread(_invoke, sdk, "Sync", b'{"n": 1}')
        assert answer.status_code == 200
        assert orjson.loads(answer.body.read()) == {"worker": worker.name, "n": 1}

        # HTTP, Async, and AMQP: the success records arrive in the results queue.
        accepted = await asyncio.to_thread(_invoke, sdk, "Async", b'{"n": 2}')
        assert accepted.status_code == 202
        http_id = accepted.headers["x-fc-request-id"]
        async with Client(url=deployment.namespace.settings.amqp_url,
                          namespace=deployment.namespace.ns) as client:
            amqp_id = await client.invoke("work", {"n": 3})
            called = await client.call("work", {"n": 4}, timeout=30)
            refused_id = await client.invoke("refuse", {"n": 5})
        assert called == {"worker": worker.name, "n": 4}
        await seen.until({http_id, amqp_id}, timeout=30)
        assert seen.payloads[http_id] == {"worker": worker.name, "n": 2}
        assert seen.payloads[amqp_id] == {"worker": worker.name, "n": 3}

        # The dead-letter tool as a one-off container shows the refused invocation.
        listed = None
        for _ in range(50):
            listed = deployment.one_off("dlq", "list", "--json")
            if refused_id in listed.stdout:
                break
            await asyncio.sleep(0.2)
        assert listed is not None and listed.returncode == 0, listed and listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
        assert [row for row in rows if refused_id in json.dumps(row)], listed.stdout

    # The gateway refuses a request whose signature is wrong: the keys came from the file.
    with pytest.raises(ClientException) as refused:
        await asyncio.to_thread(_invoke, _sdk(gateway.port, "not-the-secret"), "Async", b"{}")
    assert refused.value.code == "SignatureNotMatch"


async def test_the_container_runs_as_non_root_on_a_read_only_root_filesystem(
    deployment: Deployment,
) -> None:
    write_functions(deployment, """
        [functions.work]
        handler = "container_handlers:work"
        task_mode = true
    """)
    worker = deployment.run("worker")
    await worker.ready()
    assert podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", worker.name) == "true"
    assert podman("exec", worker.name, "id", "-u") == USER_ID
    for path in ("/opt/asyncinvoke/written", "/etc/asyncinvoke/written", "/written"):
        refused = podman("exec", worker.name, "sh", "-c", f"touch {path} 2>&1 || true")
        assert "Read-only file system" in refused, (path, refused)
    # The one writable place is the task store's directory (a volume):
    # a task-mode worker opened its SQLite file there.
    assert "tasks.db" in podman("exec", worker.name, "ls", "/var/lib/asyncinvoke")



async def test_a_worker_container_runs_worker_processes_under_its_supervisor(
    deployment: Deployment, amqp_connection
) -> None:
    """``ASYNCINVOKE_PROCESSES=2`` in the container: the image's entrypoint runs the
    supervisor, ready once both worker processes are, and invocations run."""
    results = deployment.namespace.queue_name("results")
    write_functions(deployment, f"""
        [functions.work]
        handler = "container_handlers:work"
        on_success = "queue:{results}"
    """)
    worker = deployment.run("worker", ASYNCINVOKE_PROCESSES="2")
    async with Results(amqp_connection, results) as seen:
        await worker.ready()
        logs = worker.logs()
        ready = [json.loads(line) for line in logs.splitlines()
                 if '"worker_process_ready"' in line or '"supervisor_ready"' in line]
        assert sorted(entry["process"] for entry in ready
                      if entry["event"] == "worker_process_ready") == [0, 1], logs[-3000:]
        assert [entry["processes"] for entry in ready
                if entry["event"] == "supervisor_ready"] == [2], logs[-3000:]
        async with Client(url=deployment.namespace.settings.amqp_url,
                          namespace=deployment.namespace.ns) as client:
            ids = await client.invoke_many([("work", {"n": n}) for n in range(20)])
        await seen.until(set(ids), timeout=30)
        assert {seen.payloads[i]["n"] for i in ids} == set(range(20))  # type: ignore[index]
