"""How much the benchmark measures: the full run (>= 100 frames per measurement) or --quick."""

from __future__ import annotations

from dataclasses import dataclass, field

INPUT_SIZES = ((320, 256), (480, 352), (640, 480), (960, 704))


@dataclass
class Settings:
    """How much to measure: full (>= 100 frames per measurement) or quick."""

    frames: int = 100
    warmup: int = 5
    node_frames: int = 100
    open_loop_seconds: float = 10.0
    repeats: int = 50
    size_repeats: int = 10
    calib_frames: int = 16
    node_backends: tuple[str, ...] = ("torch fp32", "torch bf16+CL", "ORT fp32", "ORT int8")
    with_ort_sizes: bool = True
    transport_check_frames: int = 10  # closed-loop frames of one node with the other DDS transport
    input_sizes: tuple[tuple[int, int], ...] = INPUT_SIZES
    matmul_size: int = 2048  # the GFLOP/s reference matmul's side
    notes: list[str] = field(default_factory=list)


QUICK = Settings(
    frames=5,
    warmup=1,
    node_frames=5,
    open_loop_seconds=0.0,
    repeats=5,
    size_repeats=2,
    calib_frames=2,
    node_backends=("torch fp32",),
    with_ort_sizes=False,
    transport_check_frames=0,
    input_sizes=((320, 256), (640, 480)),
    matmul_size=256,
)
