"""Heads trained without chosen whales (training/oof_heads.py) and the pair model's cross-fitted head vote
(train_verifier.crossfit_head_similarity): which head scores which pair, and a head kept and reused by key."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return np.round(127 * v / np.linalg.norm(v)).astype(np.int8)


def test_crossfit_uses_the_heads_that_never_saw_the_pair_together():
    pytest.importorskip("lightgbm")
    from training.train_verifier import crossfit_head_similarity

    fold_of = {"w1": 0, "w2": 0, "w3": 1}
    x, y = unit([1, 0]), unit([0, 1])
    # head 0 (trained without fold 0: w1, w2) finds a and b alike; head 1 (without w3) finds a and c opposite
    fold_emb = {0: {"a": x, "b": x, "c": y}, 1: {"a": x, "b": y, "c": unit([-1, 0])}}
    table = pd.DataFrame({"image_a": ["a", "a"], "image_b": ["b", "c"], "whale_a": ["w1", "w1"],
                          "whale_b": ["w2", "w3"]})
    sim = crossfit_head_similarity(table, fold_emb, fold_of)
    assert sim[0] == pytest.approx(1.0)  # both whales in fold 0: head 0 alone
    assert sim[1] == pytest.approx((0.5 + 0.0) / 2, abs=1e-3)  # across folds: heads 0 and 1 averaged


def test_a_head_without_chosen_whales_is_trained_once_and_reused(tmp_path):
    from training import oof_heads

    rng = np.random.default_rng(0)
    inputs = {f"p{i}": rng.standard_normal((20, 131)).astype(np.float16) for i in range(12)}
    whale = {f"p{i}": f"w{i % 4}" for i in range(12)}
    photos = oof_heads.Photos(inputs, whale, {i: f"{n:064x}" for n, i in enumerate(sorted(inputs))})
    train = {"epochs": 2, "batch": 4, "keypoints": 8, "lr": 1e-3, "weight_decay": 0.0, "margin": 0.1,
             "scale": 10.0, "subcenters": 1, "min_photos": 1}
    path, emb = oof_heads.trained_head(photos, {"w0"}, tmp_path, 0, train)
    assert set(emb) == set(inputs) and all(e.dtype == np.int8 for e in emb.values())  # every photo embedded
    import json

    info = json.loads(path.with_suffix(".json").read_text())["info"]
    assert info["excluded_whales"] == ["w0"] and info["photos"] == 9 and info["whales"] == 3
    stamp = path.stat().st_mtime_ns
    again, emb2 = oof_heads.trained_head(photos, {"w0"}, tmp_path, 0, train)
    assert again == path and path.stat().st_mtime_ns == stamp  # from the cache, not trained again
    assert all(np.array_equal(emb[i], emb2[i]) for i in emb)
    other = oof_heads.head_key(photos, {"w1"}, 0, train)
    assert other != oof_heads.head_key(photos, {"w0"}, 0, train) != oof_heads.head_key(photos, {"w0"}, 1, train)


def test_encounter_batches_pair_two_encounters_against_the_same_days_other_whales():
    from training.head_training import encounter_batches

    labels = ["A", "A", "A", "B", "B", "C", "D", "E"]
    encounters = ["a1", "a1", "a2", "b1", "b2", "c1", "d1", "e1"]
    dates = ["d1", "d1", "d2", "d1", "d3", "d2", "d1", "d9"]
    batches = encounter_batches(labels, encounters, dates, 8, 20, np.random.default_rng(0))
    assert len(batches) == 20
    for idx, pos in batches:
        assert len(idx) == len(pos) <= 8
        for k, p in enumerate(pos):
            if p >= 0:  # a positive: the same whale in another encounter, and it points back
                i, j = idx[k], idx[p]
                assert labels[i] == labels[j] and encounters[i] != encounters[j] and pos[p] == k
        anchors = {idx[k] for k, p in enumerate(pos) if p >= 0}
        assert {labels[i] for i in anchors} <= {"A", "B"}  # only whales seen in two encounters anchor
        for k, p in enumerate(pos):
            if p < 0:  # a filler: another whale photographed the same day as one of the anchors
                assert any(dates[idx[k]] == dates[a] and labels[idx[k]] != labels[a] for a in anchors)


def test_the_shipped_new_whale_model_is_not_fitted_on_other_fold_heads(tmp_path, capsys):
    """``train_new_whale --head-cross-encounter`` measures other fold heads; writing the shipped model from
    them (whose stage 0 would not be the index's head) is refused before any work."""
    from training import train_new_whale

    out = tmp_path / "model.json"
    with pytest.raises(SystemExit) as exc:
        train_new_whale.main(["--head-cross-encounter", "1.0", "--out", str(out), "--catalogue", str(tmp_path)])
    assert exc.value.code == 2
    assert "--head-cross-encounter" in capsys.readouterr().err
    assert not out.exists()
