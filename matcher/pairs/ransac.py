"""Geometric verification with OpenCV USAC (MAGSAC++), and the pair score.

The verdict of a pair is plain data::

    n_matches   tentative matches given to RANSAC
    n_inliers   matches consistent with the fitted model
    strength    n_inliers + the mean similarity of the inliers (breaks ties
                between equal counts by how alike the matched descriptors are)
    score       strength / (strength + score_scale), in [0, 1), monotone in strength
    model       the fitted 2x3 (affine) or 3x3 (homography) matrix, row-major

USAC's random generator is seeded from the settings, and the matches arrive in
canonical order, so a verdict is a pure function of the two images and the settings.
"""

from __future__ import annotations

import cv2
import numpy as np


def _usac_params(conf: dict) -> cv2.UsacParams:
    p = cv2.UsacParams()
    p.threshold = float(conf["threshold"])
    p.confidence = float(conf["confidence"])
    p.maxIterations = int(conf["max_iters"])
    p.score = cv2.SCORE_METHOD_MAGSAC
    p.sampler = cv2.SAMPLING_UNIFORM
    p.loMethod = cv2.LOCAL_OPTIM_SIGMA
    p.loIterations = 10
    p.loSampleSize = 14
    p.final_polisher = cv2.MAGSAC
    p.final_polisher_iterations = 10
    p.randomGeneratorState = int(conf["seed"])
    p.isParallel = False
    return p


def fit(pts0: np.ndarray, pts1: np.ndarray, conf: dict) -> tuple[np.ndarray | None, np.ndarray]:
    """Fit the verifier's model; returns (matrix or None, boolean inlier mask)."""
    n = len(pts0)
    if n < conf["min_matches"]:
        return None, np.zeros(n, bool)
    p0 = np.ascontiguousarray(pts0, np.float64).reshape(-1, 1, 2)
    p1 = np.ascontiguousarray(pts1, np.float64).reshape(-1, 1, 2)
    try:
        if conf["model"] == "affine":
            model, mask = cv2.estimateAffine2D(p0, p1, _usac_params(conf))
        elif conf["model"] == "homography":
            model, mask = cv2.findHomography(p0, p1, _usac_params(conf))
        else:
            raise ValueError(f"unknown verifier model {conf['model']!r}")
    except cv2.error:
        return None, np.zeros(n, bool)
    if model is None or mask is None:
        return None, np.zeros(n, bool)
    if np.linalg.det(model[:2, :2]) <= 0:  # a reflection is no view of the same side of a whale
        return None, np.zeros(n, bool)
    return model, mask.ravel().astype(bool)


def score_from_strength(strength: float, conf: dict) -> float:
    return float(strength / (strength + conf["score_scale"])) if strength > 0 else 0.0


def verify(kp0: np.ndarray, kp1: np.ndarray, matches: np.ndarray, similarity: np.ndarray, conf: dict) -> dict:
    """Verdict for one pair from its keypoints and tentative matches."""
    pts0 = kp0[matches[:, 0]] if len(matches) else np.zeros((0, 2))
    pts1 = kp1[matches[:, 1]] if len(matches) else np.zeros((0, 2))
    model, inliers = fit(pts0, pts1, conf)
    n_inl = int(inliers.sum())
    strength = n_inl + (float(similarity[inliers].mean()) if n_inl else 0.0)
    return {
        "n_matches": int(len(matches)),
        "n_inliers": n_inl,
        "strength": strength,
        "score": score_from_strength(strength, conf),
        "model": None if model is None else [float(v) for v in model.ravel()],
        "inliers": inliers,
    }
