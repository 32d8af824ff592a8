"""Keypoints on object crops: one network for all objects, per-class heatmaps, integral regression.

The crop estimator's second stage (the first is :mod:`hrpose_ros.detector`): a square crop around
one detected object (:mod:`hrpose_ros.crops`) goes through a pretrained EfficientNet-Lite with a
small FPN (:class:`~hrpose_ros.backbones.LiteFPN`) to stride 4, and a head predicts, for every
class, one heatmap per keypoint (the 8 box corners + centroid of HRPose). The crop's class (from
the detector) selects its 9 heatmaps, so one network serves all objects; the shared-regressor
paper conditions on the class with CIN instead, per-class outputs are the cheaper of the two.

Heatmaps are read by integral regression (Sun et al., "Integral Human Pose Regression"): a
softmax over the map, and the expected position gives sub-pixel keypoints trained with an L1
loss on the coordinates themselves. HRPose's belief maps are trained with an MSE on Gaussian
targets (Eq. 3) and read at their peak; on 32x32 crop maps a peak is 4 crop pixels coarse, so
the expectation is used instead (decoded within a window around the peak, which ignores a second
mode). The distribution term (:func:`heatmap_targets`) keeps the softmax a single Gaussian blob.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from hrpose_ros.backbones import LiteFPN

__all__ = [
    "CropKeypointConfig",
    "CropKeypointNet",
    "CropKeypointOutput",
    "coordinate_frame",
    "decode_coordinates",
    "decode_heatmaps",
    "heatmap_targets",
    "map_grid",
    "soft_argmax",
    "vote",
    "decode_votes",
]


HEAD_OUTPUTS = {"heatmap": 1, "voting": 3}  # channels per keypoint


@dataclass(frozen=True)
class CropKeypointConfig:
    """Model arguments stored in every checkpoint."""

    variant: str = "lite0"  # student: lite0; teacher: lite2 (HRPose's teacher/student pair, on crops)
    num_classes: int = 1
    num_keypoints: int = 9
    channels: int = 64  # FPN width
    crop_size: int = 128
    padding: float = 1.5  # crop side / longer box side (crops.crop_around_box)
    pretrained: bool = True  # ImageNet backbone weights when building for training
    # "heatmap": one softmax heatmap per keypoint, read by integral regression. "voting": per map
    # cell, an offset to each keypoint and a weight; the keypoint is the weighted mean of the
    # votes. Voting supervises every cell (the offsets' L1) and reaches keypoints off the crop;
    # it did not learn faster here (training/README.md).
    head: str = "heatmap"
    # The 3D points the K heatmaps locate (geometry.model_keypoints): "box", HRPose's 8 box
    # corners + centre; or "surface", 8 farthest-point samples on the model + centre (PVNet):
    # points on the object, which a crop shows, instead of corners in the air around it.
    keypoints: str = "box"
    # Dense correspondences beside the keypoints (CDPN/GDR-Net's object coordinates): a second head
    # gives per class, for every map cell, the normalised model point seen there (coordinate_frame)
    # and a logit that the object is seen there; PnP then uses hundreds of points per crop.
    coordinates: bool = False
    # The object's 4 extreme image points (leftmost, rightmost, topmost, bottommost of its whole
    # silhouette, ExtremeNet's), located like keypoints by a third head: they are on the outline a
    # crop shows, and their box fixes the object's distance better than hidden keypoints do.
    extremes: bool = False

    def __post_init__(self):
        if self.num_classes < 1 or self.num_keypoints < 4:
            raise ValueError(
                f"num_classes/num_keypoints: expected >= 1 / >= 4, got {self.num_classes}/"
                f"{self.num_keypoints}"
            )
        if self.crop_size % 32:
            raise ValueError(f"crop_size: expected a multiple of 32, got {self.crop_size}")
        if self.head not in HEAD_OUTPUTS:
            raise ValueError(f"head: expected one of {sorted(HEAD_OUTPUTS)}, got {self.head!r}")
        if self.keypoints not in ("box", "surface"):
            raise ValueError(f"keypoints: expected 'box' or 'surface', got {self.keypoints!r}")

    @property
    def outputs_per_class(self) -> int:
        """Output channels per class: K heatmaps, or K weights + 2K offsets."""
        return self.num_keypoints * HEAD_OUTPUTS[self.head]

    @property
    def map_size(self) -> int:
        return self.crop_size // LiteFPN.stride

    def to_dict(self) -> dict:
        return asdict(self)


class CropKeypointOutput(NamedTuple):
    """heatmaps (B, C*K, h, w) logits, channel c*K + k = keypoint k of class c; features (B, F, h, w);
    coordinates (B, C*4, h, w): per class x, y, z normalised and a visibility logit (None without)."""

    heatmaps: torch.Tensor
    features: torch.Tensor
    coordinates: torch.Tensor | None = None
    extremes: torch.Tensor | None = None  # (B, C*4, h, w) heatmap logits: left, right, top, bottom


COORDINATE_OUTPUTS = 4
EXTREMES = 4


def coordinate_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (centre (3,), half extent (3,)) of the model's bounding box: normalised coordinates
    (p - centre) / half lie in [-1, 1] on every axis (NOCS-like), for every object size alike."""
    points = np.asarray(points, dtype=np.float64)
    low, high = points.min(0), points.max(0)
    return (low + high) / 2, np.maximum((high - low) / 2, 1e-6)


def _conv_head(channels: int, outputs: int, blocks: int) -> nn.Sequential:
    """Return ``blocks`` x (3x3 conv, batch norm, ReLU) then a 1x1 conv to ``outputs`` channels."""
    layers = []
    for _ in range(blocks):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Conv2d(channels, outputs, 1))


class CropKeypointNet(nn.Module):
    """Crops (B, 3, S, S) RGB in [0, 1] -> CropKeypointOutput at stride 4.

    ``keypoints_3d`` (C, K, 3) metres, set when the objects are known (training, loading): the
    model points the heatmaps of each class locate, which PnP needs with them.
    """

    keypoints_3d: np.ndarray | None = None

    def __init__(self, config: CropKeypointConfig = CropKeypointConfig()):
        super().__init__()
        self.config = config
        self.trunk = LiteFPN(config.variant, config.channels, pretrained=config.pretrained)
        c, n = config.channels, config.num_classes
        self.head = _conv_head(c, n * config.outputs_per_class, blocks=1)
        # The coordinates' regression gets one block more than the heatmaps (GDR-Net's geometry
        # head is deeper than its mask head).
        self.coordinate_head = _conv_head(c, n * COORDINATE_OUTPUTS, blocks=2) if config.coordinates else None
        self.extreme_head = _conv_head(c, n * EXTREMES, blocks=1) if config.extremes else None

    def forward(self, crops: torch.Tensor) -> CropKeypointOutput:
        features = self.trunk(crops)
        coordinates = None if self.coordinate_head is None else self.coordinate_head(features)
        extremes = None if self.extreme_head is None else self.extreme_head(features)
        return CropKeypointOutput(self.head(features), features, coordinates, extremes)

    @staticmethod
    def class_coordinates(coordinates: torch.Tensor, class_indices: torch.Tensor) -> torch.Tensor:
        """Return (B, 4, h, w): each crop's own class's channels of (B, C*4, h, w) coordinates or extremes."""
        b, _, h, w = coordinates.shape
        view = coordinates.view(b, -1, COORDINATE_OUTPUTS, h, w)
        return view[torch.arange(b, device=coordinates.device), class_indices]

    def class_heatmaps(self, heatmaps: torch.Tensor, class_indices: torch.Tensor) -> torch.Tensor:
        """Return (B, P, h, w): each crop's own class's P (outputs_per_class) channels of (B, C*P, h, w)."""
        k = self.config.outputs_per_class
        b, _, h, w = heatmaps.shape
        return heatmaps.view(b, -1, k, h, w)[torch.arange(b, device=heatmaps.device), class_indices]


def map_grid(map_size: int, stride: int = LiteFPN.stride) -> np.ndarray:
    """Return (map_size,) crop-pixel coordinates of the map cells' centres (cell u covers pixels 4u..4u+3)."""
    return np.arange(map_size) * stride + (stride - 1) / 2.0


def soft_argmax(logits: torch.Tensor, stride: int = LiteFPN.stride) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (keypoints (..., 2) crop px, probabilities (..., h, w)) of heatmap ``logits`` (..., h, w)."""
    h, w = logits.shape[-2:]
    prob = logits.flatten(-2).softmax(-1).view_as(logits)
    xs = torch.as_tensor(map_grid(w, stride), dtype=logits.dtype, device=logits.device)
    ys = torch.as_tensor(map_grid(h, stride), dtype=logits.dtype, device=logits.device)
    x = (prob.sum(-2) * xs).sum(-1)
    y = (prob.sum(-1) * ys).sum(-1)
    return torch.stack([x, y], -1), prob


def heatmap_targets(
    keypoints: torch.Tensor, map_size: int, sigma: float = 1.0, stride: int = LiteFPN.stride
) -> torch.Tensor:
    """Return (..., h, w) normalised Gaussians (sum 1) at ``keypoints`` (..., 2) crop px; sigma in map cells.

    The target of the distribution term: cross-entropy against it keeps the softmax one blob,
    so the expectation (and the decoder's window around the peak) lands on the keypoint.
    """
    grid = torch.as_tensor(map_grid(map_size, stride), dtype=keypoints.dtype, device=keypoints.device)
    dx = (grid - keypoints[..., 0:1]) / stride
    dy = (grid - keypoints[..., 1:2]) / stride
    g = torch.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2) / (2 * sigma**2))
    return g / g.flatten(-2).sum(-1).clamp_min(1e-12)[..., None, None]


def decode_heatmaps(
    logits: np.ndarray, window: int = 3, stride: int = LiteFPN.stride
) -> tuple[np.ndarray, np.ndarray]:
    """Return (keypoints (N, K, 2) crop px, confidence (N, K) in [0, 1]) from logits (N, K, h, w).

    The expectation is taken within ``window`` cells of the most probable cell (a (2w+1)^2
    patch, renormalised): a second, weaker mode elsewhere in the crop (another instance, a
    symmetric look-alike) does not drag the keypoint between the two. Confidence is the
    probability mass inside the patch.
    """
    logits = np.asarray(logits, dtype=np.float32)
    n, k, h, w = logits.shape
    flat = logits.reshape(n, k, -1)
    flat = np.exp(flat - flat.max(-1, keepdims=True))
    prob = (flat / flat.sum(-1, keepdims=True)).reshape(n, k, h, w)
    peak = prob.reshape(n, k, -1).argmax(-1)
    py, px = np.divmod(peak, w)
    ys, xs = map_grid(h, stride), map_grid(w, stride)
    keypoints = np.zeros((n, k, 2))
    confidence = np.zeros((n, k))
    for i in range(n):
        for j in range(k):
            y0, y1 = max(py[i, j] - window, 0), min(py[i, j] + window + 1, h)
            x0, x1 = max(px[i, j] - window, 0), min(px[i, j] + window + 1, w)
            patch = prob[i, j, y0:y1, x0:x1]
            mass = float(patch.sum())
            keypoints[i, j, 0] = float((patch.sum(0) * xs[x0:x1]).sum()) / mass
            keypoints[i, j, 1] = float((patch.sum(1) * ys[y0:y1]).sum()) / mass
            confidence[i, j] = mass
    return keypoints, confidence


def vote(outputs: torch.Tensor, stride: int = LiteFPN.stride) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (keypoints (B, K, 2) crop px, offsets (B, K, 2, h, w) in cells) of voting outputs (B, 3K, h, w).

    Channels: K weight logits, then (dx, dy) per keypoint in map cells. A keypoint is the
    softmax-weighted mean over cells of cell centre + offset.
    """
    b, c, h, w = outputs.shape
    k = c // 3
    weights = outputs[:, :k].flatten(-2).softmax(-1)  # (B, K, hw)
    offsets = outputs[:, k:].reshape(b, k, 2, h, w)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=outputs.dtype, device=outputs.device),
        torch.arange(w, dtype=outputs.dtype, device=outputs.device),
        indexing="ij",
    )
    cells = torch.stack([xs, ys])  # (2, h, w)
    votes = (cells + offsets).flatten(-2)  # (B, K, 2, hw)
    keypoints = (votes * weights[:, :, None]).sum(-1) * stride + (stride - 1) / 2.0
    return keypoints, offsets


def decode_votes(outputs: np.ndarray, stride: int = LiteFPN.stride) -> tuple[np.ndarray, np.ndarray]:
    """Return (keypoints (N, K, 2) crop px, confidence (N, K): the largest cell weight) of voting outputs."""
    outputs = np.asarray(outputs, dtype=np.float32)
    n, c, h, w = outputs.shape
    k = c // 3
    logits = outputs[:, :k].reshape(n, k, -1)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    votes = (np.stack([xs, ys]) + outputs[:, k:].reshape(n, k, 2, h, w)).reshape(n, k, 2, -1)
    keypoints = (votes * weights[:, :, None]).sum(-1) * stride + (stride - 1) / 2.0
    return keypoints.astype(np.float64), weights.max(-1)


def decode_coordinates(
    outputs: np.ndarray, threshold: float = 0.5, stride: int = LiteFPN.stride
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return per crop (cells' centres (M, 2) crop px, normalised object coordinates (M, 3)) of the
    cells whose visibility probability is above ``threshold``; ``outputs`` (N, 4, h, w) of each
    crop's class (x, y, z, visibility logit)."""
    outputs = np.asarray(outputs, dtype=np.float32)
    n, _, h, w = outputs.shape
    grid_x, grid_y = np.meshgrid(map_grid(w, stride), map_grid(h, stride))
    logit = np.log(threshold / (1 - threshold))
    result = []
    for i in range(n):
        seen = outputs[i, 3] > logit
        result.append((np.stack([grid_x[seen], grid_y[seen]], -1), outputs[i][:3, seen].T))
    return result
