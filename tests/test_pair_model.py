"""The verdict's evidence, the white-fill filter and the learned pair model, on generated images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import textured_image, warp_affine

from matcher import presets
from matcher.errors import WeightsError
from matcher.features import extractors, white_fill
from matcher.pairs import evidence, mnn, ransac
from matcher.pairs.model import (
    PairModel,
    feature_names,
    feature_row,
    head_similarity,
    metadata_features,
    photo_fingerprints,
)

PRESET = "sift-mnn"


@pytest.fixture(scope="module")
def sift():
    return extractors.build(presets.resolve(PRESET)["extractor"])


def verdict(f0, f1):
    conf = presets.resolve(PRESET)["verifier"]
    m, s = mnn.mutual_nn(f0["descriptors"], f1["descriptors"])
    v = ransac.verify(f0["keypoints"], f1["keypoints"], m, s, conf)
    v["evidence"] = evidence.describe(f0, f1, m, s, v["inliers"], v["model"], conf["threshold"])
    return v, m, s


def test_evidence_of_a_known_warp_and_of_unrelated_images(sift):
    img = textured_image(1, (240, 96))
    warped, _ = warp_affine(img, angle=10.0, scale=0.8, shift=(5.0, -4.0))
    f0, f1 = sift.extract([img, warped])
    v, _, _ = verdict(f0, f1)
    e = v["evidence"]
    assert e["n_inliers"] == v["n_inliers"] > 50 and e["inlier_ratio"] > 0.5
    assert e["log_scale_abs"] == pytest.approx(abs(math.log(0.8)), abs=0.03)  # the warp's scale
    assert e["rotation"] == pytest.approx(math.radians(10.0), abs=0.03)  # and its rotation
    assert e["anisotropy"] == pytest.approx(1.0, abs=0.05) and e["shear"] < 0.05  # a similarity: no shear
    assert e["hull_area_max"] > 0.3 and e["span_along_max"] > 0.6  # the marks cover the photos
    assert e["residual_mean"] < 1.0  # inliers lie within the threshold of the map
    other = sift.extract([textured_image(2, (240, 96))])[0]
    e2 = verdict(f0, other)[0]["evidence"]
    assert e2["n_inliers"] < 0.2 * e["n_inliers"]
    assert set(e) == set(e2) == set(evidence.FIELDS)


def test_evidence_does_not_depend_on_which_photo_comes_first(sift):
    img = textured_image(3, (240, 96))
    warped, _ = warp_affine(img, angle=-6.0, scale=1.1)
    f0, f1 = sift.extract([img, warped])
    v, m, s = verdict(f0, f1)
    a = np.r_[np.asarray(v["model"]).reshape(2, 3), [[0.0, 0.0, 1.0]]]
    back = np.linalg.inv(a)[:2].ravel().tolist()
    e_back = evidence.describe(f1, f0, m[:, ::-1], s, v["inliers"], back, 6.0)
    for k, x in v["evidence"].items():
        assert e_back[k] == pytest.approx(x, rel=1e-6, abs=1e-9), k


def test_white_fill_is_found_and_its_keypoints_dropped(sift):
    img = textured_image(4, (300, 120))
    filled = img.copy()
    rows, cols = np.mgrid[:300, :120]
    filled[rows < 120 - cols] = 255  # a white triangle in the top-left corner, as the organisers' crops have
    mask = white_fill.fill_mask(filled)
    assert mask[0, 0] and mask[50, 20] and not mask[200, 100] and not white_fill.fill_mask(img).any()
    conf = presets.resolve(PRESET)["extractor"]
    plain = sift.extract([filled])[0]
    masked = extractors.build({**conf, "white_fill": {"threshold": 250, "margin": 0.02}}).extract([filled])[0]
    assert 0 < len(masked["keypoints"]) < len(plain["keypoints"])
    x, y = masked["keypoints"][:, 0], masked["keypoints"][:, 1]
    assert (y >= 120 - x - 0.02 * 120 - 1).all()  # none on the fill or within its margin
    on_fill = plain["keypoints"][plain["keypoints"][:, 1] < 120 - plain["keypoints"][:, 0] - 3]
    assert len(on_fill) > 0  # without the filter, the fill's edge and corner held keypoints


def test_metadata_features_and_missing_metadata():
    assert metadata_features({"date": "2018-08-01", "viewpoint": "top"}, {"date": "2018-08-03", "viewpoint": "top"}
                             ) == [2.0, 0.0, 1.0, 0.0]
    assert metadata_features({"date": "2017-08-01", "viewpoint": "left"}, {"date": "2017-08-01", "viewpoint": "right"}
                             ) == [0.0, 1.0, 1.0, 3.0]
    assert metadata_features({"date": "2017-08-01", "viewpoint": "top"}, {"date": "2019-07-20", "viewpoint": "left"}
                             ) == [718.0, 0.0, 0.0, 1.0]
    missing = metadata_features({"viewpoint": "top"}, None)
    assert all(math.isnan(v) for v in missing)


def _toy_table(sift, n=24):
    """Feature rows of generated pairs: a texture and its warped copy (same), two textures (different)."""
    rows, labels, names = [], [], feature_names(True)
    for i in range(n):
        img = textured_image(100 + i, (200, 80))
        warped, _ = warp_affine(img, angle=float(i % 7), scale=0.9)
        other = textured_image(500 + i, (200, 80))
        f0, f1, f2 = sift.extract([img, warped, other])
        same = {"date": "2018-08-01", "viewpoint": "top"}
        rows.append(feature_row(verdict(f0, f1)[0], same, same, names))
        labels.append(1)
        rows.append(feature_row(verdict(f0, f2)[0], same, {"date": "2019-07-30", "viewpoint": "top"}, names))
        labels.append(0)
    return np.array(rows), np.array(labels), names


def test_pair_model_round_trip_without_pickle_and_missing_metadata(sift, tmp_path):
    lightgbm = pytest.importorskip("lightgbm")
    x, y, names = _toy_table(sift)
    booster = lightgbm.train({"objective": "binary", "verbose": -1, "min_data_in_leaf": 2, "num_threads": 1,
                              "deterministic": True, "seed": 0}, lightgbm.Dataset(x, y), 20)
    model = PairModel(names, "sift+mnn+affine-test", booster.model_to_string(), {"note": "toy"})
    model.save(tmp_path / "m.json")
    doc = json.loads((tmp_path / "m.json").read_text())  # plain JSON: the trees are LightGBM's text format
    assert doc["features"] == names and doc["lightgbm_model"].startswith("tree")
    again = PairModel.load(tmp_path / "m.json")
    p = again.predict(x)
    assert np.allclose(p, model.predict(x)) and p[y == 1].min() > p[y == 0].max()
    blank = x.copy()
    blank[:, [names.index(n) for n in ("days_apart", "same_date", "same_year", "views")]] = np.nan
    p_blank = again.predict(blank)  # no metadata at all: still a probability per pair, no crash
    assert np.isfinite(p_blank).all() and p_blank[y == 1].mean() > p_blank[y == 0].mean()


def test_pair_model_files_that_cannot_be_used_are_refused(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(WeightsError, match="cannot load the pair model"):
        PairModel.load(tmp_path / "bad.json")
    doc = {"format": "whalematch-pair-model", "version": 1, "features": ["strength", "moon_phase"],
           "settings_key": "k", "lightgbm_model": "tree"}
    (tmp_path / "future.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match="moon_phase"):
        PairModel.load(tmp_path / "future.json")


def toy_challenge_and_model(tmp_path, head_path=None):
    """A generated challenge (leave-one-out and split scenarios of 8 whales) under ``tmp_path/data`` and a toy pair
    model fitted on its photos for the preset's verdicts (reading ``head_path``'s vote when given), saved:
    (data folder, engine, image paths, whale by image id, model, model file)."""
    from scenario_factory import loo_and_split
    from toy_model import fit_toy_model

    from matcher.challenge import layout
    from matcher.engine import Engine

    root = tmp_path / "data"
    meta = loo_and_split(root, n_whales=8, n_loo=5, seed=11)
    engine = Engine(PRESET, tmp_path / "cache", "cpu", progress=False)
    challenge = layout.load(root)
    paths, _ = challenge.image_paths(challenge.image_ids())
    whale = dict(zip(meta["image_id"], meta["whale_id"]))
    model = fit_toy_model(engine, paths, whale, challenge.photo_metadata(), head_path=head_path)
    path = tmp_path / "pair-model.json"
    model.save(path)
    return root, engine, paths, whale, model, path


def assert_each_query_finds_its_whale_first(submission, whale: dict[str, str]) -> None:
    import pandas as pd

    sub = pd.read_csv(submission, dtype=str)
    for qid, rows in sub.groupby("query_id"):
        assert whale[rows["database_image_id"].iloc[0]] == whale[qid.split("-", 1)[1]], rows.head(3)


def test_main_ranks_with_a_learned_model_and_refuses_one_made_for_other_settings(tmp_path):
    """A model trained (here, on generated whales) for the engine's own verdict settings ranks each
    query's whale first through main.py; asked for without a usable model, main.py stops with a message."""
    pytest.importorskip("lightgbm")
    from conftest import run_main

    root, engine, paths, whale, model, path = toy_challenge_and_model(tmp_path)
    out = tmp_path / "sub.csv"
    res = run_main(root, out, tmp_path / "cache", "--pair-score", "learned", "--pair-model", str(path),
                   "--time-budget", "none")
    assert res.returncode == 0, res.stderr
    assert "in-sample" not in res.stderr  # the model says nothing of its training photos
    assert_each_query_finds_its_whale_first(out, whale)
    # a model that saw some of the run's photos: the run says its figures on them are in-sample
    shas, _ = engine.hash_images(paths)
    seen = sorted(set(shas.values()))[:5]
    model.info = {"trained_on": {"photos_sha256_16": photo_fingerprints(seen)}}
    assert model.trained_on(shas.values()) == 5 and model.trained_on(["f" * 64]) == 0
    model.save(path)
    res = run_main(root, out, tmp_path / "cache", "--pair-score", "learned", "--pair-model", str(path),
                   "--time-budget", "none")
    assert res.returncode == 0, res.stderr
    assert f"5 of the {len(set(shas.values()))} images of this run were among the pair model's training photos" \
        in res.stderr and "in-sample" in res.stderr
    PairModel(model.features, "another+preset-000000000000", model.booster_text).save(tmp_path / "other.json")
    res = run_main(root, out, tmp_path / "cache", "--pair-score", "learned", "--pair-model",
                   str(tmp_path / "other.json"))
    assert res.returncode == 2 and "trained for verdicts another+preset" in res.stderr
    res = run_main(root, out, tmp_path / "cache", "--pair-score", "learned", "--pair-model",
                   str(tmp_path / "absent.json"))
    assert res.returncode == 2 and "absent.json" in res.stderr and "Traceback" not in res.stderr


def test_head_vote_feature_and_a_model_that_does_not_name_its_head(tmp_path):
    e = np.zeros(16, np.int8)
    e[0] = 127
    other = np.zeros(16, np.int8)
    other[1] = 127
    assert head_similarity({"embedding": e}, {"embedding": e}) == pytest.approx(1.0)
    assert head_similarity({"embedding": e}, {"embedding": -e}) == pytest.approx(0.0)
    assert head_similarity({"embedding": e}, {"embedding": other}) == pytest.approx(0.5)
    assert math.isnan(head_similarity({"embedding": e}, {"date": "2018-01-01"}))
    assert math.isnan(head_similarity(None, None))
    names = feature_names(True, True)
    assert names[-1] == "head_similarity" and "head_similarity" not in feature_names(True)
    row = feature_row({"strength": 3.0, "evidence": {}}, {"embedding": e}, {"embedding": other}, names)
    assert row[-1] == pytest.approx(0.5)
    doc = {"format": "whalematch-pair-model", "version": 1, "features": names, "settings_key": "k",
           "lightgbm_model": "tree", "info": {}}
    (tmp_path / "nameless.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match="does not say which head"):
        PairModel.load(tmp_path / "nameless.json")


def test_main_ranks_with_the_head_vote_and_refuses_a_head_that_is_not_the_one_trained_with(tmp_path):
    """A pair model that reads a global head's vote ranks through main.py with that head (named by path and
    SHA-256 in the model file); replace the head's weights and main.py stops with a message naming the file."""
    pytest.importorskip("lightgbm")
    torch = pytest.importorskip("torch")
    from conftest import run_main

    from matcher.features.global_head import GlobalHead, build_head

    conf = {"dim": 128, "clusters": 4, "out": 16}  # SIFT descriptors are 128-d like DISK's
    torch.manual_seed(0)
    head_path = tmp_path / "head.pt"
    GlobalHead(conf, build_head(conf).state_dict()).save(head_path)
    root, engine, paths, whale, model, path = toy_challenge_and_model(tmp_path, head_path)
    assert model.uses_head and model.features[-1] == "head_similarity"
    out = tmp_path / "sub.csv"
    res = run_main(root, out, tmp_path / "cache", "--pair-score", "learned", "--pair-model", str(path),
                   "--time-budget", "none")
    assert res.returncode == 0, res.stderr
    assert_each_query_finds_its_whale_first(out, whale)
    torch.manual_seed(1)
    GlobalHead(conf, build_head(conf).state_dict()).save(head_path)  # another head under the same name
    res = run_main(root, out, tmp_path / "cache", "--pair-score", "learned", "--pair-model", str(path))
    assert res.returncode == 2 and "head.pt" in res.stderr and "not the global head" in res.stderr
    assert "Traceback" not in res.stderr
