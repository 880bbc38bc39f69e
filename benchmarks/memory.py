"""Memory benchmark: peak resident memory (RSS) of training runs, each in its own process.

1. The goal run: ``mtbert train`` (the real CLI, MLflow tracking into a local SQLite file) on
   the quick profile in a fresh project folder (course data imported and prepared first). Goal:
   peak RSS <= 3 GB.
2. Ours vs peer on the same single-task workload: the two training loops of
   ``benchmarks/trainer.py`` (mtbert's fit vs the plain HF loop) on a sample of SST examples.

Each command runs under a small Python wrapper that waits for it and reads
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the peak RSS of that one child. Run:
``python benchmarks/memory.py`` (about 5 minutes).
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sst-rows", type=int, default=1600,
                        help="SST examples for the ours-vs-peer single-task runs")
    parser.add_argument("--prepared-project", type=Path, default=None,
                        help="copy data/ and artifacts/ from this prepared project (tests)")
    args = parser.parse_args(argv)
    start = _common.cpu_snapshot()
    _common.setup(args.threads)
    data_dir = (args.data_dir or _common.default_data_dir()).resolve()
    profile = "tiny" if args.smoke else "quick"
    rows = 24 if args.smoke else args.sst_rows
    env = _common.project_env(args.threads)
    with tempfile.TemporaryDirectory(prefix="mtbert-memory-") as tmp:
        root = make_project(Path(tmp), data_dir, profile, args.prepared_project)
        ckpt = _common.checkpoint(args.smoke)
        cli = [sys.executable, "-m", "mtbert.cli", "-q", "train", f"train.threads={args.threads}",
               f"model.checkpoint={ckpt}"]
        goal_run = peak_rss(cli, root, env)
        print(f"mtbert train ({profile}): peak {goal_run['peak_mb']:.0f} MB in {goal_run['wall_s']:.0f} s",
              flush=True)
        loops = {}
        for side in ("ours", "peer"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--rows", str(rows),
                   "--threads", str(args.threads), "--data-dir", str(data_dir), "--checkpoint", ckpt]
            loops[side] = peak_rss(cmd, root, env)
            print(f"{side} single-task loop: peak {loops[side]['peak_mb']:.0f} MB", flush=True)
    payload = summarize(goal_run, loops, profile, rows, args.threads)
    path = _common.write_result(_common.result_path(NAME, args.out, args.smoke), NAME, payload, start)
    print(f"wrote {path}")
    return payload


def summarize(goal_run: dict, loops: dict, profile: str, rows: int, threads: int) -> dict[str, Any]:
    return {
        "unit": "MB peak RSS (lower is better)",
        "ours": loops["ours"]["peak_mb"], "peer": loops["peer"]["peak_mb"],
        "ratio": loops["peer"]["peak_mb"] / loops["ours"]["peak_mb"],
        "mtbert_train_peak_mb": goal_run["peak_mb"],
        "goal": f"mtbert train ({profile} profile) peak RSS <= {GOAL_MB} MB",
        "goal_met": goal_run["peak_mb"] <= GOAL_MB,
        "setup": {"goal_run": f"mtbert train, {profile} profile, fresh project, MLflow into local SQLite",
                  "ours_vs_peer": f"benchmarks/trainer.py loops (fit vs HF loop), {rows} SST "
                                  f"examples, one epoch, no evaluation",
                  "threads": threads,
                  "method": "wrapper process per command; resource.getrusage(RUSAGE_CHILDREN).ru_maxrss"},
        "runs": {"mtbert_train": goal_run, **loops},
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
