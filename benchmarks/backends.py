"""What is measured: the checkpoint, its ONNX and int8 models, one engine per backend."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.frames import Frame
from benchmarks.machine import rss_mb
from benchmarks.settings import Settings
from hrpose_ros.checkpoints import Checkpoint, save_checkpoint
from hrpose_ros.codec import CodecConfig, KeypointCodec
from hrpose_ros.engines import OnnxEngine, TorchEngine
from hrpose_ros.networks import HRPose, HRPoseConfig
from hrpose_ros.pipeline import DEFAULT_WEIGHTS, PosePipeline
from hrpose_ros.types import ObjectModel
from training.quantize_int8 import calibration_images, int8_path_for, quantize_int8

logger = logging.getLogger("benchmark")

ORT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def benchmark_objects() -> list[ObjectModel]:
    """Return the shipped default object set when installed, else the two toy boxes."""
    try:
        from hrpose_ros.checkpoints import compact_points
        from hrpose_ros.data.objects import load_default_objects

        return [
            replace(o, points=compact_points(o.points))
            for o in sorted(load_default_objects(), key=lambda o: o.obj_id)
        ]
    except (ImportError, ValueError) as exc:
        logger.info("default object set unavailable (%s): using the toy boxes", exc)
        from training.toy_data import toy_objects

        return toy_objects()


def random_checkpoint(path: Path, variant: str, input_size: tuple[int, int], seed: int = 0) -> Path:
    """Write a checkpoint with random weights and a zero output layer to ``path`` and return it.

    The zero output layer makes every map empty, so a live node running it decodes nothing
    (random maps would decode into hundreds of spurious instances); the arithmetic per frame
    is the same as for trained weights.
    """
    objects = benchmark_objects()
    torch.manual_seed(seed)
    config = HRPoseConfig(variant=variant, num_classes=len(objects))
    model = HRPose(config)
    with torch.no_grad():
        model.regressor[-1].weight.zero_()
        model.regressor[-1].bias.zero_()
    checkpoint = Checkpoint(
        model_config=config,
        codec_config=CodecConfig(num_classes=len(objects), stride=HRPose.stride),
        input_size=input_size,
        objects=objects,
        state_dict=model.state_dict(),
        history={"random_weights": True, "seed": seed},
    )
    return save_checkpoint(path, checkpoint)


def resolve_checkpoint(args, out: Path) -> Path:
    """Return --checkpoint, else the shipped weights when present, else a new random-weights checkpoint."""
    if args.checkpoint is not None:
        return args.checkpoint
    if DEFAULT_WEIGHTS.is_file():
        return DEFAULT_WEIGHTS
    try:
        width, height = (int(v) for v in args.input_size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--input-size: expected WxH such as 640x480, got {args.input_size!r}") from None
    if width % 32 or height % 32:
        raise ValueError(f"--input-size: width and height must be multiples of 32, got {width}x{height}")
    return random_checkpoint(
        out / f"random_{args.variant}_{width}x{height}.pt", args.variant, (width, height)
    )


def int8_model(args, settings: Settings, onnx_path: Path, frames: Sequence[Frame]) -> Path | None:
    """Return the int8 QDQ model quantised from ``onnx_path`` (None with --no-int8)."""
    if args.no_int8:
        return None
    calib_dir = args.calib_dir or (Path("data/train") if Path("data/train").is_dir() else None)
    if calib_dir is not None:
        calibration = calibration_images(calib_dir, settings.calib_frames)
        settings.notes.append(f"int8 calibrated on {len(calibration)} frames of {calib_dir}")
    else:
        calibration = [f.image for f in frames[: settings.calib_frames]]
        settings.notes.append(f"int8 calibrated on {len(calibration)} of the benchmark's synthetic frames")
    # Output convs in fp32: the int8 maps hold fewer stray peaks, so decode + PnP cost half.
    settings.notes.append("int8: QDQ with the 3 output convolutions in fp32 (quantize_int8 fp32_head)")
    return quantize_int8(onnx_path, calibration, int8_path_for(onnx_path), fp32_head=True)


class GroundTruthMapsPipeline(PosePipeline):
    """PosePipeline whose decode stage reads ``maps`` (set per frame) instead of the network output.

    The network still runs, and is timed, in ``estimate``; used when the weights are random.
    """

    maps: tuple[np.ndarray, np.ndarray] | None = None

    def estimate(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the engine on ``batch``, then return the frame's ground-truth maps."""
        self.engine(batch)
        return self.maps


@dataclass
class Backend:
    """One way of running the network: its label, pipeline, what it is, or why it was skipped."""

    label: str
    pipeline: PosePipeline | None
    detail: str = ""
    skipped: str = ""
    rss_increase_mb: float = 0.0
    node_backend: str = ""  # pose_node's `backend` parameter for it ("" = not selectable in the node)
    node_model: str = ""  # pose_node's `model_path` for it
    node_precision: str = "fp32"  # pose_node's `precision` for it
    node_estimator: str = "hrpose"  # pose_node's `estimator` for it


def build_backends(
    checkpoint_path: Path,
    checkpoint: Checkpoint,
    onnx_path: Path,
    int8_path: Path | None,
    use_maps: bool,
    device: str,
    threads: int,
    cpu: dict,
) -> list[Backend]:
    """Return the backends: torch fp32, torch bf16 + channels_last, ORT fp32, ORT int8 (+ no spinning)."""
    pipeline_cls = GroundTruthMapsPipeline if use_maps else PosePipeline
    codec = KeypointCodec(checkpoint.codec_config)

    def wrap(engine) -> PosePipeline:
        return pipeline_cls(engine, codec, checkpoint.objects, checkpoint.input_size)

    backends = []

    def add(
        label: str,
        make: Callable[[], tuple[object, str]],
        node_backend="",
        node_model="",
        skipped="",
        node_precision="fp32",
    ):
        if skipped:
            backends.append(Backend(label, None, skipped=skipped))
            return
        before = rss_mb()
        engine, detail = make()
        backends.append(
            Backend(
                label,
                wrap(engine),
                detail,
                node_backend=node_backend,
                node_model=node_model,
                node_precision=node_precision,
            )
        )
        backends[-1].rss_increase_mb = rss_mb() - before

    add(
        "torch fp32",
        lambda: (TorchEngine(checkpoint.build_model(), device), f"torch {torch.__version__} eager, {device}"),
        "torch",
        str(checkpoint_path),
    )
    bf16_ok = device != "cpu" or cpu["bf16_hardware"]
    add(
        "torch bf16+CL",
        lambda: (
            TorchEngine(checkpoint.build_model(), device, precision="bf16"),
            f"autocast bf16, channels_last{' (AMX)' if cpu['amx'] and device == 'cpu' else ''}",
        ),
        "torch",
        str(checkpoint_path),
        node_precision="bf16",
        skipped=""
        if bf16_ok
        else "skipped: this CPU has no bf16 units (avx512_bf16/amx_bf16); emulated bf16 is slower than fp32",
    )

    def ort(path: Path, what: str, spinning: bool = False):
        # hrpose_ros.engines' default: idle intra-op threads block instead of spinning (on 2 cores
        # spinning workers steal the CPU from the decode, PnP and ROS work that follows a run).
        engine = OnnxEngine(path, providers=ORT_PROVIDERS, threads=threads, spinning=spinning)
        return engine, f"{what}, {engine.session.get_providers()[0]}"

    add("ORT fp32", lambda: ort(onnx_path, "ONNX Runtime fp32"), "onnxruntime", str(onnx_path))
    if int8_path is not None:
        add(
            "ORT int8",
            lambda: ort(int8_path, "static QDQ U8S8 per-channel, fp32 output convs"),
            "onnxruntime",
            str(int8_path),
        )
        add(
            "ORT int8 spinning",
            lambda: ort(int8_path, "as ORT int8 with ORT's default allow_spinning=1", spinning=True),
        )
    else:
        add("ORT int8", None, skipped="skipped: --no-int8")
    return backends
