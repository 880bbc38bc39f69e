"""What a user sees: the MLflow UI, in headless Chromium, shows the pipeline's run and champion.

The project is the session's `trained_project`: the quick pipeline (import-data, prepare, train,
evaluate through the real CLI) at test size, i.e. the tiny profile. Its training run is recorded
on the real `mlflow_server` under an experiment and a model name of this module's own (so the
registry tests, which expect to register version 1 of their model, are not disturbed), the real
`mtbert register` CLI registers it (version 1 gets `@champion`), and Chromium opens the
experiment's runs page and the registered model's page.

Screenshots go to pytest's tmp_path, and also to $MTBERT_UI_SCREENSHOT_DIR when it is set.
Skipped where chromium, chromedriver or selenium are missing (`bash scripts/setup.sh` installs
them; CI runs it, so CI runs this test).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.integration import browser
from tests.integration.conftest import (mlflow_env, run_mtbert, track_training_run,
                                        version_the_project)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(browser.missing_browser() is not None,
                       reason=f"{browser.missing_browser()}: run `bash scripts/setup.sh` "
                              "(installs Debian chromium + chromium-driver and selenium)"),
]

MODEL, EXPERIMENT = "mtbert-ui", "mtbert-ui"


@dataclass(frozen=True)
class Registered:
    """The UI project's state on the server, read back through the MLflow client."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    run_name: str
    aliases: dict[str, str]  # alias -> version


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, trained_project: Path,
               mlflow_server: str) -> Registered:
    """The tiny project's run on the server and its model registered by `mtbert register`."""
    root = tmp_path_factory.mktemp("ui") / "project"
    shutil.copytree(trained_project, root, ignore=shutil.ignore_patterns("mlflow.db", "mlruns"))
    version_the_project(root, MODEL, EXPERIMENT)
    run_id, _ = track_training_run(root, mlflow_server)
    proc = run_mtbert(["-q", "register"], root, mlflow_env(mlflow_server))
    assert "version 1 -> @champion" in proc.stdout, proc.stdout
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    run = client.get_run(run_id)
    return Registered(mlflow_server, run.info.experiment_id, run_id, run.info.run_name,
                      dict(client.get_registered_model(MODEL).aliases))


@pytest.fixture(scope="module")
def chromium(mlflow_server: str):
    """Headless Chromium on the server's origin, MLflow's Assistant panel marked as closed."""
    with browser.headless_chromium() as driver:
        browser.set_local_storage(driver, mlflow_server, browser.MLFLOW_UI_STORAGE)
        yield driver


def _screenshot_dir() -> Path | None:
    value = os.environ.get("MTBERT_UI_SCREENSHOT_DIR")
    return Path(value) if value else None


def test_experiment_page_shows_the_run(registered: Registered, chromium, tmp_path: Path) -> None:
    assert registered.run_name == "train"  # the name `mtbert train` gives its run
    shot = tmp_path / "mlflow-ui-runs.png"
    url = browser.experiment_url(registered.tracking_uri, registered.experiment_id)
    try:
        seconds = browser.open_and_wait(
            chromium, url, [EXPERIMENT, "Run Name", registered.run_name], screenshot=shot)
    finally:
        browser.copy_screenshot(shot, _screenshot_dir())
    print(f"runs page rendered in {seconds:.1f} s: {shot}")
    # The run name is a link to this very run (the text alone could come from elsewhere).
    assert browser.links_to(chromium, f"/runs/{registered.run_id}")
    assert re.search(r"(?m)^1 matching run$", browser.page_text(chromium))


def test_model_page_shows_champion_version(registered: Registered, chromium,
                                           tmp_path: Path) -> None:
    assert registered.aliases == {"champion": "1"}
    shot = tmp_path / "mlflow-ui-model.png"
    url = browser.model_url(registered.tracking_uri, MODEL)
    try:
        # "@ champion" is the alias chip; plain "champion" is also the version's `promotion` tag.
        seconds = browser.open_and_wait(chromium, url, [MODEL, "Version 1", "@ champion"],
                                        screenshot=shot)
    finally:
        browser.copy_screenshot(shot, _screenshot_dir())
    print(f"model page rendered in {seconds:.1f} s: {shot}")
    assert browser.links_to(chromium, f"/models/{MODEL}/versions/1")
    rows = browser.row_texts(chromium, "Version 1")
    assert len(rows) == 1 and "@ champion" in rows[0], rows  # the alias chip, in version 1's row
