"""BOP19 results CSV: pose estimates in metres written with t in millimetres, and read back.

Format: docs/bop_challenge_2019.md of thodan/bop_toolkit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrpose_ros.bop_format import checked_numbers, checked_rotation, to_metres, to_millimetres
from hrpose_ros.geometry import check_rotation

__all__ = [
    "RESULTS_HEADER",
    "BopResult",
    "read_results_csv",
    "write_results_csv",
]

RESULTS_HEADER = "scene_id,im_id,obj_id,score,R,t,time"


@dataclass(frozen=True)
class BopResult:
    """One BOP19 results CSV row: ids, score, R (3, 3), t (3,) metres, time (s, -1 = unknown).

    ``time`` is the wall time for the whole image; BOP requires the same value for every
    estimate of one image.
    """

    scene_id: int
    im_id: int
    obj_id: int
    score: float
    R: np.ndarray
    t: np.ndarray
    time: float = -1.0


def write_results_csv(path, results: Iterable[BopResult]) -> None:
    """Write pose estimates (metres) as a BOP19 results CSV (R row-major, t in mm, time in s)."""
    lines = [RESULTS_HEADER]
    times: dict[tuple, float] = {}
    for i, res in enumerate(results):
        R = check_rotation(res.R, f"results[{i}].R", tol=1e-3)
        t = checked_numbers(res.t, f"results[{i}].t", 3)
        if not math.isfinite(res.score) or not math.isfinite(res.time):
            raise ValueError(f"results[{i}]: score and time must be finite, got {res.score}, {res.time}")
        key = (int(res.scene_id), int(res.im_id))
        if abs(times.setdefault(key, float(res.time)) - float(res.time)) > 1e-3:
            raise ValueError(f"results[{i}].time: BOP needs one time per image; scene {key[0]} "
                             f"image {key[1]} has {times[key]} and {res.time}")
        lines.append(",".join([
            str(int(res.scene_id)), str(int(res.im_id)), str(int(res.obj_id)), repr(float(res.score)),
            " ".join(repr(v) for v in R.ravel().tolist()),
            " ".join(repr(v) for v in to_millimetres(t)),
            repr(float(res.time)),
        ]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def read_results_csv(path) -> list[BopResult]:
    """Return the pose estimates (metres) of a BOP19 results CSV (header line optional)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    results = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or (line_no == 1 and line.startswith("scene_id")):
            continue
        where = f"{path}:{line_no}"
        fields = line.split(",")
        if len(fields) != 7:
            raise ValueError(f"{where}: expected 7 fields ({RESULTS_HEADER}), got {len(fields)}")
        try:
            scene_id, im_id, obj_id = (int(f) for f in fields[:3])
            score, time = float(fields[3]), float(fields[6])
        except ValueError as exc:
            raise ValueError(f"{where}: expected integer ids and numeric score/time ({exc})") from exc
        results.append(BopResult(
            scene_id=scene_id, im_id=im_id, obj_id=obj_id, score=score,
            R=checked_rotation(fields[4].split(), f"{where} R"),
            t=to_metres(checked_numbers(fields[5].split(), f"{where} t", 3)),
            time=time,
        ))
    return results
