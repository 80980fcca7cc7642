"""Used as a library, asyncinvoke writes nothing to the program's stdout: its lines go to
the standard library's logger ``asyncinvoke`` until structlog is configured, and to
structlog once the program (or a command) configured it. Each case runs in a fresh
interpreter, as a program would: the suite itself has configured structlog."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import AMQP_URL, ROOT

CONNECT = f"""
from asyncinvoke import SyncClient
client = SyncClient(url={AMQP_URL!r})
client.connect()
client.close()
print("done")
"""


def run(setup: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(setup) + CONNECT
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        cwd=str(ROOT),
    )
    assert done.returncode == 0, done.stderr
    return done


def test_a_program_that_configured_no_logging_sees_no_line_of_ours() -> None:
    done = run("")
    assert done.stdout == "done\n"
    assert "broker_connected" not in done.stderr


def test_a_program_that_configured_logging_gets_our_lines_through_it() -> None:
    done = run("""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(name)s|%(levelname)s|%(message)s")
    """)
    assert done.stdout == "done\n"
    (line,) = [line for line in done.stderr.splitlines() if "broker_connected" in line]
    assert line.startswith("asyncinvoke|INFO|event='broker_connected'"), line
    assert "component='broker'" in line and "guest:***@" in line


def test_a_program_that_configured_structlog_gets_our_lines_through_it() -> None:
    done = run("""
        import structlog, sys
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                            processors=[structlog.processors.JSONRenderer()])
    """)
    assert done.stdout == "done\n"
    assert '"event": "broker_connected"' in done.stderr, done.stderr
