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


def serve(tmp_path_factory: pytest.TempPathFactory, **env: str) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("console"), **env).start()
    try:
        yield served
    finally:
        served.stop()
