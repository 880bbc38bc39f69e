"""Serve the pipeline as a Prefect deployment with a nightly cron schedule.

    prefect server start --host 127.0.0.1 --port 4200          # terminal 1
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy   # terminal 2

`serve` registers the deployment `mtbert-pipeline/mtbert-nightly` and runs its scheduled (and
manually triggered: `prefect deployment run mtbert-pipeline/mtbert-nightly`) flow runs in
subprocesses of this process, in this directory. No work pool or worker is needed, which is why
this is `serve` and not `prefect.yaml` + `prefect deploy`. Stop it (Ctrl-C) before the server.
"""

from __future__ import annotations

import argparse

from flows.pipeline import mtbert_pipeline

DEPLOYMENT_NAME = "mtbert-nightly"
NIGHTLY_CRON = "0 3 * * *"  # 03:00 every day (server time zone: UTC)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=DEPLOYMENT_NAME)
    parser.add_argument("--cron", default=NIGHTLY_CRON)
    parser.add_argument("--params", default="params.yaml", help="parameters file of the runs")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the runs (profile=tiny)")
    args = parser.parse_args(argv)
    mtbert_pipeline.serve(name=args.name, cron=args.cron,
                          parameters={"params_path": args.params, "overrides": args.overrides})


if __name__ == "__main__":
    main()
