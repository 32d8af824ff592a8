"""Per-stage latency in process: stages per backend, decode + PnP vs instances, cost vs input size."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.backends import ORT_PROVIDERS, Backend
from benchmarks.frames import CAMERA, Frame, encode_maps, scene_instances
from benchmarks.ros_messages import RosSide
from benchmarks.settings import Settings
from benchmarks.timing import time_calls
from hrpose_ros.checkpoints import Checkpoint
from hrpose_ros.codec import KeypointCodec
from hrpose_ros.engines import OnnxEngine, TorchEngine
from hrpose_ros.letterbox import letterbox
from hrpose_ros.onnx_export import export_onnx
from hrpose_ros.pipeline import PosePipeline

INSTANCE_COUNTS = (1, 5, 10, 20)
STAGES = ("message → image", "preprocess", "inference", "peaks + grouping", "PnP", "message build + publish")
PIPELINE_STAGES = {
    "preprocess": "preprocess",
    "inference": "inference",
    "decode": "peaks + grouping",
    "pnp": "PnP",
}
# The crop estimator's last_timings keys -> stage names (--estimator crops).
CROP_PIPELINE_STAGES = {
    "detection": "detection",
    "crops": "crops",
    "inference": "inference",
    "decode": "decode",
    "pnp": "PnP",
    "recrop": "recrop",  # 0 without the second keypoint pass
    "refine": "refine",  # 0 without a refiner
}


def measure_stages(
    backends: Sequence[Backend],
    frames: Sequence[Frame],
    ros: RosSide,
    count: int,
    warmup: int,
    block: int = 10,
    pipeline_stages: dict[str, str] = PIPELINE_STAGES,  # noqa: B006 - read only
):
    """Return {backend label: {stage: seconds list}} and {backend label: poses found per frame}.

    One frame = what pose_node does per image: message -> image, the pipeline, message build +
    publish. Backends take turns in blocks of ``block`` frames, each block after one untimed
    frame: a load change on the shared machine hits every backend alike, while the thread pools
    of one engine (ONNX Runtime and OpenMP workers spin for a while after each run) do not
    steal the cores from the next engine's timed frames.
    """
    from hrpose_ros import ros_conversions as convert

    stages = ("message → image", *pipeline_stages.values(), "message build + publish", "frame")
    samples = {b.label: {s: [] for s in stages} for b in backends}
    found = {b.label: [] for b in backends}
    messages = [ros.messages(f.image, f.camera, 1_700_000_000_000_000_000 + i) for i, f in enumerate(frames)]

    def run(backend: Backend, index: int, record: bool) -> None:
        frame = frames[index % len(frames)]
        image_msg, info_msg = messages[index % len(frames)]
        pipeline = backend.pipeline
        pipeline.maps = frame.maps
        t0 = time.perf_counter()
        convert.check_image_matches_camera_info(image_msg, info_msg)
        camera = convert.camera_model_from_info(info_msg, rectified=False)
        rgb = convert.image_to_rgb(image_msg)
        t1 = time.perf_counter()
        poses = pipeline(rgb, camera)
        t2 = time.perf_counter()
        ros.publish(poses, image_msg.header)
        t3 = time.perf_counter()
        if not record:
            return
        s = samples[backend.label]
        s["message → image"].append(t1 - t0)
        for key, stage in pipeline_stages.items():
            s[stage].append(pipeline.last_timings.get(key, 0.0))
        s["message build + publish"].append(t3 - t2)
        s["frame"].append(t3 - t0)
        found[backend.label].append(len(poses))

    for backend in backends:
        for i in range(warmup):
            run(backend, i, record=False)
    bar = tqdm(total=count * len(backends), desc="stages (backends in turn)", unit="frame")
    done = 0
    while done < count:
        size = min(block, count - done)
        for backend in backends:
            run(backend, done, record=False)
            for i in range(done, done + size):
                run(backend, i, record=True)
            bar.update(size)
        done += size
    bar.close()
    return samples, found


def measure_instances(pipeline: PosePipeline, objects, codec, input_size, repeats: int, seed: int = 1):
    """Return {instances: {"decode": seconds, "pnp": seconds, "found": n}} on encoded ground-truth maps."""
    rng = np.random.default_rng(seed)
    width, height = input_size
    box = letterbox(np.zeros((CAMERA.height, CAMERA.width, 3), np.uint8), width, height)[1]
    out = {}
    for count in INSTANCE_COUNTS:
        chosen = scene_instances(objects, count, CAMERA, rng)
        belief, vectors = encode_maps(codec, objects, chosen, CAMERA, input_size)
        decode_s, pnp_s, found = [], [], 0
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            instances = pipeline.decode(belief[0], vectors[0], box)
            t1 = time.perf_counter()
            poses = pipeline.solve(instances, CAMERA)
            t2 = time.perf_counter()
            decode_s.append(t1 - t0)
            pnp_s.append(t2 - t1)
            found = len(poses)
        out[count] = {
            "decode": decode_s[1:],
            "pnp": pnp_s[1:],
            "total": np.add(decode_s, pnp_s)[1:].tolist(),
            "found": found,
        }
    return out


def measure_input_sizes(checkpoint: Checkpoint, out_dir: Path, settings: Settings, args, cpu: dict):
    """Return {"WxH": {engine label: seconds list, "decode+pnp": seconds list}} per network input size.

    torch runs every size from one model; ONNX Runtime (``settings.with_ort_sizes``) gets an
    export per size (static shapes run faster than dynamic ones here). Decode + PnP run on the
    codec's maps of 10 instances at each size.
    """
    device, repeats, objects = args.device, settings.size_repeats, checkpoint.objects
    codec = KeypointCodec(checkpoint.codec_config)
    engines = {"torch fp32": TorchEngine(checkpoint.build_model(), device)}
    if device != "cpu" or cpu["bf16_hardware"]:
        engines["torch bf16+CL"] = TorchEngine(checkpoint.build_model(), device, precision="bf16")
    results = {}
    for width, height in tqdm(settings.input_sizes, desc="input sizes", unit="size"):
        x = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
        row = {name: time_calls(lambda e=engine, x=x: e(x), repeats) for name, engine in engines.items()}
        if settings.with_ort_sizes:
            sized = replace(checkpoint, input_size=(width, height))
            path = export_onnx(sized, out_dir / f"size_{width}x{height}.onnx")
            engine = OnnxEngine(path, providers=ORT_PROVIDERS, threads=args.threads)  # no spinning
            row["ORT fp32"] = time_calls(lambda e=engine, x=x: e(x), repeats)
            del engine
        pipeline = PosePipeline(None, codec, objects, (width, height))
        chosen = scene_instances(objects, 10, CAMERA, np.random.default_rng(2))
        belief, vectors = encode_maps(codec, objects, chosen, CAMERA, (width, height))
        box = letterbox(np.zeros((CAMERA.height, CAMERA.width, 3), np.uint8), width, height)[1]
        row["decode+pnp (10 instances)"] = time_calls(
            lambda p=pipeline, b=belief, v=vectors, bx=box: p.solve(p.decode(b[0], v[0], bx), CAMERA), repeats
        )
        results[f"{width}x{height}"] = row
    return results
