"""The flow's pieces that need no server: its markdown report and its retry condition."""

from __future__ import annotations

import errno

from prefect.states import Failed

from flows.pipeline import retry_unless_user_error
from flows.report import failure_markdown, success_markdown
from mtbert.errors import DiskWriteError, MissingFileError

METRICS = {"dev/overall": 0.61234, "dev/sst/accuracy": 0.4, "dev/sts/pearson": -0.125, "train/loss": 9.0}
REGISTRATION = {"name": "mtbert", "version": 7, "model_uri": "models:/m-abc", "decision": "challenger",
                "reason": "dev/overall 0.6123 <= champion v3 0.7000", "previous_champion": 3}
LINK = {"tracking_uri": "http://127.0.0.1:5000", "experiment_id": "4", "run_id": "r1",
        "url": "http://127.0.0.1:5000/#/experiments/4/runs/r1"}


def test_the_report_has_the_metrics_the_decision_and_the_run() -> None:
    text = success_markdown(METRICS, REGISTRATION, LINK)
    assert text.startswith("# mtbert pipeline: mtbert v7 is **challenger**\n")
    assert "- decision: **challenger**, because dev/overall 0.6123 <= champion v3 0.7000\n" in text
    assert "- previous champion: v3\n" in text
    assert "| `dev/overall` | 0.6123 |\n| `dev/sst/accuracy` | 0.4000 |\n| `dev/sts/pearson` | -0.1250 |" in text
    assert "train/loss" not in text  # dev metrics only
    assert "[run r1](http://127.0.0.1:5000/#/experiments/4/runs/r1)" in text
    assert "experiment id: `4`, run id: `r1`" in text


def test_a_local_store_has_no_link_but_names_the_run() -> None:
    local = {**LINK, "tracking_uri": "sqlite:///mlflow.db", "url": ""}
    first = {**REGISTRATION, "decision": "champion", "reason": "no champion yet", "previous_champion": None}
    text = success_markdown(METRICS, first, local)
    assert "- MLflow: run `r1`\n" in text and "`sqlite:///mlflow.db`" in text and "](" not in text
    assert "- previous champion: none\n" in text and "**champion**, because no champion yet" in text


def test_the_failure_report_is_the_one_line() -> None:
    assert "- error (input, not retried): data: missing (fix it)\n" in failure_markdown("data: missing (fix it)")


def test_input_errors_are_not_retried_and_other_failures_are() -> None:
    def state(exc: BaseException) -> Failed:  # as Prefect's task engine builds it for the condition
        return Failed(data=exc, message=f"Task run encountered unexpected exception: {exc!r}")

    assert not retry_unless_user_error(None, None, state(MissingFileError("no data", path="d")))
    assert not retry_unless_user_error(None, None, state(DiskWriteError("disk full", code=errno.ENOSPC)))
    assert retry_unless_user_error(None, None, state(OSError(errno.EIO, "Input/output error")))
    assert retry_unless_user_error(None, None, state(ConnectionError("reset")))
    assert retry_unless_user_error(None, None, Failed(message="a task returned a failed state"))
