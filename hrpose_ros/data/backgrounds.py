"""Background images for synthetic frames: photographs shipped with scikit-image, and procedural textures.

HRPose pastes its renderings on SUN397 photographs and the single-shot paper on MS COCO;
neither can be downloaded here, so the photographs are the ones scikit-image's data
module ships (street, people, animals, kitchen, textures such as brick, grass, gravel),
cropped, scaled, flipped and recoloured at random, mixed with procedural textures
(multi-scale noise, stripes, checkerboards, gradients).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

__all__ = ["PHOTOS", "BackgroundSource"]

logger = logging.getLogger(__name__)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "stereo_motorcycle", "colorwheel", "moon", "coins",
          "clock", "page", "text", "cell", "cat", "retina")
"""scikit-image data functions that return photographs without a download."""


def _load_photos() -> list[np.ndarray]:
    import skimage.data

    photos = []
    for name in PHOTOS:
        try:
            image = getattr(skimage.data, name)()
        except Exception as exc:  # a scikit-image without this image, or needing a download
            logger.debug("skimage.data.%s unavailable: %s", name, exc)
            continue
        if isinstance(image, tuple):  # stereo pairs
            image = image[0]
        image = np.asarray(image)
        if image.dtype != np.uint8:
            continue
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(image[..., :3]))
    return photos


class BackgroundSource:
    """Draws random (height, width, 3) uint8 RGB backgrounds; ``photo_fraction`` of them photographs."""

    def __init__(self, width: int, height: int, photo_fraction: float = 0.7):
        if not 0.0 <= photo_fraction <= 1.0:
            raise ValueError(f"photo_fraction: expected a fraction in [0, 1], got {photo_fraction}")
        self.width, self.height = int(width), int(height)
        self.photo_fraction = photo_fraction
        self.photos = _load_photos()
        if not self.photos:
            logger.warning("no scikit-image photographs found: procedural backgrounds only")

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """Return one (height, width, 3) uint8 RGB background."""
        if self.photos and rng.random() < self.photo_fraction:
            return self._photo(rng)
        return self._procedural(rng)

    def _photo(self, rng: np.random.Generator) -> np.ndarray:
        photo = self.photos[int(rng.integers(len(self.photos)))]
        h, w = photo.shape[:2]
        # A random crop of 40-100 % of the shorter side, at the output's aspect ratio.
        aspect = self.width / self.height
        crop_h = int(min(h, w / aspect) * rng.uniform(0.4, 1.0))
        crop_w = max(1, min(w, int(crop_h * aspect)))
        y, x = int(rng.integers(0, h - crop_h + 1)), int(rng.integers(0, w - crop_w + 1))
        image = cv2.resize(photo[y:y + crop_h, x:x + crop_w], (self.width, self.height),
                           interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        if rng.random() < 0.3:
            image = image[..., rng.permutation(3)]  # colour channels swapped: more colour variety
        gain = rng.uniform(0.6, 1.3)
        return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)

    def _procedural(self, rng: np.random.Generator) -> np.ndarray:
        kind = int(rng.integers(4))
        # Drawn at a quarter of the size and scaled up: smooth patterns do not need full resolution.
        h, w = max(self.height // 4, 1), max(self.width // 4, 1)
        colours = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
        if kind == 0:  # multi-scale value noise
            field = np.zeros((h, w), np.float32)
            for octave in range(1, 6):
                cells = 2 ** octave
                small = rng.random((cells + 1, int(cells * w / h) + 1)).astype(np.float32)
                field += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) / octave
            field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
        elif kind == 1:  # stripes at a random angle and period
            angle, period = rng.uniform(0, np.pi), rng.uniform(3, 20)
            ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
            field = 0.5 + 0.5 * np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period)
        elif kind == 2:  # checkerboard
            size = int(rng.integers(3, 20))
            ys, xs = np.mgrid[0:h, 0:w]
            field = (((xs // size) + (ys // size)) % 2).astype(np.float32)
        else:  # linear gradient
            angle = rng.uniform(0, 2 * np.pi)
            ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
            field = xs * np.cos(angle) + ys * np.sin(angle)
            field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
        image = colours[0] * (1 - field[..., None]) + colours[1] * field[..., None]
        interpolation = cv2.INTER_NEAREST if kind == 2 else cv2.INTER_LINEAR
        # Sensor noise comes later, from the training augmentation.
        return cv2.resize(np.clip(image, 0, 255).astype(np.uint8), (self.width, self.height),
                          interpolation=interpolation)
