"""The live pose_node as an estimator: each call publishes one image over DDS and waits for the node's poses.

``hrpose-replay-eval --live-node`` scores a running ``pose_node`` through
:class:`LiveNodeEstimator` exactly as it scores the in-process estimator.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hrpose_ros import bag_io, ros_conversions
from hrpose_ros.bag_io import DEFAULT_START_NS
from hrpose_ros.node_driver import NodeDriver, NodeDriverError, pose_node_command
from hrpose_ros.types import CameraModel, ObjectModel, ObjectPose, stamp_to_ns

__all__ = ["LiveNodeError", "LiveNodeEstimator"]

_log = logging.getLogger(__name__)


LiveNodeError = NodeDriverError  # the pose_node subprocess did not start or did not answer an image in time


class LiveNodeEstimator:
    """The running ``pose_node`` behind the pipeline's call: publish one image, wait for its answer.

    Starts ``command`` (the pose_node executable) through :class:`~hrpose_ros.node_driver.NodeDriver`
    with the ``--ros-args`` a launch file would pass: a unique node name, ``image``/``camera_info``
    remapped to private topics with reliable QoS, TF/markers/overlay off, and the weights file,
    estimator and thresholds (keypoint threshold: HRPose only) of the in-process estimator, so both
    paths give the same poses. Each call publishes the image then its camera_info and blocks until
    ``~/objects`` arrives with the image's stamp, so no frame is dropped by the node's one-slot
    queue; the measured time is the round
    trip (conversion, inference and DDS both ways). ``objects`` are the models the node's weights
    name (loaded here from the same weights). Made with ``depth``, the node runs with ``use_depth``
    and each call sends the frame's depth image too. Close with :meth:`close`.
    """

    def __init__(self, driver: NodeDriver, objects: list[ObjectModel]):
        self._driver = driver
        self.objects = objects
        self._calls = 0
        self._stamp_ns = DEFAULT_START_NS
        self._answers: dict[int, object] = {}
        self.last_timings: dict[str, float] = {}
        self.uses_depth = driver.depth_pub is not None  # replay passes each frame's depth

    @classmethod
    def start(
        cls,
        command: str = "pose_node",
        weights: Path | None = None,
        backend: str = "torch",
        device: str = "auto",
        precision: str = "fp32",
        params: Sequence[str] = (),
        timeout: float = 60.0,
        estimator: str = "auto",
        depth: bool = False,
        depth_hypotheses: int = 0,
    ) -> LiveNodeEstimator:
        """Return an estimator driving a freshly started pose_node; LiveNodeError if it does not come up.

        ``weights`` None: the shipped default of ``estimator`` (hrpose_ros.estimators.default_weights).
        ``depth``: the node refines against the depth each call sends, with the in-process refiner's
        limits and the whole frame refined (the node's 30 ms budget would leave instances out), with
        ``depth_hypotheses`` multi-start copies per pose.
        """
        import os
        import shlex

        from hrpose_ros.estimators import default_weights, load_estimator
        from hrpose_ros.msg import ObjectPoseArray
        from hrpose_ros.pipeline import PosePipeline

        # The same weights in-process give the object models to score against and the thresholds
        # the node must use to answer as the in-process estimator would; the node gets the resolved
        # file, so both run the same one whatever the defaults.
        weights = Path(weights) if weights is not None else default_weights(estimator)
        reference = load_estimator(weights, estimator, backend=backend, device=device, precision=precision)
        argv = shlex.split(command)
        if argv == ["pose_node"]:
            argv = pose_node_command()
        if isinstance(reference, PosePipeline):
            score = reference.thresholds.min_score
            hrpose_only = {"keypoint_threshold": reference.codec.config.peak_threshold}
        else:  # crops: poses scoring below the detector's own threshold are never made
            score, hrpose_only = max(reference.thresholds.min_score, reference.detection_threshold), {}
        node_params = {
            "model_path": weights,
            "estimator": estimator,
            "backend": backend,
            "device": device,
            "precision": precision,
            "publish_tf": "false",
            "publish_markers": "false",
            "publish_overlay": "false",
            "image_is_rectified": "false",
            "score_threshold": score,
            "min_depth": reference.thresholds.min_depth,
            "max_depth": reference.thresholds.max_depth,
            "min_keypoint_spread": reference.thresholds.min_keypoint_spread,
            **hrpose_only,
        }
        if depth:
            from hrpose_ros.depth_refine import whole_frame_config

            refine = whole_frame_config(depth_hypotheses)  # replay's in-process refiner
            node_params.update(use_depth="true", depth_iterations=refine.iterations,
                               depth_hypotheses=refine.hypotheses,
                               depth_max_translation=refine.max_translation,
                               depth_max_rotation=refine.max_rotation, depth_frame_budget=refine.frame_budget,
                               depth_threads=refine.threads,
                               depth_model_pixels=str(refine.model_pixels).lower(),
                               depth_association=refine.association)
        for param in params:
            key, sep, value = param.partition(":=")
            if not sep:
                raise ValueError(f"--node-param: expected NAME:=VALUE, got {param!r}")
            node_params[key] = value
        driver = NodeDriver(argv, f"hrpose_replay_{os.getpid()}", node_params, timeout, depth=depth)
        _log.info("starting %s", " ".join(driver.command))
        estimator = cls(driver, reference.objects)
        driver.subscribe(ObjectPoseArray, f"{driver.namespace}/objects", estimator._on_objects)
        try:
            driver.wait_ready()
        except NodeDriverError:
            driver.close()
            raise
        return estimator

    def _on_objects(self, msg) -> None:
        self._answers[stamp_to_ns(msg.header.stamp)] = msg

    def __call__(self, image_rgb: np.ndarray, camera: CameraModel, depth: np.ndarray | None = None
                 ) -> list[ObjectPose]:
        """Return the poses the live node publishes for one image (sent with a fresh stamp).

        ``depth`` (H, W) metres, for a node started with depth: sent as 32FC1, so the node refines
        against the same values as the in-process refiner.
        """
        self._stamp_ns += 1_000_000  # a fresh stamp per call: the answer is recognised by it
        header = ros_conversions.header_msg(self._stamp_ns, bag_io.CAMERA_FRAME)
        info = ros_conversions.camera_info_msg(camera, header)
        image = ros_conversions.rgb_to_image(np.ascontiguousarray(image_rgb), header)
        depth_msg = None if depth is None else ros_conversions.depth_image_msg(depth, header, "32FC1")
        stamp = self._stamp_ns
        self._calls += 1
        start = self._driver.send(image, info, depth_msg)
        if not self._driver.spin_until(lambda: stamp in self._answers, self._driver.timeout):
            timeout = self._driver.timeout
            raise self._driver.failure(f"pose_node: no answer to image {self._calls} within {timeout:.0f} s")
        msg = self._answers.pop(stamp)
        self.last_timings = {"round_trip": time.perf_counter() - start}
        return list(ros_conversions.poses_from_msg(msg))

    def close(self) -> None:
        """Stop the node subprocess and the driver node."""
        self._driver.close()
