"""Deploy the pipeline to Prefect with a nightly cron schedule: served from this process, or
registered with a work pool whose workers run it.

    prefect server start --host 127.0.0.1 --port 4200          # terminal 1
    export PREFECT_API_URL=http://127.0.0.1:4200/api

    python -m flows.deploy [--cron CRON] [--params params.yaml] [section.key=value ...]      # serve
    python -m flows.deploy --work-pool P [--source DIR] [--params ...] [section.key=value ...]
    prefect worker start --pool P --type process        # on each machine that runs the flow

Serve (no `--work-pool`): registers `mtbert-pipeline/mtbert-nightly` and runs its scheduled and
manually triggered (`prefect deployment run mtbert-pipeline/mtbert-nightly`) flow runs in
subprocesses of this process, in this directory, until stopped (Ctrl-C, before the server).

Work pool (`--work-pool P`, created once with `prefect work-pool create P --type process`):
registers the deployment with the flow's code at `--source` (a checkout of this repository with
its params file, by default the current directory; workers need that same path) and exits. A
`prefect worker start --pool P` runs each flow run in a subprocess with that folder as its working
directory. Stop a worker with Ctrl-C (SIGINT); it ignores SIGTERM for minutes.

Either way the runs' parameters (the params file and the dotted overrides) are loaded and checked
here, and a mistake is one line on stderr (exit status 2) before anything is registered, not a
failed run at 03:00.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.pipeline import mtbert_pipeline
from mtbert.config import load_config
from mtbert.errors import UserError, one_line

DEPLOYMENT_NAME = "mtbert-nightly"
NIGHTLY_CRON = "0 3 * * *"  # 03:00 every day (server time zone: UTC)
ENTRYPOINT_FILE = "flows/pipeline.py"  # relative to --source
ENTRYPOINT = f"{ENTRYPOINT_FILE}:mtbert_pipeline"


class DeployError(UserError, ValueError):
    """The deployment cannot be registered as asked (bad parameters, source or work pool)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=DEPLOYMENT_NAME)
    parser.add_argument("--cron", default=NIGHTLY_CRON)
    parser.add_argument("--params", default="params.yaml",
                        help="parameters file of the runs (relative to their working directory)")
    parser.add_argument("--work-pool", help="register with this work pool (its workers run the flow) "
                                            "instead of serving from this process")
    parser.add_argument("--source", help="with --work-pool: the checkout the workers run the flow in "
                                         "(default: the current directory)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the runs (profile=tiny)")
    return parser


def check_runs(source: Path, params: str, overrides: list[str]) -> None:
    """Load the runs' config as a run in `source` will; raise DeployError (one line) if it fails."""
    try:
        load_config(source / params, overrides)
    except UserError as err:
        raise DeployError(f"runs would fail: {err}", fix="nothing was deployed") from err


def deploy_to_pool(args: argparse.Namespace, source: Path, parameters: dict) -> str:
    """Register the deployment with `args.work_pool`; returns its id."""
    if not (source / ENTRYPOINT_FILE).is_file():
        raise DeployError(f"no {ENTRYPOINT_FILE} here", path=source,
                          fix="--source must be a checkout of the mtbert repository")
    flow = mtbert_pipeline.from_source(str(source), ENTRYPOINT)
    try:
        deployment_id = flow.deploy(name=args.name, work_pool_name=args.work_pool, cron=args.cron,
                                    parameters=parameters, print_next_steps=False)
    except ValueError as err:  # Prefect: "Could not find work pool ..."
        raise DeployError(str(err), field="--work-pool",
                          fix=f"prefect work-pool create {args.work_pool} --type process") from err
    return str(deployment_id)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.source and not args.work_pool:
        _parser().error("--source needs --work-pool (serve runs the flow in the current directory)")
    source = Path(args.source or ".").resolve()
    parameters = {"params_path": args.params, "overrides": args.overrides}
    try:
        check_runs(source, args.params, args.overrides)
        if args.work_pool is None:
            mtbert_pipeline.serve(name=args.name, cron=args.cron, parameters=parameters)
            return 0
        deployment_id = deploy_to_pool(args, source, parameters)
    except DeployError as err:
        print(f"flows.deploy: {one_line(str(err))}", file=sys.stderr)
        return 2
    print(f"deployment mtbert-pipeline/{args.name} ({deployment_id}) on work pool {args.work_pool!r}, "
          f"cron {args.cron!r}, runs in {source}\n"
          f"start a worker on a machine with that folder: prefect worker start --pool {args.work_pool}\n"
          f"run it now: prefect deployment run mtbert-pipeline/{args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
