"""What a verified pair shows beyond its inlier count: where the inliers lie, what the fitted map does, how
alike the matched descriptors are and how strongly the keypoints were detected.

Chance matches along the smooth outline of a whale's body can reach as many inliers as a true match,
but they crowd along one edge, cover little of either photo, sit near the crop's border or need a
strongly sheared map; a learned pair model (:mod:`matcher.pairs.model`) weighs these against each
other. Every value is a plain float (NaN where it does not apply: no model, no inliers), relative
to the photos' sizes, and symmetric in the two photos (per-photo values are given as the smaller and
the larger of the two), so a pair's evidence is the same whichever photo comes first.

Geometry: "along" is the photo's longer side, the whale's body in these crops; the convex hull of
the inliers is scipy's (Qhull).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import ConvexHull, QhullError

BORDER_SHARE = 0.05  # a keypoint within this share of the photo's shorter side from an edge is "near the border"
PER_PHOTO = ("span_along", "span_across", "std_along", "std_across", "hull_area", "border_share", "detection")
FIELDS = (
    "n_matches", "n_inliers", "inlier_ratio",
    "sim_inliers_mean", "sim_inliers_median", "sim_inliers_q10", "sim_outliers_mean",
    *(f"{name}_{which}" for name in PER_PHOTO for which in ("min", "max")),
    "log_scale_abs", "anisotropy", "rotation", "shear", "residual_mean",
    "area_ratio_log", "aspect_min", "aspect_max",
)


def _photo(points: np.ndarray, size, scores: np.ndarray, all_scores: np.ndarray) -> dict:
    """Where the inliers lie in one photo of (width, height) ``size``, and how strongly they were detected
    (their mean detection score less the photo's mean, in units of its spread)."""
    w, h = float(size[0]), float(size[1])
    long_axis = 0 if w >= h else 1
    along, across = points[:, long_axis], points[:, 1 - long_axis]
    length, breadth = max(w, h), min(w, h)
    try:
        area = ConvexHull(points).volume if len(points) >= 3 else 0.0
    except QhullError:  # collinear or repeated points: no area
        area = 0.0
    margin = BORDER_SHARE * breadth
    near = ((points[:, 0] < margin) | (points[:, 1] < margin) | (points[:, 0] > w - 1 - margin)
            | (points[:, 1] > h - 1 - margin))
    spread = float(all_scores.std()) if len(all_scores) > 1 else 0.0
    return {
        "span_along": float(np.ptp(along) / length),
        "span_across": float(np.ptp(across) / breadth),
        "std_along": float(along.std() / length),
        "std_across": float(across.std() / breadth),
        "hull_area": float(area / (w * h)),
        "border_share": float(near.mean()),
        "detection": float((scores.mean() - all_scores.mean()) / spread) if spread > 0 else 0.0,
    }


def map_terms(model) -> dict:
    """|log scale|, anisotropy (ratio of singular values), |rotation| (radians) and shear of the fitted map's
    linear part, each the same for the map and its inverse; NaN without a map."""
    nan = {"log_scale_abs": math.nan, "anisotropy": math.nan, "rotation": math.nan, "shear": math.nan}
    if model is None:
        return nan
    m = np.asarray(model, np.float64).reshape(-1)
    a = m.reshape(2, 3)[:, :2] if len(m) == 6 else m.reshape(3, 3)[:2, :2] / m[8]
    det = float(np.linalg.det(a))
    if not np.isfinite(a).all() or det <= 0:
        return nan
    sv = np.linalg.svd(a, compute_uv=False)

    def shear(b: np.ndarray) -> float:  # |cos| of the angle between the images of the two axes
        u, v = b[:, 0], b[:, 1]
        return abs(float(u @ v) / max(float(np.linalg.norm(u) * np.linalg.norm(v)), 1e-12))

    return {"log_scale_abs": abs(0.5 * math.log(det)), "anisotropy": float(sv[0] / max(sv[1], 1e-12)),
            "rotation": abs(math.atan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])),
            "shear": max(shear(a), shear(np.linalg.inv(a)))}


def describe(f0: dict, f1: dict, matches: np.ndarray, similarity: np.ndarray, inliers: np.ndarray,
             model, threshold: float) -> dict:
    """The evidence (:data:`FIELDS`) of one verified pair: its two feature dicts, tentative matches (K, 2),
    their similarity (K,), the inlier mask (K,), the fitted model (or None) and the RANSAC threshold."""
    n, k = len(matches), int(inliers.sum())
    out = dict.fromkeys(FIELDS, math.nan)
    out.update(n_matches=float(n), n_inliers=float(k), inlier_ratio=k / n if n else 0.0)
    w0, h0 = (float(v) for v in f0["size"])
    w1, h1 = (float(v) for v in f1["size"])
    out.update(area_ratio_log=abs(math.log((w0 * h0) / (w1 * h1))),
               aspect_min=min(max(w0, h0) / min(w0, h0), max(w1, h1) / min(w1, h1)),
               aspect_max=max(max(w0, h0) / min(w0, h0), max(w1, h1) / min(w1, h1)))
    if n == 0:
        return out
    sim = np.asarray(similarity, np.float64)
    if (~inliers).any():
        out["sim_outliers_mean"] = float(sim[~inliers].mean())
    out.update(map_terms(model))
    if k == 0:
        return out
    s_in = sim[inliers]
    out.update(sim_inliers_mean=float(s_in.mean()), sim_inliers_median=float(np.median(s_in)),
               sim_inliers_q10=float(np.quantile(s_in, 0.1)))
    idx0, idx1 = matches[inliers, 0], matches[inliers, 1]
    p0, p1 = f0["keypoints"][idx0].astype(np.float64), f1["keypoints"][idx1].astype(np.float64)
    a = _photo(p0, f0["size"], f0["scores"][idx0], f0["scores"])
    b = _photo(p1, f1["size"], f1["scores"][idx1], f1["scores"])
    for name in PER_PHOTO:
        out[f"{name}_min"], out[f"{name}_max"] = min(a[name], b[name]), max(a[name], b[name])
    if model is not None:
        m = np.asarray(model, np.float64).reshape(-1)
        fwd = np.r_[m, 0.0, 0.0, 1.0].reshape(3, 3) if len(m) == 6 else m.reshape(3, 3)
        if np.isfinite(fwd).all() and abs(np.linalg.det(fwd)) > 1e-12:
            # the inliers' distance from the map, both ways (so the value does not depend on the order)
            there = float(np.linalg.norm(_apply(fwd, p0) - p1, axis=1).mean())
            back = float(np.linalg.norm(_apply(np.linalg.inv(fwd), p1) - p0, axis=1).mean())
            out["residual_mean"] = 0.5 * (there + back) / threshold
    return out


def _apply(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (N, 2) mapped by a 3x3 matrix."""
    hom = np.c_[points, np.ones(len(points))] @ h.T
    return hom[:, :2] / hom[:, 2:3]
