"""Calibration of P(same whale): isotonic fit, error measures, file format, the bundled file, the command."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, textured_image, warp_affine
from curation_helpers import PRESET, save_rgb

from matcher import presets
from matcher.curation import calibration as calib
from matcher.curation.cli import main

BUNDLED = REPO / "weights" / "calibration-disk-mnn.json"


def test_isotonic_fit_pools_violators_on_a_known_case():
    # Without shrinking the knots are the pooled blocks: [1, 0, 0 | 1, 1] pools into maximal blocks (ties too).
    kx, ky = calib.fit_isotonic(np.arange(5.0), np.array([1, 0, 0, 1, 1]), pseudo_count=0.0)
    assert kx == [0.0, 2.0, 3.0, 4.0]  # blocks [0, 3) and [3, 5): each its lowest and highest x
    assert np.allclose(ky, [1 / 3, 1 / 3, 1.0, 1.0])
    # Each block is shrunk towards 1/2 by one pseudo-count in units of its weight (3 and 2).
    kx, ky = calib.fit_isotonic(np.arange(5.0), np.array([1, 0, 0, 1, 1]), pseudo_count=1.0)
    assert kx == [0.0, 2.0, 3.0, 4.0] and np.allclose(ky, [1.5 / 4, 1.5 / 4, 2.5 / 3, 2.5 / 3])
    # Weighted: values 0.2, 0.9, 0.1 at x 0, 1, 2 with weights 1, 1, 2 (labels weighted to those shares).
    x = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    labels = np.array([1, 0, 1, 0, 1, 0])
    w = np.array([0.2, 0.8, 0.9, 0.1, 0.2, 1.8])
    kx, ky = calib.fit_isotonic(x, labels, w, pseudo_count=0.0)
    assert kx == [0.0, 1.0, 2.0] and np.allclose(ky, [0.2, (0.9 + 0.2) / 3, (0.9 + 0.2) / 3])


def test_isotonic_fit_is_monotone_in_unit_interval_and_follows_the_data():
    rng = np.random.default_rng(0)
    strength = np.r_[np.zeros(150), rng.uniform(6, 200, 600)]
    truth = 1 / (1 + np.exp(-(strength - 30) / 8))
    labels = (rng.uniform(size=len(strength)) < truth).astype(int)
    cal = calib.fit(strength, labels, "p", "key", balance=False)  # compare with the generating curve as is
    grid = np.linspace(-10, 500, 2001)
    p = cal.probability(grid)
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() <= 1
    assert cal.probability(0.0) < 0.1 and cal.probability(150.0) > 0.9
    assert abs(cal.probability(30.0) - 0.5) < 0.2
    # Ties in strength are pooled, never split: every strength-0 pair gets one probability.
    assert len({float(v) for v in cal.probability(np.zeros(5))}) == 1
    # Shrinking towards 1/2: a handful of positives never yields certainty.
    small = calib.fit([1.0, 2.0, 3.0], [0, 1, 1], "p", "key")
    assert 0 < small.probability(-1.0) and small.probability(10.0) < 1
    held = calib.evaluate(cal, strength, labels, strength / (strength + 20), balance=False)
    assert held["ece"] < 0.05 and held["brier"] < 0.2 and held["pairs"] == len(labels)


def test_classes_weigh_equally_so_extra_negatives_sharpen_but_do_not_shift_the_odds():
    x = np.full(100, 10.0)
    labels = np.r_[np.ones(20), np.zeros(80)]
    assert calib.fit(x, labels, "p", "k").probability(10.0) == pytest.approx(0.5)
    assert calib.fit(x, labels, "p", "k", balance=False).probability(10.0) == pytest.approx(20.5 / 101)
    w = calib.balancing_weights(labels)
    assert w[labels == 1].sum() == pytest.approx(w[labels == 0].sum()) == pytest.approx(50)
    # Weighted error measures: P = 0.5 everywhere is perfectly calibrated at even odds, not at 1:4.
    p = np.full(100, 0.5)
    assert calib.expected_calibration_error(p, labels, weights=w) == pytest.approx(0.0)
    assert calib.expected_calibration_error(p, labels) == pytest.approx(0.3)
    assert calib.brier_score(p, labels, w) == pytest.approx(0.25)


def test_prior_reweighs_the_odds():
    cal = calib.fit(np.r_[np.zeros(50), np.full(50, 40.0)], np.r_[np.zeros(45), np.ones(5), np.zeros(5), np.ones(45)],
                    "p", "key")
    assert cal.prior == 0.5
    p_even, p_rare = cal.probability(40.0), cal.probability(40.0, prior=0.05)
    assert p_rare < p_even
    odds = lambda p: p / (1 - p)  # noqa: E731
    assert odds(p_rare) == pytest.approx(odds(p_even) * (0.05 / 0.95), rel=1e-6)


def test_error_measures_on_known_values():
    labels = np.array([0, 0, 1, 1])
    assert calib.expected_calibration_error(np.array([0.0, 0.0, 1.0, 1.0]), labels) == 0.0
    assert calib.brier_score(np.array([0.0, 0.0, 1.0, 1.0]), labels) == 0.0
    assert calib.brier_score(np.full(4, 0.5), labels) == pytest.approx(0.25)
    # All predictions 0.9 for half positives: one bin, |0.9 - 0.5| = 0.4.
    assert calib.expected_calibration_error(np.full(4, 0.9), labels) == pytest.approx(0.4)
    # Two bins: {0.1, 0.1 | labels 0, 1} -> |0.1-0.5| = 0.4; {0.8, 0.8 | 1, 1} -> 0.2; weighted 0.3.
    assert calib.expected_calibration_error(np.array([0.1, 0.1, 0.8, 0.8]), np.array([0, 1, 1, 1])) == \
        pytest.approx(0.3)


def test_file_round_trip_and_refusals(tmp_path):
    cal = calib.fit([0, 0, 10, 30, 50], [0, 0, 1, 1, 1], "disk-mnn", "k1")
    path = tmp_path / "c.json"
    cal.save(path)
    back = calib.Calibration.load(path)
    assert back.x == pytest.approx(cal.x, abs=1e-6) and back.y == pytest.approx(cal.y, abs=1e-6)
    doc = json.loads(path.read_text())
    doc["x"], doc["y"] = [0.0, 10.0], [0.9, 0.1]
    path.write_text(json.dumps(doc))
    with pytest.raises(calib.CalibrationError, match="non-decreasing"):
        calib.Calibration.load(path)
    cal.save(path)
    conf = presets.resolve("disk-mnn")
    with pytest.raises(calib.CalibrationError, match="refit"):
        calib.for_preset(conf, path)  # made for other settings
    with pytest.raises(calib.CalibrationError, match="not found"):
        calib.Calibration.load(tmp_path / "none.json")


def test_bundled_calibration_is_monotone_and_matches_the_default_preset():
    if not BUNDLED.is_file():
        pytest.fail(f"{BUNDLED.name} missing: rebuild it with `make calibrate`")
    cal = calib.Calibration.load(BUNDLED)
    conf = presets.resolve("disk-mnn")
    assert cal.preset == "disk-mnn"
    if cal.settings_key != presets.verdict_settings_key(conf):
        pytest.fail(f"{BUNDLED.name} was fitted for settings {cal.settings_key}, but disk-mnn is now "
                    f"{presets.verdict_settings_key(conf)}: rebuild it with `make calibrate`")
    loaded, why = calib.for_preset(conf)
    assert loaded is not None, why
    p = cal.probability(np.linspace(0, 1000, 5001))
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() <= 1
    assert p[0] < 0.5 < p[-1]
    for part in ("fit", "heldout"):
        assert getattr(cal, part)["positives"] >= 100 and getattr(cal, part)["negatives"] >= 100
    assert 0 <= cal.heldout["ece"] <= 1 and 0 <= cal.heldout["brier"] <= 1
    assert cal.command.startswith("whalematch calibrate")
    text = BUNDLED.read_text()
    assert not re.search(r'"/(?:work|home|root|tmp|Users)/', text), "absolute machine path in the calibration file"


def test_calibrate_command_fits_on_a_labelled_catalogue_split_by_whale(tmp_path, capsys):
    root = tmp_path / "cat"
    rows = []
    for k in range(12):
        base = textured_image(300 + k)
        for j in range(3):
            img = warp_affine(base, angle=5.0 * j - 5, scale=1.0 - 0.04 * j)[0] if j else base
            if k % 4 == 0 and j == 2:  # a hard positive: a heavily degraded photo of the same whale
                img = (img // 64 * 64).astype(np.uint8)
            save_rgb(root / "images" / f"w{k}_{j}.png", img)
            rows.append({"image_id": f"w{k}_{j}", "path": f"images/w{k}_{j}.png", "viewpoint": "top",
                         "whale_id": f"whale{k}", "encounter_id": f"whale{k}-0"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    out = tmp_path / "out"
    output = out / "cal.json"
    rc = main(["calibrate", "--metadata", str(root / "metadata.csv"), "--preset", PRESET, "--cache-dir",
               str(tmp_path / "cache"), "--positives", "30", "--max-images", "60", "--max-per-whale", "3",
               "--heldout", "0.34", "--output", str(output), "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "ECE" in text and "Brier" in text
    cal = calib.Calibration.load(output)
    assert cal.preset == PRESET and cal.settings_key == presets.verdict_settings_key(presets.resolve(PRESET))
    p = cal.probability(np.linspace(0, 400, 801))
    assert np.all(np.diff(p) >= 0) and 0 <= p.min() and p.max() <= 1
    assert cal.fit["positives"] > 0 and cal.fit["negatives"] > 0 and cal.heldout["pairs"] > 0
    assert cal.command.startswith("whalematch calibrate") and str(tmp_path) not in cal.command
    pairs = pd.read_csv(out / f"calibration-pairs-{PRESET}.csv")
    whale = lambda i: i.split("_")[0]  # noqa: E731
    fit_whales = {whale(i) for i in pd.concat([pairs.loc[pairs.set == "fit", c] for c in ("image_a", "image_b")])}
    held_whales = {whale(i) for i in pd.concat([pairs.loc[pairs.set == "heldout", c]
                                                for c in ("image_a", "image_b")])}
    assert fit_whales and held_whales and not fit_whales & held_whales
    assert ((pairs.same_whale == 1) == pairs.apply(lambda r: whale(r.image_a) == whale(r.image_b), axis=1)).all()
    # The file's probabilities are the ones the pairs CSV reports for their strengths.
    assert np.allclose(pairs.probability, cal.probability(pairs.strength.values), atol=1e-6)
