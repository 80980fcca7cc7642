"""The image, built for real on a local Debian base, and containers run with podman.

No image registry is reachable here, so the base comes from Debian's packages
(deploy/base-image.sh, debootstrap; about a minute, once: it is kept in podman's storage
under a name that carries the hash of its recipe). The image is built from this work
tree by deploy/image.sh (what `make image` runs), tagged by a hash of its inputs, and
removed at the end of the session together with the layers its build made; only the
base and the dependencies' stage, both tagged by content, stay as a cache.

Containers share the host's network (podman here cannot set up a bridge), so they reach
the shared RabbitMQ on 127.0.0.1 and each gets a free port of its own. Every container a
test starts is removed when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiohttp
import pytest

from asyncinvoke import contract
from tests.conftest import AMQP_URL, ROOT, Namespace
from tests.support.infrastructure import require_tool

# The flags measured on these machines: crun fails on hybrid cgroups, and the default
# ulimits are refused.
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
RUN_FLAGS = [
    "--network=host",
    "--ulimit", "nofile=1024:4096",
    "--ulimit", "nproc=1024:2048",
    "--read-only",
]
IMAGE_INPUTS = [
    "deploy/Dockerfile", "deploy/image.sh", "deploy/container", "examples/functions.toml",
    "examples/handlers.py", "pyproject.toml", "README.md", "service/asyncinvoke",
]
BUILD_TIMEOUT_S = 600.0
START_TIMEOUT_S = 60.0
USER_ID = "10001"

# The handlers the containers run, mounted read-only beside their functions file.
HANDLERS = '''
import asyncio
import json
import os

from asyncinvoke import NonRetryableError


def _event(event):
    return json.loads(event) if isinstance(event, bytes) else event


async def work(event, context):
    """Sleeps event["seconds"] times HANDLER_PACE (0 makes a worker fast), then says
    which worker ran it."""
    event = _event(event)
    await asyncio.sleep(float(event.get("seconds", 0)) * float(os.environ["HANDLER_PACE"]))
    return {"worker": os.environ["WORKER_NAME"], "n": event.get("n")}


async def refuse(event, context):
    raise NonRetryableError("refused in the container")
'''


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> str:
    done = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _inputs_hash(base: str) -> str:
    digest = hashlib.sha256(podman("image", "inspect", "--format", "{{.Id}}", base).encode())
    for name in IMAGE_INPUTS:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class Image:
    name: str
    base: str
    build_log: str


def _images() -> dict[str, tuple[str, bool]]:
    """Every image in podman's storage, intermediate ones too: id -> (tags, dangling)."""
    shape = "{{.ID}} {{.Dangling}} {{.Repository}}:{{.Tag}}"
    listed = podman("images", "--all", "--no-trunc", "--format", shape)
    images: dict[str, tuple[str, bool]] = {}
    for line in listed.splitlines():
        image_id, dangling, tag = line.split(" ", 2)
        tags = images.get(image_id, ("", False))[0] + ("" if "<none>" in tag else tag)
        images[image_id] = (tags, dangling == "true")
    return images


def _remove_what_the_build_left(before: dict[str, tuple[str, bool]]) -> None:
    """The images the build made besides the tagged caches (the project's stage), and a
    dependencies' stage that a new one replaced under its tag: the dangling ones, until
    none is left (removing one may leave its parent dangling). The layers under a tagged
    cache stay: they are its build cache."""
    for _ in range(20):
        leftovers = [
            image_id
            for image_id, (tags, dangling) in _images().items()
            if dangling and (image_id not in before or "asyncinvoke-deps" in before[image_id][0])
        ]
        if not leftovers:
            return
        for image_id in leftovers:
            podman("rmi", image_id, check=False)


@pytest.fixture(scope="session")
def image() -> Iterator[Image]:
    """The image of the current sources on the local Debian base."""
    for tool in ("podman", "runc", "debootstrap"):
        require_tool(tool)
    base = subprocess.run(
        ["bash", str(ROOT / "deploy" / "base-image.sh")],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
    )
    assert base.returncode == 0, f"the local base image failed: {base.stderr[-3000:]}"
    base_name = base.stdout.strip().splitlines()[-1]
    name = f"localhost/asyncinvoke-test:{_inputs_hash(base_name)}"
    before = _images()
    log = ""
    if not _exists(name):
        built = subprocess.run(
            ["bash", str(ROOT / "deploy" / "image.sh")],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
            env={**os.environ, "BASE": base_name, "TAG": name},
        )
        assert built.returncode == 0, f"make image failed: {built.stderr[-3000:]}"
        log = built.stderr
    try:
        yield Image(name, base_name, log)
    finally:
        podman("rmi", "--force", name, check=False)
        _remove_what_the_build_left(before)


def _exists(name: str) -> bool:
    return subprocess.run([*PODMAN, "image", "exists", name], check=False).returncode == 0


@dataclass
class Container:
    """One running container of the image."""

    name: str
    port: int

    def logs(self) -> str:
        done = subprocess.run(
            [*PODMAN, "logs", self.name], capture_output=True, text=True, timeout=60
        )
        return done.stdout + done.stderr

    def state(self, field_name: str) -> str:
        return podman("inspect", "--format", f"{{{{.State.{field_name}}}}}", self.name)

    def healthcheck(self) -> bool:
        """Run the image's HEALTHCHECK once (no systemd timers here); True if it passed."""
        done = subprocess.run(
            [*PODMAN, "healthcheck", "run", self.name],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode in (0, 1), f"healthcheck run failed: {done.stderr}"
        return done.returncode == 0

    def stop(self, timeout: int) -> None:
        """``podman stop``: the image's STOPSIGNAL, then SIGKILL after ``timeout`` s."""
        podman("stop", "--time", str(timeout), self.name, timeout=timeout + 30)

    def kill(self) -> None:
        """``podman kill``: SIGKILL."""
        podman("kill", self.name)

    def health(self) -> str:
        return self.state("Health.Status")

    async def ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until /readyz answers 200 on the container's port."""
        url = f"http://127.0.0.1:{self.port}/readyz"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as answer:
                        if answer.status == 200:
                            return
                if self.state("Running") != "true":
                    break
                await asyncio.sleep(0.2)
        pytest.fail(f"{self.name} was not ready within {timeout} s:\n{self.logs()[-4000:]}")

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.state("Running") == "true":
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} still runs after {timeout} s")
            await asyncio.sleep(0.2)
        return int(self.state("ExitCode"))


@dataclass
class Deployment:
    """A functions file and handlers in a folder mounted read-only, and the containers
    started from the image against one namespace; ``close`` removes every container."""

    image: Image
    namespace: Namespace
    folder: Path
    containers: list[Container] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def run(
        self, role: str, *args: str, amqp_url: str = AMQP_URL, extra: tuple[str, ...] = (),
        **env: str,
    ) -> Container:
        port = free_port()
        name = f"{self.namespace.ns}-{role}-{uuid.uuid4().hex[:6]}"
        environment = {
            "ASYNCINVOKE_AMQP_URL": amqp_url,
            "ASYNCINVOKE_NAMESPACE": self.namespace.ns,
            "ASYNCINVOKE_HTTP_PORT": str(port),
            "HANDLER_PACE": "1",
            "WORKER_NAME": name,
            **env,
        }
        flags = [flag for key, value in environment.items() for flag in ("-e", f"{key}={value}")]
        # The task store's directory, the one place the service writes: a volume of its
        # own, which takes the image's owner of the directory (a tmpfs here would not).
        self.volumes.append(f"{name}-state")
        podman(
            "run", "--detach", "--name", name, *RUN_FLAGS, *flags, *extra,
            "-v", f"{name}-state:/var/lib/asyncinvoke",
            "-v", f"{self.folder}:/etc/asyncinvoke:ro",
            self.image.name, role, *args,
        )
        container = Container(name, port)
        self.containers.append(container)
        return container

    def one_off(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``podman run --rm`` of a command such as ``dlq list``, to its end."""
        return subprocess.run(
            [
                *PODMAN, "run", "--rm", *RUN_FLAGS,
                "-e", f"ASYNCINVOKE_AMQP_URL={AMQP_URL}",
                "-e", f"ASYNCINVOKE_NAMESPACE={self.namespace.ns}",
                "-v", f"{self.folder}:/etc/asyncinvoke:ro",
                self.image.name, *args,
            ],
            capture_output=True, text=True, timeout=120,
        )

    def close(self) -> None:
        for container in self.containers:
            podman("rm", "--force", "--time", "0", container.name, check=False)
        for volume in self.volumes:
            podman("volume", "rm", "--force", volume, check=False)


@pytest.fixture
def deployment(image: Image, namespace: Namespace, tmp_path: Path) -> Iterator[Deployment]:
    folder = tmp_path / "etc"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "container_handlers.py").write_text(textwrap.dedent(HANDLERS))
    deployment = Deployment(image, namespace, folder)
    try:
        yield deployment
    finally:
        deployment.close()


def write_functions(deployment: Deployment, body: str) -> None:
    """The functions file the containers read (/etc/asyncinvoke/functions.toml)."""
    path = deployment.folder / "functions.toml"
    path.write_text(textwrap.dedent(body))
    deployment.namespace.functions(path.read_text())  # registers the names for cleanup


class Results:
    """Success records from a queue, as they arrive: which worker ran which invocation."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, queue: str):
        self.connection = connection
        self.queue = queue
        self.runs: Counter[str] = Counter()
        self.worker_of: dict[str, str] = {}
        self.payloads: dict[str, object] = {}
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Results:
        self.channel = await self.connection.channel()
        await self.channel.set_qos(prefetch_count=500)
        queue = await self.channel.declare_queue(
            self.queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        self._queue = queue
        self.tag = await queue.consume(self._on_message)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._queue.cancel(self.tag)
        await self.channel.close()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        record = contract.unpack(message.body)
        invocation_id = record["requestContext"]["requestId"]
        self.runs[invocation_id] += 1
        payload = record["responsePayload"]
        self.payloads[invocation_id] = payload
        if isinstance(payload, dict) and "worker" in payload:
            self.worker_of[invocation_id] = payload["worker"]
        await message.ack()
        self._changed.set()

    async def until_count(self, count: int, timeout: float) -> None:
        """Until ``count`` invocations have a record."""
        async with asyncio.timeout(timeout):
            while len(self.runs) < count:
                self._changed.clear()
                await self._changed.wait()

    async def until(self, ids: set[str], timeout: float) -> None:
        """Until every invocation in ``ids`` has a record, or fail naming how many lack one."""
        try:
            async with asyncio.timeout(timeout):
                while not ids <= set(self.runs):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"{len(ids - set(self.runs))} of {len(ids)} invocations never ran")


@pytest.fixture
async def amqp_connection() -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(AMQP_URL)
    yield connection
    await connection.close()
