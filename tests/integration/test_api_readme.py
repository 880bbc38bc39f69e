"""Issue #15 on a really trained tiny model: README's Python API snippet runs as shown (its curl
snippet is run in test_serving.py, against the served champion), the
API answers what `mtbert predict` writes, the encoder folder loads in transformers and
sentence-transformers with our numbers, and the model card names its lineage and caveats."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

import mtbert
from mtbert.pipeline import tracking
from mtbert.pipeline.serving import read_input_file
from tests.conftest import REPO_ROOT, run_cli

pytestmark = pytest.mark.integration
DEV_FILES = {"sst": "ids-sst-dev.csv", "para": "quora-dev.csv", "sts": "sts-dev.csv"}
ROWS = 25


def readme_block(marker: str) -> str:
    """The fenced code block right after `<!-- readme-test: marker -->` in README.md."""
    text = (REPO_ROOT / "README.md").read_text()
    found = re.search(rf"<!-- readme-test: {marker} -->\n```\w*\n(.*?)\n```", text, re.S)
    assert found, f"README.md has no code block marked {marker!r}"
    return found.group(1)


def test_readme_python_api_runs_in_a_fresh_interpreter(trained_project: Path) -> None:
    code = readme_block("python-api")
    proc = subprocess.run([sys.executable, "-c", code], cwd=trained_project, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    names, para, sts, shape = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"\['(negative|somewhat negative|neutral|somewhat positive|positive)'\]", names)
    assert 0.0 <= float(para.strip("[]")) <= 1.0 and 0.0 <= float(sts.strip("[]")) <= 5.0
    hidden = mtbert.load(trained_project / "artifacts" / "model").model.encoder.config.hidden_size
    assert shape in (f"(1, {hidden})", f"(1, {2 * hidden})")


def test_import_mtbert_loads_neither_torch_nor_mlflow() -> None:
    code = "import sys, mtbert; print(sorted({'torch', 'mlflow'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


@pytest.mark.parametrize("task", list(DEV_FILES))
def test_api_predictions_equal_the_predict_cli(trained_project: Path, data_dir: Path, task: str,
                                               tmp_path: Path) -> None:
    lines = (data_dir / DEV_FILES[task]).read_text().splitlines(keepends=True)
    source = tmp_path / f"{task}.csv"
    source.write_text("".join(lines[:ROWS + 1]))
    run_cli(["-q", "predict", "--task", task, "--input", str(source), "--output", str(tmp_path / "out.csv")],
            trained_project)
    cli = pd.read_csv(tmp_path / "out.csv")  # id, prediction[, label]
    frame = read_input_file(source, task)  # the rows exactly as the CLI read them
    model = mtbert.load(trained_project / "artifacts" / "model")
    pairs = (frame["sentence1"].tolist(), frame["sentence2"].tolist()) if task != "sst" else \
        (frame["sentence1"].tolist(),)
    got = model.predict(task, *pairs)
    assert len(cli) == len(got) == ROWS
    np.testing.assert_allclose(got.labels, cli["prediction"], atol=1e-5)
    if "label" in cli.columns and got.names is not None:  # the CLI's label names are the API's
        assert cli["label"].tolist() == got.names


def test_encoder_folder_gives_our_states_and_vectors(trained_project: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    model_dir = trained_project / "artifacts" / "model"
    ours = mtbert.load(model_dir)
    hf = AutoModel.from_pretrained(str(model_dir / "encoder")).eval()
    sentences = ["A warm, funny and clever film.", "Dull.", "Two dogs play in the snow near a red house."]
    enc = ours.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        theirs = hf(**enc).last_hidden_state
        mine = ours.model.encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    real = enc["attention_mask"].bool()
    assert torch.allclose(theirs[real], mine.last_hidden_state[real], atol=1e-5)
    st = SentenceTransformer(str(model_dir / "encoder"), device="cpu")
    np.testing.assert_allclose(st.encode(sentences), ours.encode(sentences), atol=1e-5)


def test_model_card_names_lineage_and_caveats(trained_project: Path) -> None:
    model_dir = trained_project / "artifacts" / "model"
    card = (model_dir / "README.md").read_text()
    run_id = tracking.load_run_id(model_dir)
    tags = MlflowClient(tracking_uri=f"sqlite:///{trained_project / 'mlflow.db'}").get_run(run_id).data.tags
    for fact in (run_id, tags["git_commit"], tags["data_md5"], "all-MiniLM-L6-v2", "Quora",
                 "caption", "mtbert.load(", "AutoModel", "SentenceTransformer"):
        assert fact in card, fact
    metrics = json.loads((trained_project / "artifacts" / "eval" / "metrics.json").read_text())
    eval_card = (trained_project / "artifacts" / "eval" / "model_card.md").read_text()
    assert f"| dev/sst/accuracy | `{metrics['dev/sst/accuracy']:.4f}` |" in eval_card
    assert "| dev/sst/accuracy |" not in card  # the model folder's card: metrics come later
