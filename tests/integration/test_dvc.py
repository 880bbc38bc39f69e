"""The DVC pipeline in a real temporary git + DVC repository with a local remote.

Only the cheap stages run (prepare, augment: no training). The repository is laid out like the
project: dvc.yaml, params.yaml (tiny profile) and the code files the stages list as dependencies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, make_project, run_cli

pytestmark = pytest.mark.integration

TRACKED = ("data", "artifacts/prepared", "artifacts/augmented")


def _dvc(root: Path, *args: str) -> str:
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under the tracked folders, by relative path."""
    out = {}
    for folder in TRACKED:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def dvc_repo(tmp_path: Path, data_dir: Path) -> Path:
    """git init + dvc init, a local remote, the raw data imported and `dvc add`-ed."""
    root = make_project(tmp_path / "repo")
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO_ROOT / "mtbert", root / "mtbert", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")
    _dvc(root, "config", "core.analytics", "false")
    _dvc(root, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    run_cli(["-q", "import-data", "--source", str(data_dir)], root)
    _dvc(root, "add", "data")
    return root


def test_push_pull_round_trip_and_incremental_repro(dvc_repo: Path) -> None:
    root = dvc_repo
    first = _dvc(root, "repro", "augment")
    assert "Running stage 'prepare'" in first and "Running stage 'augment'" in first
    before = _digests(root)
    assert any(p.startswith("artifacts/augmented/") for p in before)
    assert any(p.startswith("artifacts/prepared/") for p in before)

    _dvc(root, "push")
    shutil.rmtree(root / ".dvc" / "cache")
    for folder in TRACKED:
        shutil.rmtree(root / folder)
    _dvc(root, "pull", "data.dvc", "prepare", "augment")  # train/evaluate never ran: nothing to pull
    assert _digests(root) == before  # byte for byte

    again = _dvc(root, "repro", "augment")
    assert "Running stage" not in again
    assert "Stage 'prepare' didn't change" in again and "Stage 'augment' didn't change" in again

    params = root / "params.yaml"
    text = params.read_text()
    assert "  swap_rate: 0.1\n" in text
    params.write_text(text.replace("  swap_rate: 0.1\n", "  swap_rate: 0.3\n", 1))
    changed = _dvc(root, "repro", "augment")
    assert "Running stage 'augment'" in changed and "Running stage 'prepare'" not in changed
    after = _digests(root)
    prepared = [p for p in before if p.startswith("artifacts/prepared/")]
    assert all(after[p] == before[p] for p in prepared)
    assert after["artifacts/augmented/sst-train.parquet"] != before["artifacts/augmented/sst-train.parquet"]


def _edit_function(path: Path, function: str) -> str:
    """Add a statement to the body of `function` in `path` (a real code change); returns the old text."""
    old = path.read_text()
    head = f"\ndef {function}("
    start = old.index(head)
    body = old.index('"""\n', old.index('"""', start) + 3) + 4  # after the docstring
    path.write_text(old[:body] + "    _edited = True  # a change dvc must see\n" + old[body:])
    return old


def _changed_stages(root: Path) -> set[str]:
    import json

    status = json.loads(_dvc(root, "status", "--json").strip().splitlines()[-1] or "{}")
    return {name for name in status if not name.endswith(".dvc")}


def test_editing_the_code_a_stage_runs_marks_that_stage_changed(dvc_repo: Path) -> None:
    root = dvc_repo
    _dvc(root, "repro")  # the whole tiny pipeline, so that dvc.lock records every stage
    assert _changed_stages(root) == set()

    stages = root / "mtbert" / "pipeline" / "stages"
    # the teachers stage trains with the train stage's code (it keeps teachers trained with the same
    # settings, so its re-run costs seconds where nothing that it trains with changed)
    for path, function, changed in ((stages / "train.py", "train_model", {"teachers", "train"}),
                                    (stages / "evaluate.py", "evaluate_model", {"evaluate"}),
                                    (root / "mtbert" / "samplers.py", "build_schedule", {"teachers", "train"})):
        old = _edit_function(path, function)
        assert _changed_stages(root) == changed, f"editing {function} in {path.name}"
        path.write_text(old)
        assert _changed_stages(root) == set()


def _declared_plots(root: Path) -> dict[str, str]:
    """Every plot dvc.yaml declares (top level and in stages), by name: 'image' or 'vega'."""
    import yaml

    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    entries = list(spec.get("plots", []))
    for stage in spec["stages"].values():
        entries += [next(iter(e)) if isinstance(e, dict) else e for e in stage.get("plots", [])]
    names = [next(iter(e)) if isinstance(e, dict) else e for e in entries]
    return {name: "image" if name.endswith(".png") else "vega" for name in names}


def _load_template_builder() -> object:
    import importlib.util

    path = REPO_ROOT / "assets" / "dvc-plots" / "build_template.py"
    spec = importlib.util.spec_from_file_location("build_template", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plots_show_draws_every_declared_plot_offline(dvc_repo: Path) -> None:
    """After a tiny `dvc repro` and a 2-trial study, the page `dvc plots show` writes holds every
    plot dvc.yaml declares and the chart libraries inline, and loads no script from the network."""
    import re

    from dvc_render.base import Renderer

    root = dvc_repo
    shutil.copytree(REPO_ROOT / "assets" / "dvc-plots", root / "assets" / "dvc-plots")
    template = _dvc(REPO_ROOT, "config", "--project", "plots.html_template").strip()  # the project's setting
    assert template == "../assets/dvc-plots/template.html"
    _dvc(root, "config", "plots.html_template", template)
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("\n  threads: 0 ", "\n  threads: 1 ", 1))  # shared CPUs
    _dvc(root, "repro")
    run_cli(["-q", "tune", "tune.n_trials=2", "train.threads=1"], root)

    out = _dvc(root, "plots", "show", "-o", "plots-page")
    page = (root / "plots-page" / "index.html").read_text(encoding="utf8")

    assert "failed to load" not in out.lower(), out
    assert re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//", page, re.I) == []
    assert "cdn.jsdelivr.net" not in page
    builder = _load_template_builder()
    pins = {package: (sha, sha) for package, (_, sha) in builder.PACKAGES.items()}
    assert builder.inline_scripts(page) == pins  # vega, vega-lite, vega-embed, byte for byte
    declared = _declared_plots(root)
    assert {"artifacts/model/curves.png", "training-loss", "tune-history"} <= set(declared)
    for name, kind in declared.items():  # dvc_render: one <div id="..."> per plot
        found = re.search(rf'<div\s+id\s*=\s*"{re.escape(Renderer.remove_special_chars(name))}"', page)
        assert found, f"plot {name} is not on the page"
        # a vega div holds its spec and data and no other div; an image div nests one per revision
        div = page[found.start():found.start() + 4000 if kind == "image" else page.index("</div>", found.start())]
        if kind == "image":
            assert f"<p>{name}</p>" in div, name
            src = re.search(r'<img src="([^"]+)">', div)[1]
            assert (root / "plots-page" / src).stat().st_size > 1000, name  # the PNG beside the page
        else:
            assert "vegaEmbed(" in div and re.search(r'"values":\s*\[\s*\{', div), name


def test_repro_with_distillation_trains_the_teachers_once(dvc_repo: Path) -> None:
    """With `train.distill.teacher_seeds`, `dvc repro` trains the single-task teachers (stage
    `teachers`), caches their outputs (`teach`) and trains the student from them. A change to a
    distillation-only setting re-runs the stages but keeps the teachers' weights (the stage's folder
    persists and is not cached); a change they train with retrains them."""
    root = dvc_repo
    params = root / "params.yaml"
    text = params.read_text()
    old = ("  distill: {enabled: false, schedule: linear, lam: 0.5, temperature: 1.0, tasks: [sst, para, sts],\n"
           "            teachers: [], teacher_seeds: [], ")
    assert old in text
    text = text.replace(old, "  distill: {enabled: true, schedule: linear, lam: 0.5, temperature: 1.0, tasks: [sst],\n"
                             "            teachers: [], teacher_seeds: [1], ", 1)
    params.write_text(text.replace("\n  threads: 0 ", "\n  threads: 1 ", 1))  # shared CPUs
    out = _dvc(root, "repro")
    for stage in ("teachers", "teach", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out, out
    weights = root / "artifacts" / "teachers" / "sst" / "seed-1" / "model.safetensors"
    # the student has the Hugging Face copy of its encoder; a teacher, which nobody loads alone, not
    assert (root / "artifacts" / "model" / "encoder" / "config.json").exists()
    assert not (weights.parent / "encoder").exists()
    first = (weights.stat().st_mtime_ns, hashlib.sha256(weights.read_bytes()).hexdigest())
    assert "Running stage" not in _dvc(root, "repro")
    assert _changed_stages(root) == set()

    params.write_text(params.read_text().replace("temperature: 1.0", "temperature: 2.0", 1))
    out = _dvc(root, "repro")
    assert "Running stage 'teachers'" in out and "Running stage 'train'" in out, out
    assert (weights.stat().st_mtime_ns, hashlib.sha256(weights.read_bytes()).hexdigest()) == first

    params.write_text(params.read_text().replace("  head_dropout: 0.1\n", "  head_dropout: 0.2\n", 1))
    _dvc(root, "repro", "teachers")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() != first[1]
