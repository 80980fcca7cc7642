"""One ``serve`` and one browser per test module (they take seconds to start)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.console.support import Served, browser, require_browser


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    require_browser()
    session = browser()
    try:
        yield session
    finally:
        session.quit()


def serve(request: pytest.FixtureRequest, **env: str) -> Iterator[Served]:
    """``serve`` started while the browser starts: each takes seconds."""
    tmp_path_factory = request.getfixturevalue("tmp_path_factory")
    served = Served(tmp_path_factory.mktemp("console"), **env).launch()
    try:
        request.getfixturevalue("driver")
        yield served.wait_ready()
    finally:
        served.stop()
