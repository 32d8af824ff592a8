"""Loss plots of the training scripts: one PNG per run beside its CSV log."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["plot_losses"]


def plot_losses(csv_path: Path, png_path: Path, terms=("total", "mse", "od", "fs"),
                val_key: str = "val_mse", val_label: str = "mse") -> None:
    """Write a PNG of the loss ``terms`` per step from a training CSV log (log scale).

    Each term is drawn raw and as a running mean; the ``val_key`` column of val.csv beside the
    log, when there is one, is drawn on top (``val_label``, with its frame count).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = np.array([int(r["step"]) for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    window = max(1, len(rows) // 100)  # per-step losses are noisy: draw their running mean on top
    for name in terms:
        values = np.array([float(r[name]) for r in rows])
        if np.any(values):
            (raw,) = ax.plot(steps, values, linewidth=0.5, alpha=0.3)
            mean = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], mean, color=raw.get_color(), label=f"{name} (mean of {window})")
    val_path = csv_path.with_name("val.csv")
    if val_path.exists():
        with open(val_path) as f:
            val = list(csv.DictReader(f))
        if val:
            ax.plot(
                [int(r["step"]) for r in val],
                [float(r[val_key]) for r in val],
                "o-",
                label=f"{val_label}, {val[0]['frames']} val frames",
                linewidth=1.5,
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(csv_path.parent.name)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
