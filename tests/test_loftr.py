"""LoFTR plumbing: weight lookup, loading, per-image feature cache, matching and verification.

The model in these tests is UNTRAINED: its weights are kornia's random initialisation
(``LoFTR(pretrained=None)``, seeded), saved to a checkpoint file in the layout of the
original release and loaded through the same path as real weights. The tests check the
plumbing (shapes, index validity, coordinates, caching, RANSAC on the output), not the
quality of the matches: LoFTR's real weights cannot be obtained offline.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import textured_image, warp_affine

from matcher.errors import WeightsError
from matcher.io import weights
from matcher.pairs import loftr

torch = pytest.importorskip("torch")


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """No LoFTR weights anywhere: empty weights folder, no environment variables."""
    monkeypatch.delenv(loftr.ENV_WEIGHTS, raising=False)
    monkeypatch.delenv("WHALEMATCH_WEIGHTS_DIR", raising=False)
    empty = tmp_path / "weights"
    empty.mkdir()
    monkeypatch.setattr(weights, "WEIGHTS_DIR", empty)
    return empty


@pytest.fixture
def untrained_checkpoint(tmp_path):
    """A checkpoint of an UNTRAINED LoFTR (seeded random initialisation), laid out like the original release."""
    from kornia.feature import LoFTR

    torch.manual_seed(0)
    state = LoFTR(pretrained=None).state_dict()
    path = tmp_path / "loftr_untrained.ckpt"
    torch.save({"state_dict": {f"matcher.{k}": v for k, v in state.items()}}, path)
    return path


def test_missing_weights_names_every_place_looked(no_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("WHALEMATCH_WEIGHTS_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(WeightsError) as info:
        loftr.LoFTRMatcher()
    msg = str(info.value)
    assert str(no_weights / loftr.WEIGHTS_FILE) in msg
    assert str(tmp_path / "elsewhere" / loftr.WEIGHTS_FILE) in msg
    assert loftr.ENV_WEIGHTS in msg and "cannot be downloaded" in msg


def test_explicit_weights_path_that_does_not_exist_is_named(no_weights, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "loftr_outdoor.ckpt"
    monkeypatch.setenv(loftr.ENV_WEIGHTS, str(missing))
    with pytest.raises(WeightsError, match="nowhere"):
        loftr.find_weights()


def test_weights_that_do_not_fit_the_model_are_refused(no_weights, tmp_path):
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"not_a_loftr_layer.weight": torch.zeros(3)}}, bad)
    with pytest.raises(WeightsError, match="do not fit"):
        loftr.LoFTRMatcher(weights_path=bad)


def test_weights_found_in_the_weights_folder(no_weights, untrained_checkpoint):
    target = no_weights / loftr.WEIGHTS_FILE
    target.write_bytes(untrained_checkpoint.read_bytes())
    assert loftr.find_weights() == target


def test_untrained_loftr_end_to_end(no_weights, untrained_checkpoint, monkeypatch):
    """UNTRAINED model: matches come out with valid shapes and coordinates, features are cached, RANSAC runs."""
    conf = {"coarse_threshold": 0.0, "target_area": 256 * 112}  # every mutual nearest neighbour; a small, fast size
    monkeypatch.setenv(loftr.ENV_WEIGHTS, str(untrained_checkpoint))
    matcher = loftr.LoFTRMatcher(conf)
    assert matcher.weights_path == untrained_checkpoint
    assert not matcher.model.training

    img0 = textured_image(3, (200, 480))
    img1, _ = warp_affine(img0)
    img2 = textured_image(4, (150, 420))[..., 0]  # grayscale input of another size

    calls = []
    original = matcher.model.extract_features
    monkeypatch.setattr(matcher.model, "extract_features", lambda x: calls.append(x.shape) or original(x))

    k0, k1, c = matcher.match_images(img0, img1, key0="a", key1="b")
    assert k0.shape == k1.shape == (len(c), 2) and len(c) > 0
    assert k0.dtype == k1.dtype == c.dtype == np.float32
    assert np.all((c >= 0) & (c <= 1))
    for k, img in ((k0, img0), (k1, img1)):
        h, w = img.shape[:2]
        slack = 5 * w / matcher.working_size(w, h)[0]  # the fine stage moves a match by at most 4 working pixels
        assert np.all(k[:, 0] >= -slack) and np.all(k[:, 0] <= w + slack)
        assert np.all(k[:, 1] >= -slack) and np.all(k[:, 1] <= h + slack)
    # no keypoint of image0 is matched twice (coarse mutual nearest neighbours)
    assert len(np.unique(k0, axis=0)) == len(k0)
    assert len(calls) == 2 and all(s[2] % 8 == 0 and s[3] % 8 == 0 for s in calls)

    again = matcher.match_images(img0, img1, key0="a", key1="b")
    assert len(calls) == 2, "cached backbone features are reused"
    for x, y in zip((k0, k1, c), again):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-4)

    k0b, k1b, cb = matcher.match_images(img0, img2, key0="a")
    assert len(calls) == 3 and k0b.shape == k1b.shape == (len(cb), 2)
    assert np.all(k1b[:, 0] <= img2.shape[1] + 5 * img2.shape[1] / matcher.working_size(420, 150)[0])

    v = matcher.verify(img0, img1, key0="a", key1="b")
    assert v["n_matches"] == len(c)
    assert 0 <= v["n_inliers"] <= v["n_matches"] and v["inliers"].shape == (len(c),)
    assert 0.0 <= v["score"] < 1.0
    assert v["model"] is None or len(v["model"]) == 6


def test_feature_cache_is_bounded(no_weights, untrained_checkpoint):
    matcher = loftr.LoFTRMatcher({"target_area": 128 * 64}, weights_path=untrained_checkpoint, cache_size=2)
    for i in range(4):
        matcher.features(textured_image(i, (64, 160)), key=f"img{i}")
    assert list(matcher._cache) == ["img2", "img3"]
