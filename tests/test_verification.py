"""Geometry on generated images: a known affine warp is recovered; unrelated images score low."""

from __future__ import annotations

import numpy as np
import pytest

from matcher import features, presets
from matcher.pair_cache import canonical
from matcher.pair_verifier import PairVerifier
from matcher.pair_cache import PairCache
from matcher.verification import verify
from matcher.matching import mutual_nn

from conftest import textured_image, warp_affine


def _verify_pair(preset: str, img0, img1) -> dict:
    conf = presets.resolve(preset)
    ex = features.build(conf["extractor"], "cpu")
    f0, f1 = ex.extract([img0, img1])
    verifier = PairVerifier(conf, "cpu", PairCache(None, presets.verdict_key(conf)))
    return verifier.verify_pair(f0, f1, keep_inliers=True), f0, f1


@pytest.mark.parametrize("preset", ["sift-mnn", "disk-mnn"])
def test_known_affine_warp_is_recovered(preset):
    img = textured_image(1)
    warped, true_model = warp_affine(img)
    verdict, f0, f1 = _verify_pair(preset, img, warped)
    assert verdict["n_inliers"] >= 40
    model = np.array(verdict["model"]).reshape(2, 3)
    # The fitted map sends points where the true one does, to within 2 pixels over the image.
    h, w = img.shape[:2]
    grid = np.array([[x, y, 1.0] for x in np.linspace(0, w, 5) for y in np.linspace(0, h, 5)])
    err = np.linalg.norm(grid @ model.T - grid @ true_model.T, axis=1)
    assert err.max() < 2.0, err.max()
    # And the inlier correspondences themselves obey the true warp.
    m = verdict["matches"][verdict["inliers"]]
    p0 = np.c_[f0["keypoints"][m[:, 0]], np.ones(len(m))]
    resid = np.linalg.norm(p0 @ true_model.T - f1["keypoints"][m[:, 1]], axis=1)
    assert np.median(resid) < 2.0


@pytest.mark.parametrize("preset", ["sift-mnn", "disk-mnn"])
def test_unrelated_image_scores_low(preset):
    img = textured_image(1)
    warped, _ = warp_affine(img)
    related, _, _ = _verify_pair(preset, img, warped)
    unrelated, _, _ = _verify_pair(preset, img, textured_image(2))
    assert unrelated["n_inliers"] < 15
    assert unrelated["score"] < 0.5 < related["score"]
    assert 0.0 <= unrelated["score"] <= 1.0 and 0.0 <= related["score"] <= 1.0


def test_verdict_is_symmetric_after_canonical_order():
    img, other = textured_image(3), warp_affine(textured_image(3), angle=-5)[0]
    conf = presets.resolve("sift-mnn")
    f0, f1 = features.build(conf["extractor"]).extract([img, other])
    m01, s01 = mutual_nn(f0["descriptors"].astype(np.float32), f1["descriptors"].astype(np.float32))
    m10, s10 = mutual_nn(f1["descriptors"].astype(np.float32), f0["descriptors"].astype(np.float32))
    assert sorted(map(tuple, m01)) == sorted((b, a) for a, b in m10)
    v1 = verify(f0["keypoints"], f1["keypoints"], m01, s01, conf["verifier"])
    v2 = verify(f0["keypoints"], f1["keypoints"], m01, s01, conf["verifier"])
    assert v1["n_inliers"] == v2["n_inliers"] and v1["model"] == v2["model"]  # seeded RANSAC
    assert canonical("b", "a") == canonical("a", "b") == ("a", "b")
