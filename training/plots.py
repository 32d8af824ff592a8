"""Loss plots of the training scripts: one PNG per run beside its CSV log."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_loss_and_validation", "plot_losses"]


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


def plot_loss_and_validation(
    log_path: Path,
    val_path: Path,
    out: Path,
    terms: Sequence[str],
    val_columns: dict,
    val_ylabel: str,
    val_title: str,
    loss_title: str = "training loss",
) -> None:
    """Write a two-panel PNG: the loss ``terms`` of log.csv per step (log scale, those present) and
    the validation columns of val.csv per step (``val_columns``: column -> legend label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(log_path.open()))
    vals = list(csv.DictReader(val_path.open())) if val_path.exists() else []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    steps = [int(r["step"]) for r in rows]
    for key in terms:
        if rows and key in rows[0]:
            axes[0].plot(steps, [float(r[key]) for r in rows], label=key)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    if rows:  # the first validation comes before any logged step
        axes[0].legend()
    axes[0].set_title(loss_title)
    val_steps = [int(r["step"]) for r in vals]
    for column, label in val_columns.items():
        if vals:
            axes[1].plot(val_steps, [float(r[column]) for r in vals], marker="o", label=label)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel(val_ylabel)
    if vals and len(val_columns) > 1:
        axes[1].legend()
    axes[1].set_title(val_title)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
