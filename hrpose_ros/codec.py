"""Belief maps + vector fields: one codec encodes training targets and decodes network outputs.

Encoding follows the paper (Guan et al., Sec. III.1): a Gaussian belief map per keypoint
(Eq. 1) and, for each box vertex, a field of unit vectors pointing from the vertex toward the
object's centroid on the pixels within ``vector_radius`` of the vertex (Eq. 2). Decoding is the
greedy DOPE-style parse the paper describes: local peaks above a threshold with sub-pixel
refinement, then each vertex is assigned to the centroid whose direction best matches the
predicted vector, within an angular threshold.

Coordinates: keypoints are in pixels of the network input; map pixel (u, v) sits at input pixel
(stride * u, stride * v), the centre of the receptive field of two stride-2, pad-1 3x3
convolutions. Encoding and decoding use the same convention, so they invert each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter

__all__ = ["CodecConfig", "DecodedInstance", "KeypointCodec"]


@dataclass(frozen=True)
class CodecConfig:
    """Codec parameters. Lengths are in output-map pixels (input pixels / stride).

    The paper gives neither sigma nor the thresholds. sigma = 2 map pixels follows DOPE
    (Tremblay et al., the paper's [18]); the 3-pixel vector-field radius is the paper's
    N(x_j), taken at map resolution where the fields live.
    """

    num_classes: int = 1
    num_keypoints: int = 9
    stride: int = 4
    sigma: float = 2.0
    vector_radius: float = 3.0
    peak_threshold: float = 0.1  # belief value a local peak must exceed
    angle_threshold_deg: float = 30.0  # vertex-to-centroid direction vs predicted vector
    min_keypoints: int = 5  # keypoints (centroid included) an instance needs to be kept
    peak_window: int = 3  # local-maximum window (map pixels)

    def __post_init__(self):
        if self.num_classes < 1 or self.num_keypoints < 2:
            raise ValueError(
                f"num_classes/num_keypoints: expected >= 1 / >= 2, got "
                f"{self.num_classes}/{self.num_keypoints}"
            )
        if self.sigma <= 0 or self.vector_radius <= 0 or self.stride < 1:
            raise ValueError(
                f"sigma/vector_radius/stride: expected positive, got "
                f"{self.sigma}/{self.vector_radius}/{self.stride}"
            )
        if not 4 <= self.min_keypoints <= self.num_keypoints:
            raise ValueError(
                f"min_keypoints: expected 4..{self.num_keypoints} (PnP needs 4), got {self.min_keypoints}"
            )


@dataclass(frozen=True)
class DecodedInstance:
    """One object instance parsed from the maps, in input pixels.

    ``keypoints`` (K, 2) hold NaN where a keypoint was not found; ``found`` (K,) says which
    were; ``score`` is the mean belief value of the found keypoints.
    """

    class_index: int
    score: float
    keypoints: np.ndarray
    found: np.ndarray


class KeypointCodec:
    """Encode keypoints into belief maps/vector fields (Eq. 1-2) and decode them back."""

    def __init__(self, config: CodecConfig = CodecConfig()):
        self.config = config

    @property
    def vector_channels(self) -> int:
        """Vector-field channels: (K - 1) x 2 x C."""
        return (self.config.num_keypoints - 1) * 2 * self.config.num_classes

    @property
    def belief_channels(self) -> int:
        """Belief-map channels: K x C."""
        return self.config.num_keypoints * self.config.num_classes

    def map_size(self, height: int, width: int) -> tuple[int, int]:
        """Return the (h, w) of the output maps for an input of ``height`` x ``width``."""
        s = self.config.stride
        return (height + s - 1) // s, (width + s - 1) // s

    def encode(
        self,
        keypoints: np.ndarray,
        class_indices: np.ndarray,
        height: int,
        width: int,
        visible: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return targets (belief_maps (C*K, h, w), vector_fields (C*(K-1)*2, h, w)) float32.

        ``keypoints`` (N, K, 2) input pixels, last keypoint the centroid; ``class_indices`` (N,)
        in [0, C); ``visible`` (N, K) bool (default all). Belief maps take the maximum over
        instances (Eq. 1); a vector-field pixel belongs to the nearest vertex within the radius
        (Eq. 2), with the unit vector from that vertex toward its centroid.
        """
        cfg = self.config
        K = cfg.num_keypoints
        keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, K, 2)
        class_indices = np.asarray(class_indices, dtype=np.int64).reshape(-1)
        if len(class_indices) != len(keypoints):
            raise ValueError(f"class_indices: expected {len(keypoints)} entries, got {len(class_indices)}")
        if np.any((class_indices < 0) | (class_indices >= cfg.num_classes)):
            raise ValueError(f"class_indices: expected values in [0, {cfg.num_classes}), got {class_indices}")
        if visible is None:
            visible = np.ones(keypoints.shape[:2], dtype=bool)
        visible = np.asarray(visible, dtype=bool).reshape(keypoints.shape[:2]) & np.all(
            np.isfinite(keypoints), axis=-1
        )
        h, w = self.map_size(height, width)
        belief = np.zeros((self.belief_channels, h, w), np.float32)
        vectors = np.zeros((self.vector_channels, h, w), np.float32)
        nearest = np.full((self.vector_channels // 2, h, w), np.inf, np.float32)
        points = keypoints / cfg.stride
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        reach = 4.0 * cfg.sigma  # exp(-8) < 4e-4: beyond this the Gaussian is zero in float32 terms
        for n in range(len(points)):
            c = int(class_indices[n])
            centroid = points[n, K - 1]
            for k in range(K):
                if not visible[n, k]:
                    continue
                x, y = points[n, k]
                x0, x1 = max(int(np.floor(x - reach)), 0), min(int(np.ceil(x + reach)) + 1, w)
                y0, y1 = max(int(np.floor(y - reach)), 0), min(int(np.ceil(y + reach)) + 1, h)
                if x0 >= x1 or y0 >= y1:
                    continue
                d2 = (xs[y0:y1, x0:x1] - x) ** 2 + (ys[y0:y1, x0:x1] - y) ** 2
                channel = belief[c * K + k, y0:y1, x0:x1]
                np.maximum(channel, np.exp(-d2 / (2 * cfg.sigma**2)), out=channel)
                if k == K - 1 or not np.all(np.isfinite(centroid)):
                    continue
                direction = centroid - points[n, k]
                length = np.linalg.norm(direction)
                if length < 1e-9:
                    continue
                # The paper's text: "a unit vector that points from the vertex to the centroid".
                # (Its Eq. 2 prints (x_j - x_cen)/|.|, the opposite sign; we follow the text, as DOPE.)
                unit = direction / length
                inside = d2 <= cfg.vector_radius**2
                j = c * (K - 1) + k
                closer = inside & (d2 < nearest[j, y0:y1, x0:x1])
                nearest[j, y0:y1, x0:x1][closer] = d2[closer]
                vectors[2 * j, y0:y1, x0:x1][closer] = unit[0]
                vectors[2 * j + 1, y0:y1, x0:x1][closer] = unit[1]
        return belief, vectors

    def find_peaks(self, belief_map: np.ndarray) -> np.ndarray:
        """Return (P, 3) local peaks (x, y, value) of one (h, w) map, x/y sub-pixel in map pixels.

        Greedy: local maxima over ``peak_window`` above ``peak_threshold``, strongest first;
        refined by fitting a parabola to the log of the 3x3 neighbourhood along each axis,
        which is exact for a sampled Gaussian (Eq. 1).
        """
        cfg = self.config
        m = np.asarray(belief_map, dtype=np.float64)
        is_peak = (m == maximum_filter(m, size=cfg.peak_window, mode="constant", cval=-np.inf)) & (
            m > cfg.peak_threshold
        )
        ys, xs = np.nonzero(is_peak)
        h, w = m.shape
        out = []
        for y, x in zip(ys, xs):
            centre = np.log(max(m[y, x], 1e-12))
            dx = dy = 0.0
            if 0 < x < w - 1:
                left, right = np.log(max(m[y, x - 1], 1e-12)), np.log(max(m[y, x + 1], 1e-12))
                dx = _parabola_offset(left, centre, right)
            if 0 < y < h - 1:
                up, down = np.log(max(m[y - 1, x], 1e-12)), np.log(max(m[y + 1, x], 1e-12))
                dy = _parabola_offset(up, centre, down)
            out.append((x + dx, y + dy, m[y, x]))
        peaks = np.array(out, dtype=np.float64).reshape(-1, 3)
        return peaks[np.argsort(-peaks[:, 2], kind="stable")]

    def decode(self, belief_maps: np.ndarray, vector_fields: np.ndarray) -> list[DecodedInstance]:
        """Return the instances found in one image's maps, keypoints in input pixels.

        ``belief_maps`` (C*K, h, w) and ``vector_fields`` (C*(K-1)*2, h, w). Each centroid peak
        starts an instance; each vertex peak goes to the centroid whose direction from the vertex
        is closest to the predicted vector there (within ``angle_threshold_deg``); a centroid keeps
        the vertex with the smallest angle per keypoint. Instances with fewer than
        ``min_keypoints`` keypoints are dropped.
        """
        cfg = self.config
        K = cfg.num_keypoints
        belief_maps = np.asarray(belief_maps, dtype=np.float32)
        vector_fields = np.asarray(vector_fields, dtype=np.float32)
        if belief_maps.ndim != 3 or belief_maps.shape[0] != self.belief_channels:
            raise ValueError(f"belief_maps: expected ({self.belief_channels}, h, w), got {belief_maps.shape}")
        if vector_fields.shape != (self.vector_channels, *belief_maps.shape[1:]):
            raise ValueError(
                f"vector_fields: expected ({self.vector_channels}, "
                f"{belief_maps.shape[1]}, {belief_maps.shape[2]}), got {vector_fields.shape}"
            )
        cos_limit = np.cos(np.deg2rad(cfg.angle_threshold_deg))
        h, w = belief_maps.shape[1:]
        instances = []
        for c in range(cfg.num_classes):
            centroids = self.find_peaks(belief_maps[c * K + K - 1])
            if len(centroids) == 0:
                continue
            keypoints = np.full((len(centroids), K, 2), np.nan)
            scores = np.zeros((len(centroids), K))
            best_cos = np.full((len(centroids), K), -np.inf)
            keypoints[:, K - 1] = centroids[:, :2]
            scores[:, K - 1] = centroids[:, 2]
            for k in range(K - 1):
                j = c * (K - 1) + k
                for x, y, value in self.find_peaks(belief_maps[c * K + k]):
                    xi, yi = min(max(int(round(x)), 0), w - 1), min(max(int(round(y)), 0), h - 1)
                    predicted = vector_fields[2 * j : 2 * j + 2, yi, xi].astype(np.float64)
                    norm = np.linalg.norm(predicted)
                    if norm < 1e-6:
                        continue
                    to_centroids = centroids[:, :2] - (x, y)
                    lengths = np.linalg.norm(to_centroids, axis=1)
                    cos = to_centroids @ predicted / np.maximum(lengths * norm, 1e-12)
                    cos[lengths < 1e-6] = 1.0  # vertex on top of the centroid: any direction fits
                    i = int(np.argmax(cos))
                    if cos[i] >= cos_limit and cos[i] > best_cos[i, k]:
                        best_cos[i, k] = cos[i]
                        keypoints[i, k] = (x, y)
                        scores[i, k] = value
            for i in range(len(centroids)):
                found = np.all(np.isfinite(keypoints[i]), axis=1)
                if found.sum() < cfg.min_keypoints:
                    continue
                instances.append(
                    DecodedInstance(
                        class_index=c,
                        score=float(scores[i, found].mean()),
                        keypoints=keypoints[i] * cfg.stride,
                        found=found,
                    )
                )
        return instances


def _parabola_offset(left: float, centre: float, right: float) -> float:
    """Return the vertex offset in (-0.5, 0.5) of the parabola through (-1, left), (0, centre), (1, right)."""
    curvature = left - 2.0 * centre + right
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
