"""`mtbert ablate`: the ablations file, the tables, and a real 2-configuration run on the tiny profile."""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from mtbert.pipeline.ablation import (
    AblationSet,
    Variant,
    check_profile,
    load_sets,
    run_set,
    same_config,
    variant_config,
    write_tables,
)
from mtbert.config import ConfigError, Config, load_config, to_dict, with_overrides
from mtbert.precision import cpu_has_bf16
from tests.conftest import REPO_ROOT, run_cli


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ablations.yaml"
    path.write_text(text)
    return path


def test_the_repository_sets_resolve_against_params_yaml() -> None:
    sets = load_sets(REPO_ROOT / "ablations.yaml")
    assert {"main", "samplers", "smoke"} <= set(sets)
    for ablation in sets.values():
        base = load_config(REPO_ROOT / "params.yaml", [f"profile={ablation.profile}"])
        check_profile(base, ablation)
        for variant in ablation.variants:  # every override is a valid config
            cfg = variant_config(base, variant, Path("artifacts/ablation") / ablation.name)
            assert cfg.train.out_dir.endswith(f"{ablation.name}/{variant.folder()}/model")
            assert not cfg.eval.predict_test
    main = {v.name: v for v in sets["main"].variants}
    base = load_config(REPO_ROOT / "params.yaml", ["profile=ablation"])
    assert variant_config(base, main["mlm_pretrain"], Path("x")).mlm.enabled
    assert variant_config(base, main["para_loss_scale_0.1"], Path("x")).train.loss_scale.para == 0.1


@pytest.mark.parametrize("text, message", [
    ("sets: {a: {configs: [{name: x}], colour: red}}", "unknown key"),
    ("sets: {a: {configs: [{name: x}, {name: x}]}}", "duplicate names"),
    ("sets: {a: {configs: [{name: x, overrides: [train.out_dir=elsewhere]}]}}", "set by `mtbert ablate`"),
    ("sets: {a: {configs: [{name: 'x y'}]}}", "must be letters"),
    ("sets: {a: {configs: []}}", "non-empty list"),
    ("configs: []", "top-level 'sets:'"),
])
def test_bad_ablation_files_are_rejected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_sets(write_yaml(tmp_path, text))


def test_bad_overrides_and_wrong_profiles_fail_before_training() -> None:
    base = load_config(REPO_ROOT / "params.yaml", ["profile=tiny"])
    with pytest.raises(ConfigError, match="configuration 'bad'.*train.lr"):
        variant_config(base, Variant("bad", ("train.lr=-1",)), Path("x"))
    with pytest.raises(ConfigError, match="profile=ablation"):
        check_profile(base, AblationSet("main", (Variant("a"),), profile="ablation"))
    with pytest.raises(ConfigError, match="no configuration"):
        run_set(base, AblationSet("s", (Variant("a"),)), root="unused", out="unused", only=["b"])


def _row(config: str, overall: float) -> dict:
    return {"set": "s", "config": config, "overrides": "", "seed": 1, "dev_sst_acc": 0.5,
            "dev_para_acc": 0.6, "dev_sts_pearson": 0.7, "dev_overall": overall, "train_steps": 3,
            "mlm_s": 0.0, "train_s": 1.0, "eval_s": 1.0, "wall_s": 2.0}


def test_tables_keep_prose_and_other_sets(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "ablation"
    first = AblationSet("s", (Variant("a"),))
    write_tables([_row("a", 0.5)], out, first)
    md = out.with_suffix(".md")
    md.write_text("# Results\n\nProse before.\n\n" + md.read_text().split("\n", 1)[1] + "\nProse after.\n")
    write_tables([_row("a", 0.5), _row("b", 0.55)], out, first)
    write_tables([{**_row("c", 0.4), "set": "t"}], out, AblationSet("t", (Variant("c"),)))
    text = md.read_text()
    assert "Prose before." in text and "Prose after." in text
    assert text.count("<!-- ablation:s:start -->") == 1 and "| b |" in text and "+0.0500" in text
    with out.with_suffix(".csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["set"], r["config"]) for r in rows] == [("s", "a"), ("s", "b"), ("t", "c")]


def test_ablate_runs_a_two_configuration_set_and_resumes(prepared_project: Path, tmp_path: Path) -> None:
    project = shutil.copytree(prepared_project, tmp_path / "project")
    args = ["-q", "ablate", "--set", "smoke", "--file", str(REPO_ROOT / "ablations.yaml"),
            "--out", "docs/ablation", "profile=tiny", "train.threads=1"]
    run_cli([*args, "--only", "cls_pooling"], project)  # just one configuration first
    run_cli([*args, "--tables-only"], project)  # trains nothing: baseline is still not run
    with (project / "docs/ablation.csv").open() as fh:
        assert [r["config"] for r in csv.DictReader(fh)] == ["cls_pooling"]
    assert not (project / "artifacts/ablation/smoke/baseline").exists()
    run_cli(args, project)  # the rest; the table lists both in the set's order
    md = (project / "docs/ablation.md").read_text()
    with (project / "docs/ablation.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["config"] for r in rows] == ["baseline", "cls_pooling"]
    for r in rows:
        values = [float(r[k]) for k in ("dev_sst_acc", "dev_para_acc", "dev_sts_pearson", "dev_overall")]
        assert all(math.isfinite(v) for v in values)
        assert 0 <= values[0] <= 1 and 0 <= values[1] <= 1 and -1 <= values[2] <= 1
        assert int(r["train_steps"]) == 6 and float(r["wall_s"]) > 0  # 48 rows / batch 8, round-robin
        assert f"| {r['config']} |" in md and f"{float(r['dev_overall']):.4f}" in md
    assert rows[0]["dev_overall"] != rows[1]["dev_overall"]  # two different models were trained
    runs = _mlflow_runs(project)
    parent = [r for r in runs if r.data.tags.get("mlflow.runName") == "ablation-smoke"]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and sorted(r.data.tags["ablation.config"] for r in nested) == \
        ["baseline", "cls_pooling"]
    assert all(r.data.metrics["dev/overall"] > 0 for r in nested)
    # Finished configurations are skipped: a second run trains nothing and keeps the numbers.
    start = time.monotonic()
    run_cli(args, project)
    with (project / "docs/ablation.csv").open() as fh:
        assert list(csv.DictReader(fh)) == rows
    assert len(_mlflow_runs(project)) == len(runs)
    assert time.monotonic() - start < 60
    result = json.loads((project / "artifacts/ablation/smoke/baseline/result.json").read_text())
    assert result["row"]["config"] == "baseline"
    assert not (project / "artifacts/ablation/smoke/baseline/model").exists()  # weights not kept


def _mlflow_runs(project: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mtbert")
    return client.search_runs([experiment.experiment_id])


def test_configs_are_typed(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "sets: {a: {profile: tiny, configs: [{name: x, overrides: [seed=5]}]}}")
    ablation = load_sets(path)["a"]
    cfg = variant_config(load_config(REPO_ROOT / "params.yaml", ["profile=tiny"]), ablation.variants[0],
                         tmp_path)
    assert isinstance(cfg, Config) and cfg.seed == 5 and cfg.train.out_dir == str(tmp_path / "x" / "model")


def test_stored_results_survive_new_options_only_at_their_defaults() -> None:
    cfg = load_config(REPO_ROOT / "params.yaml", ["profile=ablation"])
    stored = to_dict(cfg)
    assert same_config(stored, cfg)
    del stored["model"]["unpad"]  # a result written before the option existed
    assert same_config(stored, cfg)
    assert not same_config(stored, with_overrides(cfg, {"model.unpad": False}))
    assert not same_config(stored, with_overrides(cfg, {"train.lr": 1e-3}))
    assert same_config(stored, with_overrides(cfg, {"train.threads": 2}))  # a runtime setting


def test_a_configuration_records_the_precision_this_machine_trains_in(tmp_path: Path) -> None:
    base = load_config(REPO_ROOT / "params.yaml", ["profile=tiny"])
    assert base.train.precision == "auto"
    cfg = variant_config(base, load_sets(write_yaml(
        tmp_path, "sets: {a: {configs: [{name: x, overrides: []}]}}"))["a"].variants[0], tmp_path)
    assert cfg.train.precision == ("bf16" if cpu_has_bf16() else "fp32")
    stored = to_dict(cfg)
    stored["train"]["precision"] = "fp32" if cfg.train.precision == "bf16" else "bf16"
    assert not same_config(stored, cfg)  # a result made in the other precision is not reused


def _predicted(root: Path, task_values: dict[str, list[float]]) -> str:
    """An eval folder with course-format dev predictions; returns its path."""
    (root / "predictions").mkdir(parents=True)
    for task, values in task_values.items():
        lines = ["id \t Predicted \n"] + [f"r{i} , {v} \n" for i, v in enumerate(values)]
        (root / "predictions" / f"{task}-dev-output.csv").write_text("".join(lines))
    return str(root)


def test_table_has_seed_spread_and_intervals_against_single_task_references(tmp_path: Path) -> None:
    from mtbert.pipeline.ablation import markdown_table

    gold = {"sst": np.array([0, 1, 2, 3, 4, 0]), "para": np.array([0, 1, 0, 1, 0, 1]),
            "sts": np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])}
    nan = float("nan")
    rows = [{**_row("sst_only", nan), "dev_para_acc": nan, "dev_sts_pearson": nan,
             "eval_dir": _predicted(tmp_path / "s", {"sst": [0, 1, 2, 3, 4, 1]})},
            {**_row("para_only", nan), "dev_sst_acc": nan, "dev_sts_pearson": nan,
             "eval_dir": _predicted(tmp_path / "p", {"para": [0, 1, 0, 1, 0, 0]})},
            {**_row("sts_only", nan), "dev_sst_acc": nan, "dev_para_acc": nan,
             "eval_dir": _predicted(tmp_path / "t", {"sts": [0, 1, 2, 3, 4, 5]})}]
    for seed, sst in ((1, [0, 1, 2, 3, 4, 0]), (2, [0, 1, 2, 3, 0, 0])):  # all right; 5 of 6
        rows.append({**_row("multi", 0.7), "seed": seed, "eval_dir": _predicted(
            tmp_path / f"m{seed}", {"sst": sst, "para": [0, 1, 0, 1, 0, 1], "sts": [0, 1, 2, 3, 4, 5]})})
    table = markdown_table(rows, {"sst": "sst_only", "para": "para_only", "sts": "sts_only"}, gold)
    multi = next(line for line in table.splitlines() if line.startswith("| multi | (none) | 1, 2 |"))
    assert "0.7000 ± 0.0000" in multi
    # seed-averaged SST accuracy 11/12 vs 5/6: +0.0833; Quora 1 vs 5/6: +0.1667; STS equal.
    per_task = table.splitlines()[-1]
    assert per_task.startswith("| multi | +0.0833 [") and "| +0.1667 [" in per_task
    assert "+0.0000 [+0.0000, +0.0000]" in per_task
