"""Distillation from teachers the project trains: `mtbert train-teachers`, `mtbert teach`,
`mtbert train` with `train.distill.teacher_seeds`, through the real command line on the tiny
profile (in a copy of the prepared project, tracked in the project's own MLflow store).

The teachers are one single-task run per distilled task and seed. A second `train-teachers` keeps
the teachers trained with the same settings (their weights are not rewritten) and trains only the
seeds added; the teach stage's outputs are the teachers' average, one row per training row.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtbert.checkpoint import META_FILE, MODEL_FILE
from mtbert.config import load_config
from mtbert.fileio import sha256_file
from mtbert.pipeline.project import train_frames
from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def distill(seeds: list[int]) -> str:
    return f"train.distill={{enabled: true, tasks: [sst], teacher_seeds: {seeds}}}"


def test_teachers_trained_once_then_distilled_into_the_multitask_model(
        prepared_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = shutil.copytree(prepared_project, tmp_path / "project")
    teachers = root / "artifacts" / "teachers"

    out = run_cli(["-q", "train-teachers", distill([1, 2])], root).stdout
    assert "2 teacher(s) trained" in out, out
    for seed in (1, 2):
        meta = json.loads((teachers / "sst" / f"seed-{seed}" / META_FILE).read_text())["config"]
        assert meta["seed"] == seed and meta["train"]["tasks"] == ["sst"]
        assert not meta["train"]["distill"]["enabled"]
    first = {s: sha256_file(teachers / "sst" / f"seed-{s}" / MODEL_FILE) for s in (1, 2)}
    assert first[1] != first[2]  # two seeds, two models

    # the same settings again: both kept, their weights not rewritten
    again = run_cli(["train-teachers", distill([1, 2])], root)
    assert again.stderr.count("trained already with these settings") == 2, again.stderr
    seed1_mtime = (teachers / "sst" / "seed-1" / MODEL_FILE).stat().st_mtime_ns

    # the teachers' outputs: the mean of the two, one row per training row, in their order
    run_cli(["-q", "teach", distill([1, 2])], root)
    table = pd.read_parquet(root / "artifacts" / "teacher" / "sst-train.parquet")
    monkeypatch.chdir(root)  # the config's paths are the project's
    cfg = load_config("params.yaml")
    assert list(table["id"]) == list(train_frames(cfg)["sst"]["id"])
    probs = table[[f"p{i}" for i in range(5)]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    # the student trains against them
    run_cli(["-q", "train", distill([1, 2])], root)
    student = json.loads((root / "artifacts" / "model" / META_FILE).read_text())["config"]
    assert student["train"]["distill"]["teacher_seeds"] == [1, 2]
    assert student["train"]["tasks"] == ["sst", "para", "sts"]

    # seeds 2 and 3: seed 2 kept, seed 3 trained, the manifest lists those two
    out = run_cli(["train-teachers", distill([2, 3])], root)
    assert out.stderr.count("trained already with these settings") == 1, out.stderr
    assert sha256_file(teachers / "sst" / "seed-2" / MODEL_FILE) == first[2]
    assert (teachers / "sst" / "seed-3" / MODEL_FILE).exists()
    assert (teachers / "sst" / "seed-1" / MODEL_FILE).stat().st_mtime_ns == seed1_mtime
    manifest = json.loads((teachers / "manifest.json").read_text())
    assert sorted(manifest["trained"]) == [str(Path("artifacts/teachers/sst/seed-2")),
                                           str(Path("artifacts/teachers/sst/seed-3"))]

    # a changed setting that the teachers train with retrains them
    out = run_cli(["train-teachers", distill([2]), "train.lr=3e-5"], root)
    assert "trained already" not in out.stderr
    changed = sha256_file(teachers / "sst" / "seed-2" / MODEL_FILE)
    assert changed != first[2]

    # --retrain: trained again though nothing changed (e.g. after a change to the training code)
    out = run_cli(["train-teachers", "--retrain", distill([2]), "train.lr=3e-5"], root)
    assert "trained already" not in out.stderr and "teacher 1/1: training" in out.stderr, out.stderr


def test_teach_names_the_missing_teacher_and_the_command_that_trains_it(prepared_project: Path,
                                                                        tmp_path: Path) -> None:
    root = shutil.copytree(prepared_project, tmp_path / "project")
    proc = subprocess.run([sys.executable, "-m", "mtbert.cli", "teach", distill([5])], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "mtbert teach: artifacts/teachers/sst/seed-5: train.distill.teacher_seeds: not a trained "
        "mtbert model (run `mtbert train-teachers` first)"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_silver_pairs_are_new_neighbouring_pairs_labelled_by_the_teachers_and_trained_on(
        prepared_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Augmented SBERT through the command line: the teach stage draws 20 new Quora pairs among the
    48 training pairs' sentences, labels them with the teacher, and the student trains on 68."""
    root = shutil.copytree(prepared_project, tmp_path / "project")
    silver = "train.distill={enabled: true, tasks: [para], teacher_seeds: [1], silver: {para: 20}}"
    run_cli(["-q", "train-teachers", silver], root)
    out = run_cli(["-q", "teach", silver], root).stdout
    assert "(para 68; silver pairs among them: para 20)" in out, out

    monkeypatch.chdir(root)
    cfg = load_config("params.yaml")
    gold = train_frames(cfg)["para"]
    pairs = pd.read_parquet(root / "artifacts" / "teacher" / "para-silver.parquet")
    assert list(pairs["id"]) == [f"silver-para-{k}" for k in range(20)]
    sentences = set(gold["sentence1"]) | set(gold["sentence2"])
    assert set(pairs["sentence1"]) <= sentences and set(pairs["sentence2"]) <= sentences
    existing = {frozenset(p) for p in zip(gold["sentence1"], gold["sentence2"])}
    new = [frozenset(p) for p in zip(pairs["sentence1"], pairs["sentence2"])]
    assert not existing & set(new) and len(set(new)) == 20 and all(len(p) == 2 for p in new)

    # their labels are the teacher's decisions on them, and their outputs follow the gold rows'
    targets = pd.read_parquet(root / "artifacts" / "teacher" / "para-train.parquet")
    assert list(targets["id"]) == list(gold["id"]) + list(pairs["id"])
    silver_targets = targets["target"].to_numpy()[48:]
    np.testing.assert_array_equal(pairs["label"].to_numpy(), (silver_targets >= 0.5).astype(int))

    # the student trains on the 68 rows: its Quora epoch is 9 batches of 8 (6 with the gold rows)
    run_cli(["-q", "train", silver], root)
    curves = pd.read_csv(root / "artifacts" / "model" / "curves.csv")
    assert curves["step"].max() == 9, curves["step"].max()

    # asked for another count, the student refuses the pairs made for 20
    proc = subprocess.run([sys.executable, "-m", "mtbert.cli", "train", silver.replace("20", "30")],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "no silver para pairs made for train.distill.silver.para=30" in proc.stderr, proc.stderr
