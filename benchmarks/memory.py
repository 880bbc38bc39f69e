"""Memory benchmark: peak resident memory (RSS) of training runs, each in its own process.

1. The goal runs: ``mtbert train`` (the real CLI, MLflow tracking into a local SQLite file) on the
   quick profile (``--profile full``: the full one) in a fresh project folder, twice: keeping
   what malloc and oneDNN keep (``train.release_memory_mb=0``, the previous state) and with the
   default release of freed memory (``mtbert.allocator``). Goal: the default run's peak <= 3 GB. The
   ratio is the previous state's peak over ours; the wall times of both say what it costs.
2. Ours vs peer on the same single-task workload: the two training loops of
   ``benchmarks/trainer.py`` (mtbert's fit vs the plain HF loop) on a sample of SST examples.
3. ``--breakdown``: the train stage run in-process by ``benchmarks/memprobe.py`` under both
   allocator settings, its resident memory read around each part (imports, data, model,
   optimizer, every step, dev scoring, checkpoints, saving) and after ``malloc_trim``.

Each command of 1 and 2 runs under a small Python wrapper that waits for it and reads
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the peak RSS of that one child. Run:
``python benchmarks/memory.py`` (about 10 minutes; ``--profile full --breakdown``: about 2 hours
on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

NAME = "memory"
GOAL_MB = 3072
WRAPPER = (
    "import json, resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print(json.dumps({'rc': rc, 'peak_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
)


def peak_rss(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run `cmd` in a wrapper process; its peak RSS in MB (Linux ru_maxrss is in KB) and seconds."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"{cmd} failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["rc"] != 0:
        raise RuntimeError(f"{cmd} exited {out['rc']}: {proc.stderr[-2000:]}")
    return {"peak_mb": out["peak_kb"] / 1024, "wall_s": time.perf_counter() - start,
            "command": " ".join(cmd)}


def make_project(root: Path, data_dir: Path, profile: str, prepared: Path | None) -> Path:
    """A project folder with params.yaml set to `profile` and the course data prepared.

    `prepared`: an already prepared project folder to copy the data from (skips two commands).
    """
    if prepared is not None:
        import shutil

        for name in ("data", "artifacts"):
            shutil.copytree(prepared / name, root / name, dirs_exist_ok=True)
    text = (_common.REPO / "params.yaml").read_text().replace("profile: quick", f"profile: {profile}", 1)
    (root / "params.yaml").write_text(text)
    env = _common.project_env(1)
    steps = [] if prepared is not None else [["import-data", "--source", str(data_dir)], ["prepare"]]
    for args in steps:
        subprocess.run([sys.executable, "-m", "mtbert.cli", "-q", *args], cwd=root, env=env,
                       check=True, capture_output=True, timeout=600)
    return root


ALLOCATOR = {"malloc_default": "train.release_memory_mb=0", "ours": "train.release_memory_mb=512"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["quick", "full"], default="quick",
                        help="the profile of the goal runs (default quick)")
    parser.add_argument("--precision", default="auto", help="train.precision of the goal runs")
    parser.add_argument("--breakdown", action="store_true",
                        help="also run benchmarks/memprobe.py under both allocator settings")
    parser.add_argument("--sst-rows", type=int, default=1600,
                        help="SST examples for the ours-vs-peer single-task runs")
    parser.add_argument("--prepared-project", type=Path, default=None,
                        help="copy data/ and artifacts/ from this prepared project (tests)")
    args = parser.parse_args(argv)
    start = _common.cpu_snapshot()
    _common.setup(args.threads)
    data_dir = (args.data_dir or _common.default_data_dir()).resolve()
    profile = "tiny" if args.smoke else args.profile
    rows = 24 if args.smoke else args.sst_rows
    env = _common.project_env(args.threads)
    ckpt = _common.checkpoint(args.smoke)
    common = [f"train.threads={args.threads}", f"model.checkpoint={ckpt}", f"train.precision={args.precision}"]
    goal_runs, breakdown = {}, {}
    with tempfile.TemporaryDirectory(prefix="mtbert-memory-") as tmp:
        root = make_project(Path(tmp), data_dir, profile, args.prepared_project)
        for name, setting in ALLOCATOR.items():
            cli = [sys.executable, "-m", "mtbert.cli", "-q", "train", "--no-resume", *common, setting,
                   f"train.out_dir=artifacts/model-{name}"]
            goal_runs[name] = peak_rss(cli, root, env)
            print(f"mtbert train ({profile}, {setting}): peak {goal_runs[name]['peak_mb']:.0f} MB "
                  f"in {goal_runs[name]['wall_s']:.0f} s", flush=True)
        if args.breakdown:
            for name, setting in ALLOCATOR.items():
                breakdown[name] = probe(root, env, [*common, setting, f"train.out_dir=artifacts/probe-{name}"])
                print(f"breakdown ({setting}): peak {breakdown[name]['peak_mb']:.0f} MB, resident after "
                      f"the run {breakdown[name]['end_rss_mb']:.0f} MB, after malloc_trim "
                      f"{breakdown[name]['rss_after_trim_mb']:.0f} MB", flush=True)
        loops = {}
        for side in ("ours", "peer"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--rows", str(rows),
                   "--threads", str(args.threads), "--data-dir", str(data_dir), "--checkpoint", ckpt]
            loops[side] = peak_rss(cmd, root, env)
            print(f"{side} single-task loop: peak {loops[side]['peak_mb']:.0f} MB", flush=True)
    payload = summarize(goal_runs, loops, profile, rows, args.threads, args.precision)
    if breakdown:
        payload["breakdown"] = breakdown
    path = _common.write_result(_common.result_path(NAME, args.out, args.smoke), NAME, payload, start)
    print(f"wrote {path}")
    return payload


def probe(root: Path, env: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    """benchmarks/memprobe.py in its own process; its parts and a summary of its steps."""
    out = root / "probe.json"
    subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "memprobe.py"), str(root),
                    str(out), *overrides], cwd=root, env=env, check=True, capture_output=True,
                   timeout=7200)
    record = json.loads(out.read_text())
    steps = record.pop("steps")
    first, widest = steps[0], max(steps, key=lambda s: s["peak_mb"])
    record["steps"] = {
        "count": len(steps),
        "first": first,
        "highest_peak": widest,
        "resident_between_steps_mb": {"after_first": first["rss_after_mb"],
                                      "after_last": steps[-1]["rss_after_mb"],
                                      "max": max(s["rss_after_mb"] for s in steps)},
        "max_step_growth_mb": max(s["peak_mb"] - s["rss_before_mb"] for s in steps[1:] or steps),
    }
    record["peak_mb"] = max([p["peak_mb"] for p in record["parts"]] + [widest["peak_mb"]])
    return record


def summarize(goal_runs: dict, loops: dict, profile: str, rows: int, threads: int,
              precision: str) -> dict[str, Any]:
    ours, before = goal_runs["ours"]["peak_mb"], goal_runs["malloc_default"]["peak_mb"]
    return {
        "unit": "MB peak RSS (lower is better)",
        "ours": ours, "peer": before, "ratio": before / ours,
        "mtbert_train_peak_mb": ours,
        "wall_ratio_ours_vs_malloc_default": goal_runs["ours"]["wall_s"] / goal_runs["malloc_default"]["wall_s"],
        "goal": f"mtbert train ({profile} profile) peak RSS <= {GOAL_MB} MB",
        "goal_met": ours <= GOAL_MB,
        "loops": {"ours": loops["ours"]["peak_mb"], "peer": loops["peer"]["peak_mb"],
                  "ratio": loops["peer"]["peak_mb"] / loops["ours"]["peak_mb"]},
        "setup": {"goal_runs": f"mtbert train --no-resume, {profile} profile, train.precision={precision}, "
                               f"fresh project, MLflow into local SQLite; peer: the same with "
                               f"{ALLOCATOR['malloc_default']} (freed memory kept by malloc and oneDNN, "
                               f"the previous state), ours: {ALLOCATOR['ours']} (the default)",
                  "loops": f"benchmarks/trainer.py loops (fit vs HF loop), {rows} SST examples, one "
                           f"epoch, no evaluation",
                  "threads": threads,
                  "method": "wrapper process per command; resource.getrusage(RUSAGE_CHILDREN).ru_maxrss"},
        "runs": {**{f"mtbert_train_{k}": v for k, v in goal_runs.items()},
                 **{f"loop_{k}": v for k, v in loops.items()}},
    }


def child(argv: list[str]) -> None:
    """Entry for the ours/peer child processes: one training loop, no evaluation."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=["ours", "peer"], required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", required=True)
    args = parser.parse_args(argv)
    _common.setup(args.threads)
    import trainer

    train, _ = trainer.sst_frames(args.data_dir, args.rows, 1)
    trainer.run_alone(args.child, train, args.checkpoint)


if __name__ == "__main__":
    if "--child" in sys.argv:
        child(sys.argv[1:])
    else:
        main()
