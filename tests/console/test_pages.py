"""The console in a real browser, without access keys (loopback only), against a real
``serve``: failures with their stack traces, replay, stop, escaping, live counts."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from tests.console.conftest import serve
from tests.console.support import Served, submit, wait_until

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    yield from serve(request)


@pytest.fixture(scope="module")
def fixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where ``mend`` looks: it fails until this file exists."""
    return tmp_path_factory.mktemp("mend") / "fixed"


def _record_row(driver: Any, invocation_id: str) -> Any:
    rows = driver.find_elements(By.XPATH, f"//tr[th[@class='rid' and .='{invocation_id}']]")
    return rows[0] if rows else None


def _no_alert(driver: Any) -> bool:
    try:
        _ = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def test_a_failed_task_shows_its_error_stack_trace_and_payload_as_text(
    served: Served, driver: Any, fixed: Path
) -> None:
    served.invoke("mend", {"fixed_when": str(fixed), "note": XSS}, task=True, id="mend-1")
    wait_until(lambda: served.failed_depth() == 1, 20, "the failure record", served.tail)

    driver.get(served.url + "/console/failures")
    row = wait_until(lambda: _record_row(driver, "mend-1"), 10, "mend-1 listed")
    assert f"RuntimeError: not fixed yet: {XSS}" in row.text
    assert "RetriesExhausted" in row.text
    detail = row.find_element(By.XPATH, "following-sibling::tr[1]")
    detail.find_element(By.TAG_NAME, "summary").click()  # opens in place
    trace = detail.find_element(By.CSS_SELECTOR, "pre.trace").text
    assert "tests/console/handlers.py" in trace and "in mend" in trace
    assert XSS in detail.find_element(By.CSS_SELECTOR, "pre.payload").text

    # The payload is text: no element was made of it, no script ran.
    assert driver.find_elements(By.CSS_SELECTOR, "main img") == []
    assert _no_alert(driver)

    driver.get(served.url + "/console/tasks/mend-1")
    assert driver.find_element(By.ID, "task-status").text == "Failed"
    assert XSS in driver.find_element(By.ID, "task-error").text
    assert XSS in driver.find_element(By.ID, "task-payload").text
    assert driver.find_elements(By.CSS_SELECTOR, "main img") == []
    assert _no_alert(driver)


def test_replay_runs_the_invocation_again_and_then_the_record_leaves(
    served: Served, driver: Any, fixed: Path
) -> None:
    fixed.touch()  # the next run of mend succeeds
    driver.get(served.url + "/console/failures")
    row = wait_until(lambda: _record_row(driver, "mend-1"), 10, "mend-1 listed")
    submit(driver, row.find_element(By.CSS_SELECTOR, "button.replay-one"))

    notices = driver.find_elements(By.CSS_SELECTOR, ".notice")
    assert notices, driver.find_element(By.TAG_NAME, "main").text
    assert "Replayed 1 of 1" in notices[0].text
    assert _record_row(driver, "mend-1") is None
    assert served.failed_depth() == 0

    def succeeded() -> bool:
        driver.get(served.url + "/console/tasks/mend-1")
        shown = driver.find_elements(By.ID, "task-status")
        return bool(shown) and shown[0].text == "Succeeded"

    wait_until(succeeded, 20, "mend-1 Succeeded after the replay", served.tail)
    events = [item.text for item in driver.find_elements(By.CSS_SELECTOR, ".timeline li")]
    assert [e.split()[2] for e in events] == [
        "Enqueued", "Running", "Failed", "Enqueued", "Running", "Succeeded"
    ], events
    assert "mended" in driver.find_element(By.ID, "task-result").text


def test_stop_on_a_delayed_task_shows_stopped(served: Served, driver: Any, fixed: Path) -> None:
    served.invoke("mend", {"fixed_when": str(fixed), "note": "later"}, task=True,
                  id="later-1", delay=120)
    driver.get(served.url + "/console/tasks?function=mend")
    submit(driver, driver.find_element(By.LINK_TEXT, "later-1"))
    assert driver.find_element(By.ID, "task-status").text == "Enqueued"
    assert driver.find_elements(By.XPATH, "//button[.='Re-run']") == []  # not ended
    submit(driver, driver.find_element(By.XPATH, "//button[.='Stop']"))
    assert driver.find_element(By.ID, "task-status").text == "Stopped"
    assert driver.find_elements(By.XPATH, "//button[.='Stop']") == []
    assert driver.find_elements(By.XPATH, "//button[.='Re-run']")  # ended: it may run again


def test_rerun_runs_an_ended_task_again_under_its_id(
    served: Served, driver: Any, fixed: Path
) -> None:
    fixed.touch()
    served.invoke("mend", {"fixed_when": str(fixed), "note": "twice"}, task=True, id="again-1")

    def status_is(wanted: str) -> bool:
        driver.get(served.url + "/console/tasks/again-1")
        shown = driver.find_elements(By.ID, "task-status")
        return bool(shown) and shown[0].text == wanted

    wait_until(lambda: status_is("Succeeded"), 20, "again-1 Succeeded", served.tail)
    submit(driver, driver.find_element(By.XPATH, "//button[.='Re-run']"))

    def events() -> list[str]:
        return [item.text for item in driver.find_elements(By.CSS_SELECTOR, ".timeline li")]

    wait_until(
        lambda: status_is("Succeeded") and len(events()) == 6, 20, "again-1 run again",
        served.tail,
    )
    shown = events()
    assert [e.split()[2] for e in shown] == [
        "Enqueued", "Running", "Succeeded", "Enqueued", "Running", "Succeeded"
    ], shown
    assert "rerun after it ended Succeeded" in shown[3]


def test_live_counters_change_when_invocations_arrive(served: Served, driver: Any) -> None:
    driver.get(served.url + "/console/functions")
    counter = driver.find_element(By.CSS_SELECTOR, '[data-live="hello.invocations"]')
    before = int(counter.text)
    driver.execute_script("window.stillThisPage = true;")

    served.invoke_many("hello", 5)

    wait_until(lambda: int(counter.text) >= before + 5, 20, "the live count to reach +5")
    assert driver.execute_script("return window.stillThisPage;") is True  # never reloaded
    status = driver.find_element(By.ID, "live-status").text
    assert status.startswith("Counts as of"), status


def test_a_throttle_shows_in_the_functions_row_and_its_chart(
    served: Served, driver: Any, tmp_path: Path
) -> None:
    driver.get(served.url + "/console/functions")
    counter = driver.find_element(By.CSS_SELECTOR, '[data-live="choke.throttles"]')
    assert counter.text == "0"

    served.invoke("choke", {"mark": str(tmp_path / "choked")})

    wait_until(lambda: counter.text == "1", 20, "the throttle counted", served.tail)
    chart = driver.find_element(By.CSS_SELECTOR, '[data-chart="choke"] .throttle')
    titles = [bar.get_attribute("textContent") for bar in chart.find_elements(By.TAG_NAME, "title")]
    assert titles == ["1 throttles, this minute"], titles
    invocations = driver.find_element(By.CSS_SELECTOR, '[data-live="choke.invocations"]')
    wait_until(lambda: invocations.text == "2", 20, "the attempt after the throttle counted")
    assert driver.find_element(By.CSS_SELECTOR, '[data-live="choke.failures"]').text == "0"


def test_pause_keeps_invocations_waiting_until_resume(served: Served, driver: Any) -> None:
    def cell(key: str) -> str:
        return str(driver.find_element(By.CSS_SELECTOR, f'[data-live="hello.{key}"]').text)

    driver.get(served.url + "/console/functions")
    assert cell("state") == "running"
    submit(driver, driver.find_element(By.CSS_SELECTOR, "button[aria-label='Pause hello']"))
    assert cell("state") == "paused"
    assert not driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Pause hello']")
    policy = driver.find_element(By.XPATH, "//tr[th[.='hello']]//table[@class='policy']")
    concurrency = policy.find_element(By.XPATH, ".//tr[th[.='concurrency']]")
    assert "0 (paused)" in concurrency.get_attribute("textContent")
    assert "live configuration (version" in concurrency.get_attribute("textContent")
    # The worker in serve cancels its consumer once it reads the change (milliseconds).
    wait_until(lambda: cell("consumers") == "0", 20, "hello's consumer gone", served.tail)
    before = int(cell("invocations"))

    served.invoke_many("hello", 3)

    wait_until(lambda: cell("ready") == "3", 20, "3 invocations waiting in the queue")
    assert int(cell("invocations")) == before  # none ran
    submit(driver, driver.find_element(By.CSS_SELECTOR, "button[aria-label='Resume hello']"))
    assert cell("state") == "running"
    wait_until(
        lambda: (cell("ready"), cell("invocations")) == ("0", str(before + 3)), 20,
        "the 3 run after the resume", served.tail,
    )


def test_without_keys_it_answers_only_loopback_hosts_and_no_foreign_origin(
    served: Served,
) -> None:
    def status(headers: dict[str, str], method: str = "GET") -> int:
        data = b"csrf=x" if method == "POST" else None
        request = urllib.request.Request(
            served.url + "/console/functions", data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return error.code

    assert status({}) == 200
    assert status({"Host": "evil.example"}) == 403  # DNS rebinding
    assert status({"Origin": "http://evil.example"}, "POST") == 403


def test_export_gives_json_lines_and_purge_needs_the_typed_word(
    served: Served, driver: Any, fixed: Path
) -> None:
    fixed.unlink(missing_ok=True)
    served.invoke("mend", {"fixed_when": str(fixed), "note": "purge me"}, task=True, id="gone-1")
    wait_until(lambda: served.failed_depth() == 1, 20, "the failure record", served.tail)
    driver.get(served.url + "/console/failures")

    exported = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch("/console/failures/export", {credentials: "same-origin"})
          .then(r => r.text().then(text => done([r.status, text])));
        """
    )
    assert exported[0] == 200
    (line,) = exported[1].splitlines()
    assert '"requestId":"gone-1"' in line and '"msgpack":' in line

    row = _record_row(driver, "gone-1")
    assert row is not None, driver.find_element(By.TAG_NAME, "main").text
    row.find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
    submit(driver, driver.find_element(By.XPATH, "//button[.='Purge selected']"))
    assert "Nothing purged" in driver.find_element(By.CSS_SELECTOR, ".notice").text
    # The page's own browse holds the records for a moment after it answered (it returns
    # before its cleanup): the record is back, ready, once that is done.
    wait_until(lambda: served.failed_depth() == 1, 20, "the record, not purged", served.tail)

    row = _record_row(driver, "gone-1")
    row.find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
    driver.find_element(By.ID, "confirm-selected").send_keys("purge")
    submit(driver, driver.find_element(By.XPATH, "//button[.='Purge selected']"))
    assert "Purged 1 records" in driver.find_element(By.CSS_SELECTOR, ".notice").text
    # Gone for good: a browse still holding it would read 0 too, and then give it back
    # within a second (above), so the queue must stay empty past that.
    stays_empty_until = time.monotonic() + 3
    while time.monotonic() < stays_empty_until:
        assert served.failed_depth() == 0, "the purged record came back"
        time.sleep(0.2)
