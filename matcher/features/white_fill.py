"""The organisers' white fill: where a whale's box ran past the photo, the crop was padded with pure white.

A pure-white region (every channel at least ``threshold``) that touches the photo's border and covers
less than ``max_share`` of it is fill, not whale; keypoints on it, or within ``margin`` (a share of the
photo's shorter side) of it, sit on the fill's straight edge and match any other filled photo. They
are dropped (:func:`keep_mask`).
"""

from __future__ import annotations

import cv2
import numpy as np


def fill_mask(image: np.ndarray, threshold: int = 250, max_share: float = 0.5) -> np.ndarray:
    """Boolean (H, W) mask of the white fill of an RGB uint8 image (all False when there is none)."""
    white = (image >= threshold).all(axis=2).astype(np.uint8)
    if not white.any():
        return np.zeros(white.shape, bool)
    _, labels = cv2.connectedComponents(white, connectivity=8)
    edge = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    edge = edge[edge > 0]
    mask = np.isin(labels, edge)
    if mask.mean() >= max_share:  # a photo mostly "white" is overexposed whale, not fill
        return np.zeros(white.shape, bool)
    return mask


def keep_mask(image: np.ndarray, keypoints: np.ndarray, conf: dict) -> np.ndarray:
    """Which keypoints (N, 2; x y in ``image``'s pixels) are neither on the fill nor within the margin of it."""
    fill = fill_mask(image, int(conf.get("threshold", 250)), float(conf.get("max_share", 0.5)))
    if not fill.any() or len(keypoints) == 0:
        return np.ones(len(keypoints), bool)
    h, w = fill.shape
    radius = max(1, int(round(float(conf.get("margin", 0.02)) * min(h, w))))
    near = cv2.dilate(fill.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                                       (2 * radius + 1, 2 * radius + 1)))
    x = np.clip(np.round(keypoints[:, 0]).astype(int), 0, w - 1)
    y = np.clip(np.round(keypoints[:, 1]).astype(int), 0, h - 1)
    return near[y, x] == 0
