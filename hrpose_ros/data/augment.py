"""Online training augmentation: in-plane rotation with keypoints moved alike, colour jitter, blur, noise.

HRPose (Sec. IV.1) trains with "random blur, color jittering, and rotation (+-30 degrees)";
the single-shot paper (Sec. 3.3) jitters hue, saturation, exposure and contrast. The
defaults of :class:`AugmentConfig` follow them; sensor noise is added because the test
images come from real cameras.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["AugmentConfig", "augment", "rotation_about_centre"]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (a range (a, b) is sampled uniformly).

    ``rotation_deg``: maximum in-plane rotation about the image centre (HRPose: 30);
    ``brightness``/``contrast``/``saturation``: maximum relative change (0.25 = x0.75..x1.25);
    ``hue``: maximum hue shift as a fraction of the colour circle; ``blur_sigma`` px;
    ``noise_std`` grey levels (0-255).
    """

    rotation_prob: float = 0.8
    rotation_deg: float = 30.0
    jitter_prob: float = 0.9
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.04
    blur_prob: float = 0.4
    blur_sigma: tuple = (0.4, 1.6)
    noise_prob: float = 0.4
    noise_std: tuple = (1.0, 6.0)

    def __post_init__(self):
        for name in ("rotation_prob", "jitter_prob", "blur_prob", "noise_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{name}: expected a probability in [0, 1], got {value}")
        for name in ("rotation_deg", "brightness", "contrast", "saturation", "hue"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"AugmentConfig.{name}: expected >= 0, got {getattr(self, name)}")
        if self.rotation_deg > 180 or self.hue > 0.5 or max(self.brightness, self.contrast,
                                                             self.saturation) >= 1:
            raise ValueError("AugmentConfig: rotation_deg <= 180, hue <= 0.5 and brightness/contrast/"
                             f"saturation < 1 expected, got {self.rotation_deg}, {self.hue}, "
                             f"{self.brightness}, {self.contrast}, {self.saturation}")
        for name in ("blur_sigma", "noise_std"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"AugmentConfig.{name}: expected a range 0 <= low <= high, "
                                 f"got {(low, high)}")


def rotation_about_centre(width: int, height: int, degrees: float) -> np.ndarray:
    """Return the (2, 3) affine map of pixel coordinates rotating an image by ``degrees`` about its centre.

    Positive angles turn the picture counter-clockwise on screen (OpenCV's convention).
    Pixel centres are at integers, so the centre is ((W - 1) / 2, (H - 1) / 2).
    """
    return cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), float(degrees), 1.0)


def _jitter(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Return ``image`` with hue, saturation, brightness (exposure) and contrast changed at random."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + 256.0 * rng.uniform(-config.hue, config.hue)) % 256.0
    hsv[..., 1] *= rng.uniform(1 - config.saturation, 1 + config.saturation)
    hsv[..., 2] *= rng.uniform(1 - config.brightness, 1 + config.brightness)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
    mean = out.mean()
    out = (out - mean) * rng.uniform(1 - config.contrast, 1 + config.contrast) + mean
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def augment(
    image: np.ndarray,
    keypoints_2d: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Return (augmented (H, W, 3) uint8 image, keypoints_2d (..., 2) px moved with it).

    ``keypoints_2d`` (N, K, 2) (any leading shape) are pixel coordinates in ``image``;
    NaN entries (unknown keypoints) stay NaN, a float dtype is kept. Only the rotation moves keypoints; the
    photometric steps leave them as they are. The input arrays are not modified.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    given = np.asarray(keypoints_2d)
    dtype = given.dtype if given.dtype.kind == "f" else np.float64
    keypoints = np.array(given, dtype=np.float64)
    if keypoints.ndim < 1 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints_2d: expected (..., 2) pixel coordinates, got shape {keypoints.shape}")
    height, width = image.shape[:2]
    out = image

    if config.rotation_deg > 0 and rng.random() < config.rotation_prob:
        matrix = rotation_about_centre(width, height, rng.uniform(-config.rotation_deg, config.rotation_deg))
        out = cv2.warpAffine(out, matrix, (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        keypoints = keypoints @ matrix[:, :2].T + matrix[:, 2]
    if rng.random() < config.jitter_prob:
        out = _jitter(out, config, rng)
    if rng.random() < config.blur_prob:
        sigma = rng.uniform(*config.blur_sigma)
        if sigma > 0:
            out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma)
    if rng.random() < config.noise_prob:
        std = rng.uniform(*config.noise_std)
        noise = rng.normal(0.0, std, size=out.shape).astype(np.float32)
        out = np.clip(out.astype(np.float32) + noise + 0.5, 0, 255).astype(np.uint8)
    if out is image:
        out = image.copy()
    return out, keypoints.astype(dtype)
