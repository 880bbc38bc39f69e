"""Headless Chromium for end-to-end UI checks: Debian's chromium + chromedriver through Selenium.

Offline by construction: the driver is `/usr/bin/chromedriver` given to `Service`, so Selenium
Manager (which would try to download a driver and a browser) is never run; `SE_OFFLINE=true` is
also set for this process in case a later Selenium version runs it anyway. Independent of
mtbert: `scripts/mlflow_ui_screenshot.py` uses it too.

MLflow's UI is a React single-page app: `driver.get` returns before the page has any content,
so `open_and_wait` polls the visible page text until every expected string is there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,900", "--lang=en-US", "--no-first-run",
                 "--disable-extensions", "--disable-background-networking")
PAGE_TIMEOUT_S = 60.0  # the UI renders in a few seconds idle; much slower while training runs


class PageTimeout(AssertionError):
    """The expected text did not appear in time; carries what the page showed instead."""


def missing_browser() -> str | None:
    """Why the browser cannot start here; None if chromium, chromedriver and selenium are there."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    with contextlib.suppress(ImportError):
        import selenium  # noqa: F401

        return f"{', '.join(missing)} missing" if missing else None
    return ", ".join([*missing, "python package selenium"]) + " missing"


@contextlib.contextmanager
def headless_chromium(page_load_timeout_s: float = PAGE_TIMEOUT_S) -> Iterator:
    """Start headless Chromium (1400x900) through chromedriver; quit it (and the driver) on exit.

    Yields:
        A `selenium.webdriver.Chrome`.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    reason = missing_browser()
    if reason:
        raise RuntimeError(f"{reason}: install them with `bash scripts/setup.sh`")
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(page_load_timeout_s)
        yield driver
    finally:
        driver.quit()


def page_text(driver) -> str:
    """The visible text of the current page ('' while the body is not there yet)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException:  # body missing or replaced while React re-renders
        return ""


def open_and_wait(driver, url: str, texts: Sequence[str], timeout_s: float = PAGE_TIMEOUT_S,
                  screenshot: Path | None = None) -> float:
    """Load `url` and wait until the visible page text contains every string in `texts`.

    The screenshot, if asked for, is taken in both cases, so a failure leaves a picture of
    what the page showed.

    Returns:
        Seconds until all the texts were shown.

    Raises:
        PageTimeout: some text was still missing after `timeout_s`; the message lists which,
            with the page's text.
    """
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    start = time.monotonic()
    driver.get(url)
    try:
        WebDriverWait(driver, timeout_s, poll_frequency=0.5).until(
            lambda d: all(text in page_text(d) for text in texts))
    except TimeoutException:
        shown = page_text(driver)
        missing = [text for text in texts if text not in shown]
        raise PageTimeout(f"{url}: {missing} not shown within {timeout_s:.0f} s; page text:\n"
                          f"{shown[:3000]}") from None
    finally:
        if screenshot is not None:
            save_screenshot(driver, screenshot)
    return time.monotonic() - start


def save_screenshot(driver, path: Path) -> Path:
    """Save a PNG of the window to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"chromium could not write the screenshot {path}")
    return path


def copy_screenshot(path: Path, dest_dir: Path | None) -> Path | None:
    """Copy `path` into `dest_dir` (created) if both exist; the copy's path, else None."""
    if dest_dir is None or not path.is_file():
        return None
    dest_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(path, dest_dir / path.name))


def row_texts(driver, containing: str) -> list[str]:
    """The texts of the table rows (`<tr>` or ARIA `role=row`) whose text contains `containing`."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.XPATH, "//*[@role='row' or self::tr]")
    return [row.text for row in rows if containing in row.text]


def links_to(driver, fragment: str) -> list[str]:
    """The hrefs of the page's links that contain `fragment` (e.g. a run id)."""
    from selenium.webdriver.common.by import By

    hrefs = (a.get_attribute("href") or "" for a in driver.find_elements(By.TAG_NAME, "a"))
    return [href for href in hrefs if fragment in href]


# MLflow 3.17 opens its "Assistant" chat panel over a third of the window on a first visit;
# these keys (its own, seen in localStorage) record it as already shown and closed. Should a
# later MLflow rename them, the panel just shows again in the screenshots.
MLFLOW_UI_STORAGE = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
                     "mlflow.assistant.panelOpen_v1": "false"}


def set_local_storage(driver, base: str, items: dict[str, str]) -> None:
    """Set localStorage `items` for the origin of `base` (its /health page is loaded to do so)."""
    driver.get(f"{base.rstrip('/')}/health")
    for key, value in items.items():
        driver.execute_script("window.localStorage.setItem(arguments[0], arguments[1]);",
                              key, value)


def experiment_url(base: str, experiment_id: str) -> str:
    """The MLflow UI page listing an experiment's runs.

    MLflow 3 opens `/#/experiments/<id>` on the GenAI trace overview, which shows no runs; the
    runs tab of the "Model training" workflow is asked for explicitly.
    """
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def model_url(base: str, model_name: str) -> str:
    """The MLflow UI page of a registered model (its versions, with their aliases).

    Asked for in the "Model training" workflow, whose sidebar shows Experiments and Model registry.
    """
    name = urllib.parse.quote(model_name, safe="")
    return f"{base.rstrip('/')}/#/models/{name}?workflowType=machine_learning"
