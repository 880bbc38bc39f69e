"""Screenshot a Prefect flow run's page as a user first opens it (headless Chromium), for the docs.

    prefect server start --host 127.0.0.1 --port 4299        # with its UI (the default)
    PREFECT_API_URL=http://127.0.0.1:4299/api python -m flows.pipeline profile=tiny
    .venv/bin/python scripts/prefect_flow_run_screenshot.py --api http://127.0.0.1:4299/api \
        --out docs/prefect-flow-run.png [--flow-run-id ID]

Without --flow-run-id, the newest run of the `mtbert-pipeline` flow. The page is a single-page
app: the shot is taken once its text shows the run's name and final state.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.integration.browser

from tests.integration import browser  # noqa: E402

SETTLE_S = 3.0  # after the texts appear: the run graph and the log list draw a moment later


def _post(api: str, path: str, body: dict) -> list | dict:
    request = urllib.request.Request(f"{api}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def newest_run(api: str, flow_name: str) -> dict:
    runs = _post(api, "/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}},
                                            "sort": "START_TIME_DESC", "limit": 1})
    if not runs:
        raise SystemExit(f"no run of flow {flow_name!r} at {api}")
    return runs[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--api", required=True, help="PREFECT_API_URL, e.g. http://127.0.0.1:4299/api")
    parser.add_argument("--flow-run-id", help="default: the newest mtbert-pipeline run")
    parser.add_argument("--out", type=Path, default=Path("docs/prefect-flow-run.png"))
    parser.add_argument("--timeout", type=float, default=browser.PAGE_TIMEOUT_S)
    args = parser.parse_args(argv)
    api = args.api.rstrip("/")
    run = (_post(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [args.flow_run_id]}}})[0]
           if args.flow_run_id else newest_run(api, "mtbert-pipeline"))
    url = f"{api.removesuffix('/api')}/runs/flow-run/{run['id']}"
    texts = [run["name"], run["state"]["name"]]
    with browser.headless_chromium() as driver:
        seconds = browser.open_and_wait(driver, url, texts, args.timeout)
        time.sleep(SETTLE_S)
        browser.save_screenshot(driver, args.out)
    print(f"{args.out}: {url} ({seconds:.1f} s; shows {texts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
