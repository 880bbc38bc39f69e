"""`mtbert ablate`: train and evaluate named sets of configurations under one budget.

`ablations.yaml` names sets; a set names the profile it runs on and a list of configurations, each a
name plus dotted overrides (`model.pooling=mean`) applied on top of the resolved base config. Every
configuration trains into `ROOT/SET/CONFIG/` (model, eval, mlm) with the base seed, data and
budget unless its overrides change them, is evaluated on the dev sets, and leaves `result.json`
there. A configuration whose result exists (for the same resolved config) is skipped, so an
interrupted set resumes where it stopped; a half-trained configuration resumes from its checkpoint.
A configuration with `mlm.enabled=true` first runs MLM further pretraining into its `mlm/` folder
and trains from it (`train.init_from`); its wall time includes the pretraining.

Tracking: one MLflow parent run per set (re-opened on resume) with a nested run per configuration.
The results go to `OUT.md` (a table between markers, so prose around it survives a re-run) and
`OUT.csv` (rows of other sets are kept). Edge module: it calls the stages' bodies and `tracking`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import yaml

from mtbert.config import Config, ConfigError, flatten, parse_override, to_dict, with_overrides
from mtbert.fileio import atomic_write_text
from mtbert.pipeline import tracking
from mtbert.model.trained import RUNTIME_KEYS
from mtbert.pipeline.project import checkpoint_dir, dev_frame, resolve_device, unsent_path, with_precision
from mtbert.pipeline.stages.evaluate import evaluate_model
from mtbert.pipeline.stages import teach
from mtbert.pipeline.stages.pretrain_mlm import pretrain
from mtbert.pipeline.stages.train import train_model
from mtbert.metrics import overall_score
from mtbert.stats import Interval, paired_bootstrap_seeds, seed_summary
from mtbert.tasks import TASKS

RESULT_FILE = "result.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # names become folder names
SET_KEYS = {"profile", "description", "configs", "seeds", "reference"}
CONFIG_KEYS = {"name", "overrides", "seeds"}
RESERVED = {"profile", "train.out_dir", "eval.out_dir", "mlm.out_dir", "train.init_from",
            "train.distill.outputs_dir"}
SET_DIR = "$SET_DIR"  # in an override value: the set's folder (e.g. where its teachers were trained)
COLUMNS = ["set", "config", "overrides", "seed", "dev_sst_acc", "dev_para_acc", "dev_sts_pearson",
           "dev_overall", "train_steps", "mlm_s", "train_s", "eval_s", "wall_s"]
METRIC_COLUMNS = {"dev/sst/accuracy": "dev_sst_acc", "dev/para/accuracy": "dev_para_acc",
                  "dev/sts/pearson": "dev_sts_pearson", "dev/overall": "dev_overall"}


@dataclass(frozen=True)
class Variant:
    """One configuration of a set: a name, dotted `key=value` overrides and, when the set (or the
    configuration) lists seeds, the seed of this run (its folder is then CONFIG/seed-S)."""

    name: str
    overrides: tuple[str, ...] = ()
    seed: int | None = None

    def folder(self) -> str:
        return self.name if self.seed is None else f"{self.name}/seed-{self.seed}"


@dataclass(frozen=True)
class AblationSet:
    """A named set of configurations run on one profile."""

    name: str
    variants: tuple[Variant, ...]
    profile: str | None = None
    description: str = ""
    reference: str | dict[str, str] | None = None  # what the Δ and interval columns compare to


# ---------------------------------------------------------------------------------------------
# Reading ablations.yaml


def load_sets(path: str | Path) -> dict[str, AblationSet]:
    """Read and check every set of an ablations file. Raises ConfigError naming the bad entry."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: {err}") from None
    sets = raw.get("sets") if isinstance(raw, dict) else None
    if not isinstance(sets, dict) or not sets:
        raise ConfigError(f"{path}: expected a top-level 'sets:' mapping of set names")
    return {name: _parse_set(f"{path}: sets.{name}", str(name), body) for name, body in sets.items()}


def _parse_set(where: str, name: str, body: Any) -> AblationSet:
    if not isinstance(body, dict) or not NAME_PATTERN.match(name):
        raise ConfigError(f"{where}: a set needs a plain name and a mapping with 'configs'")
    unknown = sorted(set(body) - SET_KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; valid: {', '.join(sorted(SET_KEYS))}")
    configs = body.get("configs")
    if not isinstance(configs, list) or not configs:
        raise ConfigError(f"{where}.configs: expected a non-empty list of {{name, overrides}}")
    seeds = _parse_seeds(f"{where}.seeds", body.get("seeds"))
    variants = tuple(v for i, c in enumerate(configs)
                     for v in _parse_variant(f"{where}.configs[{i}]", c, seeds))
    names = [v.folder() for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}.configs: duplicate names {duplicates}")
    reference = body.get("reference")
    return AblationSet(name, variants, body.get("profile"), str(body.get("description", "")).strip(),
                       _parse_reference(f"{where}.reference", reference, {v.name for v in variants}))


def _parse_seeds(where: str, seeds: Any) -> tuple[int, ...] | None:
    if seeds is None:
        return None
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: expected a list of distinct integers like [1234, 1, 2]")
    return tuple(seeds)


def _parse_reference(where: str, reference: Any, names: set[str]) -> str | dict[str, str] | None:
    """A configuration name, or a mapping task -> configuration (e.g. three single-task runs)."""
    if reference is None:
        return None
    chosen = reference.values() if isinstance(reference, dict) else [reference]
    if isinstance(reference, dict) and set(reference) != set(TASKS) or \
            not all(isinstance(c, str) and c in names for c in chosen):
        raise ConfigError(f"{where}: expected a configuration of the set, or a mapping of each of "
                          f"{', '.join(TASKS)} to one")
    return reference


def _parse_variant(where: str, entry: Any, seeds: tuple[int, ...] | None = None) -> list[Variant]:
    if not isinstance(entry, dict) or set(entry) - CONFIG_KEYS or "name" not in entry:
        raise ConfigError(f"{where}: expected a mapping with 'name' and optional 'overrides'")
    name = str(entry["name"])
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"{where}.name: {name!r} must be letters, digits, '_', '.', '-'")
    overrides = entry.get("overrides") or []
    if not isinstance(overrides, list):
        raise ConfigError(f"{where}.overrides: expected a list like ['model.pooling=mean']")
    for text in overrides:
        key, _ = parse_override(str(text))
        if key in RESERVED:
            raise ConfigError(f"{where}.overrides: {key} is set by `mtbert ablate` itself")
    own = _parse_seeds(f"{where}.seeds", entry.get("seeds"))
    chosen = own if own is not None else seeds
    texts = tuple(str(o) for o in overrides)
    return [Variant(name, texts)] if chosen is None else [Variant(name, texts, s) for s in chosen]


def variant_config(base: Config, variant: Variant, set_dir: Path) -> Config:
    """The resolved config of one configuration: base + overrides + its own output folders, and
    `train.precision` as this machine runs it (auto -> bf16 or fp32), so a stored result made in
    another precision is not taken for this one."""
    run_dir = set_dir / variant.folder()
    overrides: dict[str, Any] = dict(parse_override(o.replace(SET_DIR, str(set_dir)))
                                     for o in variant.overrides)
    overrides.update({"train.out_dir": str(run_dir / "model"), "eval.out_dir": str(run_dir / "eval"),
                      "mlm.out_dir": str(run_dir / "mlm"), "eval.predict_test": False,
                      "train.distill.outputs_dir": str(run_dir / "teacher")})
    if variant.seed is not None:
        overrides["seed"] = variant.seed
    try:
        cfg = with_overrides(base, overrides)
    except ConfigError as err:
        raise ConfigError(f"configuration {variant.name!r}: {err}") from None
    return with_precision(cfg, resolve_device(cfg.train.device), quiet=True)


def check_profile(base: Config, ablation: AblationSet) -> None:
    """A set runs on the profile it names; say how to ask for it when the command line did not."""
    if ablation.profile is not None and base.profile != ablation.profile:
        raise ConfigError(
            f"set {ablation.name!r} runs on profile {ablation.profile!r} but the resolved profile is "
            f"{base.profile!r}; run: mtbert ablate --set {ablation.name} profile={ablation.profile}")


# ---------------------------------------------------------------------------------------------
# Running a set


def run_from_file(base: Config, path: str | Path, set_name: str, *, root: str | Path,
                  out: str | Path, keep_models: bool = False,
                  only: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Entry point of `mtbert ablate`: run (or resume) set `set_name` of the file at `path`."""
    sets = load_sets(path)
    if set_name not in sets:
        raise ConfigError(f"{path}: no set {set_name!r}; sets: {', '.join(sets)}")
    return run_set(base, sets[set_name], root=root, out=out, keep_models=keep_models, only=only)


def run_set(base: Config, ablation: AblationSet, *, root: str | Path, out: str | Path,
            keep_models: bool = False, only: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the configurations of `ablation` not finished yet (or just those named in `only`).

    The tables are rewritten after each configuration and list every finished configuration of
    the set, in the set's order.
    """
    check_profile(base, ablation)
    unknown = sorted(set(only or ()) - {v.name for v in ablation.variants})
    if unknown:
        raise ConfigError(f"set {ablation.name!r} has no configuration {unknown}")
    set_dir = Path(root) / ablation.name
    configs = {v.folder(): variant_config(base, v, set_dir)
               for v in ablation.variants}  # all resolved first: a bad override fails before training
    rows: list[dict[str, Any]] = []
    paths: tuple[Path, ...] = ()
    gold = dev_gold(base)
    with _parent_run(base, ablation, set_dir):
        for variant in ablation.variants:
            cfg = configs[variant.folder()]
            row = (_run_or_load(ablation, variant, cfg, keep_models, unsent_path(base))
                   if only is None or variant.name in only else _finished(cfg))
            if row is not None:
                rows.append(row)
                paths = write_tables(rows, out, ablation, gold)
        with tracking.best_effort("log the ablation tables to MLflow"), tracking.bounded_http():
            for path in paths:
                mlflow.log_artifact(str(path), artifact_path="ablation")
    return rows


@contextlib.contextmanager
def _parent_run(base: Config, ablation: AblationSet, set_dir: Path) -> Iterator[None]:
    run_id = tracking.load_run_id(set_dir)
    if run_id is not None and not _run_exists(run_id):
        run_id = None  # recorded in another tracking store: start a new parent run
    with tracking.start_run(base, f"ablation-{ablation.name}", run_id=run_id) as run:
        tracking.save_run_id(set_dir, run.info.run_id)
        mlflow.set_tags({"ablation.set": ablation.name, "ablation.description": ablation.description})
        yield


def _run_exists(run_id: str) -> bool:
    try:
        mlflow.MlflowClient(tracking_uri=tracking.tracking_uri()).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def _finished(cfg: Config) -> dict[str, Any] | None:
    """The stored row of a configuration finished with exactly this config, else None."""
    result_path = Path(cfg.train.out_dir).parent / RESULT_FILE
    if not result_path.exists():
        return None
    stored = json.loads(result_path.read_text())
    if not same_config(stored.get("resolved_config") or {}, cfg):
        return None
    return {"eval_dir": cfg.eval.out_dir, **stored["row"]}  # rows stored before eval_dir was kept


def same_config(stored: dict[str, Any], cfg: Config) -> bool:
    """Whether a stored resolved config is `cfg`, allowing for options added to the code since.

    A key the stored config lacks counts as equal only when `cfg` holds that option's default,
    i.e. the run behaved as the new option's default does: results survive new options. Runtime
    settings (threads, device, ...: `RUNTIME_KEYS`) do not change a result and are not compared.
    """
    old, new, default = (
        {k: v for k, v in flatten(tree).items() if k not in RUNTIME_KEYS}
        for tree in (stored, to_dict(cfg), to_dict(Config())))
    added = set(new) - set(old)
    return (set(old) <= set(new) and all(old[k] == new[k] for k in old)
            and all(k in default and new[k] == default[k] for k in added))


def _run_or_load(ablation: AblationSet, variant: Variant, cfg: Config, keep_models: bool,
                 fallback: Path) -> dict[str, Any]:
    finished = _finished(cfg)
    if finished is not None:
        return finished
    result_path = Path(cfg.train.out_dir).parent / RESULT_FILE
    tags = {"ablation.set": ablation.name, "ablation.config": variant.name,
            "ablation.overrides": "; ".join(variant.overrides) or "(none)"}
    with tracking.tracked_run(cfg, f"{ablation.name}/{variant.folder()}", fallback=fallback,
                              nested=True, tags=tags) as tracked:
        measured = _train_and_evaluate(cfg, tracked)
        # At the last step: the training's validation curve logged the same names up to it.
        tracked.log_metrics(measured, int(measured["train_steps"]))
    row = _row(ablation, variant, cfg, measured)
    atomic_write_text(result_path, json.dumps({"row": row, "resolved_config": to_dict(cfg)}, indent=2))
    if not keep_models:
        for folder in (cfg.train.out_dir, cfg.mlm.out_dir, checkpoint_dir(cfg)):
            shutil.rmtree(folder, ignore_errors=True)
    return row


def _train_and_evaluate(cfg: Config, tracked: tracking.TrackedRun) -> dict[str, float]:
    """(MLM pretraining,) training and dev evaluation of one configuration, with timings."""
    timings = {"mlm_s": 0.0}
    start = time.monotonic()
    if cfg.mlm.enabled:
        tracked.log_metrics(pretrain(cfg, callbacks=[tracked.callback]))
        cfg = with_overrides(cfg, {"train.init_from": cfg.mlm.out_dir})
        timings["mlm_s"] = time.monotonic() - start
    if cfg.train.distill.enabled:  # the teachers' outputs on this configuration's training rows
        teach.run(cfg)
    train_start = time.monotonic()
    state = train_model(cfg, resume=True, callbacks=[tracked.callback])
    eval_start = time.monotonic()
    metrics = evaluate_model(cfg)
    end = time.monotonic()
    timings.update(train_s=eval_start - train_start, eval_s=end - eval_start, wall_s=end - start)
    return {**metrics, **timings, "train_steps": float(state.global_step)}


def _row(ablation: AblationSet, variant: Variant, cfg: Config, measured: dict[str, float]) -> dict[str, Any]:
    row: dict[str, Any] = {"set": ablation.name, "config": variant.name,
                           "overrides": "; ".join(variant.overrides), "seed": cfg.seed}
    # A single-task configuration has only its task's metric (and no overall).
    row.update({column: measured.get(key, float("nan")) for key, column in METRIC_COLUMNS.items()})
    row.update({key: measured[key] for key in ("train_steps", "mlm_s", "train_s", "eval_s", "wall_s")})
    row["train_steps"] = int(row["train_steps"])
    row["eval_dir"] = cfg.eval.out_dir  # its dev predictions: the bootstrap intervals read them
    return row


# ---------------------------------------------------------------------------------------------
# Tables


def markdown_table(rows: list[dict[str, Any]], reference: str | dict[str, str] | None = None,
                   gold: dict[str, np.ndarray] | None = None) -> str:
    """The results as markdown: one row per configuration (mean ± sd over its seeds), the
    difference in overall against the reference (default: the first configuration) with its
    paired bootstrap 95% interval, and a second table of the per-task differences.

    `gold` (dev labels per task, in the order of the prediction files) enables the intervals.
    """
    if not rows:
        return "(no results)"
    groups = _groups(rows)
    reference = reference or next(iter(groups))
    ref_name = reference if isinstance(reference, str) else " + ".join(reference.values())
    intervals = {name: _intervals(groups, name, reference, gold) for name in groups}
    ref_overall = _reference_overall(groups, reference)
    lines = ["| config | overrides | seeds | SST acc | Quora acc | STS r | overall | "
             f"Δ overall vs {ref_name} (95% CI) | steps | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in groups.items():
        cells = [_mean_sd([r[c] for r in runs]) for c in METRIC_COLUMNS.values()]
        lines.append(f"| {name} | {runs[0]['overrides'].replace('; ', ', ') or '(none)'} | "
                     f"{', '.join(str(r['seed']) for r in runs)} | {' | '.join(cells)} | "
                     f"{_delta_cell(intervals[name].get('overall'), runs, ref_overall)} | "
                     f"{runs[0]['train_steps']} | "
                     f"{np.mean([float(r['wall_s']) for r in runs]):.0f} |")
    if any(intervals.values()):
        lines += ["", f"Per task, Δ vs {ref_name} (paired bootstrap over the dev rows, seeds averaged):",
                  "", "| config | Δ SST acc | Δ Quora acc | Δ STS r |", "|---|---|---|---|"]
        lines += [f"| {name} | " + " | ".join(_interval_cell(found.get(t)) for t in TASKS) + " |"
                  for name, found in intervals.items()]
    return "\n".join(lines)


def _groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["config"], []).append(row)
    return groups


def _mean_sd(values: list[Any]) -> str:
    array = np.array([float(v) for v in values], dtype=float)
    if np.isnan(array).all():
        return "–"
    summary = seed_summary(array[~np.isnan(array)])
    return f"{summary.mean:.4f}" if summary.n == 1 else f"{summary.mean:.4f} ± {summary.sd:.4f}"


def _reference_overall(groups: dict[str, list[dict[str, Any]]],
                       reference: str | dict[str, str]) -> float:
    """The reference's mean overall; for a per-task reference, the overall of its task means."""
    def mean(name: str, column: str) -> float:
        values = np.array([float(r[column]) for r in groups.get(name, [])], dtype=float)
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else float("nan")

    if isinstance(reference, str):
        return mean(reference, "dev_overall")
    return overall_score(mean(reference["sst"], "dev_sst_acc"), mean(reference["para"], "dev_para_acc"),
                         mean(reference["sts"], "dev_sts_pearson"))


def _delta_cell(interval: Interval | None, runs: list[dict[str, Any]], ref_overall: float) -> str:
    """Δ overall with its interval when predictions allow one, else the plain difference of means."""
    if interval is not None:
        return _interval_cell(interval)
    overall = [float(r["dev_overall"]) for r in runs]
    if np.isnan(overall).all() or np.isnan(ref_overall):
        return "–"
    return f"{np.nanmean(overall) - ref_overall:+.4f}"


def _interval_cell(interval: Interval | None) -> str:
    if interval is None:
        return "–"
    mark = " *" if interval.excludes_zero() else ""
    return f"{interval.estimate:+.4f} [{interval.low:+.4f}, {interval.high:+.4f}]{mark}"


def _intervals(groups: dict[str, list[dict[str, Any]]], name: str, reference: str | dict[str, str],
               gold: dict[str, np.ndarray] | None) -> dict[str, Interval]:
    """Paired bootstrap intervals of `name` against the reference, per task and overall."""
    if gold is None:
        return {}
    by_task = reference if isinstance(reference, dict) else dict.fromkeys(TASKS, reference)
    if name in by_task.values():  # the reference itself
        return {}
    mine, theirs = {}, {}
    for task in TASKS:
        a = _seed_predictions(groups.get(name, []), task, len(gold[task]))
        b = _seed_predictions(groups.get(by_task[task], []), task, len(gold[task]))
        if a is not None and b is not None:
            mine[task], theirs[task] = a, b
    return paired_bootstrap_seeds(mine, theirs, gold) if mine else {}


def _seed_predictions(runs: list[dict[str, Any]], task: str, rows: int) -> np.ndarray | None:
    """(seeds, rows) dev predictions of a configuration for `task`, or None if any is missing."""
    found = []
    for run in runs:
        path = Path(str(run.get("eval_dir", ""))) / "predictions" / f"{task}-dev-output.csv"
        if not run.get("eval_dir") or not path.exists():
            return None
        values = [float(line.rsplit(",", 1)[1]) for line in path.read_text().splitlines()[1:] if line.strip()]
        if len(values) != rows:
            return None
        found.append(values)
    return np.array(found) if found else None


def dev_gold(base: Config) -> dict[str, np.ndarray]:
    """The dev labels per task, in the order evaluate writes its prediction files."""
    return {task: dev_frame(base, task)["label"].to_numpy() for task in TASKS}


def read_table(out: str | Path, set_name: str) -> str:
    """The set's table as `write_tables` last wrote it into `OUT.md` ("" if there is none)."""
    path = Path(f"{out}.md")
    start, end = f"<!-- ablation:{set_name}:start -->", f"<!-- ablation:{set_name}:end -->"
    text = path.read_text() if path.exists() else ""
    return text[text.index(start) + len(start):text.index(end)].strip() if start in text else ""


def write_tables(rows: list[dict[str, Any]], out: str | Path, ablation: AblationSet,
                 gold: dict[str, np.ndarray] | None = None) -> tuple[Path, Path]:
    """Write the set's table into `OUT.md` (between its markers) and its rows into `OUT.csv`."""
    md_path, csv_path = Path(f"{out}.md"), Path(f"{out}.csv")
    start, end = f"<!-- ablation:{ablation.name}:start -->", f"<!-- ablation:{ablation.name}:end -->"
    block = f"{start}\n{markdown_table(rows, ablation.reference, gold)}\n{end}"
    text = md_path.read_text() if md_path.exists() else "# Ablation results\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = f"{text.rstrip()}\n\n## Set `{ablation.name}`\n\n{block}\n"
    atomic_write_text(md_path, text)
    kept = []
    if csv_path.exists():
        with csv_path.open(newline="") as fh:
            kept = [r for r in csv.DictReader(fh) if r.get("set") != ablation.name]
    atomic_write_text(csv_path, _csv_text(kept + rows))
    return md_path, csv_path


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
