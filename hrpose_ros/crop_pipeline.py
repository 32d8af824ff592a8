"""The crop estimator: detector -> square crops -> keypoint network -> shared PnP, and its weights file.

Two halves, as the node runs them on two threads (:meth:`CropPosePipeline.estimate_maps`, the
networks; :meth:`CropPosePipeline.poses_from_maps`, decoding and PnP). Crops of one frame go
through the keypoint network as one batch.

A crops weights file is a ``torch.save`` of plain types: ``{"format": CROPS_FORMAT, "estimator":
"crops", "detector": {...}, "keypoints": {...}, "thresholds": {...}}``; each network part holds its
config, objects
and fp16 weights, so the file alone builds the estimator. For ONNX Runtime each network is
exported once into the cache (``~/.cache/hrpose_ros``), named by the file's content hash.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from hrpose_ros.checkpoints import compact_points, object_from_dict, object_to_dict, read_torch_file
from hrpose_ros.codec import DecodedInstance
from hrpose_ros.crop_keypoints import (
    CropKeypointConfig,
    CropKeypointNet,
    coordinate_frame,
    decode_coordinates,
    decode_heatmaps,
    decode_votes,
)
from hrpose_ros.crops import Crop, crop_around_box, crop_images
from hrpose_ros.detector import BoxCodec, detector_from_dict, postprocess, preprocess
from hrpose_ros.devices import parse_device, resolve_device
from hrpose_ros.engines import OnnxEngine
from hrpose_ros.geometry import model_keypoints, projected_box
from hrpose_ros.onnx_export import model_cache_dir
from hrpose_ros.pose_solver import PoseSolver, PoseThresholds, split_thresholds
from hrpose_ros.refiner import SCORER_FORMAT, load_refiner
from hrpose_ros.types import CameraModel, Detection, ObjectModel, ObjectPose, checked_image

__all__ = [
    "CROPS_FORMAT",
    "DECODING_OPTIONS",
    "DEFAULT_CROPS_WEIGHTS",
    "CropInference",
    "CropPosePipeline",
    "is_crops_file",
    "keypoint_outputs",
    "keypoints_from_dict",
    "keypoints_to_dict",
    "load_crops_file",
    "save_crops_file",
]

CROPS_FORMAT = "hrpose_ros/crops-1"
# Decoding options a crops file may store beside its PoseThresholds fields.
DECODING_OPTIONS = ("drop_keypoints", "correspondences", "box_depth_weight", "refine_iterations", "recrop",
                    "hypotheses", "hypothesis_gate")
# What PnP fits with a coordinate head: the keypoints, the dense object coordinates, or both.
CORRESPONDENCES = ("keypoints", "coordinates", "both")
DEFAULT_CROPS_WEIGHTS = Path(__file__).resolve().parent / "assets" / "weights" / "crops_lite0.pt"
DEFAULT_OBJECTS_DIR = Path(__file__).resolve().parent / "assets" / "objects"
DEFAULT_REFINE_ITERATIONS = 2


def keypoints_to_dict(
    model: CropKeypointNet, objects: list[ObjectModel], history: dict | None = None
) -> dict:
    """Return the keypoint network as plain types (config, objects, 3D keypoints, fp16 weights, history).

    The 3D keypoints are the model's own (set by training or loading) or else computed from
    ``objects``' points; they are stored because surface keypoints depend on every model point
    and the file keeps only a sample.
    """
    keypoints_3d = model.keypoints_3d
    if keypoints_3d is None:
        keypoints_3d = np.stack([model_keypoints(o.points, model.config.keypoints) for o in objects])
    return {
        "kind": "crop_keypoints",
        "config": model.config.to_dict(),
        "keypoints_3d": np.asarray(keypoints_3d, dtype=np.float64).tolist(),
        # PnP uses the stored keypoints_3d; the ADD metrics need only a sample of the points.
        "objects": [
            object_to_dict(o) | {"points": compact_points(o.points).astype(np.float32).tolist()}
            for o in objects
        ],
        "state_dict": {
            k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().clone()
            for k, v in model.state_dict().items()
        },
        "history": history or {},
    }


def keypoints_from_dict(d: dict, where: str = "keypoints") -> tuple[CropKeypointNet, list[ObjectModel], dict]:
    """Return (CropKeypointNet in eval mode, objects in class order, history) of :func:`keypoints_to_dict`."""
    if not isinstance(d, dict) or d.get("kind") != "crop_keypoints":
        found = d.get("kind") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{where}: not a crop keypoint network (kind {found!r})")
    try:
        config = CropKeypointConfig(**{**d["config"], "pretrained": False})  # the weights come from the file
        model = CropKeypointNet(config)
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in d["state_dict"].items()}
        )
        objects = [object_from_dict(o) for o in d["objects"]]
        if "keypoints_3d" in d:
            keypoints_3d = np.asarray(d["keypoints_3d"], dtype=np.float64)
        elif config.keypoints == "box":  # files before stored keypoints: the compact points keep the box
            keypoints_3d = np.stack([model_keypoints(o.points, "box") for o in objects])
        else:
            raise KeyError("keypoints_3d")
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{where}: keypoint network incomplete ({exc})") from exc
    expected = (len(objects), config.num_keypoints, 3)
    if keypoints_3d.shape != expected:
        raise ValueError(f"{where}: keypoints_3d has shape {keypoints_3d.shape}, expected {expected}")
    model.config = CropKeypointConfig(**d["config"])
    model.keypoints_3d = keypoints_3d
    return model.eval(), objects, dict(d.get("history", {}))


def save_crops_file(
    path, detector: dict, keypoints: dict, thresholds: dict | None = None, refiner: dict | None = None
) -> Path:
    """Write the crops weights file (``detector_to_dict`` + ``keypoints_to_dict`` parts) atomically.

    ``thresholds``: PoseThresholds fields chosen for these weights on a validation split (the
    estimator's defaults; arguments given to ``from_pretrained`` still win). ``refiner``: an
    optional ``refiner_to_dict`` part (render-and-compare refinement of the poses).
    """
    # names and values checked before anything is written
    _, decoding = split_thresholds(thresholds or {}, DECODING_OPTIONS)
    _check_drop(decoding.get("drop_keypoints", 0), CropKeypointConfig(**keypoints["config"]).num_keypoints)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {"format": CROPS_FORMAT, "estimator": "crops", "detector": detector, "keypoints": keypoints,
         "thresholds": dict(thresholds or {}), **({"refiner": refiner} if refiner is not None else {})}, tmp
    )
    os.replace(tmp, path)
    return path


def _load(path: Path) -> dict:
    return read_torch_file(path, "weights", weights_only=False)


def is_crops_file(path) -> bool:
    """Return True when ``path`` is a crops weights file (False for HRPose checkpoints and ONNX files)."""
    path = Path(path)
    if path.suffix == ".onnx" or not path.is_file():
        return False
    try:  # memory-mapped: only the format key is read, the weights stay on disk
        d = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # not torch's zip format: the full load says what is wrong
        d = _load(path)
    return isinstance(d, dict) and d.get("format") == CROPS_FORMAT


def load_crops_file(path):
    """Return (detector model, keypoint model, objects, file dict) of the crops weights file at ``path``."""
    path = Path(path)
    d = _load(path)
    if not isinstance(d, dict) or d.get("format") != CROPS_FORMAT:
        found = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{path}: not a crops weights file (format {found!r}, expected {CROPS_FORMAT!r})")
    detector, det_objects = detector_from_dict(d["detector"], f"{path} detector")
    keypoints, objects, _ = keypoints_from_dict(d["keypoints"], f"{path} keypoints")
    if [o.obj_id for o in det_objects] != [o.obj_id for o in objects]:
        raise ValueError(f"{path}: the detector and the keypoint network know other objects")
    return detector, keypoints, objects, d


def _check_drop(drop, num_keypoints: int) -> int:
    """Return ``drop`` as an int after checking PnP keeps at least 6 keypoints (ValueError otherwise)."""
    limit = max(num_keypoints - 6, 0)
    if isinstance(drop, bool) or not isinstance(drop, (int, np.integer)) or not 0 <= drop <= limit:
        raise ValueError(f"drop_keypoints: expected an integer from 0 to {limit} "
                         f"(PnP keeps at least 6 of {num_keypoints} keypoints), got {drop!r}")
    return int(drop)


class _TorchModule:
    """Run a module in torch (eval, inference_mode) on a device; numpy in, tuple of float32 numpy out."""

    def __init__(self, module: torch.nn.Module, device: str, outputs: int):
        self.device = parse_device(device)
        self.module = module.eval().to(self.device)
        self.outputs = outputs

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
        return tuple(o.float().cpu().numpy() for o in out[: self.outputs])


def _export(
    module: torch.nn.Module, target: Path, size: tuple[int, int], outputs: list[str], batch_axis: bool,
    channels: int = 3,
):
    """Export ``module`` to ONNX at ``target`` (legacy exporter, opset 17, weights embedded)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.stem + f".{os.getpid()}.tmp.onnx")
    axes = {name: {0: "batch"} for name in ["image", *outputs]} if batch_axis else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module.eval(),
            (torch.zeros(1, channels, size[1], size[0]),),
            str(tmp),
            input_names=["image"],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
            external_data=False,
        )
    os.replace(tmp, target)


@functools.lru_cache(maxsize=8)
def _cache_stem(path: Path, mtime_ns: int, size: int) -> str:
    """``{stem}-{content digest}`` naming a weights file's ONNX exports; cached per file version, as
    the detector, keypoint and refiner exports of one 20 MB file all need it."""
    return f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"


def cache_stem(path: Path) -> str:
    stat = path.stat()
    return _cache_stem(path.resolve(), stat.st_mtime_ns, stat.st_size)


def export_crops_onnx(path, cache_dir=None) -> tuple[Path, Path]:
    """Return (detector .onnx, keypoint .onnx) of the crops file at ``path``, exported once into the cache."""
    path = Path(path)
    root, stem = model_cache_dir(cache_dir), cache_stem(path)
    det_path = root / f"{stem}-detector.onnx"
    kp_path = root / f"{stem}-keypoints.onnx"
    if not (det_path.is_file() and kp_path.is_file()):
        detector, keypoints, _, _ = load_crops_file(path)
        _export(detector, det_path, detector.config.input_size, ["heatmap", "size", "offset"], False)
        size = keypoints.config.crop_size
        names = keypoint_outputs(keypoints.config)
        _export(_HeatmapsOnly(keypoints), kp_path, (size, size), names, True)
    return det_path, kp_path


def keypoint_outputs(config: CropKeypointConfig) -> list[str]:
    """Return the keypoint network's run-time output names (its ONNX outputs, in order)."""
    return ["heatmaps"] + ["coordinates"] * config.coordinates + ["extremes"] * config.extremes


class _HeatmapsOnly(torch.nn.Module):
    """The keypoint network without its feature output (heatmaps, and coordinates when it has them)."""

    def __init__(self, model: CropKeypointNet):
        super().__init__()
        self.model = model

    def forward(self, crops):
        out = self.model(crops)
        return tuple(o for o in (out.heatmaps, out.coordinates, out.extremes) if o is not None)


def _extreme_box(points: np.ndarray) -> np.ndarray:
    """Return (x0, y0, x1, y1) px of the extreme points (4, 2): leftmost, rightmost, topmost, bottommost."""
    return np.array([points[0, 0], points[2, 1], points[1, 0], points[3, 1]])


@dataclass(frozen=True)
class CropInference:
    """One frame's network work: detections (image px), crops, keypoint outputs (N, P, h, w), timings."""

    detections: list[Detection]
    crops: list[Crop]
    class_indices: np.ndarray
    heatmaps: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    coordinates: np.ndarray | None = None  # (N, 4, h, w) of each crop's class, with a coordinate head
    extremes: np.ndarray | None = None  # (N, 4, h, w) extreme-point logits of each crop's class
    image: np.ndarray | None = None  # the frame, for the refiner and the second keypoint pass


class _Engines:
    """The two engines behind one description (what pose_node logs)."""

    def __init__(self, detector, keypoints, description: str, precision: str = "fp32"):
        self.detector, self.keypoints = detector, keypoints
        self.description = description
        self.precision = precision


class CropPosePipeline:
    """Image (H, W, 3) uint8 RGB + CameraModel -> list[ObjectPose]: detector, crops, keypoints, PnP."""

    estimator = "crops"

    def __init__(
        self,
        detector_engine,
        keypoint_engine,
        detector_config,
        keypoint_config: CropKeypointConfig,
        objects: list[ObjectModel],
        thresholds: PoseThresholds | None = None,
        detection_threshold: float | None = None,
        description: str = "torch fp32 on cpu",
        keypoints_3d=None,
        drop_keypoints: int = 0,
        correspondences: str | None = None,
        box_depth_weight: float = 0.0,
        refiner=None,
        recrop: bool = False,
    ):
        """``keypoints_3d``: per object the (K, 3) points the heatmaps locate (default: box corners
        + centre). ``drop_keypoints``: PnP leaves out that many keypoints per crop, the least
        confident (a spread-out heatmap is the usual sign of a wrong keypoint). ``correspondences``
        (a network with a coordinate head; default "both"): what PnP fits, one of CORRESPONDENCES.
        ``box_depth_weight`` (a network with an extreme-point head): how much the distance follows
        the box of the predicted extreme points (PoseSolver's ``box_depth_weight``). ``refiner``: a
        :class:`hrpose_ros.refiner.PoseRefiner` run on the accepted poses (stage "refine").
        ``recrop``: a second keypoint pass on crops around each pose's projected model (stage
        "recrop"): the network was trained on crops around amodal boxes, and a detector box of a
        partly hidden object is its visible part, off-centre and too small."""
        self.engine = _Engines(detector_engine, keypoint_engine, description)
        self.detector_config = detector_config
        self.keypoint_config = keypoint_config
        self.box_codec = BoxCodec.from_config(detector_config)
        self.objects = list(objects)
        self.thresholds = thresholds if thresholds is not None else PoseThresholds()
        if box_depth_weight and not keypoint_config.extremes:
            raise ValueError("box_depth_weight: the keypoint network has no extreme-point head")
        self.solver = PoseSolver(self.objects, self.thresholds, keypoints_3d, box_depth_weight)
        self.keypoints_3d = self.solver.keypoints_3d
        self.detection_threshold = (
            detection_threshold if detection_threshold is not None else detector_config.score_threshold
        )
        self.input_size = tuple(int(v) for v in detector_config.input_size)
        self.drop_keypoints = _check_drop(drop_keypoints, keypoint_config.num_keypoints)
        if correspondences is None:
            correspondences = "both" if keypoint_config.coordinates else "keypoints"
        if correspondences not in CORRESPONDENCES or (
            correspondences != "keypoints" and not keypoint_config.coordinates
        ):
            raise ValueError(
                f"correspondences: expected one of {CORRESPONDENCES} ('keypoints' for a network without "
                f"a coordinate head), got {correspondences!r}"
            )
        self.correspondences = correspondences
        self.coordinate_frames = [coordinate_frame(o.points) for o in self.objects]
        self.refiner = refiner
        self.recrop_poses = bool(recrop)
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_pretrained(
        cls,
        path=None,
        backend: str = "torch",
        device: str = "auto",
        precision: str = "fp32",
        input_size=None,
        refiner=None,
        refiner_models=None,
        scorer=None,
        **thresholds,
    ) -> CropPosePipeline:
        """Return the crop estimator of the crops weights file at ``path`` (None = the shipped default).

        ``backend`` "torch" or "onnxruntime" (each network exported once into the cache);
        ``device`` "auto" takes a GPU where the backend can use one. ``thresholds``: PoseThresholds
        fields and ``drop_keypoints``. The detector keeps its file's score threshold (its recall and
        AP were measured at it); ``min_score`` then drops poses of detections scoring below it, when
        it is higher.
        ``input_size`` is HRPose's whole-frame input and is refused here: the detector's input is
        fixed by its file.
        ``refiner``: a refiner.pt (training/train_refiner.py) to refine the poses with, in place of
        the one the file holds; ``refine_iterations`` (a threshold-like option, 0 = off) its steps.
        The refiner renders the objects' meshes: those of ``refiner_models`` (a BOP models folder),
        by default the package's own objects.
        ``hypotheses`` (a threshold-like option, 0 = off, the default): each pose is started again
        from that many disturbed copies and the best-scoring kept (:class:`hrpose_ros.refiner.PoseRefiner`;
        ``hypothesis_gate``: only poses whose refined pose scores below this logit get copies),
        scored by the refiner's own score head when it has one, or by ``scorer``, a scorer.pt
        (training/train_scorer.py), which wins when given.
        """
        if input_size is not None:
            raise ValueError("input_size: the crop estimator's detector input is set by its weights file")
        if precision not in ("fp32", "auto"):
            raise ValueError(f"precision: the crop estimator runs fp32 (got {precision!r})")
        path = Path(path) if path is not None else DEFAULT_CROPS_WEIGHTS
        detector, keypoints, objects, stored = load_crops_file(path)
        refiner_dict = load_refiner(refiner, check=False) if refiner is not None else stored.get("refiner")
        scorer_dict = load_refiner(scorer, check=False, kind=SCORER_FORMAT) if scorer is not None else None
        thresholds = {**stored.get("thresholds", {}), **thresholds}  # the file's, chosen on validation
        pose_thresholds, decoding = split_thresholds(thresholds, DECODING_OPTIONS)
        device = resolve_device(device, backend)
        kp_outputs = keypoint_outputs(keypoints.config)
        if backend == "torch":
            det_engine, kp_engine = (
                _TorchModule(detector, device, 3),
                _TorchModule(_HeatmapsOnly(keypoints), device, len(kp_outputs)),
            )
            description = f"torch fp32 on {device} (detector + keypoints)"
        elif backend == "onnxruntime":
            det_path, kp_path = export_crops_onnx(path)
            det_engine = OnnxEngine(det_path, device=device, output_names=["heatmap", "size", "offset"])
            kp_engine = OnnxEngine(kp_path, device=device, output_names=kp_outputs)
            description = f"onnxruntime fp32 on {' > '.join(det_engine.providers)} (detector + keypoints)"
        else:
            raise ValueError(f"backend: expected 'torch' or 'onnxruntime', got {backend!r}")
        return cls(
            det_engine,
            kp_engine,
            detector.config,
            keypoints.config,
            objects,
            pose_thresholds,
            None,
            description,
            keypoints.keypoints_3d,
            decoding.get("drop_keypoints", 0),
            decoding.get("correspondences"),
            decoding.get("box_depth_weight", 0.0),
            _pose_refiner(refiner_dict, objects, refiner_models, decoding.get("refine_iterations"), device,
                          backend, refiner if refiner is not None else path,
                          (scorer_dict, decoding.get("hypotheses"), scorer, decoding.get("hypothesis_gate"))),
            _check_recrop(decoding.get("recrop", False)),
        )

    def __call__(self, image_rgb: np.ndarray, camera: CameraModel) -> list[ObjectPose]:
        """Return the object poses found in ``image_rgb`` (H, W, 3) uint8 seen by ``camera`` (metres)."""
        inference = self.estimate_maps(image_rgb, camera)
        poses, timings = self.poses_from_maps(inference, camera)
        self.last_timings = {**inference.timings, **timings}
        return poses

    def detect(self, image_rgb: np.ndarray) -> list[Detection]:
        """Return the detector's boxes (image px), best first, above the detection threshold."""
        batch, scale = preprocess(image_rgb, self.input_size)
        heatmap, size, offset = self.engine.detector(batch)
        detections = postprocess(
            heatmap[0], size[0], offset[0], scale, self.objects, self.box_codec, self.detection_threshold
        )
        return detections[: self.thresholds.max_instances]

    def crop_batch(self, image_rgb: np.ndarray, detections: list[Detection]) -> tuple[list[Crop], np.ndarray]:
        """Return (one square crop per detection, their pixels as the keypoint network's input
        (N, 3, S, S) float32 in [0, 1]; None without detections)."""
        cfg = self.keypoint_config
        crops = [crop_around_box(d.box_xywh, cfg.crop_size, cfg.padding) for d in detections]
        if not crops:
            return crops, None
        return crops, crop_images(image_rgb, crops).transpose(0, 3, 1, 2).astype(np.float32) / 255.0

    def estimate_maps(
        self, image_rgb: np.ndarray, camera: CameraModel, detections: list[Detection] | None = None
    ) -> CropInference:
        """Return the networks' work on one frame (stages detection, crops, inference), sizes checked.

        ``detections`` given (e.g. ground-truth boxes for evaluation) skip the detector.
        """
        image_rgb = checked_image(image_rgb, camera)
        t0 = time.perf_counter()
        if detections is None:
            detections = self.detect(image_rgb)
        t1 = time.perf_counter()
        crops, batch = self.crop_batch(image_rgb, detections)
        index = {o.obj_id: i for i, o in enumerate(self.objects)}
        classes = np.array([index[d.obj_id] for d in detections], np.int64)
        k, m = self.keypoint_config.outputs_per_class, self.keypoint_config.map_size
        heatmaps = np.zeros((0, k, m, m), np.float32)
        names = keypoint_outputs(self.keypoint_config)
        extra = {name: np.zeros((0, 4, m, m), np.float32) for name in names[1:]}  # 4 channels per class
        t2 = t1
        if crops:
            t2 = time.perf_counter()
            outputs = dict(zip(names, self.engine.keypoints(batch)))
            rows = np.arange(len(crops))
            heatmaps = outputs["heatmaps"].reshape(len(crops), -1, k, m, m)[rows, classes]
            extra = {name: outputs[name].reshape(len(crops), -1, 4, m, m)[rows, classes] for name in extra}
        t3 = time.perf_counter()
        return CropInference(  # the refiner and the second pass crop the frame again
            detections,
            crops,
            classes,
            heatmaps,
            {"detection": t1 - t0, "crops": t2 - t1, "inference": t3 - t2},
            extra.get("coordinates"),
            extra.get("extremes"),
            image_rgb if self.refiner is not None or self.recrop_poses else None,
        )

    def poses_from_maps(
        self, inference: CropInference, camera: CameraModel
    ) -> tuple[list[ObjectPose], dict[str, float]]:
        """Return (the poses of ``inference``, seconds of the stages decode and pnp)."""
        t0 = time.perf_counter()
        instances = self.decode(inference)
        t1 = time.perf_counter()
        poses = self.solver.solve(instances, camera)
        t2 = time.perf_counter()
        timings = {"decode": t1 - t0, "pnp": t2 - t1}
        if inference.image is not None:
            poses, more = self.improve(inference.image, camera, poses)
            timings.update(more)
        return poses, timings

    def improve(
        self, image_rgb: np.ndarray, camera: CameraModel, poses: list[ObjectPose]
    ) -> tuple[list[ObjectPose], dict[str, float]]:
        """Return (``poses`` after the stages that follow PnP, the seconds of those that ran): the
        second keypoint pass ("recrop") when on, then the refiner ("refine") when there is one."""
        timings = {}
        if self.recrop_poses:
            t0 = time.perf_counter()
            poses = self.recrop(image_rgb, camera, poses)
            timings["recrop"] = time.perf_counter() - t0
        if self.refiner is not None:
            t0 = time.perf_counter()
            poses = self.refine(image_rgb, camera, poses)
            timings["refine"] = time.perf_counter() - t0
        return poses, timings

    def decode(self, inference: CropInference) -> list[DecodedInstance]:
        """Return one DecodedInstance per detection: keypoints in image px, score = detection score."""
        if not inference.crops:
            return []
        if self.keypoint_config.head == "voting":
            keypoints, confidence = decode_votes(inference.heatmaps)
        else:
            keypoints, confidence = decode_heatmaps(inference.heatmaps)
        found = np.ones(confidence.shape, bool)
        if self.drop_keypoints:
            least = np.argsort(confidence, axis=1, kind="stable")[:, : self.drop_keypoints]
            np.put_along_axis(found, least, False, axis=1)
        boxes = [None] * len(inference.crops)
        if inference.extremes is not None:
            extremes, _ = decode_heatmaps(inference.extremes)
            boxes = [_extreme_box(crop.to_image(e)) for crop, e in zip(inference.crops, extremes)]
        instances = [
            DecodedInstance(
                class_index=int(c),
                score=float(d.score),
                keypoints=crop.to_image(kps),
                found=kept,
                box=box,
            )
            for d, crop, c, kps, kept, box in zip(
                inference.detections, inference.crops, inference.class_indices, keypoints, found, boxes
            )
        ]
        if self.correspondences == "keypoints" or inference.coordinates is None:
            return instances
        return [self._with_coordinates(i, crop, cells) for i, crop, cells in
                zip(instances, inference.crops, decode_coordinates(inference.coordinates))]

    def _with_coordinates(self, instance: DecodedInstance, crop: Crop, cells) -> DecodedInstance:
        """Return ``instance`` with its crop's dense correspondences after (or instead of) its keypoints."""
        points_2d, normalised = cells
        centre, half = self.coordinate_frames[instance.class_index]
        dense_2d, dense_3d = crop.to_image(points_2d), normalised * half + centre
        keypoints_3d = self.keypoints_3d[instance.class_index]
        use_keypoints = self.correspondences == "both"
        return DecodedInstance(
            box=instance.box,
            class_index=instance.class_index,
            score=instance.score,
            keypoints=np.concatenate([instance.keypoints, dense_2d]),
            found=np.concatenate([instance.found & use_keypoints, np.ones(len(dense_2d), bool)]),
            points_3d=np.concatenate([keypoints_3d, dense_3d]),
        )

    def solve(self, instances: list[DecodedInstance], camera: CameraModel) -> list[ObjectPose]:
        """Return the accepted poses of ``instances`` (the shared PoseSolver)."""
        return self.solver.solve(instances, camera)

    def recrop(self, image_rgb: np.ndarray, camera: CameraModel, poses: list[ObjectPose]) -> list[ObjectPose]:
        """Return ``poses`` re-estimated from crops around their projected models (one keypoint batch);
        a pose whose second PnP is rejected keeps its first estimate."""
        if not poses:
            return list(poses)
        points, K, dist = {o.obj_id: o.points for o in self.objects}, camera.K, camera.dist
        boxes = [
            Detection(p.obj_id, p.class_name, p.score, projected_box(points[p.obj_id], p.R, p.t, K, dist))
            for p in poses
        ]
        instances = self.decode(self.estimate_maps(image_rgb, camera, detections=boxes))
        out = []
        for pose, instance in zip(poses, instances):
            again = self.solver.solve([instance], camera)  # one at a time: each result is that pose's
            if again:
                new = again[0]
                pose = replace(pose, R=new.R, t=new.t, keypoints_2d=new.keypoints_2d,
                               keypoint_ids=new.keypoint_ids, reprojection_error=new.reprojection_error)
            out.append(pose)
        return out

    def refine(self, image_rgb: np.ndarray, camera: CameraModel, poses: list[ObjectPose]) -> list[ObjectPose]:
        """Return ``poses`` refined by the render-and-compare refiner (unchanged without one)."""
        return self.refiner.refine(image_rgb, camera, poses) if self.refiner is not None else list(poses)


def _check_recrop(value) -> bool:
    if value not in (0, 1, False, True):
        raise ValueError(f"recrop: expected true or false, got {value!r}")
    return bool(value)


def _network_engine(model, device: str, backend: str, source, name: str, output: str):
    """A refiner-shaped network as an engine: torch, or exported once into the ONNX cache (named
    after ``source``, the file that holds it, and ``name``)."""
    from hrpose_ros.refiner import TorchRefinerEngine

    if backend != "onnxruntime":
        return TorchRefinerEngine(model, str(parse_device(device)))
    onnx_path = model_cache_dir(None) / f"{cache_stem(Path(source))}-{name}.onnx"
    if not onnx_path.is_file():
        _export(model, onnx_path, (model.size, model.size), [output], True, channels=6)
    return OnnxEngine(onnx_path, device=device, output_names=[output])


def _pose_refiner(refiner_dict, objects, models_dir, iterations, device: str, backend: str, source,
                  scoring=(None, None, None, None)):
    """Return the PoseRefiner of a stored refiner dict (None without one or with 0 iterations), its
    objects' meshes taken from ``models_dir`` (default: the package's object set); with the
    onnxruntime backend its network is exported once into the cache (named after ``source``, the
    file that holds it). ``scoring``: (scorer dict or None, hypotheses or None, its source file,
    the gate or None)."""
    scorer_dict, hypotheses, scorer_source, gate = scoring
    hypotheses = int(hypotheses or 0)  # PoseRefiner refuses a negative count
    scored = bool(refiner_dict is not None and refiner_dict.get("score"))
    if hypotheses > 0 and scorer_dict is None and not scored:
        raise ValueError("hypotheses: expected a pose scorer; the refiner has no score head "
                         "(training/train_scorer.py --head): pass scorer=<scorer.pt>")
    if refiner_dict is None:
        if iterations:
            raise ValueError("refine_iterations: the weights file holds no refiner; "
                             "pass refiner=<refiner.pt>")
        return None
    iterations = DEFAULT_REFINE_ITERATIONS if iterations is None else int(iterations)
    if iterations == 0:
        return None
    from hrpose_ros import bop_models
    from hrpose_ros.refiner import PoseRefiner, refiner_from_dict

    models_dir = Path(models_dir) if models_dir is not None else DEFAULT_OBJECTS_DIR
    meshes = {o.obj_id: o for o in bop_models.load_object_models(models_dir)}
    missing = [o.name for o in objects if o.obj_id not in meshes]
    if missing:
        raise ValueError(f"refiner_models {models_dir}: no mesh for {missing} (expected a BOP models "
                         "folder with their obj_id)")
    with_meshes = [replace(o, mesh_path=meshes[o.obj_id].mesh_path) for o in objects]
    model = refiner_from_dict(refiner_dict, f"refiner in {source}")
    engine = _network_engine(model, device, backend, source, "refiner", "update")
    scorer = engine if scored else None  # the refiner's own 10th output, unless a scorer file is given
    if hypotheses > 0 and scorer_dict is not None:
        scorer_model = refiner_from_dict(scorer_dict, f"scorer in {scorer_source}", SCORER_FORMAT)
        if scorer_model.size != model.size:
            raise ValueError(f"scorer in {scorer_source}: {scorer_model.size} px crops, the refiner's are "
                             f"{model.size} px")
        scorer = _network_engine(scorer_model, device, backend, scorer_source, "scorer", "score")
    gate = math.inf if gate is None else float(gate)
    return PoseRefiner(engine, model.size, with_meshes, iterations, scorer, hypotheses, gate=gate)
