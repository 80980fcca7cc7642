"""The console with access keys: a login, then a signed session cookie; nothing without."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from tests.console.conftest import serve
from tests.console.support import Served, submit

KEY_ID, SECRET = "console-key", "console-secret-1"


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    yield from serve(request, ASYNCINVOKE_ACCESS_KEYS=f"{KEY_ID}:{SECRET}")


def _status(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def _log_in(driver: Any, key_id: str, secret: str) -> None:
    WebDriverWait(driver, 20).until(
        expected_conditions.presence_of_element_located((By.ID, "key-id"))
    )
    driver.find_element(By.ID, "key-id").clear()
    driver.find_element(By.ID, "key-id").send_keys(key_id)
    driver.find_element(By.ID, "secret").send_keys(secret)
    submit(driver, driver.find_element(By.XPATH, "//button[.='Log in']"))


def test_a_request_without_a_session_is_sent_to_the_login_page(
    served: Served, driver: Any
) -> None:
    driver.get(served.url + "/console/failures")
    assert driver.current_url == served.url + "/console/login?next=%2Fconsole%2Ffailures"
    assert driver.find_element(By.CSS_SELECTOR, "label[for=key-id]").text == "Access key id"
    assert driver.find_element(By.CSS_SELECTOR, "label[for=secret]").text == "Secret"
    assert "Failures" not in driver.find_element(By.TAG_NAME, "h1").text

    assert _status(urllib.request.Request(served.url + "/console/live.json")) == 401
    stop = urllib.request.Request(served.url + "/console/tasks/t1/stop", data=b"", method="POST")
    assert _status(stop) == 403


def test_the_right_key_logs_in_once_with_a_strict_httponly_expiring_cookie(
    served: Served, driver: Any
) -> None:
    driver.get(served.url + "/console/failures")
    _log_in(driver, KEY_ID, "not-the-secret")
    assert "do not match" in driver.find_element(By.CSS_SELECTOR, ".problem").text

    _log_in(driver, KEY_ID, SECRET)
    assert driver.current_url == served.url + "/console/failures"
    assert driver.find_element(By.TAG_NAME, "h1").text == "Failures"
    (cookie,) = driver.get_cookies()
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert "expiry" in cookie

    driver.get(served.url + "/console/tasks")  # the session carries over: no second login
    assert driver.find_element(By.TAG_NAME, "h1").text == "Tasks"


def test_a_post_without_the_csrf_token_is_refused(served: Served, driver: Any) -> None:
    driver.get(served.url + "/console/functions")
    if "/console/login" in driver.current_url:  # run alone: log in first
        _log_in(driver, KEY_ID, SECRET)
    assert driver.find_element(By.TAG_NAME, "h1").text == "Functions"
    status = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch("/console/failures/purge", {method: "POST", credentials: "same-origin",
              headers: {"Content-Type": "application/x-www-form-urlencoded"},
              body: "scope=all&confirm=purge"})
          .then(r => r.text().then(text => done([r.status, text])));
        """
    )
    assert status[0] == 403
    assert "security token is missing" in status[1]
