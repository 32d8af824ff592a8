"""The seam between the node and its pose estimators: one protocol, chosen by name or by the weights file.

Two estimators implement it:

- ``hrpose``: HRPose over the whole frame, belief maps + vector fields
  (:class:`~hrpose_ros.pipeline.PosePipeline`);
- ``crops``: a detector, square crops per detection, a keypoint network on the crops
  (:class:`~hrpose_ros.crop_pipeline.CropPosePipeline`).

Both find 2D keypoints and hand them to the shared :class:`~hrpose_ros.pose_solver.PoseSolver`
(PnP and pose acceptance). A weights file says which estimator it belongs to; ``auto`` follows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hrpose_ros.types import CameraModel, ObjectModel, ObjectPose

__all__ = ["ESTIMATORS", "Estimator", "default_weights", "estimator_of", "load_estimator"]

ESTIMATORS = ("hrpose", "crops")


class Estimator(Protocol):
    """What pose_node, replay and the benchmark use of an estimator."""

    objects: list[ObjectModel]
    input_size: tuple[int, int]
    engine: Any  # .description: one line for logs
    last_timings: dict[str, float]

    def __call__(self, image_rgb: np.ndarray, camera: CameraModel) -> list[ObjectPose]: ...

    def estimate_maps(self, image_rgb: np.ndarray, camera: CameraModel) -> Any:
        """The network half: returns an object with ``timings`` (seconds per stage)."""

    def poses_from_maps(self, maps: Any, camera: CameraModel) -> tuple[list[ObjectPose], dict[str, float]]:
        """The decoding + PnP half: (poses, seconds per stage)."""


def default_weights(estimator: str = "auto") -> Path:
    """Return the shipped weights of ``estimator`` (auto: the crop estimator's if shipped, else HRPose's)."""
    from hrpose_ros.crop_pipeline import DEFAULT_CROPS_WEIGHTS
    from hrpose_ros.pipeline import DEFAULT_WEIGHTS

    _check(estimator)
    if estimator == "hrpose" or (estimator == "auto" and not DEFAULT_CROPS_WEIGHTS.is_file()):
        return DEFAULT_WEIGHTS
    return DEFAULT_CROPS_WEIGHTS


def estimator_of(path) -> str:
    """Return the estimator a weights file belongs to: "crops" for a crops file, else "hrpose"."""
    from hrpose_ros.crop_pipeline import is_crops_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: weights file not found")
    return "crops" if is_crops_file(path) else "hrpose"


def _check(estimator: str) -> None:
    if estimator not in ("auto", *ESTIMATORS):
        raise ValueError(f"estimator: expected auto, {' or '.join(ESTIMATORS)}, got {estimator!r}")


def load_estimator(path=None, estimator: str = "auto", **options) -> Estimator:
    """Return the estimator for the weights at ``path`` (None = :func:`default_weights` of ``estimator``).

    ``estimator`` "auto" follows the file; "hrpose" or "crops" must match it (ValueError naming
    both). ``options`` go to the estimator's ``from_pretrained`` (backend, device, precision,
    input_size, thresholds).
    """
    _check(estimator)
    path = Path(path) if path is not None else default_weights(estimator)
    kind = estimator_of(path)
    if estimator not in ("auto", kind):
        raise ValueError(f"estimator: {estimator!r} asked for, but {path} holds {kind!r} weights")
    if kind == "crops":
        from hrpose_ros.crop_pipeline import CropPosePipeline

        return CropPosePipeline.from_pretrained(path, **options)
    from hrpose_ros.pipeline import PosePipeline

    return PosePipeline.from_pretrained(path, **options)
