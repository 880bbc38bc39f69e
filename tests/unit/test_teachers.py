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
        assert c.train.lr == 3e-5  # everything else is the project's
    assert teacher_dirs(cfg) == ["t/sst/seed-1", "t/sst/seed-2", "t/sts/seed-1", "t/sts/seed-2"]
    given = with_overrides(cfg, {"train.distill.teacher_seeds": [], "train.distill.teachers": ["m1", "m2"]})
    assert teacher_configs(given) == [] and teacher_dirs(given) == ["m1", "m2"]
    assert teacher_configs(with_overrides(cfg, {"train.distill.enabled": False})) == []
