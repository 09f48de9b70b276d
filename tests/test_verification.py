"""Geometry on generated images: a known affine warp is recovered; unrelated images score low."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import textured_image, warp_affine

from matcher import presets
from matcher.features import extractors as features
from matcher.pairs.mnn import mutual_nn
from matcher.pairs.ransac import verify
from matcher.pairs.store import VerdictStore, canonical
from matcher.pairs.verifier import PairVerifier


def _verify_pair(preset: str, img0, img1) -> dict:
    conf = presets.resolve(preset)
    ex = features.build(conf["extractor"], "cpu")
    f0, f1 = ex.extract([img0, img1])
    verifier = PairVerifier(conf, "cpu", VerdictStore(None, presets.verdict_settings_key(conf)))
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


def _tight_crop(img: np.ndarray, zoom: int = 2):
    """The middle of ``img`` enlarged ``zoom`` times to the same size (a photo framing the whale tighter), and
    the known map from ``img``'s pixels to the crop's."""
    h, w = img.shape[:2]
    y0, x0 = h // 4, w // 4
    crop = cv2.resize(img[y0 : y0 + h // zoom, x0 : x0 + w // zoom], (w, h), interpolation=cv2.INTER_CUBIC)
    # cv2.resize maps pixel centres: x' + 0.5 = zoom * (x - x0 + 0.5)
    return crop, np.array([[zoom, 0.0, zoom * (0.5 - x0) - 0.5], [0.0, zoom, zoom * (0.5 - y0) - 0.5]])


def test_extra_detection_scale_matches_a_tighter_crop():
    img = textured_image(2)
    crop, true_model = _tight_crop(img)
    single = presets.resolve("disk-mnn")
    single["extractor"]["extra_scales"] = []
    multi = presets.resolve("disk-mnn")
    multi["extractor"]["extra_scales"] = [{"scale": 0.5, "max_keypoints": 512}]
    s0, s1 = features.build(single["extractor"], "cpu").extract([img, crop])
    m0, m1 = features.build(multi["extractor"], "cpu").extract([img, crop])
    # the working size's keypoints come first and are exactly the single-scale ones; the extra scale adds its own
    for s, m in ((s0, m0), (s1, m1)):
        assert np.array_equal(m["keypoints"][: len(s["keypoints"])], s["keypoints"])
        assert np.array_equal(m["descriptors"][: len(s["descriptors"])], s["descriptors"])
        assert len(s["keypoints"]) < len(m["keypoints"]) <= len(s["keypoints"]) + 512
    v_single = PairVerifier(single, "cpu", VerdictStore(None, presets.verdict_settings_key(single))).verify_pair(s0, s1)
    v_multi = PairVerifier(multi, "cpu", VerdictStore(None, presets.verdict_settings_key(multi))).verify_pair(
        m0, m1, keep_inliers=True)
    assert v_multi["n_inliers"] > 1.2 * v_single["n_inliers"]
    # the crop's coarse-scale keypoints take part, and they sit where the known map puts them
    m = v_multi["matches"][v_multi["inliers"]]
    coarse = m[m[:, 1] >= len(s1["keypoints"])]
    assert len(coarse) >= 20
    p0 = np.c_[m0["keypoints"][coarse[:, 0]], np.ones(len(coarse))]
    assert np.median(np.linalg.norm(p0 @ true_model.T - m1["keypoints"][coarse[:, 1]], axis=1)) < 3.0


@pytest.mark.parametrize("extractor", ["aliked", "sift"])
def test_extra_scales_are_refused_where_the_keypoint_count_is_fixed(extractor):
    conf = {"name": extractor, **presets.EXTRACTORS[extractor], "extra_scales": [{"scale": 0.5, "max_keypoints": 64}]}
    with pytest.raises(ValueError, match="extra_scales is supported for DISK only"):
        features.build(conf, "cpu")
