"""HRPose losses (Eq. 3-7): hand-computed values, zero for identical inputs, distillation weights."""

import pytest
import torch

from hrpose_ros.networks import HRPoseOutput
from training.losses import (
    feature_similarity_loss,
    map_mse,
    mse_loss,
    output_distillation_loss,
    similarity_matrix,
    total_loss,
)


def test_mse_sums_pixels_and_averages_maps_eq3():
    belief = torch.zeros(1, 2, 4, 4)
    target = torch.zeros(1, 2, 4, 4)
    target[0, 0, 1, 1] = 1.0  # one map with squared error 1, the other 0 -> mean over 2 maps = 0.5
    vectors = torch.zeros(1, 2, 4, 4)  # one vector field (2 channels)
    target_vectors = torch.zeros(1, 2, 4, 4)
    target_vectors[0, :, 2, 2] = torch.tensor([0.6, 0.8])  # ||v||^2 = 1 over J = 1 field
    assert map_mse(belief, target).item() == pytest.approx(0.5)
    assert mse_loss(belief, vectors, target, target_vectors).item() == pytest.approx(1.5)


def test_output_distillation_is_eq3_against_teacher_and_does_not_train_the_teacher():
    student = torch.zeros(2, 9, 8, 8, requires_grad=True)
    teacher = torch.full((2, 9, 8, 8), 0.5, requires_grad=True)
    s_vec = torch.zeros(2, 16, 8, 8)
    t_vec = torch.zeros(2, 16, 8, 8)
    loss = output_distillation_loss(student, s_vec, teacher, t_vec)
    assert loss.item() == pytest.approx(64 * 0.25)  # each map: 64 pixels x 0.5^2
    loss.backward()
    assert teacher.grad is None and student.grad is not None


def test_feature_similarity_is_zero_for_identical_features_and_positive_otherwise():
    torch.manual_seed(0)
    features = torch.randn(2, 18, 16, 16)
    assert feature_similarity_loss(features, features.clone()).item() == pytest.approx(0.0, abs=1e-8)
    # Scaled features (and other channel counts) have the same cosine similarities.
    assert feature_similarity_loss(3.0 * features, features).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_similarity_loss(features, torch.randn(2, 36, 16, 16)).item() > 1.0


def test_similarity_matrix_hand_computed_eq6():
    features = torch.zeros(1, 2, 1, 2)
    features[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    features[0, :, 0, 1] = torch.tensor([1.0, 1.0])
    G = similarity_matrix(features, pool=1)
    expected = torch.tensor([[1.0, 2**-0.5], [2**-0.5, 1.0]])
    assert torch.allclose(G[0], expected, atol=1e-6)
    # Pooling: 4x4 cells of an 8x8 map -> 4 nodes.
    assert similarity_matrix(torch.randn(3, 5, 8, 8), pool=4).shape == (3, 4, 4)


def test_total_loss_weights_the_terms_eq7():
    torch.manual_seed(1)
    student = HRPoseOutput(torch.rand(1, 9, 8, 8), torch.rand(1, 16, 8, 8), torch.randn(1, 6, 8, 8))
    teacher = HRPoseOutput(torch.rand(1, 9, 8, 8), torch.rand(1, 16, 8, 8), torch.randn(1, 6, 8, 8))
    target_b, target_v = torch.rand(1, 9, 8, 8), torch.rand(1, 16, 8, 8)
    terms = total_loss(student, target_b, target_v, teacher, lambda_od=0.5, lambda_fs=5e-5)
    assert terms.od.item() > 0 and terms.fs.item() > 0
    expected = terms.mse.item() + 0.5 * terms.od.item() + 5e-5 * terms.fs.item()
    assert terms.total.item() == pytest.approx(expected)
    plain = total_loss(student, target_b, target_v)
    assert plain.total.item() == pytest.approx(terms.mse.item()) and plain.od.item() == 0.0


def test_mismatched_shapes_raise_value_error():
    with pytest.raises(ValueError, match="target"):
        map_mse(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="teacher_features"):
        feature_similarity_loss(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4))


def test_positive_weight_scales_errors_on_targets_only():
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 0.5
    predicted = torch.full((1, 1, 2, 2), 0.1)
    # Errors: (0.1 - 0.5)^2 = 0.16 on the target pixel (weight 1 + 20 * 0.5 = 11), 0.01 on three others.
    assert map_mse(predicted, target).item() == pytest.approx(0.16 + 0.03)
    assert map_mse(predicted, target, positive_weight=20.0).item() == pytest.approx(11 * 0.16 + 0.03)
    vectors = torch.zeros(1, 2, 1, 1)
    vectors[0, :, 0, 0] = torch.tensor([0.6, 0.8])  # |v| = 1 -> weight 21 on both channels
    assert map_mse(torch.zeros(1, 2, 1, 1), vectors, 2, positive_weight=20.0).item() == pytest.approx(21.0)


def test_distillation_weights_come_from_the_ground_truth_not_the_teacher():
    student = torch.zeros(1, 1, 2, 2)
    teacher = torch.zeros(1, 1, 2, 2)
    teacher[0, 0, 1, 1] = 50.0  # a wild teacher output where the ground truth is background
    truth = torch.zeros(1, 1, 2, 2)
    truth[0, 0, 0, 0] = 1.0
    t_vec = torch.zeros(1, 2, 2, 2)
    # Weights from the truth: the wild pixel counts once (2500), not 1 + 20 * 50 times.
    loss = output_distillation_loss(student, t_vec, teacher, t_vec, 20.0, (truth, t_vec))
    assert loss.item() == pytest.approx(2500.0)
    teacher_weighted = output_distillation_loss(student, t_vec, teacher, t_vec, 20.0)
    assert teacher_weighted.item() == pytest.approx(1001 * 2500.0)
    with pytest.raises(ValueError, match="weight_target"):
        map_mse(student, teacher, 1, 20.0, torch.zeros(1, 1, 2, 3))
    # total_loss passes the ground truth: a teacher equal to the truth adds nothing.
    out = HRPoseOutput(truth, t_vec, torch.ones(1, 4, 2, 2))
    terms = total_loss(out, truth, t_vec, out, 0.5, 0.0, positive_weight=20.0)
    assert terms.od.item() == 0.0 and terms.mse.item() == 0.0
