"""HRPose losses: pose MSE (Eq. 3), output distillation (Eq. 4), feature similarity (Eq. 5-6), Eq. 7."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 (the torch idiom)

__all__ = [
    "FS_POOL",
    "POSITIVE_WEIGHT_NOTE",
    "LossTerms",
    "feature_similarity_loss",
    "map_mse",
    "mse_loss",
    "output_distillation_loss",
    "similarity_matrix",
    "total_loss",
]

# Feature-similarity pooling: average over 4x4 cells of the stride-4 backbone features, so each
# similarity-matrix node is a 16x16-pixel patch of the input. At the CPU recipe's 256x256 input
# that is 16x16 = 256 nodes (a 256 x 256 matrix per image); at the paper's 640x480 it is 40x30 =
# 1200 nodes (1.4 M entries, ~6 MB per image in float32), tractable on a GPU with batch 32. The
# unpooled 160x120 map would need a 19200 x 19200 matrix (1.5 GB per image). The paper does not
# state its pooling; a fixed cell (not a fixed output size) keeps a node's meaning independent
# of the input size. Note: L_fs is a sum over all entries (Eq. 5), so it grows with the number of
# nodes squared; lambda_2 = 5e-5 is the paper's value at its (unknown) node count.
FS_POOL = 4

POSITIVE_WEIGHT_NOTE = """
Eq. 3 sums squared errors over every pixel, almost all of them background. Trained from
scratch for a few hundred steps (the CPU recipe), the network settles on predicting zeros:
on 8 frames of the project's data, 60 steps left the belief at ground-truth peaks at 0.015
with plain Eq. 3, and at 0.59 (background 0.03) with pixels weighted by 1 + 20 * |target|.
The cpu recipe therefore uses positive_weight = 20 for L_mse and, so Eq. 7 keeps its balance,
for L_od; the paper recipe keeps 0, i.e. Eq. 3 and 4. L_od's weights come from the ground-truth
targets, not from the teacher's outputs: weights of 1 + 20 |teacher| grow with the teacher's
error, and an under-trained teacher's occasional large outputs (up to ~50 on crops with black
borders) made L_od spike to 3e5 and swamp L_mse (CPU run of session 2: the student + KD's L_mse
stayed at ~300 where the student's alone fell to 140). With target weights, L_od weighs the
same pixels as L_mse.
"""


class LossTerms(NamedTuple):
    """Loss terms of Eq. 7 (scalars): total, mse (Eq. 3), od (Eq. 4), fs (Eq. 5)."""

    total: torch.Tensor
    mse: torch.Tensor
    od: torch.Tensor
    fs: torch.Tensor


def map_mse(
    predicted: torch.Tensor,
    target: torch.Tensor,
    channels_per_map: int = 1,
    positive_weight: float = 0.0,
    weight_target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the mean over maps and batch of each map's summed squared error ||A - B||_2^2.

    ``predicted``/``target`` (B, M * channels_per_map, h, w); a vector field is one map of 2
    channels, so its squared norm sums both components (Eq. 3's ||L_j - L~_j||^2).
    ``positive_weight`` w > 0 weights each pixel by 1 + w * |target| (not in the paper; see
    POSITIVE_WEIGHT_NOTE); 0 is exactly Eq. 3. ``weight_target`` (default ``target``) is the map
    the weights are taken from (L_od: the ground truth, while ``target`` is the teacher's output).
    """
    if predicted.shape != target.shape:
        raise ValueError(f"target: expected shape {tuple(predicted.shape)}, got {tuple(target.shape)}")
    weight_target = target if weight_target is None else weight_target
    if weight_target.shape != target.shape:
        raise ValueError(
            f"weight_target: expected shape {tuple(target.shape)}, got {tuple(weight_target.shape)}"
        )
    squared = (predicted - target).pow(2)
    if positive_weight:
        if channels_per_map == 1:
            magnitude = weight_target.abs()
        else:
            shape = (weight_target.shape[0], -1, channels_per_map, *weight_target.shape[-2:])
            magnitude = weight_target.reshape(shape).norm(dim=2).repeat_interleave(channels_per_map, dim=1)
        squared = squared * (1.0 + positive_weight * magnitude)
    per_channel = squared.sum(dim=(-2, -1))  # (B, channels)
    maps = per_channel.shape[1] // channels_per_map
    return per_channel.sum(dim=1).mean() / maps


def mse_loss(
    belief_maps,
    vector_fields,
    target_belief_maps,
    target_vector_fields,
    positive_weight: float = 0.0,
    weight_targets: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Return L_mse (Eq. 3): belief-map term averaged over I maps plus vector-field term over J fields.

    ``weight_targets`` (belief, vectors): the maps ``positive_weight`` is taken from (default the targets).
    """
    weight_belief, weight_vectors = weight_targets or (None, None)
    return map_mse(belief_maps, target_belief_maps, 1, positive_weight, weight_belief) + map_mse(
        vector_fields, target_vector_fields, 2, positive_weight, weight_vectors
    )


def output_distillation_loss(
    student_belief,
    student_vectors,
    teacher_belief,
    teacher_vectors,
    positive_weight: float = 0.0,
    weight_targets: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Return L_od (Eq. 4): Eq. 3 with the (detached) teacher's outputs as targets.

    With ``positive_weight``, pass the ground-truth maps as ``weight_targets`` (POSITIVE_WEIGHT_NOTE).
    """
    return mse_loss(
        student_belief,
        student_vectors,
        teacher_belief.detach(),
        teacher_vectors.detach(),
        positive_weight,
        weight_targets,
    )


def similarity_matrix(features: torch.Tensor, pool: int = FS_POOL) -> torch.Tensor:
    """Return G (B, N, N), N = (h/pool)(w/pool), of pairwise similarities of feature vectors (Eq. 6).

    g_ij = f_i . f_j / (||f_i|| ||f_j||), the cosine similarity. Eq. 6 as printed divides by the
    squared norms; that makes g_ii = 1/||f_i||^2 depend on feature scale, unlike the pair-wise
    similarity of the work it builds on (Liu et al., structured KD, the paper's [37]), which
    uses the plain norms. We follow [37].
    """
    if features.ndim != 4:
        raise ValueError(f"features: expected (B, C, h, w), got {tuple(features.shape)}")
    if pool > 1:
        features = F.avg_pool2d(features, kernel_size=pool, stride=pool, ceil_mode=True)
    f = features.flatten(2)  # (B, C, N)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return f.transpose(1, 2) @ f


def feature_similarity_loss(student_features, teacher_features, pool: int = FS_POOL) -> torch.Tensor:
    """Return L_fs (Eq. 5): squared Frobenius distance of the similarity matrices, mean over batch.

    Channel counts may differ; spatial sizes must match (as the paper assumes).
    """
    if student_features.shape[-2:] != teacher_features.shape[-2:]:
        raise ValueError(
            f"teacher_features: spatial size {tuple(teacher_features.shape[-2:])} differs "
            f"from the student's {tuple(student_features.shape[-2:])}"
        )
    g_s = similarity_matrix(student_features, pool)
    g_t = similarity_matrix(teacher_features.detach(), pool)
    return (g_s - g_t).pow(2).sum(dim=(1, 2)).mean()


def total_loss(
    student_output,
    target_belief,
    target_vectors,
    teacher_output=None,
    lambda_od: float = 0.5,
    lambda_fs: float = 5e-5,
    fs_pool: int = FS_POOL,
    positive_weight: float = 0.0,
) -> LossTerms:
    """Return Eq. 7's L = L_mse + lambda_1 L_od + lambda_2 L_fs and its terms.

    ``student_output``/``teacher_output`` are ``HRPoseOutput``s; without a teacher (or with both
    lambdas 0) only Eq. 3 is computed, the teacher stage and the student baseline.
    ``positive_weight`` (0 = the paper) weights L_mse and L_od alike (see POSITIVE_WEIGHT_NOTE).
    """
    mse = mse_loss(
        student_output.belief_maps,
        student_output.vector_fields,
        target_belief,
        target_vectors,
        positive_weight,
    )
    zero = mse.new_zeros(())
    od = fs = zero
    if teacher_output is not None and lambda_od > 0:
        od = output_distillation_loss(
            student_output.belief_maps,
            student_output.vector_fields,
            teacher_output.belief_maps,
            teacher_output.vector_fields,
            positive_weight,
            (target_belief, target_vectors),
        )
    if teacher_output is not None and lambda_fs > 0:
        fs = feature_similarity_loss(student_output.features, teacher_output.features, fs_pool)
    return LossTerms(mse + lambda_od * od + lambda_fs * fs, mse, od, fs)
