"""What a flow run publishes as its Prefect markdown artifact: the dev metrics, the promotion
decision and where the MLflow run is. Plain text building; the flow publishes it."""

from __future__ import annotations

from typing import Any

REPORT_KEY = "mtbert-pipeline-report"  # stable: the Artifacts page lists every run's report under it


def _metrics_table(metrics: dict[str, float]) -> list[str]:
    rows = ["| metric | value |", "|---|---:|"]
    rows += [f"| `{name}` | {float(value):.4f} |" for name, value in sorted(metrics.items())
             if name.startswith("dev/")]
    return rows


def _run_lines(link: dict[str, str]) -> list[str]:
    where = f"[run {link['run_id']}]({link['url']})" if link.get("url") else f"run `{link['run_id']}`"
    return [f"- MLflow: {where}", f"- tracking URI: `{link['tracking_uri']}`",
            f"- experiment id: `{link['experiment_id']}`, run id: `{link['run_id']}`"]


def success_markdown(metrics: dict[str, float], registration: dict[str, Any], link: dict[str, str]) -> str:
    """The report of a completed run.

    Args:
        metrics: the evaluate stage's dev metrics (`dev/<task>/<metric>`, `dev/overall`).
        registration: the register stage's result as a dict (name, version, decision, reason, ...).
        link: the register stage's `run_link` of the training run.
    """
    decision = registration["decision"]
    previous = registration.get("previous_champion")
    lines = [f"# mtbert pipeline: {registration['name']} v{registration['version']} is **{decision}**", "",
             f"- decision: **{decision}**, because {registration['reason']}",
             f"- previous champion: {'v' + str(previous) if previous is not None else 'none'}",
             f"- model: `{registration['model_uri']}`", *_run_lines(link), "", "## Dev metrics", "",
             *_metrics_table(metrics)]
    return "\n".join(lines) + "\n"


def failure_markdown(message: str) -> str:
    """The report of a run stopped by bad input: its one-line reason (the failed task shows where)."""
    return (f"# mtbert pipeline: failed on its input\n\n- error (input, not retried): {message}\n"
            "- no model was registered by this run\n")
