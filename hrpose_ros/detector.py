"""Single-shot 2D detector: object class + amodal box per instance, on a pretrained EfficientNet-Lite0.

The detection stage of the single-shot paper (Sec. 3.1): one network pass over the whole frame
gives each object's class and 2D box; a keypoint network then works on square crops around the
boxes. The paper's detector is SSD on an FPN with anchors of three aspect ratios on P3-P7.
This one departs from it on purpose: it is anchor-free in the way of CenterNet (Zhou et al.,
"Objects as Points", 2019): a class heatmap of box centres, box sizes and sub-cell offsets
on one stride-4 map (:class:`~hrpose_ros.backbones.LiteFPN`). There are then no anchor sizes
or ratios to tune, and at a 320x240 input the objects (about 10-200 px) span few enough scales
that one stride-4 map covers them all.

Conventions: boxes are (x, y, w, h) in pixels with pixel i spanning [i, i + 1) (BOP's
``bbox_obj``), so resizing an image by ``s`` multiplies all four numbers by ``s``.
Box sizes are regressed in plain feature-map units (input px / stride) under an L1 loss, as
CenterNet does; centres as the integer cell plus an offset in [0, 1).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hrpose_ros.backbones import LiteFPN
from hrpose_ros.checkpoints import compact_points, object_from_dict, object_to_dict, read_torch_file
from hrpose_ros.letterbox import letterbox
from hrpose_ros.types import Detection, ObjectModel

__all__ = [
    "CHECKPOINT_FORMAT",
    "BoxCodec",
    "BoxTargets",
    "DetectorConfig",
    "Detector",
    "SingleShotDetector",
    "detection_losses",
    "detector_from_dict",
    "detector_history",
    "detector_to_dict",
    "export_detector_onnx",
    "focal_loss",
    "gaussian_radius",
    "load_detector",
    "postprocess",
    "preprocess",
    "save_detector",
]

CHECKPOINT_FORMAT = "hrpose-detector-1"
HEATMAP_PRIOR_BIAS = -2.19  # CenterNet: sigmoid(-2.19) = 0.1, so the early focal loss is not swamped


@dataclass(frozen=True)
class DetectorConfig:
    """The detector's architecture and decoding settings; defaults follow CenterNet where it has one.

    ``input_size`` is (width, height) of the network input, multiples of 16. ``min_overlap`` is
    CenterNet's Gaussian radius rule: the radius within which a shifted box still has IoU >=
    ``min_overlap`` with the true one; sigma = (2 radius + 1) / 6.
    """

    num_classes: int
    variant: str = "lite0"
    channels: int = 64
    input_size: tuple = (320, 240)
    pretrained: bool = True
    score_threshold: float = 0.3
    max_detections: int = 20
    min_overlap: float = 0.7
    stride: int = 4

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"DetectorConfig.num_classes: expected >= 1, got {self.num_classes}")
        width, height = self.input_size
        # Multiples of 16 (not 32) so 320x240 fits: LiteFPN upsamples the odd stride-32 level to size.
        if width % 16 or height % 16 or width <= 0 or height <= 0:
            raise ValueError(f"DetectorConfig.input_size: expected multiples of 16, got {self.input_size}")
        if not 0.0 < self.min_overlap < 1.0:
            raise ValueError(f"DetectorConfig.min_overlap: expected in (0, 1), got {self.min_overlap}")
        if self.stride != LiteFPN.stride:
            raise ValueError(f"DetectorConfig.stride: LiteFPN's output is at stride {LiteFPN.stride}")

    def to_dict(self) -> dict:
        """Return the config as plain types (JSON- and torch.load(weights_only)-safe)."""
        d = asdict(self)
        d["input_size"] = [int(v) for v in self.input_size]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DetectorConfig:
        """Return the config written by :meth:`to_dict`."""
        d = dict(d)
        d["input_size"] = tuple(int(v) for v in d["input_size"])
        return cls(**d)


# ----------------------------------------------------------------------------- network


def _head(channels: int, outputs: int, bias: float = 0.0) -> nn.Sequential:
    head = nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(channels, outputs, 1)
    )
    nn.init.constant_(head[-1].bias, bias)
    return head


class SingleShotDetector(nn.Module):
    """LiteFPN trunk + three CenterNet heads at stride 4: centre heatmap per class, box size, offset."""

    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.config = config
        self.trunk = LiteFPN(config.variant, config.channels, config.pretrained)
        self.heatmap_head = _head(config.channels, config.num_classes, HEATMAP_PRIOR_BIAS)
        self.size_head = _head(config.channels, 2)
        self.offset_head = _head(config.channels, 2)

    def forward_logits(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (heatmap logits (B, C, H/4, W/4), size (B, 2, ..), offset (B, 2, ..)) for training."""
        features = self.trunk(image)
        return self.heatmap_head(features), self.size_head(features), self.offset_head(features)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (heatmap (B, C, H/4, W/4) probabilities, size (B, 2, ..), offset (B, 2, ..)) in cells.

        ``image`` (B, 3, H, W) RGB in [0, 1]. The sigmoid is inside so an exported graph outputs
        probabilities; size channels are (w, h), offset channels (x, y).
        """
        logits, size, offset = self.forward_logits(image)
        return torch.sigmoid(logits), size, offset


# ----------------------------------------------------------------------------- targets and decoding


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """Return CenterNet's Gaussian radius (cells) for a box of ``height`` x ``width`` cells.

    The smallest of CornerNet's three cases (both corners shifted inwards, outwards, or one each)
    so that the shifted box keeps IoU >= ``min_overlap``. Written as in CenterNet's code (its
    ``(b + sqrt) / 2`` roots), which the published results were trained with.
    """
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def _splat_gaussian(heatmap: np.ndarray, cx: int, cy: int, radius: int) -> None:
    """Raise (h, w) ``heatmap`` to a Gaussian of sigma (2 radius + 1) / 6 peaked 1 at (cx, cy), in place."""
    sigma = (2 * radius + 1) / 6.0
    r = np.arange(-radius, radius + 1, dtype=np.float32)
    gaussian = np.exp(-(r[None, :] ** 2 + r[:, None] ** 2) / (2 * sigma * sigma))
    h, w = heatmap.shape
    left, right = min(cx, radius), min(w - cx, radius + 1)
    top, bottom = min(cy, radius), min(h - cy, radius + 1)
    window = heatmap[cy - top : cy + bottom, cx - left : cx + right]
    patch = gaussian[radius - top : radius + bottom, radius - left : radius + right]
    np.maximum(window, patch, out=window)


@dataclass(frozen=True)
class BoxTargets:
    """Training targets of one image at stride 4 (cells): what :meth:`BoxCodec.encode` returns.

    ``heatmap`` (C, h, w) in [0, 1], 1 exactly at positive cells; ``size`` (2, h, w) box (w, h)
    and ``offset`` (2, h, w) centre minus cell, both valid where ``mask`` (h, w) is 1.
    """

    heatmap: np.ndarray
    size: np.ndarray
    offset: np.ndarray
    mask: np.ndarray


class BoxCodec:
    """Encodes boxes into CenterNet targets and decodes network maps into boxes: one object, both ways."""

    def __init__(
        self,
        num_classes: int,
        stride: int = 4,
        min_overlap: float = 0.7,
        score_threshold: float = 0.3,
        max_detections: int = 20,
    ):
        self.num_classes = num_classes
        self.stride = stride
        self.min_overlap = min_overlap
        self.score_threshold = score_threshold
        self.max_detections = max_detections

    @classmethod
    def from_config(cls, config: DetectorConfig) -> BoxCodec:
        """Return the codec of a detector config."""
        return cls(
            config.num_classes,
            config.stride,
            config.min_overlap,
            config.score_threshold,
            config.max_detections,
        )

    def encode(self, boxes_xywh, class_indices, height: int, width: int) -> BoxTargets:
        """Return the :class:`BoxTargets` of (N, 4) boxes (input px) of (N,) class indices.

        ``height`` x ``width`` is the input size in px. Boxes whose centre lies outside the input
        have no cell and are left out.
        """
        boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
        classes = np.asarray(class_indices, dtype=np.int64).reshape(-1)
        if len(boxes) != len(classes):
            raise ValueError(f"boxes_xywh/class_indices: {len(boxes)} boxes but {len(classes)} classes")
        if np.any((classes < 0) | (classes >= self.num_classes)):
            raise ValueError(f"class_indices: expected 0..{self.num_classes - 1}, got {classes.tolist()}")
        h, w = height // self.stride, width // self.stride
        heatmap = np.zeros((self.num_classes, h, w), np.float32)
        size = np.zeros((2, h, w), np.float32)
        offset = np.zeros((2, h, w), np.float32)
        mask = np.zeros((h, w), np.float32)
        # Larger boxes first, so where two centres share a cell the smaller (harder) one's size is kept.
        for i in np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable"):
            x, y, bw, bh = boxes[i] / self.stride
            if bw <= 0 or bh <= 0:
                continue
            centre = np.array([x + bw / 2, y + bh / 2])
            cell = np.floor(centre).astype(int)
            if not (0 <= cell[0] < w and 0 <= cell[1] < h):
                continue
            radius = max(0, int(gaussian_radius(math.ceil(bh), math.ceil(bw), self.min_overlap)))
            _splat_gaussian(heatmap[classes[i]], cell[0], cell[1], radius)
            size[:, cell[1], cell[0]] = (bw, bh)
            offset[:, cell[1], cell[0]] = centre - cell
            mask[cell[1], cell[0]] = 1.0
        return BoxTargets(heatmap=heatmap, size=size, offset=offset, mask=mask)

    def decode(
        self, heatmap, size, offset, score_threshold: float | None = None
    ) -> list[tuple[int, float, np.ndarray]]:
        """Return up to ``max_detections`` (class_index, score, box_xywh (4,) input px), best first.

        ``heatmap`` (C, h, w) probabilities, ``size`` and ``offset`` (2, h, w) cells (a leading
        batch axis of 1 is accepted). Peaks are cells equal to their 3x3 neighbourhood's maximum
        (CenterNet's max-pool NMS); ``score_threshold`` defaults to the codec's.
        """
        heatmap, size, offset = (np.asarray(a, dtype=np.float32) for a in (heatmap, size, offset))
        if heatmap.ndim == 4:
            heatmap, size, offset = heatmap[0], size[0], offset[0]
        threshold = self.score_threshold if score_threshold is None else score_threshold
        c, h, w = heatmap.shape
        padded = np.pad(heatmap, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        pooled = np.max([padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)
        scores = np.where((heatmap == pooled) & (heatmap >= threshold), heatmap, -1.0).reshape(-1)
        k = min(self.max_detections, scores.size)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        detections = []
        for index in top:
            if scores[index] < 0:
                break
            cls, rest = divmod(int(index), h * w)
            cy, cx = divmod(rest, w)
            bw, bh = np.maximum(size[:, cy, cx], 0.0)
            centre_x, centre_y = cx + offset[0, cy, cx], cy + offset[1, cy, cx]
            box = np.array([centre_x - bw / 2, centre_y - bh / 2, bw, bh], np.float64) * self.stride
            detections.append((cls, float(scores[index]), box))
        return detections


# ----------------------------------------------------------------------------- losses


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """Return CenterNet's penalty-reduced focal loss (Eq. 1) summed over cells / number of positives.

    ``logits`` and ``target`` (B, C, h, w); positives are cells where target == 1. log p and
    log(1 - p) come from logsigmoid, so saturated logits give finite losses and gradients.
    """
    positive = target.eq(1).float()
    log_p, log_not_p = nn.functional.logsigmoid(logits), nn.functional.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    positive_loss = positive * (1 - p) ** alpha * log_p
    negative_loss = (1 - positive) * (1 - target) ** beta * p**alpha * log_not_p
    return -(positive_loss.sum() + negative_loss.sum()) / positive.sum().clamp(min=1.0)


def detection_losses(
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    heatmap: torch.Tensor,
    size: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    size_weight: float = 0.1,
    offset_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Return {"total", "heatmap", "size", "offset"} scalar losses of ``forward_logits`` outputs.

    Targets are batched :class:`BoxTargets` fields (B, C|2, h, w) and mask (B, h, w). Size and
    offset are L1 at positive cells / number of positives; weights 0.1 and 1 as in CenterNet.
    """
    logits, size_pred, offset_pred = outputs
    mask = mask.unsqueeze(1)
    count = mask.sum().clamp(min=1.0)
    losses = {
        "heatmap": focal_loss(logits, heatmap),
        "size": ((size_pred - size).abs() * mask).sum() / count,
        "offset": ((offset_pred - offset).abs() * mask).sum() / count,
    }
    losses["total"] = losses["heatmap"] + size_weight * losses["size"] + offset_weight * losses["offset"]
    return losses


# ----------------------------------------------------------------------------- image in, detections out


def preprocess(image: np.ndarray, input_size: Sequence[int]) -> tuple[np.ndarray, float]:
    """Return (batch (1, 3, H, W) float32 RGB in [0, 1], letterbox scale) of an (H0, W0, 3) uint8 image.

    ``input_size`` is (W, H); the image is resized by one scale and zero padded right and below.
    """
    boxed, box = letterbox(np.asarray(image), int(input_size[0]), int(input_size[1]))
    batch = np.ascontiguousarray(boxed.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    return batch, box.scale


def postprocess(
    heatmap,
    size,
    offset,
    scale: float,
    objects: Sequence[ObjectModel],
    codec: BoxCodec,
    score_threshold: float | None = None,
) -> list[Detection]:
    """Return the detections (boxes in original image px, best first) of one image's network outputs.

    ``objects`` sorted by obj_id give the classes; ``scale`` is :func:`preprocess`'s.
    """
    detections = []
    for cls, score, box in codec.decode(heatmap, size, offset, score_threshold):
        if not (box[2] > 0 and box[3] > 0):  # an untrained or confused size head: no crop fits it
            continue
        obj = objects[cls]
        detections.append(
            Detection(obj_id=obj.obj_id, class_name=obj.name, score=score, box_xywh=box / scale)
        )
    return detections


class Detector:
    """Image (H, W, 3) uint8 RGB -> list[Detection]: preprocess, network (torch), postprocess.

    The three steps are separate methods so another engine (ONNX Runtime) can replace
    :meth:`estimate` and reuse the rest.
    """

    def __init__(self, model: SingleShotDetector, objects: Sequence[ObjectModel], device="cpu"):
        if len(objects) != model.config.num_classes:
            raise ValueError(
                f"objects: the detector has {model.config.num_classes} classes, got {len(objects)}"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.objects = sorted(objects, key=lambda o: o.obj_id)
        self.config = model.config
        self.codec = BoxCodec.from_config(model.config)

    @classmethod
    def from_file(cls, path, device="cpu") -> Detector:
        """Return the detector stored by :func:`save_detector` at ``path``."""
        model, objects = load_detector(path)
        return cls(model, objects, device)

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Return (batch (1, 3, H, W) float32 in [0, 1], letterbox scale); see :func:`preprocess`."""
        return preprocess(image, self.config.input_size)

    def estimate(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the network's (heatmap (1, C, h, w), size (1, 2, h, w), offset (1, 2, h, w)) as numpy."""
        with torch.inference_mode():
            outputs = self.model(torch.from_numpy(batch).to(self.device))
        return tuple(o.float().cpu().numpy() for o in outputs)

    def postprocess(self, heatmap, size, offset, scale: float, score_threshold: float | None = None):
        """Return list[Detection] in original image px; see :func:`postprocess`."""
        return postprocess(heatmap, size, offset, scale, self.objects, self.codec, score_threshold)

    def __call__(self, image: np.ndarray, score_threshold: float | None = None) -> list[Detection]:
        """Return the detections of an (H, W, 3) uint8 RGB image, best first, boxes in its pixels."""
        batch, scale = self.preprocess(image)
        return self.postprocess(*self.estimate(batch), scale, score_threshold)


# ----------------------------------------------------------------------------- checkpoints and export


def detector_to_dict(
    model: SingleShotDetector, objects: Sequence[ObjectModel], history: dict | None = None
) -> dict:
    """Return the checkpoint as plain types: format, config, objects, float16 state dict, history.

    float16 halves the file; weights are cast back to float32 on load (< 1e-3 relative change).
    Object points are thinned to 1000 (the box is kept): the detector only needs ids and names.
    """
    objects = sorted(objects, key=lambda o: o.obj_id)
    state = {
        k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().clone()
        for k, v in model.state_dict().items()
    }
    compact = [
        object_to_dict(o) | {"points": compact_points(o.points).astype(np.float32).tolist()} for o in objects
    ]
    return {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "objects": compact,
        "state_dict": state,
        # JSON text: history may hold any plain numbers and lists, and weights_only loading accepts a str.
        "history": json.dumps(history or {}),
    }


def detector_from_dict(d: dict, where: str = "checkpoint") -> tuple[SingleShotDetector, list[ObjectModel]]:
    """Return (SingleShotDetector in eval mode, objects sorted by obj_id) of a checkpoint dict."""
    if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
        found = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise ValueError(
            f"{where}: not a detector checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    try:
        # The weights come from the checkpoint: skip reading the ImageNet file.
        config = DetectorConfig.from_dict(d["config"] | {"pretrained": False})
        objects = [object_from_dict(o) for o in d["objects"]]
        model = SingleShotDetector(config)
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in d["state_dict"].items()}
        )
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{where}: detector checkpoint incomplete ({exc})") from exc
    if len(objects) != config.num_classes:
        raise ValueError(f"{where}: {len(objects)} objects for {config.num_classes} classes")
    model.config = DetectorConfig.from_dict(d["config"])
    return model.eval(), objects


def save_detector(
    path, model: SingleShotDetector, objects: Sequence[ObjectModel], history: dict | None = None
) -> Path:
    """Write the detector checkpoint to ``path`` (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(detector_to_dict(model, objects, history), tmp)
    os.replace(tmp, path)
    return path


def load_detector(path) -> tuple[SingleShotDetector, list[ObjectModel]]:
    """Return (SingleShotDetector in eval mode, objects) stored at ``path`` (a detector
    checkpoint, or a crops weights file whose detector part is taken).

    A missing or unreadable file raises ValueError naming it.
    """
    d = read_torch_file(path, "detector checkpoint")
    if isinstance(d, dict) and d.get("estimator") == "crops" and "detector" in d:
        d = d["detector"]  # the detector part of a crops weights file (fine-tuning shipped weights)
    return detector_from_dict(d, str(path))


def detector_history(path) -> dict:
    """Return the training history stored in the checkpoint at ``path``."""
    return json.loads(torch.load(Path(path), map_location="cpu", weights_only=True)["history"])


def export_detector_onnx(model: SingleShotDetector, path, input_size: Sequence[int] | None = None) -> Path:
    """Write ``model`` as ONNX (opset 17, fixed (1, 3, H, W) input "image"; outputs heatmap, size, offset)."""
    width, height = input_size or model.config.input_size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dummy = torch.zeros(1, 3, int(height), int(width))
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["heatmap", "size", "offset"],
    )
    return path
