"""The champion served over HTTP by `mtbert serve` (= `mlflow models serve --env-manager local`).

The server really starts on a free 127.0.0.1 port against a real MLflow registry; good requests
get predictions equal to the trained model's, bad ones a 400 whose body gives the reason.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import mtbert
from tests.integration.conftest import (
    TrackedProject,
    free_port,
    mlflow_env,
    run_mtbert,
    start_process_group,
    stop_process_group,
    wait_http,
)
from tests.integration.test_api_readme import readme_block

pytestmark = pytest.mark.integration

SERVE_STARTUP_TIMEOUT_S = 180.0
COLUMNS = ["task", "sentence1", "sentence2"]
GOOD_ROWS = [
    ["sst", "A warm, funny and clever film.", None],
    ["para", "How can I lose weight fast?", "What is the quickest way to lose weight?"],
    ["sts", "A woman is slicing an onion.", "A woman cuts an onion."],
    ["sts", "Two dogs play in the snow.", "A cat sleeps on a sofa."],
    ["sst", "Dull, lifeless and far too long.", None],
]


@dataclass(frozen=True)
class Served:
    url: str
    startup_s: float


@contextlib.contextmanager
def _serve(p: TrackedProject, log_dir: Path, overrides: tuple[str, ...] = ()) -> Iterator[Served]:
    """`mtbert serve --port N [overrides]` for the project's champion (registered here if there is
    none yet), stopped on exit."""
    env = mlflow_env(p.tracking_uri)
    client = MlflowClient(tracking_uri=p.tracking_uri, registry_uri=p.tracking_uri)
    if "champion" not in _aliases(client, p.model_name):
        run_mtbert(["-q", "register"], p.root, env)
    port = free_port()
    log_path = log_dir / "serve.log"
    start = time.monotonic()
    cmd = [sys.executable, "-m", "mtbert.cli", "-q", "serve", "--port", str(port), *overrides]
    proc = start_process_group(cmd, log_path, env, p.root)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log_path, SERVE_STARTUP_TIMEOUT_S)
        startup = time.monotonic() - start
        print(f"mtbert serve {' '.join(overrides)} answered /health after {startup:.1f} s")
        yield Served(f"http://127.0.0.1:{port}", startup)
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def served(tracked_project: TrackedProject,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with _serve(tracked_project, tmp_path_factory.mktemp("serve")) as server:
        yield server


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    try:
        return dict(client.get_registered_model(name).aliases)
    except MlflowException:  # no such model yet
        return {}


def post(url: str, payload: object, raw: bytes | None = None) -> tuple[int, str]:
    """POST JSON to /invocations; (status, body) for 2xx and 4xx/5xx alike."""
    data = raw if raw is not None else json.dumps(payload).encode()
    req = urllib.request.Request(f"{url}/invocations", data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def split(rows: list[list], columns: list[str] = COLUMNS) -> dict:
    return {"dataframe_split": {"columns": columns, "data": rows}}


def test_valid_request_gets_the_trained_models_predictions(served: Served,
                                                           tracked_project: TrackedProject) -> None:
    from mtbert.model.trained import load_trained
    from mtbert.pipeline.serving import predict_rows

    status, body = post(served.url, split(GOOD_ROWS))
    assert status == 200, body
    out = pd.DataFrame(json.loads(body)["predictions"])
    assert list(out["task"]) == [row[0] for row in GOOD_ROWS]
    sst, para, sts = (out.loc[out["task"] == t, "prediction"].to_numpy() for t in ("sst", "para", "sts"))
    assert set(sst) <= {0, 1, 2, 3, 4} and set(para) <= {0, 1}
    assert np.all((sts >= 0) & (sts <= 5))
    model, tokenizer, cfg = load_trained(tracked_project.root / "artifacts" / "model")
    local = predict_rows(model, tokenizer, cfg.model.pair_encoding, cfg.model.max_length,
                         pd.DataFrame(GOOD_ROWS, columns=COLUMNS))
    np.testing.assert_allclose(out["prediction"], local["prediction"], atol=1e-5)
    np.testing.assert_allclose(out["score"], local["score"], atol=1e-5)


def test_int8_serving_answers_with_the_quantized_model(tracked_project: TrackedProject,
                                                      tmp_path: Path) -> None:
    """`mtbert serve eval.quantize=int8`: the server predicts with dynamic int8 linear layers, i.e.
    what `load_trained(quantize="int8")` predicts here, which is not what the fp32 model says."""
    from mtbert.model.trained import load_trained
    from mtbert.pipeline.serving import predict_rows

    with _serve(tracked_project, tmp_path, ("eval.quantize=int8",)) as server:
        status, body = post(server.url, split(GOOD_ROWS))
    assert status == 200, body
    out = pd.DataFrame(json.loads(body)["predictions"])
    rows = pd.DataFrame(GOOD_ROWS, columns=COLUMNS)
    local = {}
    for quantize in ("int8", "none"):
        model, tokenizer, cfg = load_trained(tracked_project.root / "artifacts" / "model", quantize=quantize)
        local[quantize] = predict_rows(model, tokenizer, cfg.model.pair_encoding, cfg.model.max_length, rows)
    np.testing.assert_allclose(out["score"], local["int8"]["score"], atol=1e-5)
    # int8 weights move every score a little: equal to fp32's would mean nothing was quantized
    assert np.abs(out["score"].to_numpy() - local["none"]["score"].to_numpy()).max() > 1e-4


BAD_REQUESTS = {
    "unknown task": (split([["nli", "A man sleeps.", "A man is awake."]]), "unknown task 'nli'"),
    "para without sentence2 value": (split([["para", "How old are you?", None]]),
                                     "field 'sentence2' is missing"),
    "para without sentence2 column": (split([["para", "How old are you?"]], ["task", "sentence1"]),
                                      "field 'sentence2' is missing"),
    "empty text": (split([["sst", "", None]]), "field 'sentence1' is empty"),
    "whitespace text": (split([["sts", "   ", "A dog runs."]]), "field 'sentence1' is empty"),
    "oversized batch": (split([["sst", "Fine.", None]] * 10_001), "10001 rows in one request"),
    "no sentence1 column": (split([["sst"]], ["task"]), "missing inputs ['sentence1']"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_400_with_the_reason(served: Served, case: str) -> None:
    payload, reason = BAD_REQUESTS[case]
    status, body = post(served.url, payload)
    assert status == 400, body
    error = json.loads(body)
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert reason in error["message"]
    assert "stack_trace" not in error and "Traceback" not in body
    assert len(body) < 5_000  # the echoed request is truncated, not dumped


def test_malformed_json_gets_400(served: Served) -> None:
    status, body = post(served.url, None, raw=b"{not json")
    assert status == 400
    assert "valid JSON" in json.loads(body)["message"] and "Traceback" not in body


def test_readme_curl_example_against_mtbert_serve(served: Served, tracked_project: TrackedProject) -> None:
    """README's curl block, run with bash against the served champion; `mtbert.load` of that
    champion answers the same. Here, not in test_api_readme.py: `served` registers the tracked
    project's model, which must happen after the registry tests (they expect version 1)."""
    script = readme_block("curl").replace("http://127.0.0.1:5001", served.url)
    assert script != readme_block("curl"), "the README's curl no longer names port 5001"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    answer = pd.DataFrame(json.loads(proc.stdout)["predictions"])
    assert list(answer["task"]) == ["sst", "sts"]
    sent = json.loads(re.search(r"-d '(.*)'", script, re.S).group(1))["dataframe_split"]["data"]
    # The registered champion through the API, as users load it, answers the same.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_env(tracked_project.tracking_uri)["MLFLOW_TRACKING_URI"])
        champion = mtbert.load(f"models:/{tracked_project.model_name}@champion")
    assert champion.predict("sst", [sent[0][1]]).labels[0] == answer["prediction"][0]
    np.testing.assert_allclose(champion.predict("sts", [sent[1][1]], [sent[1][2]]).labels,
                               [answer["prediction"][1]], atol=1e-5)
