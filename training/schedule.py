"""The learning-rate schedule every crop-estimator trainer shares: cosine over a step or time budget."""

from __future__ import annotations

import math
import time

__all__ = ["cosine_lr"]


def cosine_lr(optimiser, base_lr: float, started: float, budget_s: float, step: int, steps: int):
    """Return (seconds since ``started``, lr) and set lr on ``optimiser``; lr is None once the run is over.

    A run is bounded by ``budget_s`` seconds when that is > 0 (the cosine then follows the clock),
    else by ``steps``.
    """
    elapsed = time.perf_counter() - started
    done = elapsed / budget_s if budget_s > 0 else step / steps
    if done >= 1:
        return elapsed, None
    lr = base_lr * 0.5 * (1 + math.cos(math.pi * done))
    for group in optimiser.param_groups:
        group["lr"] = lr
    return elapsed, lr
