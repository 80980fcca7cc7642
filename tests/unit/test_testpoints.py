"""The crash tests' pause points: inert unless armed, and a wrong name is refused."""

from __future__ import annotations

import os
import subprocess
import sys

from asyncinvoke import _testpoints


async def test_an_unarmed_point_returns_at_once() -> None:
    assert _testpoints.ENV not in os.environ
    for point in _testpoints.POINTS:
        await _testpoints.pause(point)


def test_a_point_name_that_does_not_exist_is_refused_at_start() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import asyncinvoke._testpoints"],
        env={**os.environ, _testpoints.ENV: "retyr"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "ASYNCINVOKE_TESTPOINT='retyr' names no test point; known: retry, forward" in (
        result.stderr
    )
