"""Screenshots of a running MLflow server's UI: an experiment's runs and a registered model.

    .venv/bin/python scripts/mlflow_ui_screenshot.py --tracking-uri http://127.0.0.1:5099 \
        --experiment mtbert --model mtbert --out docs/

writes `mlflow-ui-runs.png` and `mlflow-ui-model.png` into --out. Each page is captured once the
UI shows what the server's REST API says should be there (the experiment's newest top-level run
names; the model's newest version and its aliases), so a blank or half-loaded page fails with
the text the page did show. Needs Debian chromium + chromium-driver and selenium
(`bash scripts/setup.sh`); works offline.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.integration.browser

from tests.integration import browser  # noqa: E402

SHOWN_RUNS = 3  # newest top-level runs whose names must be on the runs page


def _api(base: str, path: str, params: dict | None = None, body: dict | None = None) -> dict:
    url = f"{base.rstrip('/')}/api/2.0/mlflow/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)


def expected_runs(base: str, experiment: str) -> tuple[str, list[str]]:
    """The experiment's id and the names of its newest top-level runs (the ones listed first)."""
    exp = _api(base, "experiments/get-by-name", {"experiment_name": experiment})["experiment"]
    runs = _api(base, "runs/search", body={
        "experiment_ids": [exp["experiment_id"]], "max_results": 100,
        "order_by": ["attributes.start_time DESC"], "run_view_type": "ACTIVE_ONLY"}).get("runs", [])
    top = [r for r in runs
           if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))]
    return exp["experiment_id"], [r["info"]["run_name"] for r in top[:SHOWN_RUNS]]


def expected_model(base: str, model: str) -> list[str]:
    """Texts the model page must show: the newest version ("Version N") and every alias chip."""
    info = _api(base, "registered-models/get", {"name": model})["registered_model"]
    newest = max((int(v["version"]) for v in info.get("latest_versions", [])), default=None)
    aliases = [f"@ {a['alias']}" for a in info.get("aliases", [])]  # as the UI's alias chips read
    return ([f"Version {newest}"] if newest else []) + aliases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", required=True, help="e.g. http://127.0.0.1:5099")
    parser.add_argument("--experiment", required=True, help="experiment name")
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--out", type=Path, required=True, help="folder for the two PNG files")
    parser.add_argument("--timeout", type=float, default=browser.PAGE_TIMEOUT_S)
    args = parser.parse_args(argv)
    base = args.tracking_uri.rstrip("/")
    try:
        experiment_id, run_names = expected_runs(base, args.experiment)
        model_texts = expected_model(base, args.model)
    except urllib.error.HTTPError as err:  # e.g. 404 for an unknown experiment or model
        parser.exit(1, f"{err.url}: {err.code} {err.read().decode(errors='replace')[:500]}\n")
    # The runs table as mtbert's link opens it: its stored view with the dev metric columns.
    runs_url = browser.experiment_url(base, experiment_id) + "&viewStateShareKey=mtbert"
    pages = [(runs_url, [args.experiment, *run_names, "dev/overall"],
              args.out / "mlflow-ui-runs.png"),
             (browser.model_url(base, args.model), [args.model, *model_texts],
              args.out / "mlflow-ui-model.png")]
    with browser.headless_chromium() as driver:
        browser.set_local_storage(driver, base, browser.MLFLOW_UI_STORAGE)
        for url, texts, shot in pages:
            seconds = browser.open_and_wait(driver, url, texts, args.timeout, screenshot=shot)
            print(f"{shot} ({seconds:.1f} s; shows {texts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
