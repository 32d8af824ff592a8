"""Wall-clock samples of repeated calls and their median / p90 in milliseconds."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Median and 90th percentile (milliseconds) of ``n`` samples."""

    median_ms: float
    p90_ms: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        """Return the stats of ``seconds`` (NaN when empty)."""
        if len(seconds) == 0:
            return cls(math.nan, math.nan, 0)
        ms = 1e3 * np.asarray(seconds, dtype=np.float64)
        return cls(float(np.median(ms)), float(np.percentile(ms, 90)), len(ms))

    def __str__(self) -> str:
        if self.n == 0:
            return "-"
        return (
            f"{self.median_ms:.2f} / {self.p90_ms:.2f}"
            if self.median_ms < 10
            else (f"{self.median_ms:.1f} / {self.p90_ms:.1f}")
        )


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Return the wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out
