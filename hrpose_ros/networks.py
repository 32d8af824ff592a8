"""HRPose: HRNetV2 keypoint network predicting belief maps and vector fields (Guan et al., Sec. III.1).

The network has three parts, as in the paper's Fig. 2(a):

- a stem of two 3x3 stride-2 convolutions (timm's HRNet ``conv1``/``conv2``) down to 1/4 resolution;
- an HRNet backbone whose four parallel branches (strides 4, 8, 16, 32) are upsampled to
  stride 4 and concatenated: the HRNetV2 representation (18+36+72+144 = 270 channels for W18);
- a regressor of three 1x1 convolutions producing, per class, K belief maps and (K-1)x2
  vector-field channels at H/4 x W/4.

The student is the small HRNetV2-W18 (timm ``hrnet_w18_small_v2``), the teacher HRNetV2-W18
(timm ``hrnet_w18``). ``tiny`` (``hrnet_w18_small``) exists for tests and quick CPU runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import timm
import torch
import torch.nn.functional as F  # noqa: N812 (the torch idiom)
from torch import nn

__all__ = ["BACKBONES", "HRPose", "HRPoseConfig", "HRPoseOutput", "count_parameters", "count_flops"]

# The network normalises its input itself, so every engine (torch, ONNX) takes RGB in [0, 1].
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# Variant name -> timm model name. Variants are plain data (see STYLE.md).
BACKBONES: dict[str, str] = {
    "teacher": "hrnet_w18",  # HRNetV2-W18, paper: 9.7 M parameters, 23.2 GFLOPs at 640x480
    "student": "hrnet_w18_small_v2",  # small HRNetV2-W18, paper: 4.2 M parameters, 15.5 GFLOPs
    "tiny": "hrnet_w18_small",  # not in the paper: for unit tests and very quick CPU runs
}

# timm's features_only HRNet reports the stem (stride 2) first; the four branches follow.
_BRANCH_INDICES = (1, 2, 3, 4)


@dataclass(frozen=True)
class HRPoseConfig:
    """Model arguments stored in every checkpoint: backbone variant, classes, keypoints, head width."""

    variant: str = "student"
    num_classes: int = 1
    num_keypoints: int = 9  # 8 box corners + centroid
    head_channels: int = 256

    def __post_init__(self):
        if self.variant not in BACKBONES:
            raise ValueError(f"variant: expected one of {sorted(BACKBONES)}, got {self.variant!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {self.num_classes}")
        if self.num_keypoints < 2:
            raise ValueError(f"num_keypoints: expected >= 2, got {self.num_keypoints}")

    @property
    def belief_channels(self) -> int:
        """Number of belief-map channels: K x C."""
        return self.num_keypoints * self.num_classes

    @property
    def vector_channels(self) -> int:
        """Number of vector-field channels: (K - 1) x 2 x C."""
        return (self.num_keypoints - 1) * 2 * self.num_classes

    def to_dict(self) -> dict:
        """Return the config as a plain dict (for checkpoints)."""
        return asdict(self)


class HRPoseOutput(NamedTuple):
    """Network outputs at H/4 x W/4.

    belief_maps (B, C*K, h, w): channel c*K + k is keypoint k of class c.
    vector_fields (B, C*(K-1)*2, h, w): channels c*(K-1)*2 + 2*j + (0: x, 1: y) for vertex j of class c.
    features (B, 270, h, w): the concatenated HRNetV2 backbone representation (used by L_fs, Eq. 5).
    """

    belief_maps: torch.Tensor
    vector_fields: torch.Tensor
    features: torch.Tensor


class HRPose(nn.Module):
    """HRPose network: image (B, 3, H, W) RGB in [0, 1], H, W multiples of 32 -> HRPoseOutput (stride 4)."""

    stride = 4

    def __init__(self, config: HRPoseConfig = HRPoseConfig()):
        super().__init__()
        self.config = config
        self.backbone = timm.create_model(
            BACKBONES[config.variant],
            pretrained=False,  # training can start from ImageNet ones: train_hrpose --backbone-weights
            features_only=True,
            feature_location="",  # native HRNet branches, not the classification blocks
            out_indices=_BRANCH_INDICES,
        )
        in_channels = sum(self.backbone.feature_info.channels())
        width = config.head_channels
        # Three 1x1 convolutions (paper Sec. III.1); BN + ReLU between them as in HRNetV2 heads.
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, config.belief_channels + config.vector_channels, 1),
        )
        self.feature_channels = in_channels
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def extract_features(self, image: torch.Tensor) -> torch.Tensor:
        """Return the HRNetV2 representation (B, 270, H/4, W/4) of RGB ``image`` (B, 3, H, W) in [0, 1].

        All four branches are upsampled to stride 4 and concatenated (HRNetV2).
        """
        branches = self.backbone((image - self.mean) / self.std)
        size = branches[0].shape[-2:]
        upsampled = [branches[0]] + [
            F.interpolate(b, size=size, mode="bilinear", align_corners=False) for b in branches[1:]
        ]
        return torch.cat(upsampled, dim=1)

    def forward(self, image: torch.Tensor) -> HRPoseOutput:
        """Return belief maps, vector fields and backbone features for ``image`` (B, 3, H, W)."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image: expected (B, 3, H, W), got {tuple(image.shape)}")
        if image.shape[-1] % 32 or image.shape[-2] % 32:
            raise ValueError(f"image: H and W must be multiples of 32, got {tuple(image.shape[-2:])}")
        features = self.extract_features(image)
        out = self.regressor(features)
        n = self.config.belief_channels
        return HRPoseOutput(out[:, :n], out[:, n:], features)


def count_parameters(model: nn.Module) -> int:
    """Return the number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, height: int = 480, width: int = 640) -> int:
    """Return the multiply-accumulate count of one forward pass at ``height`` x ``width``.

    torch's FlopCounterMode counts 2 FLOPs per multiply-accumulate; the paper's Table 3 numbers
    match the common multiply-accumulate convention of HRNet papers, so the count is halved.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, height, width, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2
