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
    # Belief value a local peak must exceed. 0.1 (DOPE's) for a new model; choose a trained model's
    # own on a validation split (training/evaluate.py --peak-threshold) and store it in its checkpoint:
    # the shipped file stores 0.7 (training/HRPOSE_MODEL_CARD.md).
    peak_threshold: float = 0.1
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
    were; ``score`` is the mean belief value of the found keypoints. ``points_3d`` (K, 3) model
    points of the keypoints when they are the instance's own (dense correspondences), else None:
    the object's keypoints_3d. ``box``: the predicted extent of the whole silhouette (extreme
    points), which PoseSolver's ``box_depth_weight`` uses.
    """

    class_index: int
    score: float
    keypoints: np.ndarray
    found: np.ndarray
    points_3d: np.ndarray | None = None
    box: np.ndarray | None = None  # (x0, y0, x1, y1) px of the object's whole silhouette, when predicted


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
        belief_map = np.asarray(belief_map, dtype=np.float64)
        if belief_map.ndim != 2:
            raise ValueError(f"belief_map: expected (h, w), got shape {belief_map.shape}")
        return self.find_all_peaks(belief_map[None])[1]

    def find_all_peaks(self, belief_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (channels (P,) int, peaks (P, 3) x, y, value) of every (M, h, w) map at once.

        Peaks as :meth:`find_peaks` finds them per map, ordered by channel, then strongest first
        (ties in row-major order). Only pixels above the threshold are tested for being the
        window's maximum, so the cost grows with the objects in view, not with the map size.
        """
        cfg = self.config
        maps = np.asarray(belief_maps)
        if maps.ndim != 3:
            raise ValueError(f"belief_maps: expected (M, h, w), got shape {maps.shape}")
        _, h, w = maps.shape
        flat = maps.reshape(-1)
        index = np.flatnonzero(flat > _threshold_for(flat.dtype, cfg.peak_threshold))
        values = flat[index]
        y, x = np.divmod(index % (h * w), w)
        # A candidate stays while no pixel of its window is larger. Window offsets as
        # scipy.ndimage.maximum_filter(size=peak_window) places them (even sizes too); pixels
        # outside the map do not count (mode="constant", cval=-inf). Testing one offset at a time
        # on the survivors, the 4 nearest first, keeps the cost near one pass over the candidates.
        offsets = np.arange(cfg.peak_window) - cfg.peak_window // 2
        window = [(dy, dx) for dy in offsets for dx in offsets if dy or dx]
        for dy, dx in sorted(window, key=lambda o: o[0] ** 2 + o[1] ** 2):
            inside = (y + dy >= 0) & (y + dy < h) & (x + dx >= 0) & (x + dx < w)
            keep = ~inside | (flat[np.where(inside, index + (dy * w + dx), index)] <= values)
            index, values, y, x = index[keep], values[keep], y[keep], x[keep]
        channel = index // (h * w)
        values = values.astype(np.float64)
        order = np.lexsort((-values, channel))  # stable: row-major among equal values
        channel, y, x, values = channel[order], y[order], x[order], values[order]

        def log_at(yy, xx):
            return np.log(np.maximum(maps[channel, yy, xx].astype(np.float64), 1e-12))

        centre = np.log(np.maximum(values, 1e-12))
        xl, xr = np.maximum(x - 1, 0), np.minimum(x + 1, w - 1)
        yu, yd = np.maximum(y - 1, 0), np.minimum(y + 1, h - 1)
        ox = _parabola_offsets(log_at(y, xl), centre, log_at(y, xr), (x > 0) & (x < w - 1))
        oy = _parabola_offsets(log_at(yu, x), centre, log_at(yd, x), (y > 0) & (y < h - 1))
        return channel, np.column_stack([x + ox, y + oy, values])

    def decode(self, belief_maps: np.ndarray, vector_fields: np.ndarray) -> list[DecodedInstance]:
        """Return the instances found in one image's maps, keypoints in input pixels.

        ``belief_maps`` (C*K, h, w) and ``vector_fields`` (C*(K-1)*2, h, w). Each centroid peak
        starts an instance; each vertex peak goes to the nearest centroid of its class among those
        whose direction from the vertex is within ``angle_threshold_deg`` of the predicted vector
        there (the paper: "assign the detected vertex to the closest object centroid within a
        certain angular threshold", as DOPE's decoder); a centroid keeps the nearest vertex per
        keypoint (the strongest peak on ties). Instances with fewer than ``min_keypoints``
        keypoints are dropped. Order: by class, then by centroid belief, strongest first.
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
        h, w = belief_maps.shape[1:]
        channel, peaks = self.find_all_peaks(belief_maps)
        peak_class, peak_keypoint = np.divmod(channel, K)
        is_centroid = peak_keypoint == K - 1
        centroids, centroid_class = peaks[is_centroid], peak_class[is_centroid]  # by class, strongest first
        if len(centroids) == 0:
            return []
        vertices, vertex_class, vertex_keypoint = (
            peaks[~is_centroid],
            peak_class[~is_centroid],
            peak_keypoint[~is_centroid],
        )

        # The predicted vector at each vertex peak's nearest pixel (np.rint rounds half to even, as round()).
        xi = np.clip(np.rint(vertices[:, 0]).astype(np.int64), 0, w - 1)
        yi = np.clip(np.rint(vertices[:, 1]).astype(np.int64), 0, h - 1)
        field = 2 * (vertex_class * (K - 1) + vertex_keypoint)
        predicted = np.stack(
            [vector_fields[field, yi, xi], vector_fields[field + 1, yi, xi]], axis=1
        ).astype(np.float64)
        norm = np.sqrt(np.sum(predicted**2, axis=1))

        # Per class, the cosine between each vertex's predicted vector and its direction to every
        # centroid of the class (V_c, N_c): one class at a time costs 1/C of all pairs at once
        # (under-trained maps hold thousands of peaks: 2400 vertices x 200 centroids, 40 ms).
        cos_limit = np.cos(np.deg2rad(cfg.angle_threshold_deg))
        owner = np.zeros(len(vertices), dtype=np.int64)
        nearest = np.full(len(vertices), np.inf)
        for c in np.unique(vertex_class):
            v_index, c_index = np.flatnonzero(vertex_class == c), np.flatnonzero(centroid_class == c)
            if len(c_index) == 0:
                continue
            to_centroids = centroids[None, c_index, :2] - vertices[v_index, None, :2]
            lengths = np.sqrt(np.sum(to_centroids**2, axis=2))
            cos = np.einsum("vnd,vd->vn", to_centroids, predicted[v_index]) / np.maximum(
                lengths * norm[v_index, None], 1e-12
            )
            cos[lengths < 1e-6] = 1.0  # vertex on top of the centroid: any direction fits
            distance = np.where(cos >= cos_limit, lengths, np.inf)
            closest = np.argmin(distance, axis=1)  # the first (strongest) centroid on ties
            owner[v_index] = c_index[closest]
            nearest[v_index] = distance[np.arange(len(v_index)), closest]
        accepted = np.flatnonzero(~(norm < 1e-6) & np.isfinite(nearest))

        # Per (centroid, keypoint): the nearest vertex, the first (strongest) on ties.
        slot = owner[accepted] * K + vertex_keypoint[accepted]
        order = np.lexsort((nearest[accepted], slot))  # stable: peak order (strongest first) on ties
        slot = slot[order]
        first = np.ones(len(slot), dtype=bool)
        first[1:] = slot[1:] != slot[:-1]
        chosen = accepted[order][first]

        keypoints = np.full((len(centroids), K, 2), np.nan)
        scores = np.zeros((len(centroids), K))
        keypoints[:, K - 1], scores[:, K - 1] = centroids[:, :2], centroids[:, 2]
        keypoints[owner[chosen], vertex_keypoint[chosen]] = vertices[chosen, :2]
        scores[owner[chosen], vertex_keypoint[chosen]] = vertices[chosen, 2]
        found = np.all(np.isfinite(keypoints), axis=2)
        count = found.sum(axis=1)
        mean_score = np.where(found, scores, 0.0).sum(axis=1) / count
        keypoints *= cfg.stride
        return [
            DecodedInstance(
                class_index=int(centroid_class[i]),
                score=float(mean_score[i]),
                keypoints=keypoints[i],
                found=found[i],
            )
            for i in np.flatnonzero(count >= cfg.min_keypoints)
        ]


def _threshold_for(dtype: np.dtype, threshold: float):
    """Return a ``dtype`` scalar t such that v > t iff float(v) > ``threshold``, for any value v of ``dtype``.

    Comparing float32 maps with a float64 threshold converts every pixel; rounding the threshold to
    float32 instead would change the result for pixels equal to the rounded threshold.
    """
    if not np.issubdtype(dtype, np.floating) or np.dtype(dtype).itemsize >= 8:
        return np.float64(threshold)
    rounded = np.asarray(threshold, dtype=dtype)[()]
    if float(rounded) > threshold:  # v > threshold  <=>  v >= rounded  <=>  v > the float below it
        return np.nextafter(rounded, dtype.type(-np.inf))
    return rounded


def _parabola_offsets(
    left: np.ndarray, centre: np.ndarray, right: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """Return (P,) vertex offsets in [-0.5, 0.5] of the parabolas through (-1, left), (0, centre), (1, right).

    0 where ``valid`` is False or the parabola does not open downward (no maximum).
    """
    curvature = left - 2.0 * centre + right
    has_max = valid & ~(curvature >= 0)
    safe = np.where(has_max, curvature, -1.0)
    return np.where(has_max, np.clip(0.5 * (left - right) / safe, -0.5, 0.5), 0.0)
