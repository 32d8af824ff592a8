"""rosbag2 input and output for replay evaluation, through the pure-Python ``rosbags`` library.

A replay bag holds three topics (any names; the defaults below are what the converter
``hrpose-bop-to-bag`` writes):

- ``/camera/color/image_raw``: ``sensor_msgs/msg/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) or
  ``sensor_msgs/msg/CompressedImage`` (png or jpeg, image_transport's ``.../compressed``);
- ``/camera/color/camera_info``: ``sensor_msgs/msg/CameraInfo`` (K and plumb_bob or
  rational_polynomial distortion D of the raw image);
- ``/ground_truth/objects``: ``hrpose_ros/msg/ObjectPoseArray``, **the ground truth**: one
  message per image with the image's header stamp and frame_id, one ``ObjectPose`` per visible
  object instance (``class_id`` = BOP obj_id, ``class_name``, ``instance_id``, ``score`` = 1,
  ``pose`` = model frame in the camera optical frame, metres; keypoint fields empty). An image
  without objects still gets a message, with an empty list.

Frames are matched by header stamp: each image is paired with the ground truth carrying the
same stamp and with the camera_info of the same stamp (or else the latest one before it).
The package's own message types are registered in the rosbags typestore from ``msg/*.msg``
(the checkout's, or ``share/hrpose_ros/msg`` of an installed package). Messages are converted by
:mod:`hrpose_ros.ros_conversions`, the same code and checks as the live node's.

Read errors (a truncated or corrupt bag, a missing topic, no camera_info, frame ids that do
not match) raise :class:`BagError`, a ``ValueError`` naming the bag and the topic; the
frames yielded before it stay valid, so callers can keep partial results.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mcap.exceptions import EndOfFile, McapError
from mcap.records import Channel, DataEnd, Message, Schema
from mcap.stream_reader import StreamReader
from rosbags.rosbag2 import Reader, ReaderError, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from hrpose_ros import ros_conversions as convert
from hrpose_ros.types import CameraModel, ObjectPose, stamp_to_ns

__all__ = [
    "CAMERA_FRAME",
    "CAMERA_INFO_TOPIC",
    "DEFAULT_START_NS",
    "DEPTH_TOPIC",
    "GROUND_TRUTH_TOPIC",
    "IMAGE_TOPIC",
    "BagError",
    "BagFrame",
    "BagTopics",
    "BagWriter",
    "bag_topics",
    "hrpose_typestore",
    "read_frames",
    "resolve_topics",
]

_log = logging.getLogger(__name__)

IMAGE_TOPIC = "/camera/color/image_raw"
CAMERA_INFO_TOPIC = "/camera/color/camera_info"
DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"  # where RealSense drivers publish it
GROUND_TRUTH_TOPIC = "/ground_truth/objects"
CAMERA_FRAME = "camera_color_optical_frame"

# Bag stamps of converted scenes start at 1.7e9 s after the epoch: a plausible wall time,
# fixed so that converting a scene twice gives identical bags.
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
OBJECT_POSE_TYPE = "hrpose_ros/msg/ObjectPose"
OBJECT_POSE_ARRAY_TYPE = "hrpose_ros/msg/ObjectPoseArray"

_STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
_IMAGE_FORMATS = ("raw", *convert.COMPRESSED_FORMATS)
# Images held back while waiting for their camera_info / ground truth (a few frames at most).
_MAX_PENDING = 30


class BagError(ValueError):
    """A bag that cannot be read as a replay bag; names the bag and (when known) the topic."""

    def __init__(self, bag: Path | str, topic: str | None, reason: str):
        self.bag = Path(bag)
        self.topic = topic
        self.reason = reason
        where = f"bag {self.bag}" + (f", topic {topic}" if topic else "")
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class BagTopics:
    """The topic names of one replay bag; ``ground_truth`` is None for a bag without it, ``depth``
    (a depth image aligned to the colour image, 16UC1 mm or 32FC1 m) None for an RGB bag."""

    image: str = IMAGE_TOPIC
    camera_info: str = CAMERA_INFO_TOPIC
    ground_truth: str | None = GROUND_TRUTH_TOPIC
    depth: str | None = None


@dataclass(frozen=True)
class BagFrame:
    """One image of a bag: RGB pixels (H, W, 3) uint8, its camera, and its ground truth.

    ``index`` counts images in bag order from 0 (the evaluator's BOP ``im_id``);
    ``stamp_ns`` is the header stamp in nanoseconds; ``ground_truth`` holds one
    :class:`ObjectPose` per annotated instance (score 1), or is None without a ground-truth topic;
    ``depth`` is the aligned (H, W) float32 depth in metres (0 or NaN = none), None without a depth
    topic or when the frame has no depth image.
    """

    index: int
    stamp_ns: int
    frame_id: str
    image: np.ndarray
    camera: CameraModel
    ground_truth: tuple[ObjectPose, ...] | None
    depth: np.ndarray | None = None


def _msg_dirs() -> list[Path]:
    """Return the directories that may hold hrpose_ros's .msg files, most specific first."""
    dirs = [Path(__file__).resolve().parent.parent / "msg"]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            dirs.append(Path(prefix) / "share" / "hrpose_ros" / "msg")
    return dirs


def hrpose_typestore() -> Typestore:
    """Return a ROS 2 Jazzy typestore with hrpose_ros/msg/ObjectPose and ObjectPoseArray added."""
    typestore = get_typestore(Stores.ROS2_JAZZY)
    for msg_dir in _msg_dirs():
        paths = sorted(msg_dir.glob("*.msg"))
        if not paths:
            continue
        types = {}
        for path in paths:
            types.update(get_types_from_msg(path.read_text(), f"hrpose_ros/msg/{path.stem}"))
        typestore.register(types)
        missing = {OBJECT_POSE_TYPE, OBJECT_POSE_ARRAY_TYPE} - set(typestore.types)
        if not missing:
            return typestore
    searched = ", ".join(str(d) for d in _msg_dirs())
    raise ValueError(
        f"hrpose_ros message definitions (ObjectPose.msg, ObjectPoseArray.msg) not found in: {searched}"
    )


# --- reading ---------------------------------------------------------------------------------


def _recorded_typestores(bag: Path, wanted: set[str]) -> dict[str, Typestore]:
    """Return {topic: typestore} for the hrpose_ros topics of ``wanted``, built from the definitions
    the bag recorded, so bags written before a field was added to ObjectPose stay readable
    ({} for a bag that must be salvaged: it is then read with this checkout's definitions)."""
    try:
        reader = _open_reader(bag)
    except BagError:
        return {}
    stores = {}
    try:
        for connection in reader.connections:
            msgdef = getattr(connection, "msgdef", None)
            if (connection.topic not in wanted or not connection.msgtype.startswith("hrpose_ros/")
                    or msgdef is None or msgdef.format.name != "MSG" or not msgdef.data.strip()):
                continue
            store = get_typestore(Stores.ROS2_JAZZY)
            store.register(get_types_from_msg(msgdef.data, connection.msgtype))
            stores[connection.topic] = store
    finally:
        reader.close()
    return stores


def _open_reader(bag: Path) -> Reader:
    if not bag.exists():
        raise BagError(bag, None, "no such file or directory")
    try:
        reader = Reader(bag)
        reader.open()
    except (ReaderError, OSError, KeyError, ValueError) as exc:
        raise BagError(bag, None, f"cannot be opened as a rosbag2 (truncated or corrupt?): {exc}") from exc
    return reader


def _mcap_files(bag: Path) -> list[Path]:
    if bag.is_file():
        return [bag] if bag.suffix == ".mcap" else []
    return sorted(bag.glob("*.mcap")) if bag.is_dir() else []


class _TruncatedError(Exception):
    """The mcap file ends inside a record (a recorder that did not finish)."""


def _salvage_mcap(files: list[Path]) -> Iterator[tuple[str, str, bytes]]:
    """Yield (topic, msgtype, cdr) of every complete message of unindexed mcap files, in file order.

    mcap's StreamReader reads records front to back without the summary and footer that
    rosbags needs, so a file whose recorder died still gives its complete records up to the
    cut (whole chunks only); raises _TruncatedError at the cut.
    """
    for path in files:
        schemas: dict[int, str] = {}
        channels: dict[int, tuple[str, str]] = {}
        with path.open("rb") as stream:
            try:
                for record in StreamReader(stream).records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record.name
                    elif isinstance(record, Channel):
                        channels[record.id] = (record.topic, schemas.get(record.schema_id, ""))
                    elif isinstance(record, Message):
                        channel = channels.get(record.channel_id)
                        if channel is None:
                            unknown = record.channel_id
                            raise ValueError(f"{path.name}: message on unknown mcap channel {unknown}")
                        yield (*channel, record.data)
                    elif isinstance(record, DataEnd):  # the summary section follows: no more messages
                        break
            except EndOfFile as exc:
                raise _TruncatedError(f"{path.name}: the file ends inside a record") from exc
            except McapError as exc:
                raise ValueError(f"{path.name}: not a readable mcap file ({exc})") from exc


def _salvage_reason(bag: Path, exc: BagError) -> list[Path]:
    """Return the mcap files to salvage when rosbags could not open ``bag``; re-raise ``exc`` otherwise."""
    files = _mcap_files(bag)
    if not files:
        raise exc
    _log.warning(
        "%s; reading the complete messages of %s in file order", exc, ", ".join(f.name for f in files)
    )
    return files


def _raw_messages(bag: Path, wanted: set[str]) -> Iterator[tuple[str, str, bytes]]:
    """Yield (topic, msgtype, cdr) of ``wanted`` topics in log-time order (file order when salvaged)."""
    try:
        reader = _open_reader(bag)
    except BagError as exc:
        for topic, msgtype, raw in _salvage_mcap(_salvage_reason(bag, exc)):
            if topic in wanted:
                yield topic, msgtype, raw
        return
    try:
        connections = [c for c in reader.connections if c.topic in wanted]
        missing = sorted(wanted - {c.topic for c in connections})
        if missing:
            raise BagError(bag, missing[0], f"no such topic; the bag has: {sorted(reader.topics)}")
        for connection, _, raw in reader.messages(connections=connections):
            yield connection.topic, connection.msgtype, raw
    finally:
        reader.close()


def bag_topics(bag: Path | str) -> dict[str, tuple[str, int]]:
    """Return {topic: (message type, message count)} of a rosbag2 directory or file.

    An mcap bag whose recorder did not finish (no index, no footer) is scanned instead,
    counting its complete messages.
    """
    bag = Path(bag)
    try:
        reader = _open_reader(bag)
    except BagError as exc:
        files = _salvage_reason(bag, exc)
        counts: dict[str, tuple[str, int]] = {}
        try:
            for topic, msgtype, _ in _salvage_mcap(files):
                counts[topic] = (msgtype, counts.get(topic, (msgtype, 0))[1] + 1)
        except _TruncatedError as cut:
            if not counts:
                raise BagError(bag, None, f"truncated before its first complete message ({cut})") from cut
        except ValueError as scan_exc:
            raise BagError(bag, None, f"{exc.reason}; scanning it failed too: {scan_exc}") from scan_exc
        return counts
    try:
        return {name: (info.msgtype, info.msgcount) for name, info in reader.topics.items()}
    finally:
        reader.close()


def _pick(
    bag: Path,
    topics: dict[str, tuple[str, int]],
    wanted: str | None,
    types: tuple[str, ...],
    role: str,
    preferred: str,
) -> str:
    """Return the topic for ``role``: ``wanted`` if given, else the one of ``types`` (``preferred`` first)."""
    listing = ", ".join(f"{t} [{m}]" for t, (m, _) in sorted(topics.items())) or "none"
    if wanted is not None:
        if wanted not in topics:
            raise BagError(bag, wanted, f"no such topic ({role}); the bag has: {listing}")
        if topics[wanted][0] not in types:
            raise BagError(
                bag, wanted, f"{role} topic has type {topics[wanted][0]}, expected one of {list(types)}"
            )
        return wanted
    candidates = sorted(t for t, (m, _) in topics.items() if m in types)
    if preferred in candidates:
        return preferred
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise BagError(bag, preferred, f"no {role} topic (type {' or '.join(types)}); the bag has: {listing}")
    raise BagError(bag, None, f"several {role} topics {candidates}: choose one with the topic option")


def resolve_topics(
    bag: Path | str,
    image: str | None = None,
    camera_info: str | None = None,
    ground_truth: str | None = None,
    require_ground_truth: bool = True,
    depth: str | None = None,
) -> BagTopics:
    """Return the BagTopics to read: the given names, checked, or the bag's only topic of each type.

    ``depth`` is read only when named (an RGB-D bag has two Image topics).
    """
    bag = Path(bag)
    topics = bag_topics(bag)
    colour = {t: v for t, v in topics.items() if t != depth}  # the depth images are no colour candidates
    image_topic = _pick(bag, colour if image is None else topics, image, (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE),
                        "image", IMAGE_TOPIC)
    info_topic = _pick(bag, topics, camera_info, (CAMERA_INFO_TYPE,), "camera_info", CAMERA_INFO_TOPIC)
    gt_topic = None
    if require_ground_truth or ground_truth is not None:
        gt_topic = _pick(
            bag, topics, ground_truth, (OBJECT_POSE_ARRAY_TYPE,), "ground truth", GROUND_TRUTH_TOPIC
        )
    elif GROUND_TRUTH_TOPIC in topics and topics[GROUND_TRUTH_TOPIC][0] == OBJECT_POSE_ARRAY_TYPE:
        gt_topic = GROUND_TRUTH_TOPIC
    depth_topic = None
    if depth is not None:
        depth_topic = _pick(bag, topics, depth, (IMAGE_TYPE,), "depth", DEPTH_TOPIC)
        if depth_topic == image_topic:
            raise BagError(bag, depth, "the depth topic is the image topic")
    return BagTopics(image=image_topic, camera_info=info_topic, ground_truth=gt_topic, depth=depth_topic)


def read_frames(bag: Path | str, topics: BagTopics | None = None) -> Iterator[BagFrame]:
    """Yield every image of ``bag`` in bag order as a BagFrame (RGB, camera, ground truth); none is dropped.

    ``topics`` None resolves them with :func:`resolve_topics` (ground truth required).
    Raises BagError (naming bag and topic) on unreadable messages, a truncated file, images
    without camera_info or ground truth, or frame ids that differ between the three topics;
    frames yielded before the error are complete and correct.
    """
    bag = Path(bag)
    topics = topics or resolve_topics(bag)
    typestore = hrpose_typestore()
    wanted = {topics.image, topics.camera_info} | ({topics.ground_truth} if topics.ground_truth else set())
    wanted |= {topics.depth} if topics.depth else set()
    recorded = _recorded_typestores(bag, wanted)

    # Messages come in log-time order, and a recorder may log an image's camera_info and
    # ground truth just before or after it: hold images until both partners are known.
    cameras: dict[int, tuple[CameraModel, str]] = {}
    latest_camera: tuple[CameraModel, str] | None = None
    truths: dict[int, tuple[tuple[ObjectPose, ...], str]] = {}
    depths: dict[int, np.ndarray] = {}
    pending: list[tuple[int, str, np.ndarray]] = []  # (stamp, frame_id, image) in bag order
    index = 0
    counts = dict.fromkeys(wanted, 0)

    def ready(stamp: int) -> bool:
        has_camera = stamp in cameras or latest_camera is not None
        return (has_camera and (topics.ground_truth is None or stamp in truths)
                and (topics.depth is None or stamp in depths))

    def emit(stamp: int, frame_id: str, image: np.ndarray) -> BagFrame:
        nonlocal index
        if stamp not in cameras and latest_camera is None:
            raise BagError(
                bag,
                topics.camera_info,
                f"no camera_info before or with image {index} (stamp {stamp} ns) on {topics.image}",
            )
        camera, camera_frame = cameras.get(stamp) or latest_camera
        if camera_frame != frame_id:
            raise BagError(
                bag,
                topics.camera_info,
                f"frame_id {camera_frame!r} differs from the image's {frame_id!r} on {topics.image}",
            )
        try:
            convert.check_image_size(image.shape[1], image.shape[0], (camera.width, camera.height))
        except ValueError as exc:
            raise BagError(bag, topics.camera_info, f"{exc} at stamp {stamp} ns on {topics.image}") from exc
        truth = None
        if topics.ground_truth is not None:
            if stamp not in truths:
                raise BagError(
                    bag,
                    topics.ground_truth,
                    f"no ground truth with the stamp {stamp} ns of image {index} on {topics.image}",
                )
            truth, truth_frame = truths.pop(stamp)
            if truth_frame != frame_id:
                raise BagError(
                    bag,
                    topics.ground_truth,
                    f"frame_id {truth_frame!r} differs from the image's {frame_id!r} on {topics.image}",
                )
        frame = BagFrame(
            index=index, stamp_ns=stamp, frame_id=frame_id, image=image, camera=camera, ground_truth=truth,
            depth=depths.pop(stamp, None),
        )
        index += 1
        return frame

    messages = _raw_messages(bag, wanted)
    while True:
        topic = None
        try:
            item = next(messages, None)
            if item is None:
                break
            topic, msgtype, raw = item
            msg = recorded.get(topic, typestore).deserialize_cdr(raw, msgtype)
        except BagError:
            raise
        except _TruncatedError as exc:
            reason = (
                f"truncated: the file ends after {counts[topics.image]} complete images on this topic, "
                f"{index} of them with their camera_info and ground truth ({exc})"
            )
            raise BagError(bag, topics.image, reason) from exc
        except Exception as exc:  # rosbags and CDR errors all mean: this message is unreadable
            name = topic or ", ".join(sorted(wanted))
            done = f"after {counts[topic]} good messages on it" if topic else "while reading"
            raise BagError(
                bag,
                name,
                f"unreadable message {done} (truncated or corrupt bag?): {type(exc).__name__}: {exc}",
            ) from exc
        try:
            stamp = stamp_to_ns(msg.header.stamp)
            if topic == topics.image:
                pending.append((stamp, msg.header.frame_id, convert.image_to_rgb(msg)))
            elif topic == topics.camera_info:
                latest_camera = (convert.camera_model_from_info(msg, rectified=False), msg.header.frame_id)
                cameras[stamp] = latest_camera
            elif topic == topics.depth:
                depths[stamp] = convert.depth_image_to_metres(msg)
            else:
                truths[stamp] = (convert.poses_from_msg(msg), msg.header.frame_id)
        except Exception as exc:  # an intact message that the conversion refuses, as the live node would
            reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            raise BagError(bag, topic, f"message {counts[topic] + 1}: {reason}") from exc
        counts[topic] += 1
        # An image waits for its partners at most _MAX_PENDING messages; then emit() names what is missing.
        while pending and (ready(pending[0][0]) or len(pending) > _MAX_PENDING):
            yield emit(*pending.pop(0))
        for table in (cameras, truths, depths):
            if len(table) > 4 * _MAX_PENDING:  # only recent stamps can still be asked for
                for old in sorted(table)[:-_MAX_PENDING]:
                    del table[old]

    for topic in sorted(wanted):
        if counts[topic] == 0:
            raise BagError(bag, topic, "no messages on this topic")
    while pending:
        yield emit(*pending.pop(0))


# --- writing ---------------------------------------------------------------------------------


class BagWriter:
    """Write replay bags: per frame an image, its camera_info, its ground truth and (when
    ``topics.depth`` is set) its aligned depth image, same stamp.

    ``storage`` "mcap" (zstd-compressed chunks when ``zstd``) or "sqlite3"; ``image_format``
    "raw" (sensor_msgs/Image rgb8), "png" or "jpeg" (sensor_msgs/CompressedImage on
    ``<image topic>/compressed``). Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        path: Path | str,
        storage: str = "mcap",
        image_format: str = "raw",
        zstd: bool = False,
        topics: BagTopics = BagTopics(),
        frame_id: str = CAMERA_FRAME,
        jpeg_quality: int = 95,
    ):
        if storage not in _STORAGES:
            raise ValueError(f"storage: expected one of {sorted(_STORAGES)}, got {storage!r}")
        if image_format not in _IMAGE_FORMATS:
            raise ValueError(f"image_format: expected one of {_IMAGE_FORMATS}, got {image_format!r}")
        if zstd and storage != "mcap":
            raise ValueError("zstd: chunk compression needs storage 'mcap'")
        self.path = Path(path)
        if self.path.exists():
            raise ValueError(f"bag {self.path}: already exists; choose a new path")
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.frame_id = frame_id
        image_topic = topics.image
        if image_format != "raw" and not image_topic.endswith("/compressed"):
            image_topic += "/compressed"
        self.topics = BagTopics(
            image=image_topic, camera_info=topics.camera_info, ground_truth=topics.ground_truth
        )
        self.typestore = hrpose_typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=_STORAGES[storage])
        if zstd:
            # Chunk compression inside the mcap file, as rosbag2's own zstd storage presets do:
            # any mcap reader (ros2 bag play, Foxglove) reads it without a decompression step.
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._writer.open()
        image_type = IMAGE_TYPE if image_format == "raw" else COMPRESSED_IMAGE_TYPE
        self._image = self._writer.add_connection(image_topic, image_type, typestore=self.typestore)
        self._info = self._writer.add_connection(
            topics.camera_info, CAMERA_INFO_TYPE, typestore=self.typestore
        )
        self._depth = None
        if topics.depth:
            self._depth = self._writer.add_connection(topics.depth, IMAGE_TYPE, typestore=self.typestore)
        self._truth = None
        if topics.ground_truth:
            self._truth = self._writer.add_connection(
                topics.ground_truth, OBJECT_POSE_ARRAY_TYPE, typestore=self.typestore
            )
        self.frames_written = 0

    def write_frame(
        self,
        stamp_ns: int,
        image: np.ndarray,
        camera: CameraModel,
        ground_truth: Sequence[ObjectPose] | None = None,
        depth: np.ndarray | None = None,
    ) -> None:
        """Write one frame: image (H, W, 3) uint8 RGB, camera_info, ground truth and (H, W) ``depth`` in
        metres (16UC1 millimetres, when the bag has a depth topic), all stamped ``stamp_ns``."""
        image = np.asarray(image)
        if image.shape[:2] != (camera.height, camera.width):
            raise ValueError(
                f"image: shape {image.shape} does not match camera {camera.width}x{camera.height}"
            )
        if (ground_truth is None) != (self._truth is None):
            raise ValueError("ground_truth: give it exactly when the bag has a ground-truth topic")
        if (depth is None) != (self._depth is None):
            raise ValueError("depth: give it exactly when the bag has a depth topic")
        if depth is not None and np.shape(depth) != (camera.height, camera.width):
            raise ValueError(f"depth: shape {np.shape(depth)} does not match camera "
                             f"{camera.width}x{camera.height}")
        ts = self.typestore
        header = convert.header_msg(stamp_ns, self.frame_id, ts.types)
        if self.image_format == "raw":
            image_msg = convert.rgb_to_image(image, header, ts.types)
        else:
            image_msg = convert.compressed_image_msg(
                image, header, self.image_format, self.jpeg_quality, ts.types
            )
        self._writer.write(self._image, stamp_ns, ts.serialize_cdr(image_msg, self._image.msgtype))
        info_msg = convert.camera_info_msg(camera, header, ts.types)
        self._writer.write(self._info, stamp_ns, ts.serialize_cdr(info_msg, CAMERA_INFO_TYPE))
        if self._depth is not None:
            depth_msg = convert.depth_image_msg(depth, header, "16UC1", ts.types)
            self._writer.write(self._depth, stamp_ns, ts.serialize_cdr(depth_msg, IMAGE_TYPE))
        if self._truth is not None:
            truth_msg = convert.object_pose_array_msg(ground_truth, header, ts.types)
            self._writer.write(self._truth, stamp_ns, ts.serialize_cdr(truth_msg, OBJECT_POSE_ARRAY_TYPE))
        self.frames_written += 1

    def close(self) -> None:
        """Finish the bag (writes the index and metadata.yaml)."""
        self._writer.close()
        _log.info("wrote %d frames to %s", self.frames_written, self.path)

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
