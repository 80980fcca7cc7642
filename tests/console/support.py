"""The console's tests drive a real ``asyncinvoke serve`` (worker, gateway, console) on
the shared RabbitMQ and a SQLite task store, through Debian's chromium and chromedriver.

Selenium is given both paths, so Selenium Manager never looks for (or downloads) a
browser or a driver.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from asyncinvoke import functions, topology
from asyncinvoke.client import Client
from asyncinvoke.settings import Settings
from tests.conftest import AMQP_URL, ROOT, Namespace
from tests.support.infrastructure import in_ci

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
T = TypeVar("T")

FUNCTIONS = """
[defaults]
max_retries = 0
timeout = 10

[functions.mend]
handler = "tests.console.handlers:mend"
task_mode = true

[functions.hello]
handler = "tests.console.handlers:hello"

[functions.choke]
handler = "tests.console.handlers:choke"
"""


def require_browser() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        reason = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver"
        if in_ci():
            pytest.fail(f"{reason} (.ci/run installs them)")
        pytest.skip(reason)


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        "--window-size=1400,1000", "--disable-extensions", "--no-first-run",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Served:
    """``asyncinvoke serve`` in its own namespace, and a client of that namespace.

    ``command="gateway"`` runs the gateway alone (no worker in its process); ``amqp_url``
    points it at another broker (a private node, thrown away whole, so nothing is cleaned
    up on it)."""

    def __init__(
        self,
        tmp: Path,
        *,
        command: str = "serve",
        amqp_url: str = AMQP_URL,
        functions_toml: str = FUNCTIONS,
        **env: str,
    ):
        self.namespace = Namespace(tmp)
        self.command = command
        self.amqp_url = amqp_url
        self.config = tmp / "functions.toml"
        self.config.write_text(functions_toml)
        self.namespace.function_names.update(functions.load(self.config).functions)
        self.store = f"sqlite:///{tmp / 'tasks.db'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"{command}.log"
        self.env = self.namespace.env(
            ASYNCINVOKE_TASK_STORE=self.store, ASYNCINVOKE_AMQP_URL=amqp_url, **env
        )
        self.settings = Settings(
            amqp_url=amqp_url, namespace=self.namespace.ns, task_store=self.store
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Served:
        return self.launch().wait_ready(timeout)

    def launch(self) -> Served:
        with self.log.open("wb") as log:
            grace = ["--shutdown-grace", "2"] if self.command == "serve" else []
            self.process = subprocess.Popen(
                [sys.executable, "-m", "asyncinvoke", self.command, "--config",
                 str(self.config), "--port", str(self.port), *grace],
                env=self.env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> Served:
        wait_until(
            lambda: self._ready(), timeout, f"{self.command} ready at {self.url}", self.tail
        )
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.command} exited with {self.process.returncode}:\n{self.tail()}"
            )
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.amqp_url == AMQP_URL:
            asyncio.run(self.namespace.cleanup())

    def invoke(self, function: str, payload: Any, **options: Any) -> str:
        async def go() -> str:
            async with Client(settings=self.settings) as client:
                return await client.invoke(function, payload, **options)

        return asyncio.run(go())

    def invoke_many(self, function: str, count: int) -> None:
        async def go() -> None:
            async with Client(settings=self.settings) as client:
                await client.invoke_many([(function, {"n": n}) for n in range(count)])

        asyncio.run(go())

    def failed_depth(self) -> int:
        async def go() -> int:
            async with Client(settings=self.settings) as client:
                assert client.broker.connection is not None
                depth = await topology.queue_depth(
                    client.broker.connection, self.namespace.names.failed
                )
                return depth or 0

        return asyncio.run(go())


def wait_until(
    check: Callable[[], T], timeout: float, what: str, context: Callable[[], str] = str
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{context()}")
        time.sleep(0.1)


def submit(driver: Any, button: Any, timeout: float = 20.0) -> None:
    """Click a button that loads a new page, and return once the new page is there."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    button.click()

    def replaced(_: Any) -> bool:
        try:
            page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # Debian's chromedriver 156 says so of an element of a replaced document,
            # where Selenium's staleness_of expects a stale-element error.
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    wait = WebDriverWait(driver, timeout)
    wait.until(replaced)
    # The new document, loaded whole: an element found while it still loads can belong to
    # a document the browser is about to replace.
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
