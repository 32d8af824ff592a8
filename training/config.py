"""Training configuration: defaults are the paper's (Guan et al., Sec. IV.1); named recipes override them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hrpose_ros.devices import resolve_device
from hrpose_ros.networks import BACKBONES

__all__ = ["RECIPES", "STAGES", "TrainConfig", "class_weight_array", "parse_class_weights", "recipe"]

# Stage -> (network variant, uses a teacher). Teacher and student train on Eq. 3 alone,
# student_kd on Eq. 7 with the frozen teacher.
STAGES: dict[str, tuple[str, bool]] = {
    "teacher": ("teacher", False),
    "student": ("student", False),
    "student_kd": ("student", True),
}


def parse_class_weights(text: str) -> dict[str, float]:
    """Return {object name: weight} from ``"duck=3,mug=2.5"``; ValueError saying which item is wrong."""
    weights: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = 0.0
        if not (sep and name.strip() and np.isfinite(weight) and weight > 0):
            raise ValueError(
                f"crop_class_weights: expected NAME=WEIGHT items (weight a positive number) joined "
                f"by commas, e.g. 'duck=3,mug=3', got {item!r}"
            )
        weights[name.strip()] = weight
    return weights


def class_weight_array(text: str, names: Sequence[str], what: str = "class_weights") -> np.ndarray:
    """Return the weight of each of ``names`` (class order) from ``text`` ("duck=3"): 1 unless named."""
    weights = parse_class_weights(text)
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"{what}: unknown object(s) {unknown}; the objects are {list(names)}")
    return np.array([weights.get(name, 1.0) for name in names], np.float64)


def parse_scale_range(text: str) -> tuple[float, float] | None:
    """Return (low, high) from ``"0.6,1.2"`` (None for ""); ValueError saying what is wrong."""
    if not text.strip():
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        low = high = float("nan")
    if not (np.isfinite(low) and np.isfinite(high) and 0 < low <= high):
        raise ValueError(
            f"crop_scale_range: expected LOW,HIGH with 0 < LOW <= HIGH (factors on image_scale), "
            f"e.g. '0.6,1.2', got {text!r}"
        )
    return low, high


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; stored in every checkpoint.

    Defaults are the paper's: Adam, lr 1e-4 halved every 20 epochs, 120 epochs, batch 32,
    lambda_1 = 0.5, lambda_2 = 5e-5, full 640x480 images, fp32.
    """

    stage: str = "student_kd"
    network: str = ""  # "" = the stage's network (teacher / student); "tiny" for tests and smoke runs
    train_dir: str = "data/train"  # one BOP split, or several joined by commas
    # Frames the run never trains on (e.g. a validation split): after every epoch the weighted
    # L_mse on a fixed sample of val_frames of them is logged (val.csv, loss.png) beside the
    # training loss, so a run that memorises its frames shows it. "" = no validation loss;
    # several splits joined by commas, as train_dir.
    val_dir: str = ""
    val_frames: int = 64
    objects_dir: str = ""  # BOP models dir; "" = the shipped default object set
    teacher_checkpoint: str = ""  # needed by student_kd
    # Warm start: initial weights from a checkpoint of the same network and objects (e.g. to
    # continue a CPU run in another sitting, or fine-tune the shipped weights); "" = random init.
    init_checkpoint: str = ""
    # Backbone initialisation when there is no init_checkpoint: "" = random (as every file shipped
    # so far: nothing can be downloaded here), "imagenet" = timm's ImageNet weights (timm downloads
    # them from the Hugging Face hub), or the path of a timm checkpoint file of the same backbone
    # (.pth/.bin/.safetensors, e.g. downloaded on another machine). The paper does not say how its
    # backbone starts; ImageNet initialisation is the usual practice for HRNet pose networks.
    backbone_weights: str = ""
    out_dir: str = "runs"
    epochs: int = 120
    batch_size: int = 32
    # Not in the paper: each batch of batch_size goes through the network in this many parts whose
    # gradients add up (each weighted by its share of the batch) before one optimiser step: the same
    # step as the whole batch in 1/micro_batches of the activation memory, except that BatchNorm
    # normalises over each part. Why: one fp32 batch of 32 at 640x480 needs ~28 GB (teacher) / ~18 GB
    # (student) for its backward pass (measured on the CPU, 2026-12-01: 0.85 / 0.53 GB per image,
    # training/HRPOSE_MODEL_CARD.md), more than many GPUs hold; the paper's TITAN Xp had 12 GB.
    micro_batches: int = 1
    lr: float = 1e-4
    lr_step_epochs: int = 20
    lr_gamma: float = 0.5
    # "step" = the paper's (lr x lr_gamma every lr_step_epochs); "cosine" = per-step cosine decay to
    # 0 over the run's budget (epochs x batches, max_steps or max_minutes, whichever ends first).
    lr_schedule: str = "step"
    lambda_od: float = 0.5
    lambda_fs: float = 5e-5
    # Image scale applied to the dataset's frames before cropping; the pipeline uses the same
    # scale at test time (input_width x input_height letterbox).
    image_scale: float = 1.0
    input_width: int = 640
    input_height: int = 480
    crop_size: int = 0  # 0 = whole (letterboxed) image; > 0 = random square crops around objects
    # Which instance a crop centres on: "" = each instance of the frame equally likely (every file
    # shipped so far); "duck=3,mug=3" = an instance of a named object 3 times as likely as one of
    # weight 1 (objects not named). Not in the paper, which trains on whole images: a way to give
    # the objects the network finds hardest more of the cpu recipe's few crops. Needs crop_size > 0.
    crop_class_weights: str = ""
    # Scale jitter of the crops (not in the paper, whose LINEMOD test objects appear at the training
    # scales): "0.6,1.2" resizes each frame by image_scale times a factor drawn log-uniformly from
    # [0.6, 1.2] before cropping. "" = image_scale alone (every file shipped so far). On 200
    # single-object frames 20-60 % of the image tall, the shipped file grouped 24 % of the objects at
    # its 320x256 input and 39 / 43 % at 256x192 / 192x160: objects larger than its crops had taught
    # it are missed (HRPOSE_MODEL_CARD.md). One 95-min CPU leg with "0.6,1.2" from the shipped file made
    # it worse, large objects included (TRAINING_HISTORY.md). Needs crop_size > 0.
    crop_scale_range: str = ""
    augment: bool = True  # blur, colour jitter, noise, rotation +-30 deg (paper Sec. IV.1)
    bf16: bool = False  # CPU autocast to bfloat16 (AMX); the paper trains in fp32 on a GPU
    max_frames: int = 0  # 0 = all frames of the split
    max_steps: int = 0  # 0 = no limit (tests use a few steps)
    max_minutes: float = 0.0  # 0 = no limit; else stop (and save) once the wall time passes it
    num_workers: int = 0
    seed: int = 0
    # "auto" = "cuda" where torch sees a GPU, else "cpu" (train() stores the device it used); or
    # "cpu", "cuda", "cuda:N". Files before 2026-12-01 store "cpu", the default then.
    device: str = "auto"
    sigma: float = 2.0  # belief-map Gaussian, output-map pixels
    positive_weight: float = 0.0  # 0 = Eq. 3/4 as printed; > 0 weights pixels by 1 + w|target| (losses.py)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage: expected one of {sorted(STAGES)}, got {self.stage!r}")
        if self.network and self.network not in BACKBONES:
            raise ValueError(f"network: expected '' or one of {sorted(BACKBONES)}, got {self.network!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"epochs/batch_size/lr: expected positive, got {self.epochs}/{self.batch_size}/{self.lr}"
            )
        resolve_device(self.device)  # ValueError naming the device
        if not 1 <= self.micro_batches <= self.batch_size:
            raise ValueError(
                f"micro_batches: expected 1..batch_size ({self.batch_size}), got {self.micro_batches}"
            )
        if self.lr_schedule not in ("step", "cosine"):
            raise ValueError(f"lr_schedule: expected 'step' or 'cosine', got {self.lr_schedule!r}")
        if self.input_width % 32 or self.input_height % 32:
            raise ValueError(
                f"input_width/input_height: expected multiples of 32, got "
                f"{self.input_width}x{self.input_height}"
            )
        if self.backbone_weights and self.init_checkpoint:
            raise ValueError(
                f"backbone_weights: {self.backbone_weights!r} and init_checkpoint {self.init_checkpoint!r} "
                "both set; expected one (the checkpoint already holds its backbone)"
            )
        if self.crop_size % 32:
            raise ValueError(f"crop_size: expected 0 or a multiple of 32, got {self.crop_size}")
        if self.crop_class_weights:
            if not self.crop_size:
                raise ValueError(
                    f"crop_class_weights: {self.crop_class_weights!r} needs crop_size > 0 (it picks "
                    "the instance a crop centres on), got crop_size 0"
                )
            parse_class_weights(self.crop_class_weights)
        if self.crop_scale_range:
            if not self.crop_size:
                raise ValueError(
                    f"crop_scale_range: {self.crop_scale_range!r} needs crop_size > 0 (it rescales the "
                    "frames crops are taken from), got crop_size 0"
                )
            parse_scale_range(self.crop_scale_range)

    def class_weights(self, names: Sequence[str]) -> np.ndarray:
        """Return the crop weight of each of ``names`` (class order): 1 unless named in crop_class_weights."""
        return class_weight_array(self.crop_class_weights, names, "crop_class_weights")

    @property
    def variant(self) -> str:
        """Network variant trained by this stage."""
        return self.network or STAGES[self.stage][0]

    @property
    def uses_teacher(self) -> bool:
        """True when this stage distils from a frozen teacher (Eq. 7)."""
        return STAGES[self.stage][1]

    def to_dict(self) -> dict:
        """Return the config as a plain dict (for checkpoints and CSV headers)."""
        return dataclasses.asdict(self)


# Named recipes: "paper" is the paper's setting (GPU), "cpu" what fits on 2 CPU cores here,
# "quick" a few steps for tests. The cpu recipe halves the 640x480 frames (objects stay 25-100 px
# large), trains on 128x128 crops around objects (fully convolutional, so inference runs on the
# whole 320x256 letterboxed frame) and uses bf16 autocast (AMX: ~2x faster than fp32; train() falls
# back to fp32 on a CPU without native bf16, where emulated bf16 is ~7x slower than fp32).
# Its lr starts at 1e-3, not 1e-4, with a cosine decay over the run's budget instead of halving
# every 20 of 120 epochs, and its batch is 8, not 32: with a few thousand steps instead of ~100k,
# larger updates that anneal to 0 by the end learn the most in the time (measured on 2 cores:
# student 0.37 s/step with 2 threads, 0.55 s with 1; teacher 1.0 s with 1). The step budget is
# given per run (--max-steps / --max-minutes; training/run_cpu_recipe.sh). It weights target
# pixels (positive_weight = 20, see losses.POSITIVE_WEIGHT_NOTE): without it the network only
# learns to predict zeros in that time.
RECIPES: dict[str, dict] = {
    "paper": {},
    "cpu": dict(
        image_scale=0.5,
        input_width=320,
        input_height=256,
        crop_size=128,
        batch_size=8,
        epochs=100,
        lr=1e-3,
        lr_schedule="cosine",
        bf16=True,
        positive_weight=20.0,
    ),
    "quick": dict(
        image_scale=0.5,
        input_width=320,
        input_height=256,
        crop_size=64,
        batch_size=2,
        epochs=1,
        max_steps=3,
        augment=False,
    ),
}


def recipe(name: str, **overrides) -> TrainConfig:
    """Return the TrainConfig of recipe ``name`` with ``overrides`` (None values ignored)."""
    if name not in RECIPES:
        raise ValueError(f"recipe: expected one of {sorted(RECIPES)}, got {name!r}")
    values = dict(RECIPES[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)
