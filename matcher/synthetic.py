"""Synthetic images with known geometry, for the tests and the benchmarks that need them.

:func:`textured_image` draws random blobs and strokes (plenty of distinctive corners);
:func:`warp_affine` warps an image by a known affine map, so a matcher's answer can be
checked against the truth.
"""

from __future__ import annotations

import cv2
import numpy as np


def textured_image(seed: int, size: tuple[int, int] = (480, 200)) -> np.ndarray:
    """An RGB image (height, width) full of random blobs and strokes: plenty of distinctive corners."""
    h, w = size
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 90, np.uint8)
    for _ in range(220):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if kind == 0:
            cv2.circle(img, (x, y), int(rng.integers(2, 12)), colour, -1)
        elif kind == 1:
            cv2.line(img, (x, y), (x + int(rng.integers(-30, 30)), y + int(rng.integers(-30, 30))), colour, 2)
        else:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(3, 15)), y + int(rng.integers(3, 15))), colour, -1)
    return cv2.GaussianBlur(img, (3, 3), 0)


def warp_affine(img: np.ndarray, angle: float = 8.0, scale: float = 0.9,
                shift=(12.0, -8.0)) -> tuple[np.ndarray, np.ndarray]:
    """The image warped by a known affine map (about its centre), and the 2x3 map."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += shift
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT), m
