"""Render-and-compare pose refinement (DeepIM, CosyPose's refiner) on scale-normalised crops.

A network sees two images of the same square crop: the camera's pixels and the object rendered
at the current pose estimate with the crop's intrinsics. It predicts the correction that moves the
rendering onto the object, in CosyPose's parameterisation (Labbé et al., ECCV 2020, Sec. 3.3):

- rotation: R' = R_delta @ R, R_delta from a 6D output (Zhou et al.), so it composes in the camera frame;
- depth: z' = exp(v_z) z, independent of where the crop lies;
- image position: x'/z' = v_x / f_x + x / z (and y), a shift in crop pixels, independent of depth.

Each step re-crops around the new estimate's projected box, so the network always sees the object
at one scale (the same 128 px, 1.5 x box crop as the keypoint network). Rendering ignores lens
distortion: refine on rectified images (``image_rect``), as the rest of the package expects.

The network: the keypoint network's ImageNet-pretrained EfficientNet-Lite0 with a 6-channel stem
(both halves start from the RGB stem's weights, halved), its stride-32 map (4 x 4 cells at 128 px)
reduced by a 1x1 convolution and flattened, so the head keeps where things are in the crop
(CosyPose pools globally), then two linear layers. The last layer starts at zero with the identity
update as its bias: an untrained refiner returns its input.

An optional score head (``score=True``) reads the same stride-32 map through its own 1x1
reduction and two linear layers into a 10th output: the logit that the pose the network was given
is within 0.1 d (training/train_scorer.py ``--head``, trained on the frozen refiner). The score of
a pose then costs no second network: a separate scorer (``SCORER_FORMAT``) is a whole Lite0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from hrpose_ros.backbones import lite_backbone
from hrpose_ros.checkpoints import read_torch_file
from hrpose_ros.crops import Crop, crop_around_box, crop_images
from hrpose_ros.geometry import disturb_pose, projected_box
from hrpose_ros.types import ObjectModel

__all__ = [
    "HYPOTHESIS_MARGIN",
    "REFINER_FORMAT",
    "REFINER_PADDING",
    "REFINER_SIZE",
    "SCORER_FORMAT",
    "PoseRefiner",
    "RefinerNet",
    "TorchRefinerEngine",
    "crop_intrinsics",
    "disturb_pose",
    "load_refiner",
    "orthonormal",
    "pair_tensor",
    "pose_crop",
    "render_batch",
    "refiner_from_dict",
    "refiner_inputs",
    "refiner_to_dict",
    "rotation_from_6d",
    "sane_steps",
    "translation",
    "update_poses",
]

REFINER_SIZE = 128
REFINER_PADDING = 1.5
SHIFT_PX = 10.0  # the network's x/y outputs are in units of 10 crop px (errors are a few px to tens)
DEPTH_SCALE = 0.1  # its depth output is 10 x the log depth ratio (errors are a few %)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0)
# A hypothesis replaces the refined pose when the scorer rates it this many logits higher (chosen on
# data/val among 0-3: at 0 a right pose is given up for a wrong one too often).
HYPOTHESIS_MARGIN = 0.5


def pose_crop(obj: ObjectModel, R, t, K, size: int = REFINER_SIZE, padding: float = REFINER_PADDING) -> Crop:
    """Return the square crop around the box of ``obj``'s points projected at R, t (``padding`` x side)."""
    x, y, w, h = projected_box(obj.points, R, t, K)
    return crop_around_box((x, y, max(w, 1.0), max(h, 1.0)), size, padding)


def crop_intrinsics(crop: Crop, K) -> np.ndarray:
    """Return the 3x3 intrinsics of the camera that sees exactly ``crop`` (image K, then the crop map)."""
    return np.vstack([crop.matrix(), [0.0, 0.0, 1.0]]) @ np.asarray(K, dtype=np.float64)


def render_batch(renderer, poses: Sequence, Ks: Sequence) -> np.ndarray:
    """Return (N, S, S, 3) uint8: each (obj_id, R, t) rendered alone with its crop intrinsics."""
    out = np.zeros((len(poses), renderer.height, renderer.width, 3), np.uint8)
    for n, (pose, K) in enumerate(zip(poses, Ks)):
        out[n] = renderer.render(K, [pose], full_masks=False).rgb
    return out


def rotation_from_6d(r6: torch.Tensor) -> torch.Tensor:
    """(B, 6) -> (B, 3, 3) by Gram-Schmidt (torch twin of geometry.matrix_from_rotation_6d)."""
    a1, a2 = r6[:, 0:3], r6[:, 3:6]
    b1 = nn.functional.normalize(a1, dim=1)
    b2 = nn.functional.normalize(a2 - (b1 * a2).sum(1, keepdim=True) * b1, dim=1)
    return torch.stack([b1, b2, torch.cross(b1, b2, dim=1)], dim=-1)


def update_poses(output: torch.Tensor, R: torch.Tensor, t: torch.Tensor, K_crop: torch.Tensor):
    """Apply the network's (B, 9) ``output`` to poses R (B, 3, 3), t (B, 3) seen with K_crop (B, 3, 3).

    Returns (R' (B, 3, 3), x'/z' and y'/z' (B, 2), z' (B, 1)); :func:`translation` joins the last
    two. The training loss scores the three parts apart (CosyPose's disentangled loss).
    """
    R_new = rotation_from_6d(output[:, :6]) @ R
    z = t[:, 2:3]
    ratio = torch.exp(output[:, 8:9] * DEPTH_SCALE)
    f = torch.stack([K_crop[:, 0, 0], K_crop[:, 1, 1]], dim=1)
    xy_over_z = output[:, 6:8] * SHIFT_PX / f + t[:, :2] / z
    return R_new, xy_over_z, z * ratio


def translation(xy_over_z: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(B, 2) image-plane direction and (B, 1) depth -> (B, 3) translation."""
    return torch.cat([xy_over_z * z, z], dim=1)


class RefinerNet(nn.Module):
    """(B, 6, S, S) [image crop, rendering] in [0, 1] -> (B, 9) pose update (module docstring), with
    ``score`` (B, 10): the update and the logit that the given pose is right (within 0.1 d); with
    ``outputs`` 1 the separate scorer's logit."""

    def __init__(self, variant: str = "lite0", pretrained: bool = True, size: int = REFINER_SIZE,
                 outputs: int = 9, score: bool = False):
        super().__init__()
        self.backbone = lite_backbone(variant, pretrained, out_indices=(4,))
        stem = self.backbone.conv_stem
        weight = stem.weight.detach()
        six = type(stem)(6, stem.out_channels, stem.kernel_size, stride=stem.stride, bias=False)
        with torch.no_grad():
            six.weight.copy_(torch.cat([weight, weight], dim=1) * 0.5)
        self.backbone.conv_stem = six
        channels = self.backbone.feature_info.channels()[-1]
        cells = size // 32
        grid = min(cells, REFINER_SIZE // 32)
        # Larger inputs keep the head of a 128 px refiner: a stride-1 average over the stride-32 map
        # brings it to 4 x 4 cells (ONNX-exportable, unlike an adaptive pool of 6 to 4), so a
        # refiner trained at 128 px starts a larger one with all its weights.
        self.pool = nn.AvgPool2d(cells - grid + 1, stride=1) if cells > grid else nn.Identity()
        self.size = int(size)
        self.reduce = nn.Sequential(nn.Conv2d(channels, 64, 1), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * grid * grid, 256), nn.ReLU(inplace=True), nn.Linear(256, outputs)
        )
        nn.init.zeros_(self.head[-1].weight)
        with torch.no_grad():  # a pose update starts as the identity, a score (1 output) at 0
            self.head[-1].bias.copy_(torch.tensor(IDENTITY) if outputs == 9 else torch.zeros(outputs))
        self.score_head = None
        if score:
            self.score_head = nn.Sequential(
                nn.Conv2d(channels, 64, 1), nn.ReLU(inplace=True), nn.Flatten(),
                nn.Linear(64 * grid * grid, 256), nn.ReLU(inplace=True), nn.Linear(256, 1),
            )
            nn.init.zeros_(self.score_head[-1].weight)
            nn.init.zeros_(self.score_head[-1].bias)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        # timm's Lite weights expect mean 0.5, std 0.5 per channel
        features = self.pool(self.backbone((pair - 0.5) / 0.5)[-1])
        out = self.head(self.reduce(features))
        if self.score_head is None:
            return out
        return torch.cat([out, self.score_head(features)], dim=1)

    def pose_parameters(self) -> list:
        """The parameters of the pose update (all but the score head's)."""
        return [p for name, p in self.named_parameters() if not name.startswith("score_head.")]


def refiner_inputs(image: np.ndarray, renderer, objects: dict, poses: Sequence, K) -> tuple:
    """Return (pairs (N, 6, S, S) float tensor, crop intrinsics (N, 3, 3)) for ``poses`` [(obj_id, R, t)]
    in ``image``."""
    crops, Ks = [], []
    for obj_id, R, t in poses:
        crop = pose_crop(objects[obj_id], R, t, K, renderer.width)
        crops.append(crop)
        Ks.append(crop_intrinsics(crop, K))
    return pair_tensor(crop_images(image, crops), renderer, poses, Ks), np.stack(Ks)


def pair_tensor(real: np.ndarray, renderer, poses: Sequence, Ks: Sequence) -> torch.Tensor:
    """Return the (N, 6, S, S) network input in [0, 1]: ``real`` crops (N, S, S, 3) uint8 beside
    ``poses`` [(obj_id, R, t)] rendered with the crop intrinsics ``Ks``."""
    pair = np.concatenate([real, render_batch(renderer, poses, Ks)], axis=3)
    return torch.from_numpy(pair).permute(0, 3, 1, 2).float().div_(255.0)


REFINER_FORMAT = "hrpose_ros.refiner/1"
SCORER_FORMAT = "hrpose_ros.scorer/1"
_OUTPUTS = {REFINER_FORMAT: 9, SCORER_FORMAT: 1}


def refiner_to_dict(model: RefinerNet, variant: str, object_ids, history: dict | None = None,
                    kind: str = REFINER_FORMAT) -> dict:
    """Return the refiner's (or with ``kind`` SCORER_FORMAT the scorer's) part of a weights file (fp16
    weights; loaded back as fp32)."""
    return {
        "format": kind,
        "variant": variant,
        "size": model.size,
        "object_ids": [int(i) for i in object_ids],
        "score": model.score_head is not None,
        "history": dict(history or {}),
        "state_dict": {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
    }


def refiner_from_dict(d: dict, where: str = "refiner", kind: str = REFINER_FORMAT) -> RefinerNet:
    """Return the RefinerNet of :func:`refiner_to_dict`'s ``d`` (ValueError naming ``where`` if not one
    of ``kind``: REFINER_FORMAT or SCORER_FORMAT)."""
    name = "a refiner" if kind == REFINER_FORMAT else "a pose scorer"
    if not isinstance(d, dict) or d.get("format") != kind:
        found = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{where}: not {name} (format {found!r}, expected {kind!r})")
    model = RefinerNet(d["variant"], pretrained=False, size=int(d["size"]), outputs=_OUTPUTS[kind],
                       score=bool(d.get("score", False)))
    state = {k: v.float() if v.is_floating_point() else v for k, v in d["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{where}: weights do not fit a {d['variant']} refiner ({exc})") from exc
    return model.eval()


def load_refiner(path, check: bool = True, kind: str = REFINER_FORMAT) -> dict:
    """Return the refiner dict stored at ``path`` (a refiner.pt of training/train_refiner.py; with
    ``kind`` SCORER_FORMAT a scorer.pt of training/train_scorer.py).

    ``check`` builds the network once, so a bad file fails where it is named; a caller that builds
    it right away with :func:`refiner_from_dict` (naming ``path``) passes False and builds it once.
    """
    d = read_torch_file(path, "refiner" if kind == REFINER_FORMAT else "scorer", weights_only=False)
    if check:
        refiner_from_dict(d, str(path), kind)
    return d


class TorchRefinerEngine:
    """A RefinerNet in torch as an engine: (N, 6, S, S) float32 numpy -> ((N, 9) float32,), with a
    score head (N, 10)."""

    def __init__(self, model: RefinerNet, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.size = model.size

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray]:
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return (out.float().cpu().numpy(),)


class PoseRefiner:
    """Refines ObjectPoses in their image: ``iterations`` render-and-compare steps each.

    ``engine``: the network, (N, 6, S, S) float32 -> ((N, 9),), or ((N, 10),) with a score head
    (:class:`TorchRefinerEngine` or an ONNX Runtime engine of the exported network); ``size`` its
    crop side S. The renderer (an EGL context) is made on first use: a renderer makes its context
    current for each call, so any thread may refine.

    With a ``scorer`` engine ((N, 6, S, S) -> ((N, 1),), or a scored refiner's ((N, 10),); the last
    column is the logit that a pose is within 0.1 d: training/train_scorer.py) and ``hypotheses``
    > 0, each pose is also started again from that many copies of its input disturbed at half the
    refiner's training sigmas, each refined ``hypothesis_steps`` steps; the best-scoring copy
    replaces the refined pose when it scores ``margin`` logits higher. Only poses scoring below
    ``gate`` (a logit; default: all) get copies. The copies are drawn from a fixed seed: the same
    input gives the same poses.
    """

    def __init__(self, engine, size: int, objects, iterations: int = 1, scorer=None, hypotheses: int = 0,
                 hypothesis_steps: int = 2, margin: float = HYPOTHESIS_MARGIN, gate: float = math.inf):
        if int(iterations) < 0:
            raise ValueError(f"refine_iterations: expected >= 0, got {iterations}")
        if int(hypotheses) < 0 or (int(hypotheses) > 0 and scorer is None):
            raise ValueError(f"hypotheses: expected 0, or > 0 with a pose scorer, got {hypotheses}"
                             f"{'' if scorer is not None else ' without a scorer'}")
        if int(hypothesis_steps) < 1:
            raise ValueError(f"hypothesis_steps: expected >= 1, got {hypothesis_steps}")
        self.engine = engine
        self.size = int(size)
        self.objects = {int(o.obj_id): o for o in objects}
        self.iterations = int(iterations)
        self.scorer = scorer
        self.hypotheses = int(hypotheses)
        self.hypothesis_steps = int(hypothesis_steps)
        self.margin = float(margin)
        self.gate = float(gate)
        self._renderer = None

    def _render_ready(self):
        if self._renderer is None:
            from hrpose_ros.render import Renderer

            self._renderer = Renderer(list(self.objects.values()), self.size, self.size)
        return self._renderer

    def refine(self, image: np.ndarray, camera, poses: list) -> list:
        """Return ``poses`` (ObjectPose) with R, t refined in ``image`` (H, W, 3) uint8 seen by ``camera``."""
        if not poses or self.iterations == 0:
            return list(poses)
        R0 = np.stack([p.R for p in poses]).astype(np.float64)
        t0 = np.stack([p.t for p in poses]).astype(np.float64)
        ids = [int(p.obj_id) for p in poses]
        R, t = self._steps(image, camera, ids, R0.copy(), t0.copy(), self.iterations)
        if self.hypotheses:
            R, t = self._best_of_hypotheses(image, camera, ids, R0, t0, R, t)
        return [replace(p, R=R[n], t=t[n]) for n, p in enumerate(poses)]

    def _steps(self, image, camera, ids, R, t, steps: int):
        """Return (R, t) after ``steps`` refiner steps; a step :func:`sane_steps` refuses keeps its pose."""
        renderer = self._render_ready()
        for _ in range(steps):
            pair, Ks = refiner_inputs(image, renderer, self.objects, list(zip(ids, R, t)), camera.K)
            R_new, xy_over_z, z_new = update_poses(
                torch.from_numpy(self.engine(pair.numpy())[0]),
                torch.from_numpy(R).float(),
                torch.from_numpy(t).float(),
                torch.from_numpy(Ks).float(),
            )
            R_next = orthonormal(R_new.double().numpy())
            t_next = translation(xy_over_z, z_new).double().numpy()
            sane = sane_steps(t, t_next)
            R[sane], t[sane] = R_next[sane], t_next[sane]
        return R, t

    def _scores(self, image, camera, ids, R, t) -> np.ndarray:
        pair, _ = refiner_inputs(image, self._render_ready(), self.objects, list(zip(ids, R, t)), camera.K)
        # a scorer's (N, 1) logit, or a scored refiner's 10th output
        return np.asarray(self.scorer(pair.numpy())[0], np.float64)[:, -1]

    def _best_of_hypotheses(self, image, camera, ids, R0, t0, R, t):
        rng = np.random.default_rng(0)
        count = self.hypotheses
        # every pose draws its copies, gated or not, so a pose's copies do not depend on the others'
        starts = [[disturb_pose(R0[n], t0[n], self.objects[i].diameter, rng, scale=0.5) for _ in range(count)]
                  for n, i in enumerate(ids)]
        kept = self._scores(image, camera, ids, R, t)
        doubtful = np.flatnonzero(kept < self.gate)
        if not len(doubtful):
            return R, t
        ids_h = [ids[n] for n in doubtful for _ in range(count)]
        R_h, t_h = self._steps(image, camera, ids_h, np.stack([s[0] for n in doubtful for s in starts[n]]),
                               np.stack([s[1] for n in doubtful for s in starts[n]]), self.hypothesis_steps)
        scores = self._scores(image, camera, ids_h, R_h, t_h).reshape(len(doubtful), count)
        best = scores.argmax(axis=1)
        R, t = R.copy(), t.copy()
        for k, (n, b) in enumerate(zip(doubtful, best)):
            if scores[k, b] > kept[n] + self.margin:
                R[n], t[n] = R_h[k * count + b], t_h[k * count + b]
        return R, t

    def release(self) -> None:
        if self._renderer is not None:
            self._renderer.release()
            self._renderer = None


def sane_steps(t: np.ndarray, t_next: np.ndarray) -> np.ndarray:
    """(N,) bool: the steps from translations ``t`` to ``t_next`` (N, 3) to keep. A step that halves
    or doubles the distance left the regime the refiner was trained in (a few per cent): that
    instance keeps its last pose."""
    ratio = t_next[:, 2] / t[:, 2]
    return np.isfinite(t_next).all(axis=1) & (ratio > 0.5) & (ratio < 2.0)


def orthonormal(R: np.ndarray) -> np.ndarray:
    """Nearest rotations (SVD) of float32-rounded (N, 3, 3) matrices.

    numpy's batched SVD gives the nearest rotation (Frobenius) directly, without the quaternion
    round trip of scipy's Rotation.from_matrix."""
    u, _, vt = np.linalg.svd(R)
    d = np.sign(np.linalg.det(u @ vt))
    u[:, :, -1] *= d[:, None]
    return u @ vt
