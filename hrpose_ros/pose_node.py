"""pose_node: 6D poses of known objects from a camera stream, published for robots and RViz.

Subscribes ``image`` (sensor_msgs/Image) and ``camera_info`` (sensor_msgs/CameraInfo), both
relative names to remap, with sensor-data QoS (overridable via the
``qos_overrides.<topic>.subscription.*`` parameters). Image and camera_info are matched by
stamp (message_filters when installed, else :mod:`hrpose_ros.sync`), and the newest pair waits
in a one-slot queue that drops the older pair, so latency never builds up behind a slow
network. The network is the estimator's (parameter ``estimator``: HRPose or the crop estimator,
:mod:`hrpose_ros.estimators`; ``auto`` follows the weights file). The work runs in two threads
of the node's own, outside the executor, which only receives and times: a MultiThreadedExecutor
with the work in a busy callback group spent a core re-polling the ready work. The network
thread runs on frame n + 1 while the other decodes, solves and publishes frame n (a pipeline of
two one-slot stages), so throughput is set by the slower stage (benchmarks/README.md has the
numbers). Per processed image, stamped with the image's header:

- ``~/objects`` hrpose_ros/ObjectPoseArray (empty when nothing is seen),
- ``~/poses`` geometry_msgs/PoseArray in the image frame,
- ``/tf`` one frame ``<frame_prefix><class>_<instance>`` per instance (publish_tf),
- ``~/markers`` visualization_msgs/MarkerArray, stale markers deleted (publish_markers),
- ``~/overlay`` the image with 3D boxes and axes, drawn only while subscribed (publish_overlay),

With ``use_depth`` the node also subscribes ``depth`` (sensor_msgs/Image, 16UC1 mm or 32FC1 m,
aligned to the colour image) and refines each pose against the depth frame whose stamp lies
within ``sync_slop`` of the image's (:mod:`hrpose_ros.depth_refine`). Depth frames wait in a
short buffer of their own and are looked up when a frame's poses are ready, so a missing, late
or unusable depth frame never holds colour poses back: they are published unrefined, with a
throttled warning, and ``refined`` false in ~/objects.

and every ``diagnostics_period`` a ``/diagnostics`` status: input and output rates,
per-stage latency, dropped and rejected frames. A bad frame (encoding, sizes, frame
ids, intrinsics) is logged (throttled, per kind) and skipped; the node keeps serving.
Parameters: :class:`hrpose_ros.node_config.PoseNodeConfig`; defaults in config/pose_node.yaml.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections import defaultdict, deque
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseArray
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray

from hrpose_ros import ros_conversions as convert
from hrpose_ros.bop_models import load_object_models
from hrpose_ros.msg import ObjectPoseArray
from hrpose_ros.node_config import PoseNodeConfig, estimator_options, parameter_specs
from hrpose_ros.sync import ApproximateTimeSynchronizer
from hrpose_ros.types import CameraModel, ObjectModel, stamp_to_ns

if TYPE_CHECKING:  # the estimators import torch: load_pipeline does, once the parameters are checked
    from hrpose_ros.depth_refine import DepthRefiner
    from hrpose_ros.estimators import Estimator

try:  # a full ROS 2 install
    import message_filters
except ImportError:
    message_filters = None
try:
    from tf2_ros import TransformBroadcaster
except ImportError:
    TransformBroadcaster = None

__all__ = ["PoseNode", "display_objects", "load_pipeline", "main"]

# tf2_ros's DynamicBroadcasterQoS, for the fallback /tf publisher.
TF_QOS = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE,
                    durability=QoSDurabilityPolicy.VOLATILE)


class StartupError(Exception):
    """A parameter or the model is unusable: the node cannot start."""


def load_pipeline(config: PoseNodeConfig) -> Estimator:
    """Return the estimator the parameters describe, warmed up (ValueError naming what is wrong).

    The estimator is the one ``model_path``'s file belongs to (or the shipped default's), checked
    against the ``estimator`` parameter; it gets only the options it has (estimator_options).
    """
    # A named estimator's options are checked first; load_estimator then checks the file is of its kind.
    options = estimator_options(config, config.estimator) if config.estimator != "auto" else None
    # Imported here, after the parameters were checked: torch takes seconds to import, and a
    # wrong parameter should fail at once.
    from hrpose_ros.estimators import default_weights, estimator_of, load_estimator

    path = config.model_path or default_weights(config.estimator)
    if options is None:  # auto: the options of the estimator the file belongs to
        options = estimator_options(config, estimator_of(path))
    pipeline = load_estimator(path, config.estimator, **options)
    # One run on a blank frame: loads the kernels before the first image and proves the
    # engine accepts this input size (an ONNX export may have a fixed one).
    width, height = pipeline.input_size
    f = float(max(width, height))
    camera = CameraModel(K=np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]]),
                         width=width, height=height)
    try:
        pipeline(np.zeros((height, width, 3), np.uint8), camera)
    except Exception as exc:  # engines raise their own types (onnxruntime, torch) for a bad input shape
        where = "input_width/input_height" if config.input_size else "the model's input size"
        raise ValueError(f"{where}: the model fails on a blank {width}x{height} input: {exc}") from exc
    return pipeline


def _engine_description(engine) -> str:
    """Return the engine's one-line summary (backend, precision actually used, device or providers)."""
    return getattr(engine, "description", type(engine).__name__)


def display_objects(config: PoseNodeConfig, objects: list[ObjectModel]) -> dict[int, ObjectModel]:
    """Return the pipeline's objects by obj_id, with mesh files from ``objects_dir`` when it is set."""
    by_id = {obj.obj_id: obj for obj in objects}
    if not config.objects_dir:
        return by_id
    meshes = {obj.obj_id: obj.mesh_path for obj in load_object_models(config.objects_dir)}
    missing = sorted(set(by_id) - set(meshes))
    if missing:
        raise ValueError(f"objects_dir: {config.objects_dir} has no models for obj_id {missing} "
                         f"that the network knows")
    return {obj_id: replace(obj, mesh_path=meshes[obj_id]) for obj_id, obj in by_id.items()}


def load_depth_refiner(config: PoseNodeConfig, objects: dict[int, ObjectModel]) -> DepthRefiner:
    """Return the depth refiner of ``objects``, their meshes from ``objects_dir`` or else the shipped set.

    ValueError when an object has no mesh in either place.
    """
    from hrpose_ros.depth_refine import DepthRefiner, RefineConfig, with_meshes

    try:
        meshed = with_meshes(objects.values(), config.objects_dir or None)
    except ValueError as exc:
        raise ValueError(f"use_depth: {exc}; set objects_dir to the BOP models of the network's objects") \
            from exc
    refine = RefineConfig(iterations=config.depth_iterations, max_translation=config.depth_max_translation,
                          max_rotation=config.depth_max_rotation, frame_budget=config.depth_frame_budget,
                          threads=config.depth_threads, hypotheses=config.depth_hypotheses,
                          model_pixels=config.depth_model_pixels, association=config.depth_association)
    return DepthRefiner(meshed, refine)


def _all_finite(pose) -> bool:
    """True unless the pipeline produced NaN/inf (never published: downstream planners would choke)."""
    return bool(np.all(np.isfinite(pose.R)) and np.all(np.isfinite(pose.t)) and np.isfinite(pose.score))


class _Throttle:
    """Say whether a message of some kind may be logged now: at most once per ``period`` seconds per kind."""

    def __init__(self, period: float):
        self.period = period
        self._last: dict[str, float] = {}

    def ready(self, kind: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(kind, -np.inf) < self.period:
            return False
        self._last[kind] = now
        return True


class _Stats:
    """Counters and latencies since the last diagnostics message (updated from two threads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.images = self.camera_infos = self.processed = 0
        self.dropped = self.rejected = self.failed = 0  # totals since start
        self.total_images = self.total_processed = self.lost_images = self.lost_camera_infos = 0
        self.depth_frames = self.depth_used = self.depth_unusable = self.refined = self.refusals = 0
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.last_error = ""
        self.period_rejected = 0

    def take_period(self) -> tuple[int, int, int, int, dict[str, list[float]]]:
        """Return (images, camera_infos, processed, rejected) of the period and its latencies; reset them."""
        with self.lock:
            out = (self.images, self.camera_infos, self.processed, self.period_rejected, dict(self.latencies))
            self.images = self.camera_infos = self.processed = self.period_rejected = 0
            self.latencies = defaultdict(list)
        return out


class _Inferred(NamedTuple):
    """One frame between the node's two stages: its header, image, camera, network output, times."""

    header: object
    rgb: np.ndarray
    camera: CameraModel
    network_output: object  # what the estimator's estimate_maps returned, for its poses_from_maps
    received: float  # time.monotonic() when the pair was queued
    timings: dict[str, float]
    inferred: float  # time.monotonic() when the network finished


class PoseNode(Node):
    """The ROS side of an :class:`~hrpose_ros.estimators.Estimator`: messages in, messages out."""

    def __init__(self, **kwargs):
        super().__init__("pose_node", **kwargs)
        self.config = self._read_config()
        try:
            self.pipeline = load_pipeline(self.config)
            self.objects = display_objects(self.config, self.pipeline.objects)
        except (ValueError, OSError) as exc:
            raise StartupError(f"cannot load the pose model (estimator={self.config.estimator}, "
                               f"model_path={self.config.model_path!r}, "
                               f"backend={self.config.backend}, device={self.config.device}, "
                               f"precision={self.config.precision}): {exc}") from exc
        self.refiner = None
        if self.config.use_depth:
            started = time.perf_counter()
            try:
                self.refiner = load_depth_refiner(self.config, self.objects)
            except (ValueError, OSError) as exc:
                raise StartupError(f"cannot set up depth refinement: {exc}") from exc
            if time.perf_counter() - started > 5.0:  # numba compiled the steps: only the first start
                self.get_logger().info(f"depth refinement compiled in {time.perf_counter() - started:.0f} s "
                                       "(cached for later starts)")
        if self.config.marker_mesh and not any(o.mesh_path for o in self.objects.values()):
            self.get_logger().warning("marker_mesh is set but objects_dir names no meshes: no mesh markers")

        self._throttle = _Throttle(self.config.log_throttle_period)
        self._stats = _Stats()
        # The two stages hand frames on through one-slot queues, both guarded by _queues (with
        # _stopping): _slot holds the newest received pair (drop-oldest), _inferred the network's output
        # for the decoding stage (the network waits for it to empty: nothing computed is dropped).
        self._queues = threading.Condition()
        self._slot: tuple[Image, CameraInfo, float] | None = None
        self._inferred: _Inferred | None = None
        self._stopping = False
        self._shown_markers: frozenset = frozenset()
        self._last_image_time: float | None = None
        self._last_info_time: float | None = None
        self._last_pair_time: float | None = None
        self._reported_lost = 0
        self._start_time = time.monotonic()
        # Recent depth frames by stamp (ns), looked up when a frame's poses are ready.
        self._depth_frames: deque[tuple[int, Image]] = deque(maxlen=max(self.config.sync_queue_size, 2))
        self._depth_lock = threading.Lock()

        io_group = MutuallyExclusiveCallbackGroup()
        publisher_qos = {"qos_profile": 10,
                         "qos_overriding_options": QoSOverridingOptions.with_default_policies()}
        self._objects_pub = self.create_publisher(ObjectPoseArray, "~/objects", **publisher_qos)
        self._poses_pub = self.create_publisher(PoseArray, "~/poses", **publisher_qos)
        self._markers_pub = (self.create_publisher(MarkerArray, "~/markers", **publisher_qos)
                             if self.config.publish_markers else None)
        # Reliable, depth 1: serves best-effort and reliable subscribers; Fast DDS loses large
        # images on best-effort links, so RViz's view (config/bin_picking.rviz) asks for reliable.
        self._overlay_pub = (self.create_publisher(Image, "~/overlay", **{**publisher_qos, "qos_profile": 1})
                             if self.config.publish_overlay else None)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._tf = None
        if self.config.publish_tf:
            self._tf = (TransformBroadcaster(self) if TransformBroadcaster is not None
                        else self.create_publisher(TFMessage, "/tf", TF_QOS))

        self._workers = [threading.Thread(target=self._network_loop, name="pose_node network", daemon=True),
                         threading.Thread(target=self._decode_loop, name="pose_node decoding", daemon=True)]
        for worker in self._workers:
            worker.start()
        self._subscribe(io_group)
        self._subscribe_depth(io_group)
        self.create_timer(self.config.diagnostics_period, self._publish_diagnostics, callback_group=io_group)
        self.get_logger().info(
            f"ready: {type(self.pipeline).__name__}, {_engine_description(self.pipeline.engine)} "
            f"(precision parameter {self.config.precision}), objects "
            f"{', '.join(o.name for o in self.objects.values())}; listening on {self._image_topic} + "
            f"{self._info_topic} ({'rectified: P' if self.config.image_is_rectified else 'raw: K + D'})")

    # -- start-up ---------------------------------------------------------------------------------

    def _read_config(self) -> PoseNodeConfig:
        """Return the parameters, declared with descriptions and ranges, as a frozen config."""
        values = {}
        for name, default, description, low, high, choices in parameter_specs():
            descriptor = ParameterDescriptor(description=description, read_only=True,
                                             type=Parameter.Type.from_parameter_value(default).value)
            if choices:
                descriptor.additional_constraints = f"one of: {', '.join(choices)}"
            if low is not None and isinstance(default, float):
                descriptor.floating_point_range = [
                    FloatingPointRange(from_value=float(low), to_value=float(high))]
            elif low is not None:
                descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
            try:
                values[name] = self.declare_parameter(name, default, descriptor).value
            except ParameterException as exc:
                raise StartupError(f"parameter '{name}': {exc}") from exc
        try:
            return PoseNodeConfig(**values)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc

    def _subscribe(self, group) -> None:
        """Subscribe image + camera_info and connect them through an approximate-time synchroniser."""
        # Best effort (sensor data) matches best-effort and reliable publishers alike; reliable would
        # refuse best-effort cameras. Losses on the way are counted from DDS's message-lost events.
        options = {"qos_profile": qos_profile_sensor_data, "callback_group": group,
                   "qos_overriding_options": QoSOverridingOptions.with_default_policies()}
        image_options = {**options, "event_callbacks": SubscriptionEventCallbacks(
            message_lost=lambda info: self._on_lost("lost_images", info))}
        info_options = {**options, "event_callbacks": SubscriptionEventCallbacks(
            message_lost=lambda info: self._on_lost("lost_camera_infos", info))}
        queue, slop = self.config.sync_queue_size, self.config.sync_slop
        if message_filters is not None:
            image_sub = message_filters.Subscriber(self, Image, "image", **image_options)
            info_sub = message_filters.Subscriber(self, CameraInfo, "camera_info", **info_options)
            image_sub.registerCallback(self._on_image_seen)
            info_sub.registerCallback(self._on_camera_info_seen)
            self._sync = message_filters.ApproximateTimeSynchronizer([image_sub, info_sub], queue, slop)
            self._sync.registerCallback(self._on_pair)
            self._image_topic, self._info_topic = image_sub.sub.topic_name, info_sub.sub.topic_name
            return
        self._sync = ApproximateTimeSynchronizer(2, queue, slop, callback=self._on_pair)

        def on_image(msg: Image) -> None:
            self._on_image_seen(msg)
            self._sync.add(0, stamp_to_ns(msg.header.stamp), msg)

        def on_info(msg: CameraInfo) -> None:
            self._on_camera_info_seen(msg)
            self._sync.add(1, stamp_to_ns(msg.header.stamp), msg)

        image_sub = self.create_subscription(Image, "image", on_image, **image_options)
        info_sub = self.create_subscription(CameraInfo, "camera_info", on_info, **info_options)
        self._image_topic, self._info_topic = image_sub.topic_name, info_sub.topic_name

    def _subscribe_depth(self, group) -> None:
        """Subscribe the aligned depth image into a buffer of its own: it never gates image pairs."""
        self._depth_topic = ""
        if self.refiner is None:
            return
        depth_sub = self.create_subscription(
            Image, "depth", self._on_depth, qos_profile=qos_profile_sensor_data, callback_group=group,
            qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self._depth_topic = depth_sub.topic_name

    # -- input ------------------------------------------------------------------------------------

    def _on_image_seen(self, _msg: Image) -> None:
        self._last_image_time = time.monotonic()
        with self._stats.lock:
            self._stats.images += 1
            self._stats.total_images += 1

    def _on_lost(self, counter: str, info) -> None:
        with self._stats.lock:
            setattr(self._stats, counter, int(info.total_count))

    def _on_depth(self, msg: Image) -> None:
        with self._depth_lock:
            self._depth_frames.append((stamp_to_ns(msg.header.stamp), msg))
        with self._stats.lock:
            self._stats.depth_frames += 1

    def _depth_for(self, header) -> Image:
        """Return the buffered depth frame nearest the image's stamp within sync_slop (ValueError if none)."""
        stamp = stamp_to_ns(header.stamp)
        with self._depth_lock:
            frames = list(self._depth_frames)
        if not frames:
            raise ValueError(f"depth: no depth image received on {self._depth_topic}")
        depth_stamp, msg = min(frames, key=lambda frame: abs(frame[0] - stamp))
        gap = (depth_stamp - stamp) / 1e9
        if abs(gap) > self.config.sync_slop:
            newest = max(t for t, _ in frames)
            raise ValueError(f"depth: no depth image within sync_slop={self.config.sync_slop} s of the image "
                             f"(nearest {gap:+.3f} s; newest depth {(newest - stamp) / 1e9:+.3f} s from it)")
        if msg.header.frame_id != header.frame_id:
            raise ValueError(f"depth.header.frame_id: '{msg.header.frame_id}' differs from the image's "
                             f"'{header.frame_id}' (depth must be aligned to the colour image)")
        return msg

    def _on_camera_info_seen(self, _msg: CameraInfo) -> None:
        self._last_info_time = time.monotonic()
        with self._stats.lock:
            self._stats.camera_infos += 1

    def _on_pair(self, image: Image, info: CameraInfo) -> None:
        """Put the newest matched pair in the one-slot queue, dropping an unprocessed older pair."""
        self._last_pair_time = time.monotonic()
        with self._queues:
            dropped = self._slot is not None
            self._slot = (image, info, time.monotonic())
            self._queues.notify_all()
        with self._stats.lock:
            self._stats.dropped += int(dropped)

    # -- processing -------------------------------------------------------------------------------

    # Two stages in two threads, so the network runs on frame n + 1 while frame n is decoded, solved
    # and published: throughput is set by the slower stage, not by their sum. Both release the GIL
    # where the time goes (ONNX Runtime / torch kernels; NumPy and OpenCV PnP).

    def _wait(self, ready) -> bool:
        """Wait, holding ``_queues``, until ``ready()`` or :meth:`destroy_node`; False when stopping."""
        self._queues.wait_for(lambda: ready() or self._stopping)
        return not self._stopping

    def _network_loop(self) -> None:
        """Convert the pair in the slot and run the network on it, until :meth:`destroy_node`."""
        while True:
            with self._queues:
                if not self._wait(lambda: self._slot is not None):
                    return
                pair, self._slot = self._slot, None
            try:
                inferred = self._infer(*pair)
            except Exception as exc:  # one frame the pipeline cannot handle must not stop the node
                if not self.context.ok():
                    return  # shut down meanwhile: nothing is listening any more
                self._report_failure(exc)
                continue
            if inferred is None:
                continue
            with self._queues:
                if not self._wait(lambda: self._inferred is None):
                    return
                self._inferred = inferred
                self._queues.notify_all()

    def _decode_loop(self) -> None:
        """Decode, solve and publish the network's output for each frame, until :meth:`destroy_node`."""
        while True:
            with self._queues:
                if not self._wait(lambda: self._inferred is not None):
                    return
                inferred = self._inferred
            try:
                self._finish(inferred)
            except Exception as exc:
                if not self.context.ok():
                    return
                self._report_failure(exc)
            finally:
                with self._queues:
                    self._inferred = None  # emptied only now: the network stays one frame ahead, no more
                    self._queues.notify_all()

    def destroy_node(self) -> None:
        """Stop both stages (after the frames they are processing), then destroy the node."""
        if not hasattr(self, "_workers"):  # the constructor failed; rclpy's shutdown destroys the node anyway
            super().destroy_node()
            return
        with self._queues:
            self._stopping = True
            self._queues.notify_all()
        for worker in self._workers:
            if worker.is_alive() and worker is not threading.current_thread():
                worker.join(timeout=30.0)
        super().destroy_node()

    def _infer(self, image: Image, info: CameraInfo, received: float) -> _Inferred | None:
        """Check and convert one image + camera_info and run the network (None: the frame was rejected)."""
        started = time.monotonic()
        try:
            convert.check_image_matches_camera_info(image, info)
            camera = convert.camera_model_from_info(info, self.config.image_is_rectified)
            rgb = convert.image_to_rgb(image)
        except ValueError as exc:
            self._reject(str(exc))
            return None
        converted = time.monotonic()
        network_output = self.pipeline.estimate_maps(rgb, camera)
        timings = {"queue": started - received, "convert": converted - started, **network_output.timings}
        return _Inferred(image.header, rgb, camera, network_output, received, timings, time.monotonic())

    def _finish(self, inferred: _Inferred) -> None:
        """Decode + PnP -> convert -> publish one frame's network output."""
        started = time.monotonic()
        estimated, stage_timings = self.pipeline.poses_from_maps(inferred.network_output, inferred.camera)
        poses = [p for p in estimated if _all_finite(p)]
        if len(poses) != len(estimated):
            self._warn("non-finite", f"dropped {len(estimated) - len(poses)} pose(s) with NaN/inf values")
        solved = time.monotonic()
        if self.refiner is not None:
            poses = self._refine(poses, inferred)
        refined = time.monotonic()
        self._publish(poses, inferred.header)
        published = time.monotonic()
        timings = {**inferred.timings, "handoff": started - inferred.inferred, **stage_timings,
                   "publish": published - refined}
        if self.refiner is not None:
            timings["depth refinement"] = refined - solved
        if self._overlay_pub is not None and self._overlay_pub.get_subscription_count() > 0:
            self._overlay_pub.publish(convert.overlay_msg(inferred.rgb, poses, self.objects, inferred.camera,
                                                          inferred.header))
            timings["overlay"] = time.monotonic() - published
        timings["total"] = time.monotonic() - inferred.received
        with self._stats.lock:
            self._stats.processed += 1
            self._stats.total_processed += 1
            for stage, seconds in timings.items():
                self._stats.latencies[stage].append(seconds)

    def _refine(self, poses: list, inferred: _Inferred) -> list:
        """Return ``poses`` refined against the frame's depth image, or as they are when it is unusable.

        The refinement projects with K alone: on raw images lens distortion shifts its box and
        culling a little (rectified input, image_is_rectified, avoids that).
        """
        try:
            depth = convert.depth_image_to_metres(self._depth_for(inferred.header))
            refined, outcomes = self.refiner.refine(poses, depth, inferred.camera)
        except ValueError as exc:
            with self._stats.lock:
                self._stats.depth_unusable += 1
            kind = " ".join(str(exc).split()[:4])  # one throttle per kind of problem, not per value
            self._warn("depth:" + kind, f"poses published without depth refinement: {exc}")
            return poses
        with self._stats.lock:
            self._stats.depth_used += 1
            self._stats.refined += sum(o.refined for o in outcomes)
            self._stats.refusals += sum(not o.refined for o in outcomes)
        return refined

    def _publish(self, poses: list, header) -> None:
        """Publish ``poses`` (possibly none) on every output, stamped with the image's ``header``."""
        self._objects_pub.publish(convert.object_pose_array_msg(poses, header))
        self._poses_pub.publish(convert.pose_array_msg(poses, header))
        if self._tf is not None and poses:
            transforms = convert.transform_msgs(poses, header, self.config.frame_prefix)
            if TransformBroadcaster is not None:
                self._tf.sendTransform(transforms)
            else:
                self._tf.publish(TFMessage(transforms=transforms))
        if self._markers_pub is not None:
            markers, self._shown_markers = convert.marker_array_msg(
                poses, self.objects, header, self._shown_markers,
                mesh_scale=self.config.mesh_scale if self.config.marker_mesh else None)
            self._markers_pub.publish(markers)

    def _reject(self, reason: str) -> None:
        """Skip a frame whose image or camera_info is unusable; log once per kind per throttle period."""
        with self._stats.lock:
            self._stats.rejected += 1
            self._stats.period_rejected += 1
            self._stats.last_error = reason
        if self._throttle.ready("reject:" + reason.split(":")[0]):
            self.get_logger().error(f"frame skipped: {reason}")

    def _report_failure(self, exc: Exception) -> None:
        with self._stats.lock:
            self._stats.failed += 1
            self._stats.period_rejected += 1
            self._stats.last_error = f"{type(exc).__name__}: {exc}"
        if self._throttle.ready("failure:" + type(exc).__name__):
            self.get_logger().error(f"frame failed in the pipeline: {type(exc).__name__}: {exc}\n"
                                    f"{traceback.format_exc()}")

    def _warn(self, kind: str, message: str) -> None:
        if self._throttle.ready(kind):
            self.get_logger().warning(message)

    # -- diagnostics ------------------------------------------------------------------------------

    def _input_warnings(self) -> list[tuple[str, str]]:
        """Return (kind, message) for each current problem with the input streams; kind "" = not logged."""
        now, timeout = time.monotonic(), self.config.camera_info_timeout
        images_flowing = self._last_image_time is not None and now - self._last_image_time < timeout
        waiting = now - max(self._last_pair_time or self._start_time, self._start_time)
        infos_flowing = self._last_info_time is not None and now - self._last_info_time < timeout
        if not images_flowing:
            since = now - (self._last_image_time or self._start_time)
            if since < timeout:
                return []
            if not infos_flowing:
                return [("", f"no images on {self._image_topic} for {since:.1f} s")]
            # The camera is alive (camera_info arrives) but its images do not.
            hint = self._loss_hint() or (
                f"; large images may be lost on the way: give the camera and this node "
                f"config/fastdds_profile.xml, or for a reliable camera set "
                f"qos_overrides.{self._image_topic}.subscription.reliability: reliable")
            return [("lost-images", f"camera_info arrives on {self._info_topic} but no image on "
                     f"{self._image_topic} for {since:.1f} s{hint}")]
        if not infos_flowing:
            return [("no-camera-info", f"images arrive on {self._image_topic} but no camera_info on "
                     f"{self._info_topic} for {waiting:.1f} s: poses need the intrinsics")]
        if waiting >= timeout:
            return [("unmatched", f"image and camera_info stamps have not matched within sync_slop="
                     f"{self.config.sync_slop} s for {waiting:.1f} s")]
        return []

    def _loss_hint(self) -> str:
        """Return why images may be lost on the way, when DDS reported losses (else "")."""
        with self._stats.lock:
            lost = self._stats.lost_images
        if not lost:
            return ""
        return (f"; {lost} image(s) lost in transport: give the camera's process and this node "
                f"FASTDDS_DEFAULT_PROFILES_FILE=<share>/hrpose_ros/config/fastdds_profile.xml (Fast DDS's "
                f"default transports lose large images on best-effort links)")

    def _depth_values(self) -> dict[str, str]:
        """Return the depth refinement's counters for /diagnostics ({} without use_depth)."""
        if self.refiner is None:
            return {}
        with self._stats.lock:
            stats = self._stats
            return {"depth images received": str(stats.depth_frames),
                    "frames refined with depth": str(stats.depth_used),
                    "frames without usable depth": str(stats.depth_unusable),
                    "poses refined": str(stats.refined),
                    "poses kept from RGB (refinement refused)": str(stats.refusals)}

    def _publish_diagnostics(self) -> None:
        images, infos, processed, rejected, latencies = self._stats.take_period()
        period = self.config.diagnostics_period
        warnings = self._input_warnings()
        for kind, message in warnings:
            if kind:
                self._warn(kind, message)
        with self._stats.lock:
            dropped, total_rejected, failed = self._stats.dropped, self._stats.rejected, self._stats.failed
            last_error = self._stats.last_error
            total_images, total_processed = self._stats.total_images, self._stats.total_processed
            lost_images, lost_infos = self._stats.lost_images, self._stats.lost_camera_infos
        if lost_images > self._reported_lost:
            self._warn("lost-in-transport", f"images lost on the way to the node{self._loss_hint()}")
            warnings.append(("", f"{lost_images - self._reported_lost} image(s) lost in transport"))
        self._reported_lost = lost_images
        sync_dropped = sum(getattr(self._sync, "dropped", []))
        values = {
            "input rate (Hz)": f"{images / period:.2f}",
            "camera_info rate (Hz)": f"{infos / period:.2f}",
            "output rate (Hz)": f"{processed / period:.2f}",
            "images received": str(total_images),
            "frames processed": str(total_processed),
            "lost in transport (images)": str(lost_images),
            "lost in transport (camera_info)": str(lost_infos),
            "dropped frames (queue)": str(dropped),
            "unmatched messages (sync)": str(sync_dropped),
            "rejected frames": str(total_rejected),
            **self._depth_values(),
            "failed frames": str(failed),
            "last error": last_error,
        }
        for stage, seconds in latencies.items():
            values[f"latency {stage} (ms)"] = (f"mean {1e3 * np.mean(seconds):.1f} "
                                               f"max {1e3 * np.max(seconds):.1f}")
        if rejected:
            level, message = DiagnosticStatus.ERROR, f"{rejected} frame(s) rejected: {last_error}"
        elif warnings:
            level, message = DiagnosticStatus.WARN, "; ".join(message for _, message in warnings)
        else:
            level, message = DiagnosticStatus.OK, f"{processed / period:.1f} Hz"
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: pose estimation", message=message,
                                  hardware_id=self._info_topic,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)


def main(args=None) -> int:
    """Run pose_node until shutdown; return the exit code (1 when it cannot start)."""
    # OpenMP (torch's CPU threads) reads this once, when torch loads, which happens later, in
    # load_pipeline. PASSIVE: idle threads sleep instead of spinning, leaving the shared cores to
    # the decoding, PnP and ROS threads between frames (the ORT engine does the same, allow_spinning 0).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    rclpy.init(args=args)
    try:
        node = PoseNode()
    except StartupError as exc:
        rclpy.logging.get_logger("pose_node").fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 1
    except (KeyboardInterrupt, ExternalShutdownException, RuntimeError):  # RuntimeError: rclpy RCLError
        if rclpy.ok():
            raise
        return 0  # SIGINT/SIGTERM while starting: the context went away under the constructor
    executor = SingleThreadedExecutor()  # receiving and diagnostics only: the network has its own thread
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":  # python -m hrpose_ros.pose_node --ros-args ...
    sys.exit(main())
