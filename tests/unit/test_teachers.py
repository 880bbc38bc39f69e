"""The teachers the project trains for distillation (`train.distill.teacher_seeds`): which runs they
are and where they go. Training them is tested in tests/integration/test_teachers.py."""

from __future__ import annotations

from mtbert.config import Config, with_overrides
from mtbert.pipeline.project import teacher_configs, teacher_dirs


def test_teachers_the_project_trains_are_its_single_task_baselines() -> None:
    """One teacher per distilled task x seed: this config with one task, that seed, loss scale 1
    and no distillation, in teachers_dir/TASK/seed-S; teacher_dirs lists their folders."""
    cfg = with_overrides(Config(), {
        "seed": 7, "train.lr": 3e-5, "train.loss_scale.sst": 2.0, "train.tasks": ["sst", "para", "sts"],
        "train.distill": {"enabled": True, "tasks": ["sst", "sts"], "teacher_seeds": [1, 2],
                          "teachers_dir": "t"}})
    teachers = teacher_configs(cfg)
    assert [(c.train.tasks, c.seed, c.train.out_dir) for c in teachers] == [
        (("sst",), 1, "t/sst/seed-1"), (("sst",), 2, "t/sst/seed-2"),
        (("sts",), 1, "t/sts/seed-1"), (("sts",), 2, "t/sts/seed-2")]
    for c in teachers:
        assert not c.train.distill.enabled and c.train.loss_scale.sst == 1.0
        assert not c.train.export_hf  # no Hugging Face copy of a teacher's encoder (88 MB each)
        assert c.train.lr == 3e-5  # everything else is the project's
    assert teacher_dirs(cfg) == ["t/sst/seed-1", "t/sst/seed-2", "t/sts/seed-1", "t/sts/seed-2"]
    given = with_overrides(cfg, {"train.distill.teacher_seeds": [], "train.distill.teachers": ["m1", "m2"]})
    assert teacher_configs(given) == [] and teacher_dirs(given) == ["m1", "m2"]
    assert teacher_configs(with_overrides(cfg, {"train.distill.enabled": False})) == []



PATHS = {"train.distill.outputs_dir", "train.distill.teachers_dir"}  # where, not what


def _result_keys(cfg: Config, ignore: frozenset[str] = frozenset()) -> dict:
    """The settings that decide a training's result (what a checkpoint's fingerprint compares)."""
    from mtbert.config import flatten, to_dict
    from mtbert.model.trained import RESULT_KEYS, RUNTIME_KEYS

    return {k: v for k, v in flatten(to_dict(cfg)).items()
            if k.startswith(RESULT_KEYS) and k not in RUNTIME_KEYS | PATHS | ignore}


def test_the_distilled_profile_trains_the_teachers_and_student_the_full_table_measured() -> None:
    """params.yaml's `distilled` profile is the configuration docs/results.md reports from
    ablations.yaml (set distill_full): its teachers are that set's single-task runs, and its
    student is the set's `distilled_ensemble_para_x2`, the teachers named by seeds, not folders."""
    from pathlib import Path

    from mtbert.config import load_config
    from mtbert.pipeline.ablation import load_sets, variant_config

    root = Path(__file__).resolve().parents[2]
    profile = load_config(root / "params.yaml", ["profile=distilled", "train.precision=fp32"])
    full = load_config(root / "params.yaml", ["profile=full", "train.precision=fp32"])
    table = load_sets(root / "ablations.yaml")["distill_full"]
    runs = {v.folder(): variant_config(full, v, Path("set")) for v in table.variants}
    teachers = teacher_configs(profile)
    assert len(teachers) == 9
    for teacher in teachers:
        task, seed = teacher.train.tasks[0], teacher.seed
        assert _result_keys(teacher) == _result_keys(runs[f"{task}_only/seed-{seed}"])
    named = frozenset({"train.distill.teachers", "train.distill.teacher_seeds"})
    for seed in (1234, 1, 2):
        measured = runs[f"distilled_ensemble_para_x2/seed-{seed}"]
        assert list(measured.train.distill.teachers) == [
            f"set/{t.train.tasks[0]}_only/seed-{t.seed}/model" for t in teachers]
        assert (_result_keys(with_overrides(profile, {"seed": seed}), named)
                == _result_keys(measured, named))
