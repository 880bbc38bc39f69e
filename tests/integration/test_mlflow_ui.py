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

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.integration import browser
from tests.integration.conftest import (free_port, mlflow_env, run_mtbert, start_process_group,
                                        stop_process_group, track_training_run,
                                        version_the_project, wait_http)

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
    assert registered.run_name == "train tiny"  # `mtbert train`: its stage and profile
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


# ---------------------------------------------------------------------------------------------
# A new user, the README's way: `mlflow ui` on the project's SQLite store, the link mtbert logs

README_UI = ["mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1"]
DEV_HEADERS = ("dev/overall", "dev/sst/accuracy")
UI_LINK = re.compile(r"MLflow run '([^']+)': (http://127\.0\.0\.1:5000/\S+)")


@pytest.fixture(scope="module")
def readme_ui(tmp_path_factory: pytest.TempPathFactory, trained_project: Path):
    """The tiny project after `mtbert train` + `mtbert evaluate` into its own mlflow.db, served by
    the README's `mlflow ui` command (on a free port instead of 5000); yields (base URL, the
    link `mtbert evaluate` logged, the run's name, the train run's id, the project)."""
    root = tmp_path_factory.mktemp("readme-ui") / "project"
    shutil.copytree(trained_project, root)
    env = {k: v for k, v in mlflow_env("").items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    proc = run_mtbert(["evaluate", "train.threads=1"], root, env)  # not -q: the link is an INFO line
    found = UI_LINK.search(proc.stderr + proc.stdout)
    assert found, f"no MLflow UI link in the output of mtbert evaluate:\n{proc.stderr[-3000:]}"
    run_name, link = found.groups()
    run_id = json.loads((root / "artifacts" / "model" / "mlflow_run.json").read_text())["run_id"]
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), *README_UI[1:], "--port", str(port)]
    log = root / "mlflow-ui.log"
    server = start_process_group(cmd, log, env, root)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", server, log, timeout_s=120)
        base = f"http://127.0.0.1:{port}"
        yield base, link.replace("http://127.0.0.1:5000", base), run_name, run_id, root
    finally:
        stop_process_group(server)


def test_readme_ui_opens_the_runs_table_with_dev_metric_columns(readme_ui, tmp_path: Path) -> None:
    base, link, run_name, run_id, root = readme_ui
    evaluated = json.loads((root / "artifacts" / "eval" / "metrics.json").read_text())
    assert run_name == "train tiny"  # evaluate logs into the training run, named by stage + profile
    shot = tmp_path / "mlflow-ui-runs.png"
    with browser.headless_chromium() as driver:  # a new browser profile: no stored UI state
        try:
            seconds = browser.open_and_wait(driver, link, ["Run Name", run_name, *DEV_HEADERS],
                                            screenshot=shot)
        finally:
            browser.copy_screenshot(shot, _screenshot_dir())
        text = browser.page_text(driver)
        assert "/runs" in driver.current_url and "overview" not in driver.current_url
        assert "No data available" not in text  # the GenAI overview's empty charts
        assert browser.links_to(driver, f"/runs/{run_id}")  # the row is this run
        # The dev columns show the evaluate stage's values (logged at the last training step, so
        # they, not the curves' last points on fewer rows, are the table's values).
        shown = [float(x) for x in re.findall(r"\b\d\.\d{3,}", text)]
        for key in ("dev/para/accuracy", "dev/sst/accuracy"):  # on screen, next to dev/overall
            assert any(abs(x - evaluated[key]) < 1e-4 for x in shown), (key, evaluated, shown)
    print(f"runs table with dev columns in {seconds:.1f} s: {shot}")


def test_the_run_has_dev_curves_and_its_datasets(readme_ui) -> None:
    base, _, _, run_id, root = readme_ui
    client = MlflowClient(tracking_uri=base)
    run = client.get_run(run_id)
    last_step = max(m.step for m in client.get_metric_history(run_id, "train/lr"))
    curve = client.get_metric_history(run_id, "dev/overall")
    # tiny: one epoch, scored at its end while training (32 dev rows per task), then by each
    # `mtbert evaluate` (the fixture's and ours) at that same last step, where the table reads it
    assert {m.step for m in curve} == {last_step} and len(curve) == 3, curve
    evaluated = json.loads((root / "artifacts" / "eval" / "metrics.json").read_text())
    assert run.data.metrics["dev/overall"] == pytest.approx(evaluated["dev/overall"])
    inputs = {(d.dataset.name, next(t.value for t in d.tags if t.key == "mlflow.data.context"))
              for d in run.inputs.dataset_inputs}
    assert inputs == {(f"{t}-{s}", c) for t in ("sst", "para", "sts")
                      for s, c in (("train", "training"), ("dev", "validation"))}
    for d in run.inputs.dataset_inputs:
        sha = hashlib.sha256((root / "artifacts" / "prepared" / f"{d.dataset.name}.parquet")
                             .read_bytes()).hexdigest()
        assert next(t.value for t in d.tags if t.key == "sha256") == sha
        assert d.dataset.digest == sha[:36]  # MLflow stores at most 36 characters
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
