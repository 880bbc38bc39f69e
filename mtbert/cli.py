"""The `mtbert` command line: reads params.yaml (plus `section.key=value` overrides), runs a stage.

    mtbert [--params params.yaml] [-q] COMMAND [options] [section.key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from mtbert.config import Config, ConfigError, load_config

log = logging.getLogger("mtbert")


def _progress_callback(quiet: bool):
    from tqdm import tqdm

    from mtbert.train import Callback

    class Progress(Callback):
        """A progress bar with throughput and ETA; silent in quiet mode."""

        def __init__(self) -> None:
            self.bar = None

        def on_step(self, state, metrics) -> None:
            if self.bar is None:
                self.bar = tqdm(total=state.total_steps, initial=state.global_step - 1,
                                desc="train", unit="step", disable=quiet, mininterval=2.0)
            self.bar.update(1)
            losses = {k.split("/")[1]: f"{v:.3f}" for k, v in metrics.items() if k.endswith("/loss")}
            if losses:
                self.bar.set_postfix(losses, refresh=False)

        def on_epoch_end(self, state) -> None:
            if self.bar is not None and state.global_step >= state.total_steps:
                self.bar.close()

    return Progress()


@contextlib.contextmanager
def _row_progress(quiet: bool, desc: str):
    """Yields a `mtbert.evaluate.ProgressStart`: a rows bar (throughput, ETA) on stderr; none if quiet."""
    from tqdm import tqdm

    bars = []

    def start(total: int):
        bars.append(tqdm(total=total, desc=desc, unit="row", disable=quiet, mininterval=1.0))
        return bars[-1].update

    try:
        yield start
    finally:
        for bar in bars:
            bar.close()


def cmd_import_data(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert import stages

    paths = stages.import_data(cfg, args.source)
    print(f"imported {len(paths)} files into {cfg.data.raw_dir}/")


def cmd_prepare(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert import stages

    report = stages.prepare(cfg)
    skipped = len(report["issues"])
    print(f"prepared {len(report['files'])} files into {cfg.data.prepared_dir}/; "
          f"{skipped} malformed rows skipped (listed in {cfg.data.prepared_dir}/report.json)")


def cmd_augment(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert import stages

    report = stages.augment(cfg)
    sick = report.get("sick", {}).get("used", 0)
    print(f"augmented tables in {cfg.data.augmented_dir}/ ({sick} SICK pairs added to sts; EDA on "
          f"{', '.join(report['eda']) or 'no task'}); details in {stages.REPORT_FILE} there")


def cmd_train(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert import tracking  # checks the tracking server before the slower imports and the model

    start = time.monotonic()
    state, _ = tracking.tracked_train(cfg, resume=not args.no_resume,
                                      callbacks=[_progress_callback(args.quiet)])
    print(f"trained {state.global_step} steps in {time.monotonic() - start:.0f} s -> {cfg.train.out_dir}/")


def cmd_evaluate(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert import tracking

    with _row_progress(args.quiet, "evaluate") as progress:
        metrics = tracking.tracked_evaluate(cfg, progress=progress)
    _print_metrics(metrics)


def _print_metrics(metrics: dict[str, float]) -> None:
    names = [("SST accuracy", "dev/sst/accuracy"), ("Quora accuracy", "dev/para/accuracy"),
             ("STS Pearson r", "dev/sts/pearson"), ("overall", "dev/overall")]
    for label, key in names:
        if key in metrics:
            print(f"{label:>15}: {metrics[key]:.4f}")


def cmd_predict(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.serving import predict_file

    with _row_progress(args.quiet, f"predict {args.task}") as progress:
        n = predict_file(args.model_dir or cfg.train.out_dir, args.task, args.input, args.output,
                         batch_size=cfg.eval.batch_size, progress=progress)
    print(f"wrote {n} predictions to {args.output}")


def cmd_config(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.config import to_dict

    print(json.dumps(to_dict(cfg), indent=2))


def cmd_tune(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert import stages

    start = time.monotonic()
    best = stages.tune(cfg, progress=not args.quiet)
    print(f"study {cfg.tune.study_name!r} done in {time.monotonic() - start:.0f} s; best parameters "
          f"-> {cfg.tune.out_file} (use: mtbert train --overrides-file {cfg.tune.out_file})")
    for key, value in sorted(best.items()):
        print(f"  {key}: {value:.4g}")


def cmd_register(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert import stages
    from mtbert.registry import RegistryError
    from mtbert.tracking import TrackingUnavailable

    try:
        result = stages.register(cfg)
    except (RegistryError, TrackingUnavailable) as err:
        raise SystemExit(f"mtbert register: {err}") from None
    print(f"registered {result.name} version {result.version} -> @{result.decision} ({result.reason})")


def cmd_compare(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.registry import compare, compare_markdown

    table = compare(cfg)
    if table.empty:
        print(f"no registered versions of {cfg.register.model_name!r}")
    else:
        print(compare_markdown(table))


def cmd_serve(cfg: Config, args: argparse.Namespace) -> None:
    import os

    from mtbert import registry

    if registry.current_champion(registry.connect(), cfg) is None:
        raise SystemExit(f"mtbert serve: {cfg.register.model_name!r} has no "
                         f"@{cfg.register.champion_alias}; run `mtbert register` first")
    cmd = registry.serve_command(cfg, args.port)
    sys.stdout.flush()
    os.execve(cmd[0], cmd, registry.serve_env())  # become the server: signals reach it directly


def cmd_pretrain_mlm(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert import stages, tracking

    start = time.monotonic()
    with tracking.start_run(cfg, "pretrain-mlm") as run:
        logger = tracking.MlflowCallback(run.info.run_id)
        stats = stages.pretrain_mlm(cfg, callbacks=[_progress_callback(args.quiet), logger])
        logger.close()
        tracking.mlflow.log_metrics(stats)
    print(f"MLM: {stats['mlm/steps']:.0f} steps on {stats['mlm/sentences']:.0f} sentences in "
          f"{time.monotonic() - start:.0f} s; dev MLM loss {stats['mlm/dev_loss_before']:.3f} -> "
          f"{stats['mlm/dev_loss_after']:.3f}; encoder -> {cfg.mlm.out_dir}/ "
          f"(train on it with train.init_from={cfg.mlm.out_dir})")


def cmd_ablate(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert import ablation

    only = [] if args.tables_only else args.only.split(",") if args.only else None
    try:
        rows = ablation.run_from_file(cfg, args.file, args.set, root=args.root, out=args.out,
                                      keep_models=args.keep_models, only=only)
    except ConfigError as err:
        print(f"mtbert: bad configuration: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(ablation.markdown_table(rows))


def _file_overrides(path: str | None) -> list[str]:
    """`key=value` overrides from a YAML mapping of dotted keys; they come before command-line ones."""
    if path is None:
        return []
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--overrides-file {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--overrides-file {path}: expected a mapping like 'train.lr: 3.0e-05'")
    return [f"{key}={json.dumps(value)}" for key, value in data.items()]  # JSON is valid YAML


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtbert", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default params.yaml)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars (CI logs)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("import-data", help="copy the course CSVs into data.raw_dir")
    p.add_argument("--source", help="directory holding the course CSVs (default: data.source)")
    sub.add_parser("prepare", help="validate raw CSVs and write typed tables")
    sub.add_parser("augment", help="SICK pairs for STS and EDA copies into data.augmented_dir")
    p = sub.add_parser("train", help="train the multitask model (resumes an interrupted run)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--overrides-file", help="YAML of dotted overrides, e.g. artifacts/tune/best_params.yaml")
    sub.add_parser("evaluate", help="dev metrics, prediction files and plots")
    p = sub.add_parser("predict", help="predict a task for a CSV/TSV of sentences")
    p.add_argument("--task", required=True, choices=["sst", "para", "sts"])
    p.add_argument("--input", required=True, help="course-format file (id, sentence[1], sentence2)")
    p.add_argument("--output", required=True)
    p.add_argument("--model-dir", help="trained model directory (default: train.out_dir)")
    p = sub.add_parser("config", help="print the resolved configuration")
    p.add_argument("--overrides-file", help="YAML of dotted overrides, e.g. artifacts/tune/best_params.yaml")
    sub.add_parser("tune", help="Optuna search (resumable; run several to share the study)")
    sub.add_parser("pretrain-mlm", help="MLM further pretraining of the encoder -> mlm.out_dir")
    p = sub.add_parser("ablate", help="train and evaluate a named set of configurations (resumable)")
    p.add_argument("--set", required=True, help="set name in the ablations file")
    p.add_argument("--file", default="ablations.yaml", help="ablations file (default ablations.yaml)")
    p.add_argument("--root", default="artifacts/ablation", help="runs go to ROOT/SET/CONFIG/")
    p.add_argument("--out", default="docs/ablation", help="writes OUT.md (table) and OUT.csv")
    p.add_argument("--keep-models", action="store_true", help="keep each configuration's weights")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--only", help="comma-separated configurations to run (default: all unfinished)")
    what.add_argument("--tables-only", action="store_true",
                      help="run nothing: rewrite the tables from the finished configurations")
    sub.add_parser("register", help="register the trained model; promote it to champion if better")
    sub.add_parser("compare", help="table of registered versions: aliases, dev metrics, provenance")
    p = sub.add_parser("serve", help="serve the champion with `mlflow models serve` on 127.0.0.1")
    p.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    return parser


COMMANDS = {"import-data": cmd_import_data, "prepare": cmd_prepare, "augment": cmd_augment, "train": cmd_train,
            "evaluate": cmd_evaluate, "predict": cmd_predict, "config": cmd_config, "tune": cmd_tune,
            "pretrain-mlm": cmd_pretrain_mlm, "ablate": cmd_ablate,
            "register": cmd_register, "compare": cmd_compare, "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if "=" not in r]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides look like train.lr=2e-5)")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.params, _file_overrides(getattr(args, "overrides_file", None)) + rest)
    except ConfigError as err:
        print(f"mtbert: bad configuration: {err}", file=sys.stderr)
        return 2
    try:
        COMMANDS[args.command](cfg, args)
    except Exception as err:
        if not _is_user_error(err):
            raise
        print(f"mtbert: error: {err}", file=sys.stderr)
        return 1
    return 0


def _is_user_error(err: Exception) -> bool:
    """Errors whose message tells the user what to do: no traceback for them.

    Looked up in sys.modules so that e.g. `mtbert config` never imports torch or MLflow.
    """
    kinds = [("mtbert.checkpoint", "CheckpointError"), ("mtbert.tracking", "TrackingUnavailable")]
    classes = [getattr(sys.modules.get(module), name, None) for module, name in kinds]
    return any(cls is not None and isinstance(err, cls) for cls in classes)


if __name__ == "__main__":
    sys.exit(main())
