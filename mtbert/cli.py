"""The `mtbert` command line: reads params.yaml (plus `section.key=value` overrides), runs a stage.

    mtbert [--params params.yaml] [-q] COMMAND [options] [section.key=value ...]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from mtbert.config import Config, load_config, load_overrides_file, parse_override, to_dict
from mtbert.errors import UserError, one_line

PR_SET_PDEATHSIG = 1  # prctl(2)
DVC_STAGE_ENV = "DVC_STAGE"  # set by `dvc repro` for every stage command it runs
# DVC runs a stage as `$SHELL -c CMD` (/bin/sh without SHELL); dash keeps itself between DVC and us.
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "fish", "ksh", "mksh"})

log = logging.getLogger("mtbert")


# Each command imports its stage where it runs (allow-listed in tests/unit/test_architecture.py):
# `mtbert --help`, `mtbert config` and a bad params file answer in a fraction of a second instead of
# after the ~6 s that torch, transformers and MLflow take to import.


def cmd_import_data(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.stages import prepare

    result = prepare.import_data(cfg, args.source)
    print(f"imported {len(result.copied)} files into {cfg.data.raw_dir}/")
    if result.removed:
        print(f"removed what the source no longer has: {', '.join(str(p) for p in result.removed)}")


def cmd_prepare(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.stages import prepare

    report = prepare.run(cfg)
    skipped = len(report["issues"])
    print(f"prepared {len(report['files'])} files into {cfg.data.prepared_dir}/; "
          f"{skipped} malformed rows skipped (listed in {cfg.data.prepared_dir}/report.json)")


def cmd_augment(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.stages import augment

    report = augment.run(cfg)
    sick = report.get("sick", {}).get("used", 0)
    print(f"augmented tables in {cfg.data.augmented_dir}/ ({sick} SICK pairs added to sts; EDA on "
          f"{', '.join(report['eda']) or 'no task'}); details in {augment.REPORT_FILE} there")


def cmd_train(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.stages import train

    start = time.monotonic()
    state, run_id = train.run(cfg, resume=not args.no_resume,
                              callbacks=[train.TrainProgress(not args.quiet)])
    if run_id:  # data-parallel: rank 0 alone reports (the other ranks have no run)
        print(f"trained {state.global_step} steps in {time.monotonic() - start:.0f} s -> {cfg.train.out_dir}/")


def cmd_train_teachers(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.stages import teachers, train

    out = f"{cfg.train.distill.teachers_dir}/{teachers.MANIFEST}"
    manifest = teachers.run(cfg, callbacks=lambda: [train.TrainProgress(not args.quiet)], retrain=args.retrain)
    if not manifest["trained"]:
        distill = cfg.train.distill
        why = ("distillation is off (train.distill.enabled)" if not distill.enabled else
               "the teachers are given as folders (train.distill.teachers)" if distill.teachers else
               "no task of train.tasks is in train.distill.tasks")
        print(f"{why}; no teacher to train -> {out}")
        return
    print(f"{len(manifest['trained'])} teacher(s) trained in {cfg.train.distill.teachers_dir}/ -> {out}")


def cmd_teach(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.stages import teach

    manifest = teach.run(cfg)
    if not manifest["enabled"]:
        print(f"distillation is off (train.distill.enabled); nothing to compute -> "
              f"{cfg.train.distill.outputs_dir}/{teach.MANIFEST}")
        return
    rows = ", ".join(f"{task} {info['rows']}" for task, info in manifest["tasks"].items())
    silver = ", ".join(f"{task} {info['rows']}" for task, info in manifest["silver"].items())
    silver = f"; silver pairs among them: {silver}" if silver else ""
    print(f"teacher outputs of {len(manifest['teachers'])} model(s) on the training rows ({rows}"
          f"{silver}) -> {cfg.train.distill.outputs_dir}/")


def cmd_evaluate(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.progress import row_progress
    from mtbert.pipeline.stages import evaluate

    if (explicit := _explicit_keys(args)) is not None:
        cfg, line = evaluate.trained_settings(cfg, explicit)
        print(line, flush=True)
    with row_progress(not args.quiet, "evaluate") as progress:
        metrics = evaluate.run(cfg, progress=progress)
    _print_metrics(metrics)


def _explicit_keys(args: argparse.Namespace) -> list[str] | None:
    """The dotted keys the command line set (evaluate and predict take the rest of what the model
    was trained with from the model); None under `dvc repro`, where params.yaml is what the stage
    declares and rules (the train stage wrote the model from the same params.yaml)."""
    if DVC_STAGE_ENV in os.environ:
        return None
    return [parse_override(text)[0] for text in args.overrides]


def _print_metrics(metrics: dict[str, float]) -> None:
    names = [("SST accuracy", "dev/sst/accuracy"), ("Quora accuracy", "dev/para/accuracy"),
             ("STS Pearson r", "dev/sts/pearson"), ("overall", "dev/overall")]
    for label, key in names:
        if key in metrics:
            print(f"{label:>15}: {metrics[key]:.4f}")


def cmd_predict(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.progress import row_progress
    from mtbert.pipeline.stages import predict

    cfg, line = predict.trained_settings(cfg, _explicit_keys(args) or [], args.model_dir)
    print(line, flush=True)
    with row_progress(not args.quiet, f"predict {args.task}") as progress:
        n = predict.run(cfg, args.task, args.input, args.output, model_dir=args.model_dir,
                        progress=progress, output_format=args.format)
    print(f"wrote {n} predictions to {args.output}")


def cmd_config(cfg: Config, args: argparse.Namespace) -> None:
    print(json.dumps(to_dict(cfg), indent=2))


def cmd_tune(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.stages import tune

    if args.create_only:
        info = tune.create(cfg)
        state = "created" if info.created else f"already exists ({info.trials} trials)"
        secret = " (*** is the password; or leave it out and set PGPASSWORD)" if "***" in info.storage else ""
        print(f"study {info.name!r} ({info.key}) {state} in {info.storage}; no trial run. Join it from each worker "
              f"(same params and overrides, a sampler seed of its own) with:\n"
              f"  mtbert tune --worker tune.storage='{info.storage}' tune.study_name={info.name} "
              f"tune.sampler_seed=<N>{secret}\nWorkers stop once the study holds "
              f"tune.n_trials={cfg.tune.n_trials} finished trials.")
        return
    start = time.monotonic()
    best = tune.run(cfg, progress=not args.quiet, join=args.worker)
    print(f"study {tune.study_name(cfg)!r} done in {time.monotonic() - start:.0f} s; best parameters "
          f"-> {cfg.tune.out_file} (use: mtbert train --overrides-file {cfg.tune.out_file})")
    for key, value in sorted(best.items()):
        print(f"  {key}: {value:.4g}")


def cmd_register(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.stages import register

    result = register.run(cfg, force=args.force)
    print(f"registered {result.name} version {result.version} -> @{result.decision} ({result.reason})")


def cmd_compare(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.stages import register

    table = register.compare(cfg)
    if table.empty:
        print(f"no registered versions of {cfg.register.model_name!r}")
    else:
        print(register.compare_markdown(table))


def cmd_serve(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.stages import register

    cmd, env = register.serve_command(cfg, args.port)
    if cfg.train.threads:  # runtime settings apply to the server too: its torch reads these at start
        env = {**env, "OMP_NUM_THREADS": str(cfg.train.threads), "RAYON_NUM_THREADS": str(cfg.train.threads)}
    sys.stdout.flush()
    os.execve(cmd[0], cmd, env)  # become the server: signals reach it directly


def cmd_pretrain_mlm(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.stages import pretrain_mlm, train

    start = time.monotonic()
    stats = pretrain_mlm.run(cfg, callbacks=[train.TrainProgress(not args.quiet)])
    print(f"MLM: {stats['mlm/steps']:.0f} steps on {stats['mlm/sentences']:.0f} sentences in "
          f"{time.monotonic() - start:.0f} s; dev MLM loss {stats['mlm/dev_loss_before']:.3f} -> "
          f"{stats['mlm/dev_loss_after']:.3f}; encoder -> {cfg.mlm.out_dir}/ "
          f"(train on it with train.init_from={cfg.mlm.out_dir})")


def cmd_ablate(cfg: Config, args: argparse.Namespace) -> None:
    from mtbert.pipeline.stages import ablate

    only = [] if args.tables_only else args.only.split(",") if args.only else None
    ablate.run(cfg, args.file, args.set, root=args.root, out=args.out, keep_models=args.keep_models,
               only=only)
    print(ablate.table(args.out, args.set))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtbert", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default params.yaml)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars (CI logs)")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of every error, also of bad input")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("import-data", help="copy the course CSVs into data.raw_dir")
    p.add_argument("--source", help="directory holding the course CSVs (default: data.source)")
    sub.add_parser("prepare", help="validate raw CSVs and write typed tables")
    sub.add_parser("augment", help="SICK pairs for STS and EDA copies into data.augmented_dir")
    p = sub.add_parser("train", help="train the multitask model (resumes an interrupted run)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--overrides-file", help="YAML of dotted overrides, e.g. artifacts/tune/best_params.yaml")
    p = sub.add_parser("train-teachers", help="train the single-task teachers of train.distill.teacher_seeds "
                                              "(keeps those trained already with the same settings)")
    p.add_argument("--retrain", action="store_true",
                   help="train every teacher from scratch (e.g. after a change to the training code)")
    sub.add_parser("teach", help="teacher outputs on the training rows, for train.distill")
    sub.add_parser("evaluate", help="dev metrics, prediction files and plots")
    p = sub.add_parser("predict", help="predict a task for a CSV/TSV of sentences")
    p.add_argument("--task", required=True, choices=["sst", "para", "sts"])
    p.add_argument("--input", required=True, help="CSV or TSV with a header: sentence (sst) or "
                   "sentence1, sentence2 (para, sts), and optionally id (else ids are row numbers "
                   "from 0); the delimiter is the header's")
    p.add_argument("--output", required=True, help="CSV of id, prediction (and label for sst)")
    p.add_argument("--format", choices=["csv", "course"], default="csv",
                   help="csv (default, reads with pandas) or course (the course files' format)")
    p.add_argument("--model-dir", help="trained model directory (default: train.out_dir)")
    p = sub.add_parser("config", help="print the resolved configuration")
    p.add_argument("--overrides-file", help="YAML of dotted overrides, e.g. artifacts/tune/best_params.yaml")
    role = sub.add_parser("tune", help="Optuna search (resumable; run several to share the study)"
                          ).add_mutually_exclusive_group()
    role.add_argument("--create-only", action="store_true", help="create the study (and its tables) in "
                      "tune.storage, run no trial: once, before workers start on several machines")
    role.add_argument("--worker", action="store_true", help="join the study made by --create-only; "
                      "refuse if it does not exist")
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
    p = sub.add_parser("register", help="register the trained model; promote it to champion if it passes "
                       "the behavioural gate and beats the champion measured on the same dev rows")
    p.add_argument("--force", action="store_true", help="promote without comparing with the champion "
                   "(other dev rows or profile, or a lower score); the behavioural gate still applies")
    sub.add_parser("compare", help="table of registered versions: aliases, dev metrics, provenance")
    p = sub.add_parser("serve", help="serve the champion with `mlflow models serve` on 127.0.0.1")
    p.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    return parser


COMMANDS = {"import-data": cmd_import_data, "prepare": cmd_prepare, "augment": cmd_augment,
            "train-teachers": cmd_train_teachers, "teach": cmd_teach, "train": cmd_train,
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
    if args.quiet:  # MLflow sets up its own INFO handler when imported (database set-up lines)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    _die_with_parent()
    try:
        overrides_file = getattr(args, "overrides_file", None)
        overrides = load_overrides_file(overrides_file) if overrides_file else []
        cfg = load_config(args.params, overrides + rest)
        args.overrides = overrides + rest
        COMMANDS[args.command](cfg, args)
    except Exception as err:  # noqa: BLE001 - the one error boundary of the command line
        return _report(err, args)
    return 0


def _die_with_parent() -> None:
    """Under `dvc repro` (DVC sets DVC_STAGE for its commands), on Linux: get SIGTERM when dvc dies,
    so a training never runs on as an orphan; the signal saves a checkpoint like any SIGTERM.
    Not for other parents: `nohup mtbert train &` must outlive the shell that started it.

    DVC is found past the shell it runs commands through (dash stays alive as our parent when dvc
    is killed, so PR_SET_PDEATHSIG on the parent alone is not enough); a thread waits on a pidfd of
    it, which wakes when it exits, without polling."""
    if DVC_STAGE_ENV not in os.environ or not sys.platform.startswith("linux"):
        return
    owner = _past_shells(os.getppid())
    try:
        if owner <= 1:  # reparented to init: dvc is gone already
            raise ProcessLookupError(owner)
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:  # it died before we looked
        os.kill(os.getpid(), signal.SIGTERM)
        return
    except OSError:  # a kernel without pidfd (< 5.3): the parent's death alone
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) == 0 and os.getppid() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return

    def wait_for_owner() -> None:
        select.select([pidfd], [], [])  # readable once the process has exited
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_for_owner, name="dvc-lifeline", daemon=True).start()


def _past_shells(pid: int) -> int:
    """The first process up from `pid` that is not a shell (`pid` itself when it is not)."""
    while pid > 1:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if comm not in SHELLS:
                return pid
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rindex(")") + 2:].split()[1])  # fields after "(comm)": state, ppid
        except (OSError, ValueError, IndexError):
            return pid
    return pid


def _report(err: Exception, args: argparse.Namespace) -> int:
    """Bad input: one line `mtbert <command>: <file>[:<line>]: <field>: <reason> (<fix>)`, exit 2.
    Anything else is a bug: the traceback, and a line saying so, exit 1. `--debug`: always the
    traceback."""
    where = f"mtbert {args.command}"
    user = isinstance(err, UserError) or (isinstance(err, OSError) and err.filename is not None)
    if isinstance(err, UserError) and err.path is None and err.field and "." in err.field:
        err.locate(args.params)  # a setting's error with no file: the setting came from params
    if user and not args.debug:
        text = str(err) if isinstance(err, UserError) else f"{err.filename}: {err.strerror}"
        print(f"{where}: {one_line(text)}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    traceback.print_exception(err)
    if not user:
        print(f"{where}: unexpected error (a bug in mtbert, not in your input; the traceback is "
              f"above): {type(err).__name__}: {one_line(str(err))}", file=sys.stderr)
    return 2 if user else 1


if __name__ == "__main__":
    sys.exit(main())
