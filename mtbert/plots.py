"""Evaluation plots written to given paths (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mtbert.fileio import atomic_write  # noqa: E402

SST_CLASSES = ("neg", "some neg", "neutral", "some pos", "pos")


def confusion_png(counts: np.ndarray, path: str | Path, title: str = "SST dev confusion") -> Path:
    """Heat map of a (gold x predicted) count matrix with the counts written in the cells."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(counts, cmap="Blues")
    ticks = range(len(SST_CLASSES))
    ax.set_xticks(ticks, SST_CLASSES, rotation=30)
    ax.set_yticks(ticks, SST_CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > counts.max() / 2 else "black")
    fig.tight_layout()
    return _save(fig, path)


def scatter_png(pred: np.ndarray, gold: np.ndarray, pearson_r: float, spearman_r: float,
                path: str | Path) -> Path:
    """STS predicted-vs-gold scatter with the correlation values in the title."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(gold, pred, s=6, alpha=0.4)
    ax.plot([0, 5], [0, 5], color="grey", linewidth=1)
    ax.set_xlabel("gold similarity")
    ax.set_ylabel("predicted similarity")
    ax.set_title(f"STS dev: Pearson {pearson_r:.3f}, Spearman {spearman_r:.3f}")
    fig.tight_layout()
    return _save(fig, path)


def learning_curve_png(steps: dict[str, np.ndarray], losses: dict[str, np.ndarray], path: str | Path,
                       window: int = 25) -> Path:
    """Per-task training loss against the step: raw values (faint) and a moving average.

    Args:
        steps, losses: by task, the steps that trained it and their losses (same lengths).
        path: the PNG to write.
        window: moving-average width in points (shrunk for short curves).
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for task, x in steps.items():
        y = np.asarray(losses[task], dtype=float)
        (line,) = ax.plot(x, y, linewidth=0.6, alpha=0.3)
        w = max(1, min(window, len(y) // 5))
        smooth = np.convolve(y, np.ones(w) / w, mode="valid")
        ax.plot(np.asarray(x)[w - 1:], smooth, color=line.get_color(), linewidth=1.6, label=task)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss per task (faint: per step; bold: moving average)")
    if steps:
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    """Write the figure as PNG atomically (a reader never sees half a plot) and close it."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
