"""A depth camera's errors applied to rendered depth: noise growing with distance, holes at edges.

Axial noise follows Nguyen, Izadi and Lovell, "Modeling Kinect Sensor Noise for Improved 3D
Reconstruction and Tracking" (3DIMPVT 2012), Eq. 2: sigma_z(z) = 0.0012 + 0.0019 (z - 0.4)^2 m,
about 1.3 mm at 0.6 m. Structured-light and stereo cameras lose pixels where depth jumps (the
projector or the second view does not see both sides): pixels next to a jump go missing with
probability ``edge_dropout``, plus a few anywhere (``dropout``). Values are then rounded to the
camera's ``quantisation`` (16UC1 images hold millimetres). 0 = no measurement, as in BOP.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["DEFAULT_DEPTH_NOISE", "DepthNoise", "add_depth_noise"]


@dataclass(frozen=True)
class DepthNoise:
    """Parameters of :func:`add_depth_noise`; lengths in metres.

    ``axial`` (a, b, z0): sigma_z = a + b (z - z0)^2 (Nguyen et al. 2012); ``edge_step``: a depth
    difference to a neighbour larger than this makes a pixel an edge; ``edge_width`` pixels on
    each side of an edge may go missing, each with probability ``edge_dropout``.
    """

    axial: tuple = (0.0012, 0.0019, 0.4)
    edge_step: float = 0.01
    edge_width: int = 1
    edge_dropout: float = 0.6
    dropout: float = 0.002
    quantisation: float = 0.001

    def __post_init__(self):
        if len(self.axial) != 3 or not all(np.isfinite(self.axial)) or self.axial[0] < 0 or self.axial[1] < 0:
            raise ValueError(f"axial: expected (a >= 0, b >= 0, z0) metres, got {self.axial}")
        for name in ("edge_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {getattr(self, name)}")
        if not self.edge_step > 0 or int(self.edge_width) < 0 or not self.quantisation >= 0:
            raise ValueError(f"edge_step > 0, edge_width >= 0 and quantisation >= 0 expected, got "
                             f"{self.edge_step}, {self.edge_width}, {self.quantisation}")


DEFAULT_DEPTH_NOISE = DepthNoise()


def add_depth_noise(depth, rng: np.random.Generator, noise: DepthNoise = DEFAULT_DEPTH_NOISE) -> np.ndarray:
    """Return (H, W) float32 ``depth`` (metres, 0 = none) as a depth camera would measure it."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2 or not np.all(np.isfinite(depth)) or np.any(depth < 0):
        raise ValueError(f"depth: expected an (H, W) array of finite metres >= 0, got {depth.shape}")
    valid = depth > 0
    a, b, z0 = noise.axial
    noisy = depth + rng.standard_normal(depth.shape) * (a + b * (depth - z0) ** 2)
    # An edge: a neighbour (4-connected) differs by more than edge_step, or has no depth at all.
    padded = np.pad(np.where(valid, depth, np.inf), 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    with np.errstate(invalid="ignore"):  # inf - inf where neither has depth: NaN, not an edge
        jumps = [np.abs(padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx] - centre)
                 for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    edges = np.any([np.nan_to_num(j, nan=0.0) > noise.edge_step for j in jumps], axis=0)
    if noise.edge_width > 1:
        size = 2 * int(noise.edge_width) - 1
        edges = cv2.dilate(edges.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)
    missing = edges & (rng.random(depth.shape) < noise.edge_dropout)
    missing |= rng.random(depth.shape) < noise.dropout
    if noise.quantisation > 0:
        noisy = np.round(noisy / noise.quantisation) * noise.quantisation
    return np.where(valid & ~missing & (noisy > 0), noisy, 0.0).astype(np.float32)
