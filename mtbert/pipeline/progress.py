"""Progress bars (tqdm, stderr) over rows, for evaluate and predict (training's: `TrainProgress`
in the train stage)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tqdm import tqdm

from mtbert.evaluate import ProgressStart


@contextlib.contextmanager
def row_progress(enabled: bool, desc: str) -> Iterator[ProgressStart]:
    """Yields a `mtbert.evaluate.ProgressStart`: a rows bar (throughput, ETA) on stderr."""
    bars: list[tqdm] = []

    def start(total: int):
        bars.append(tqdm(total=total, desc=desc, unit="row", disable=not enabled, mininterval=1.0))
        return bars[-1].update

    try:
        yield start
    finally:
        for bar in bars:
            bar.close()
