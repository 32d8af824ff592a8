"""The crop keypoint network's loss: integral regression (L1 on soft-argmax keypoints) + distribution CE."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the torch idiom)

from hrpose_ros.backbones import LiteFPN
from hrpose_ros.crop_keypoints import heatmap_targets, soft_argmax, vote

__all__ = ["coordinate_loss", "keypoint_loss", "voting_loss"]


def keypoint_loss(
    logits: torch.Tensor,
    keypoints: torch.Tensor,
    valid: torch.Tensor,
    sigma: float = 1.0,
    distribution_weight: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """Return (loss, terms): L1 of the soft-argmax keypoints in map cells + ``distribution_weight`` x CE.

    ``logits`` (B, K, h, w) of each crop's class, ``keypoints`` (B, K, 2) crop px, ``valid`` (B, K)
    bool (keypoints far outside the crop carry no target).
    """
    stride = LiteFPN.stride
    predicted, _ = soft_argmax(logits, stride)
    weight = valid.to(logits.dtype)
    count = weight.sum().clamp_min(1.0)
    l1 = ((predicted - keypoints).abs().sum(-1) / stride * weight).sum() / count
    target = heatmap_targets(keypoints, logits.shape[-1], sigma, stride)
    log_prob = F.log_softmax(logits.flatten(-2), -1)
    ce = (-(target.flatten(-2) * log_prob).sum(-1) * weight).sum() / count
    return l1 + distribution_weight * ce, {"l1_cells": l1.detach(), "aux": ce.detach()}


def voting_loss(
    outputs: torch.Tensor, keypoints: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, dict]:
    """Return (loss, terms): L1 of the voted keypoints + mean smooth-L1 of every cell's offsets, in map cells.

    ``outputs`` (B, 3K, h, w) of each crop's class, ``keypoints`` (B, K, 2) crop px, ``valid`` (B, K).
    """
    stride = LiteFPN.stride
    predicted, offsets = vote(outputs, stride)
    weight = valid.to(outputs.dtype)
    count = weight.sum().clamp_min(1.0)
    l1 = ((predicted - keypoints).abs().sum(-1) / stride * weight).sum() / count
    h, w = outputs.shape[-2:]
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=outputs.dtype), torch.arange(w, dtype=outputs.dtype), indexing="ij"
    )
    target_cells = (keypoints - (stride - 1) / 2.0) / stride  # (B, K, 2)
    target = target_cells[..., None, None] - torch.stack([xs, ys])  # (B, K, 2, h, w)
    dense = F.smooth_l1_loss(offsets, target, reduction="none").sum(2).mean((-1, -2))  # (B, K)
    dense = (dense * weight).sum() / count
    return l1 + dense, {"l1_cells": l1.detach(), "aux": dense.detach()}


def coordinate_loss(
    outputs: torch.Tensor, coordinates: torch.Tensor, seen: torch.Tensor
) -> tuple[torch.Tensor, dict]:
    """Return (loss, terms): L1 of the normalised coordinates where the object is seen + visibility BCE.

    ``outputs`` (B, 4, h, w) of each crop's class (x, y, z, visibility logit), ``coordinates``
    (B, 3, h, w) normalised targets, ``seen`` (B, h, w) bool. GDR-Net's masked L1 on coordinates
    and BCE on the visible mask; the L1 is x 10 so that a tenth of the half extent weighs like a
    map cell of keypoint error.
    """
    weight = seen.to(outputs.dtype)
    count = weight.sum().clamp_min(1.0)
    l1 = ((outputs[:, :3] - coordinates).abs().mean(1) * weight).sum() / count
    bce = F.binary_cross_entropy_with_logits(outputs[:, 3], weight)
    return 10.0 * l1 + bce, {"coord_l1": l1.detach(), "mask_bce": bce.detach()}
