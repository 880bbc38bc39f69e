"""What a dev score was measured on: the key that makes two scores comparable.

Two `dev/overall` values compare only when they were measured on the same dev rows of the same
tasks, under the same profile (a profile also sets how a model is trained, so a tuning study under
`tiny` searches another problem than one under `quick`). The key holds the profile, the dev size
of each task measured and a hash of the measured dev rows' contents (the first `data.dev_size`
rows of each prepared dev table: rows past them do not change the key). Tuning studies
(`tuning`) and champion decisions (`registry`) are keyed by it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mtbert.config import Config
from mtbert.data import read_prepared
from mtbert.errors import UserError
from mtbert.pipeline.project import dev_frame, prepared_path
from mtbert.tasks import TASKS

ROWS_DIGITS = 12  # hex digits of the dev rows' sha256 kept in the key


@dataclass(frozen=True)
class MeasurementKey:
    """Profile, dev sizes per task and dev rows' hash; `str(key)` is the form stored in tags.

    Attributes:
        profile: the profile name ("none" without one).
        dev_size: (task, rows measured) for each task measured, in task order.
        rows_sha256: the first ROWS_DIGITS hex digits of the sha256 of the measured dev rows.
    """

    profile: str
    dev_size: tuple[tuple[str, int], ...]
    rows_sha256: str

    def __str__(self) -> str:
        sizes = ",".join(f"{task}:{n}" for task, n in self.dev_size)
        return f"profile={self.profile} dev={sizes} rows={self.rows_sha256}"

    @property
    def digest(self) -> str:
        """8 hex digits naming the whole key (study names)."""
        return hashlib.sha256(str(self).encode()).hexdigest()[:8]


def key_of_rows(profile: str | None, frames: Mapping[str, pd.DataFrame]) -> MeasurementKey:
    """The key of scores measured on exactly these dev rows (task -> rows, in task order)."""
    digest = hashlib.sha256()
    for task, frame in frames.items():
        digest.update(f"{task}\n".encode())
        digest.update(frame.to_csv(index=False, lineterminator="\n").encode())
    sizes = tuple((task, len(frame)) for task, frame in frames.items())
    return MeasurementKey(profile or "none", sizes, digest.hexdigest()[:ROWS_DIGITS])


def measurement_key(cfg: Config, tasks: Sequence[str]) -> MeasurementKey:
    """The key of dev scores of `tasks` measured under `cfg` (its profile, `data.dev_size`) now.

    Raises the UserError of `read_prepared` when a prepared dev table is missing or unreadable.
    """
    return key_of_rows(cfg.profile, {task: dev_frame(cfg, task) for task in tasks})


def evaluated_key(cfg: Config, profile: str | None, tasks: Sequence[str]) -> MeasurementKey:
    """The key of the dev metrics in `eval.out_dir`: the rows `mtbert evaluate` predicted there
    (`predictions/<task>-dev-output.csv`), found in the prepared dev tables, and `profile`.

    Raises:
        UserError: a dev prediction file is missing, or its ids are not the first rows of the
            prepared dev table (the table changed since the evaluation).
    """
    frames = {}
    for task in tasks:
        path = Path(cfg.eval.out_dir) / "predictions" / f"{task}-dev-output.csv"
        if not path.exists():
            raise UserError("missing: the dev rows the metrics were measured on are unknown", path=path,
                            fix="run `mtbert evaluate` first")
        ids = [line.split(" , ", 1)[0].strip() for line in path.read_text().splitlines()[1:] if line.strip()]
        table = read_prepared(prepared_path(cfg, task, "dev"))
        if table["id"].astype(str).head(len(ids)).tolist() != ids:
            raise UserError(f"its {len(ids)} ids are not the first rows of the prepared {task} dev "
                            "table (the data changed since the evaluation)", path=path,
                            fix="run `mtbert evaluate` again")
        frames[task] = table.head(len(ids))
    return key_of_rows(profile, frames)


def measured_tasks(metrics: dict[str, float]) -> list[str]:
    """The tasks a metrics mapping holds scores of (`dev/<task>/<name>` keys), in task order."""
    return [task for task in TASKS if any(key.startswith(f"dev/{task}/") for key in metrics)]
