"""The pose node's parameters: one frozen dataclass, read once at start-up.

Each field carries its ROS parameter description and allowed range or choices in its
metadata, so the node declares exactly these parameters (with descriptions and ranges
that ``ros2 param describe`` shows) and config/pose_node.yaml documents the defaults.
Imports without ROS, so the validation is tested on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from hrpose_ros.estimators import ESTIMATORS  # imports no torch: the pipelines load lazily
from hrpose_ros.types import checked_device

__all__ = ["PoseNodeConfig", "estimator_options", "parameter_specs"]


def _param(default, description: str, low=None, high=None, choices: tuple[str, ...] = ()):
    return field(default=default, metadata={"description": description, "low": low, "high": high,
                                            "choices": choices})


@dataclass(frozen=True)
class PoseNodeConfig:
    """Validated parameters of pose_node; a bad value is a ValueError naming the parameter."""

    model_path: str = _param(
        "", "Weights file of the pose estimator (HRPose: .pt checkpoint or .onnx; crops: its .pt weights "
            "file); empty = the estimator's default shipped in hrpose_ros/assets/weights")
    estimator: str = _param(
        "auto", "Pose estimator: auto (the one model_path's file belongs to; without model_path the "
                "shipped default: crops when its weights are shipped, else hrpose); hrpose (HRPose, "
                "whole frame: belief maps + vector fields); crops (detector, square crops, keypoint "
                "network); a model_path of the other estimator is an error",
        choices=("auto", *ESTIMATORS))
    backend: str = _param("onnxruntime", "Inference engine (onnxruntime: a .pt model is exported to ONNX "
                                         "once, cached)", choices=("torch", "onnxruntime"))
    device: str = _param("auto", "Device for inference: auto (a GPU where the backend can use one: torch "
                                 "sees CUDA, or onnxruntime has its TensorRT or CUDA provider; else cpu), "
                                 "cpu, cuda or cuda:N (onnxruntime on cuda: the TensorRT and CUDA "
                                 "providers installed, in that order)")
    # Default fp32: the numerics of PosePipeline.from_pretrained's default, of the evaluated numbers
    # (MODEL_CARD) and of the replay evaluation's in-process reference, which compares poses with the
    # node's to 1e-5. auto (bf16 on AMX / AVX-512 BF16 CPUs) ran the student 3.4x faster than fp32
    # here, but bf16's cost in ADD(-S) recall is not measured with trained weights yet (issue 8 asks
    # that of int8 before it becomes a default; bf16 should meet the same bar).
    precision: str = _param(
        "fp32", "Inference precision: fp32; bf16 (torch: autocast + channels_last, fp32 on CPUs without "
                "bf16 units); int8 (onnxruntime: the QDQ <model>.int8.onnx next to model_path); auto (bf16 "
                "for torch where the hardware has bf16, else fp32; never int8)",
        choices=("fp32", "bf16", "int8", "auto"))
    objects_dir: str = _param(
        "", "BOP models directory (models_info.json + obj_XXXXXX.ply) holding the meshes of the objects "
            "the network knows, for mesh markers; empty = no meshes")
    score_threshold: float = _param(0.1, "Minimum score of a published object instance (crops: also the "
                                         "detector's score threshold)", 0.0, 1.0)
    keypoint_threshold: float = _param(0.0, "HRPose only: minimum belief-map peak for a keypoint to count "
                                            "as found (0 = the model's own, chosen on its test split)",
                                       0.0, 1.0)
    refine_iterations: int = _param(
        -1, "Crops only: render-and-compare refinement steps per pose (-1 = the weights file's; 0 = off: "
            "about twice the frame rate with 5 objects, some points of ADD(-S) less, see MODEL_CARD)", -1, 10)
    recrop: int = _param(
        -1, "Crops only: a second keypoint pass on crops around the first poses (-1 = the weights file's; "
            "0 = off, faster; 1 = on)", -1, 1)
    pose_hypotheses: int = _param(
        0, "Crops only: start each pose again from this many disturbed copies, refine them and keep the "
           "one the pose scorer rates best (0 = off; 10: about +2.5 points ADD(-S), 2-5x the time "
           "per frame, see MODEL_CARD); scored by the refiner's score head, or by 'scorer'", 0, 50)
    scorer: str = _param("", "Crops only: a separate pose scorer file (training/train_scorer.py) for "
                             "pose_hypotheses, in place of the refiner's score head")
    min_depth: float = _param(0.05, "Nearest published object origin along the optical axis (m)", 0.0, 100.0)
    max_depth: float = _param(5.0, "Farthest published object origin along the optical axis (m); PnP fits "
                                   "keypoints bunched within a few pixels far away", 0.0, 100.0)
    min_keypoint_spread: float = _param(
        0.01, "Smallest 2D spread of an instance's keypoints across / along their main direction "
              "(eigenvalue ratio); keypoints along a line leave the rotation about it undetermined "
              "(0 = no check; lower it for objects thinner than a domino)", 0.0, 0.99)
    input_width: int = _param(0, "HRPose only: network input width in pixels; images are letterboxed "
                                 "into it (0 = the model's trained input size)", 0, 4096)
    input_height: int = _param(0, "HRPose only: network input height in pixels (0 = the model's trained "
                                  "input size)", 0, 4096)
    image_is_rectified: bool = _param(
        False, "True for rectified images (image_rect*): use camera_info P with zero distortion; "
               "false for raw images: use K and D")
    sync_slop: float = _param(0.01, "Largest stamp difference (s) between an image and its camera_info",
                              0.0, 1.0)
    sync_queue_size: int = _param(5, "Messages per input the synchroniser keeps while waiting for a match",
                                  1, 100)
    use_depth: bool = _param(
        False, "Subscribe depth (sensor_msgs/Image, 16UC1 mm or 32FC1 m, aligned to the colour image, same "
               "frame_id) and refine each pose against it by ICP; a frame whose depth is missing, late "
               "(stamp beyond sync_slop) or unusable is published with its RGB poses")
    depth_max_translation: float = _param(
        0.1, "Largest move (m) a depth refinement may make; a larger one is refused (RGB pose kept)",
        0.001, 1.0)
    depth_max_rotation: float = _param(
        0.785, "Largest turn (rad) a depth refinement may make, turns about symmetry axes not counted",
        0.001, 3.1416)
    depth_iterations: int = _param(4, "ICP iterations per correspondence distance (20, 10, 5 mm)", 1, 100)
    depth_association: str = _param(
        "projective", "ICP pairs: projective (each visible model point with the depth at its pixel) or "
                      "nearest (Open3D: depth points with their nearest model point; better for an "
                      "object with no measured background behind it)", choices=("projective", "nearest"))
    depth_frame_budget: float = _param(
        0.03, "Seconds of depth refinement per frame; instances left when it is spent keep their RGB pose",
        0.001, 10.0)
    depth_threads: int = _param(
        1, "Instances of a frame refined against depth at once (2 helps depth_association nearest, whose "
           "ICP runs outside Python's lock; projective pairs are fastest on 1)", 1, 64)
    depth_hypotheses: int = _param(
        0, "Disturbed copies of each pose also refined against depth (multi-start ICP); the refined pose "
           "the depth agrees with most is kept. They run once every instance is refined, while "
           "depth_frame_budget lasts (the best-scored instance always gets them); 10 copies take about "
           "33 ms per instance on 2 cores, 3 copies about 12", 0, 100)
    depth_model_pixels: bool = _param(
        True, "ICP takes the depth at the pixels the object's model covers at each step's pose; false: all "
              "of the pose's projected box (better for an object alone that the RGB pose misses by "
              "centimetres; in a bin the box holds the floor and the neighbours)")
    frame_prefix: str = _param("hrpose/", "Prefix of the TF frames <prefix><class>_<instance>")
    publish_tf: bool = _param(True, "Broadcast one TF frame per object instance, child of the camera frame")
    publish_markers: bool = _param(True, "Publish ~/markers (cuboids, labels, optional meshes) for RViz")
    publish_overlay: bool = _param(True, "Publish ~/overlay (3D boxes and axes drawn on the image) "
                                         "while someone subscribes to it")
    marker_mesh: bool = _param(False, "Add the object's mesh to ~/markers (RViz must read the mesh files)")
    mesh_scale: float = _param(0.001, "Mesh file units -> metres for mesh markers (BOP models: 0.001)",
                               1e-6, 1e3)
    diagnostics_period: float = _param(1.0, "Seconds between /diagnostics messages", 0.1, 60.0)
    camera_info_timeout: float = _param(2.0, "Seconds of images without a matching camera_info before "
                                             "warning", 0.1, 60.0)
    log_throttle_period: float = _param(5.0, "Seconds between repeats of one kind of warning", 0.0, 3600.0)

    def __post_init__(self):
        for spec in fields(self):
            value = getattr(self, spec.name)
            meta = spec.metadata
            expected = type(spec.default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                object.__setattr__(self, spec.name, value)
            if type(value) is not expected:
                raise ValueError(f"parameter '{spec.name}': expected {expected.__name__}, got {value!r}")
            if meta["choices"] and value not in meta["choices"]:
                raise ValueError(f"parameter '{spec.name}': expected one of {', '.join(meta['choices'])}, "
                                 f"got {value!r}")
            if meta["low"] is not None and not meta["low"] <= value <= meta["high"]:
                raise ValueError(f"parameter '{spec.name}': expected a value in [{meta['low']}, "
                                 f"{meta['high']}], got {value!r}")
        checked_device(self.device, "parameter 'device'", allow_auto=True)
        if self.precision == "int8" and self.backend != "onnxruntime":
            raise ValueError(f"parameter 'precision': int8 needs backend onnxruntime (a QDQ .int8.onnx "
                             f"model), got backend {self.backend}")
        if self.precision == "bf16" and self.backend != "torch":
            raise ValueError(f"parameter 'precision': bf16 needs backend torch, got backend {self.backend}")
        if self.min_depth >= self.max_depth:
            raise ValueError(f"parameters 'min_depth'/'max_depth': expected min_depth < max_depth, got "
                             f"{self.min_depth}/{self.max_depth}")
        if (self.input_width == 0) != (self.input_height == 0):
            raise ValueError(f"parameters 'input_width'/'input_height': set both or neither, got "
                             f"{self.input_width}x{self.input_height}")
        if self.frame_prefix.startswith("/") or not re.fullmatch(r"[A-Za-z0-9_/]*", self.frame_prefix):
            raise ValueError(f"parameter 'frame_prefix': expected letters, digits, _ and / (no leading /), "
                             f"got {self.frame_prefix!r}")

    @property
    def input_size(self) -> tuple[int, int] | None:
        """Return (width, height) of the network input in pixels, or None for the model's own size."""
        return (self.input_width, self.input_height) if self.input_width else None


# Parameters only HRPose reads, with the value that leaves them unset: the crop estimator has no
# belief maps to threshold and its detector's input size is fixed by its weights file.
_HRPOSE_ONLY = {"keypoint_threshold": 0.0, "input_width": 0, "input_height": 0}
_CROPS_ONLY = {"refine_iterations": -1, "recrop": -1, "pose_hypotheses": 0, "scorer": ""}


def estimator_options(config: PoseNodeConfig, estimator: str) -> dict:
    """Return the keyword options of ``estimator``'s from_pretrained that ``config`` sets.

    ``estimator`` is the resolved one, "hrpose" or "crops". Options of the other estimator are
    never passed: an HRPose-only parameter set with the crop estimator is a ValueError naming it.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: expected {' or '.join(ESTIMATORS)}, got {estimator!r}")
    options = {"backend": config.backend, "device": config.device, "precision": config.precision,
               "min_score": config.score_threshold, "min_depth": config.min_depth,
               "max_depth": config.max_depth, "min_keypoint_spread": config.min_keypoint_spread}
    if estimator == "hrpose":
        for name, unset in _CROPS_ONLY.items():
            if getattr(config, name) != unset:
                raise ValueError(f"parameter '{name}': crops only, but the estimator is hrpose; set it to "
                                 f"{unset!r} (unset) or use estimator crops, got {getattr(config, name)!r}")
        # keypoint_threshold 0 keeps the checkpoint's own peak threshold (its codec config).
        if config.keypoint_threshold > 0:
            options["peak_threshold"] = config.keypoint_threshold
        return {**options, "input_size": config.input_size}
    for name, unset in _HRPOSE_ONLY.items():
        if getattr(config, name) != unset:
            raise ValueError(f"parameter '{name}': HRPose only, but the estimator is crops; set it to "
                             f"{unset} (unset) or use estimator hrpose, got {getattr(config, name)!r}")
    if config.refine_iterations >= 0:
        options["refine_iterations"] = config.refine_iterations
    if config.recrop >= 0:
        options["recrop"] = bool(config.recrop)
    if config.pose_hypotheses:
        options["hypotheses"] = config.pose_hypotheses  # scored by the refiner's head or by 'scorer'
    if config.scorer:
        options["scorer"] = config.scorer
    return options  # precision: CropPosePipeline.from_pretrained refuses what it cannot run


def parameter_specs() -> list[tuple[str, object, str, object, object, tuple[str, ...]]]:
    """Return (name, default, description, low, high, choices) for every parameter, in declaration order."""
    return [(f.name, f.default, f.metadata["description"], f.metadata["low"], f.metadata["high"],
             f.metadata["choices"]) for f in fields(PoseNodeConfig)]
