"""``python -m tests.console.screenshots [FOLDER]``: the console's pages as PNG (docs/).

Starts ``serve`` in a throwaway namespace, makes a little traffic (greetings, a task that
fails with a stack trace, a delayed task), and has headless chromium take the pages.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from selenium.webdriver.common.by import By

from tests.console.support import Served, browser, wait_until


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        served = Served(Path(tmp)).start()
        driver = browser()
        try:
            driver.set_window_size(1280, 900)
            never = str(Path(tmp) / "never")
            served.invoke_many("hello", 40)
            for index, note in enumerate(("resize of user/7/photo.png", "<b>not bold</b>")):
                served.invoke("mend", {"fixed_when": never, "note": note}, task=True,
                              id=f"order-{index + 41}")
            served.invoke("mend", {"fixed_when": never, "note": "later"}, task=True,
                          id="order-43", delay=600)
            wait_until(lambda: served.failed_depth() == 2, 30, "two failure records")
            driver.get(served.url + "/console/functions")
            time.sleep(2.5)  # one live refresh
            driver.find_element(By.CSS_SELECTOR, "details summary").click()
            driver.save_screenshot(str(folder / "console-functions.png"))
            driver.get(served.url + "/console/tasks")
            driver.save_screenshot(str(folder / "console-tasks.png"))
            driver.get(served.url + "/console/tasks/order-41")
            driver.save_screenshot(str(folder / "console-task.png"))

            def counted() -> bool:
                driver.get(served.url + "/console/failures")
                return "Counted at" in driver.page_source

            wait_until(counted, 20, "the failures summary")
            driver.find_element(By.CSS_SELECTOR, "tr.record-detail summary").click()
            driver.save_screenshot(str(folder / "console-failures.png"))
        finally:
            driver.quit()
            served.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))
