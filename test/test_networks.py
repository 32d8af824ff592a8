"""HRPose network: output shapes at stride 4, the regressor's size, parameter counts near the paper's."""

import pytest
import torch

from hrpose_ros.networks import HRPose, HRPoseConfig, count_flops, count_parameters


def test_tiny_forward_shapes_two_classes():
    torch.manual_seed(0)
    model = HRPose(HRPoseConfig(variant="tiny", num_classes=2)).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 96))
    assert out.belief_maps.shape == (2, 18, 16, 24)  # K x C = 9 x 2
    assert out.vector_fields.shape == (2, 32, 16, 24)  # (K - 1) x 2 x C
    assert out.features.shape == (2, 240, 16, 24)  # hrnet_w18_small branches: 16 + 32 + 64 + 128


def test_regressor_is_three_1x1_convolutions():
    model = HRPose(HRPoseConfig(variant="tiny"))
    convs = [m for m in model.regressor if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1)] * 3


@pytest.mark.parametrize("variant, paper_millions", [("student", 4.2), ("teacher", 9.7)])
def test_parameter_counts_close_to_the_paper(variant, paper_millions):
    params = count_parameters(HRPose(HRPoseConfig(variant=variant))) / 1e6
    assert abs(params - paper_millions) / paper_millions < 0.1


def test_flop_count_scales_with_pixels():
    model = HRPose(HRPoseConfig(variant="tiny"))
    small, large = count_flops(model, 64, 64), count_flops(model, 128, 128)
    assert large / small == pytest.approx(4.0, rel=0.05)


def test_bad_input_raises_value_error():
    model = HRPose(HRPoseConfig(variant="tiny"))
    with pytest.raises(ValueError, match="image"):
        model(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match="variant"):
        HRPoseConfig(variant="resnet")
