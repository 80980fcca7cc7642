"""A RabbitMQ node of a test's own, for tests that disrupt the broker.

Stopping the application, raising a resource alarm or restarting a node would hurt
every other test using the shared broker at 5672. This starts a fresh node from a
fresh data directory, on free ports, as the ``rabbitmq`` user (the node refuses to
run as root and reads the Erlang cookie from that user's home), and removes it at
the end. ``rabbitmqctl -n NODE`` then drives that node alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RABBITMQ_HOME = "/var/lib/rabbitmq"  # the rabbitmq user's home: its Erlang cookie
START_TIMEOUT_S = 90.0
CTL_TIMEOUT_S = 60.0
# The broker configuration asyncinvoke expects (rabbitmq/rabbitmq.conf), minus what a
# single test node must not take from it (the replica count of a 3-node cluster).
CONFIG = """\
listeners.tcp.default = {port}
loopback_users = none
consumer_timeout = 7200000
vm_memory_high_watermark.relative = 0.6
log.console = false
log.file.level = warning
"""
# With the management plugin (``start(management=True)``): its HTTP API on a free port,
# and statistics every 500 ms rather than 5 s, so a test sees a change within a second.
MANAGEMENT_CONFIG = """\
management.tcp.ip = 127.0.0.1
management.tcp.port = {port}
collect_statistics_interval = 500
"""


class BrokerNotAvailable(Exception):
    """rabbitmq-server is not installed here, or the node did not start."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrivateBroker:
    """One running node: its AMQP URL, and ``ctl`` for rabbitmqctl against it."""

    node: str
    port: int
    base: Path
    management_port: int | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def management_url(self) -> str:
        """The management HTTP API's base URL (only with ``start(management=True)``)."""
        if self.management_port is None:
            raise RuntimeError(f"node {self.node} was started without the management plugin")
        return f"http://guest:guest@127.0.0.1:{self.management_port}/"

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT_S) -> str:
        done = subprocess.run(
            ["rabbitmqctl", "-n", self.node, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=RABBITMQ_HOME,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {self.node} {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def raise_memory_alarm(self) -> None:
        """Every node's memory is above a watermark this low: publishers are blocked."""
        self.ctl("set_vm_memory_high_watermark", "0.000001")

    def clear_memory_alarm(self) -> None:
        self.ctl("set_vm_memory_high_watermark", "0.6")

    def queue_counts(self) -> dict[str, tuple[int, int]]:
        """(ready, unacknowledged) of every queue on the node, by name."""
        out = self.ctl(
            "list_queues", "-q", "--no-table-headers",
            "name", "messages_ready", "messages_unacknowledged",
        )
        counts = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3:
                counts[parts[0]] = (int(parts[1]), int(parts[2]))
        return counts

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup", timeout=START_TIMEOUT_S)

    def discard(self) -> None:
        """Kill the node at once and remove its data: for a node whose state nobody
        needs any more (a clean ``stop`` takes seconds)."""
        pid_file = self.base / "node.pid"
        if pid_file.exists():
            subprocess.run(["kill", "-9", pid_file.read_text().strip()], check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    def stop(self) -> None:
        try:
            self.ctl("stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            pid_file = self.base / "node.pid"
            if pid_file.exists():
                subprocess.run(["kill", "-9", pid_file.read_text().strip()], check=False)
        shutil.rmtree(self.base, ignore_errors=True)


def start(*, management: bool = False) -> PrivateBroker:
    """Start a fresh node; BrokerNotAvailable when that cannot be done here.
    ``management``: with the management plugin, its HTTP API on a free port."""
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        raise BrokerNotAvailable("rabbitmq-server / rabbitmqctl are not installed")
    port, dist_port = _free_port(), _free_port()
    node = f"chaos{os.getpid()}x{port}@localhost"
    base = Path(tempfile.mkdtemp(prefix="asyncinvoke-broker-"))
    base.chmod(0o755)
    management_port = _free_port() if management else None
    config = CONFIG.format(port=port)
    if management_port is not None:
        config += MANAGEMENT_CONFIG.format(port=management_port)
    (base / "rabbitmq.conf").write_text(config)
    plugins = "[rabbitmq_management]" if management else "[]"
    (base / "enabled_plugins").write_text(f"{plugins}.\n")
    for part in ("mnesia", "log"):
        (base / part).mkdir()
    shutil.chown(base, "rabbitmq", "rabbitmq")
    for path in base.iterdir():
        shutil.chown(path, "rabbitmq", "rabbitmq")
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": RABBITMQ_HOME,
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        # Without the .conf suffix, as RabbitMQ's own environment variable wants it.
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(base / "node.pid"),
    }
    env_args = [f"{key}={value}" for key, value in env.items()]
    subprocess.run(
        ["runuser", "-u", "rabbitmq", "--", "env", *env_args, "rabbitmq-server", "-detached"],
        check=True,
        cwd=RABBITMQ_HOME,
        capture_output=True,
        timeout=CTL_TIMEOUT_S,
    )
    broker = PrivateBroker(node=node, port=port, base=base, management_port=management_port)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        # Until the pid file exists and the application is up (await_startup alone fails
        # at once while the fresh node is not registered yet).
        broker.ctl(
            "wait", str(base / "node.pid"), "--timeout", str(round(START_TIMEOUT_S)),
            timeout=START_TIMEOUT_S + 10,
        )
        # At-least-once dead-lettering (the delay ladder) needs stream_queue.
        broker.ctl("enable_feature_flag", "all")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        logs = "\n".join(
            path.read_text(errors="replace")[-2000:] for path in (base / "log").glob("*.log")
        )
        broker.stop()
        raise BrokerNotAvailable(f"node {node} did not start: {exc}\n{logs}") from None
    ports = [port] if management_port is None else [port, management_port]
    while time.monotonic() < deadline:
        if all(_listens(each) for each in ports):
            return broker
        time.sleep(0.2)
    broker.stop()
    raise BrokerNotAvailable(f"node {node} does not listen on {ports}")


def _listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
