"""A broker of a suite's own (the chaos suite's private node, the cluster suite's three
nodes): started once for the suite, and a namespace on it for each test.

Without the broker the suite skips, and under CI (``CI=true``) it fails instead: a suite
that silently did not run proves nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.conftest import Namespace
from tests.support.infrastructure import in_ci

Broker = TypeVar("Broker")


def for_the_suite(
    start: Callable[[], Broker],
    unavailable: type[Exception],
    stop: Callable[[Broker], None],
    *,
    suite: str,
    needs: str,
) -> Iterator[Broker]:
    """Yield the started broker (for a session fixture), stopped at the end."""
    try:
        broker = start()
    except unavailable as exc:
        if in_ci():
            pytest.fail(f"the {suite} suite needs {needs}: {exc}")
        pytest.skip(f"no {needs}: {exc}")
    try:
        yield broker
    finally:
        stop(broker)


class NamespaceOn(Namespace):
    """A namespace on the suite's broker: clients, workers and subprocesses get ``url``."""

    def __init__(self, tmp_path: Path, url: str):
        super().__init__(tmp_path)
        self.url = url
        self.settings = self.settings.with_overrides(amqp_url=url)

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{"ASYNCINVOKE_AMQP_URL": self.url, **extra})
