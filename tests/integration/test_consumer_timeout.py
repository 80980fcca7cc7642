"""A worker refuses to start with a function that could outlast the broker's consumer_timeout.

RabbitMQ closes a channel whose delivery stays unacknowledged longer than its
consumer_timeout (30 minutes by default on 3.10.8) and hands the message to another
consumer: an attempt that runs longer would run again and again. The worker cannot read
the broker's setting; it is told it (ASYNCINVOKE_BROKER_CONSUMER_TIMEOUT) and checks every
function it serves at start.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import ROOT, Namespace, WorkerProcess, write_functions

LONG_FUNCTION = """
    [functions.quick]
    handler = "tests.support.handlers:echo"

    [functions.transcode]
    handler = "tests.support.handlers:sleep"
    timeout = 3600
"""


def test_the_worker_command_refuses_a_timeout_past_the_brokers_consumer_timeout(
    namespace: Namespace, tmp_path: Path
) -> None:
    config = write_functions(tmp_path, textwrap.dedent(LONG_FUNCTION))
    env = namespace.env()
    env.pop("ASYNCINVOKE_BROKER_CONSUMER_TIMEOUT", None)  # the default: RabbitMQ's 30 minutes
    result = subprocess.run(
        [sys.executable, "-m", "asyncinvoke", "worker", "--config", str(config)],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    error = result.stderr.strip()
    assert len(error.splitlines()) == 1, error
    assert "'transcode'" in error and "key 'timeout'" in error
    assert "timeout of 3600 s" in error and "consumer_timeout of 1800 s" in error
    assert "rabbitmq.conf" in error and "ASYNCINVOKE_BROKER_CONSUMER_TIMEOUT=3602" in error
    assert "worker_started" not in result.stderr


async def test_a_worker_told_of_a_longer_consumer_timeout_starts(
    namespace: Namespace, tmp_path: Path
) -> None:
    config = write_functions(tmp_path, textwrap.dedent(LONG_FUNCTION))
    namespace.function_names.update({"quick", "transcode"})
    worker = WorkerProcess(namespace, config, ASYNCINVOKE_BROKER_CONSUMER_TIMEOUT="7200")
    await worker.start()
    assert await worker.terminate() == 0
