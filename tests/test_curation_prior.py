"""Honest probabilities: a search's P(same whale) at the base rate of its own question (one whale of the K
compared), the verdict words following it, and the audit and verify stating their prior and why.

The measurement: on a generated catalogue whose whales share a patch of texture (like the outline of a
beluga's body, which every photo shows), wrong whales match that patch well enough that, at even odds,
many of them read "probably same whale". At the prior 1/K their share falls to the calibration's
false-positive rate at that prior (measured on its own labelled pairs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import textured_image, warp_affine
from curation_helpers import PRESET, save_rgb, write_catalogue

from matcher.curation import calibration as calib
from matcher.curation import priors
from matcher.curation.cli import main
from matcher.curation.curator import Curator, PairTask, verdict_label
from matcher.engine import Engine
from matcher.io.catalogue import Photo

SAME_WORDS = ("same whale", "probably same whale")
SHARED = textured_image(999)  # the patch every whale shows


KEEP = {1: 20, 2: 0}  # rows of its own texture a poor photo keeps below the shared band (photo 0 and new photos: all)


def whale_photo(k: int, j: int, band: int) -> np.ndarray:
    """Photo j of whale k: the first ``band`` rows of the shared patch above its own texture, warped at random;
    photos 1 and 2 are poor (little or none of their own texture: a same-whale pair as weak as a chance match)."""
    img = textured_image(1000 + k).copy()
    img[:band] = SHARED[:band]
    r = np.random.default_rng(100 * k + j)
    out, _ = warp_affine(img, angle=float(r.uniform(-6, 6)), scale=float(r.uniform(0.88, 1.0)),
                         shift=tuple(r.uniform(-6, 6, 2)))
    if j in KEEP:
        out[band + KEEP[j]:] = 90
    return out


def shared_patch_whales(root, whales: range, seed: int = 0) -> tuple[list[Photo], dict[int, int]]:
    """Three photos of each whale, and each whale's shared band (spread evenly over the whales, in seeded order)."""
    spread = np.random.default_rng(seed).permutation(np.linspace(40, 190, len(whales)).astype(int))
    out, bands = [], {}
    for k, band in zip(whales, spread):
        bands[k] = int(band)
        for j in range(3):
            path = save_rgb(root / f"w{k}_{j}.png", whale_photo(k, j, int(band)))
            out.append(Photo(f"w{k}_{j}", path, "top", f"whale{k}"))
    return out, bands


def labelled_pairs(cur: Curator, photos: list[Photo]) -> tuple[np.ndarray, np.ndarray]:
    tasks = [PairTask(a, b) for i, a in enumerate(photos) for b in photos[i + 1:]]
    rows = cur.verify(tasks)
    return (np.array([r["strength"] for r in rows]), np.array([t.a.whale_id == t.b.whale_id for t in tasks], float))


def test_search_prior_is_one_whale_of_those_compared():
    ps = [Photo(f"p{i}", None, "top", f"w{i % 4}") for i in range(12)]
    p = priors.for_search(None, ps)
    assert p.value == pytest.approx(0.25) and "4 whales compared" in p.why
    assert "prior 0.25 (1 in 4)" in p.line(calibrated=True)
    unlabelled = priors.for_search(None, [Photo(f"p{i}", None) for i in range(10)])
    assert unlabelled.value == pytest.approx(0.1) and "no whale ids" in unlabelled.why
    assert priors.for_search(None, ps[:4] + [Photo("x", None)]).value == pytest.approx(0.2)
    assert priors.for_search(None, [Photo("a", None, "", "w1"), Photo("b", None, "", "w1")]).value is None
    assert priors.for_search(0.01, ps).value == 0.01 and "--prior" in priors.for_search(0.01, ps).why
    assert "even odds" in priors.for_pairs(None, priors.AUDIT_WHY).line(True)
    assert "no calibration" in priors.Prior(None, "x").line(False)


def test_search_labels_fewer_wrong_whales_probably_same_at_the_honest_prior(tmp_path, capsys):
    cache = tmp_path / "cache"
    cur = Curator(Engine(PRESET, cache, "cpu", 2, progress=False))
    # The calibration: fitted (even odds, as `whalematch calibrate` does) on 12 whales of their own.
    fit_photos, _ = shared_patch_whales(tmp_path / "fit", range(100, 112), seed=1)
    strength, same = labelled_pairs(cur, fit_photos)
    cal = calib.fit(strength, same, PRESET, cur.engine.settings_key)
    cal.save(tmp_path / "calibration.json")
    # The catalogue: 12 other whales; the new photos: a fourth view of four of them.
    catalogue, bands = shared_patch_whales(tmp_path / "cat" / "images", range(12, 24))
    pd.DataFrame([{"image_id": p.id, "path": f"images/{p.path.name}", "viewpoint": "top", "whale_id": p.whale_id}
                  for p in catalogue]).to_csv(tmp_path / "cat" / "metadata.csv", index=False)
    k = 12
    shares = {"before": [], "after": []}
    top10 = {"before": [], "after": []}
    for whale in (13, 16, 19, 22):
        query = save_rgb(tmp_path / "new" / f"new{whale}.png", whale_photo(whale, 3, bands[whale]))
        for when, extra in (("after", []), ("before", ["--prior", str(cal.prior)])):
            out = tmp_path / f"out-{whale}-{when}"
            assert main(["search", str(query), "--catalogue", str(tmp_path / "cat"), "--preset", PRESET,
                         "--cache-dir", str(cache), "--calibration", str(tmp_path / "calibration.json"),
                         "--out", str(out), "--top", "0", "--quiet", *extra]) == 0
            text = capsys.readouterr().out
            cands = pd.read_csv(out / "candidates.csv", keep_default_na=False)
            assert cands["whale_id"].iloc[0] == f"whale{whale}"  # the ranking does not depend on the prior
            for p, v in zip(cands["probability"], cands["verdict"]):
                assert v == verdict_label(float(p), True)  # the words follow the probability shown
            wrong = cands[cands["whale_id"] != f"whale{whale}"]
            shares[when].append((wrong["verdict"].isin(SAME_WORDS).sum(), len(wrong)))
            shown = cands.head(10)
            shown_wrong = shown[shown["whale_id"] != f"whale{whale}"]
            top10[when].append((shown_wrong["verdict"].isin(SAME_WORDS).sum(), len(shown_wrong)))
            page = (out / "report.html").read_text()
            if when == "after":
                assert f"P(same whale) at prior {1 / k:.3g} (1 in {k})" in text
                assert f"one of the {k} whales compared" in text and f"one of the {k} whales compared" in page
            else:
                assert "as given by --prior" in text and "as given by --prior" in page
    share = {w: sum(a for a, _ in v) / sum(b for _, b in v) for w, v in shares.items()}
    share10 = {w: sum(a for a, _ in v) / max(1, sum(b for _, b in v)) for w, v in top10.items()}
    negatives = strength[same == 0]
    fpr = {"before": float(np.mean(cal.probability(negatives) >= 0.5)),
           "after": float(np.mean(cal.probability(negatives, 1 / k) >= 0.5))}
    print(f"\nwrong whales labelled same / probably same whale, generated catalogue of {k} whales, 4 searches: "
          f"all candidates {share['before']:.3f} at even odds -> {share['after']:.3f} at prior 1/{k}; "
          f"in the top 10 {share10['before']:.3f} -> {share10['after']:.3f}; the calibration's false-positive rate "
          f"on its labelled pairs: {fpr['before']:.3f} at even odds, {fpr['after']:.3f} at 1/{k}")
    assert share["before"] >= 0.1  # the catalogue reproduces the problem: chance matches read "probably same"
    assert share["after"] < share["before"] / 3
    assert share["after"] <= fpr["after"] + 0.03  # near the calibration's own false-positive rate at that prior
    assert share10["after"] < share10["before"]


def test_audit_and_verify_state_their_prior_and_why(tmp_path, capsys):
    meta = write_catalogue(tmp_path / "cat", whales=2, per_whale=2)
    engine = Engine(PRESET, None, "cpu", progress=False)
    cal = calib.fit([0.0, 5.0, 60.0, 80.0], [0, 0, 1, 1], PRESET, engine.settings_key)
    cal.save(tmp_path / "cal.json")
    common = ["--preset", PRESET, "--cache-dir", str(tmp_path / "cache"), "--calibration", str(tmp_path / "cal.json"),
              "--quiet"]
    assert main(["audit", "--metadata", str(meta), "--dry-run", *common]) == 0
    text = capsys.readouterr().out
    assert "P(same whale) at even odds (the calibration's" in text and "picked for checking" in text
    assert main(["audit", "--metadata", str(meta), "--dry-run", "--prior", "0.01", *common]) == 0
    assert "P(same whale) at prior 0.01 (1 in 100): as given by --prior" in capsys.readouterr().out
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"image_a": ["w0_0", "w0_0"], "image_b": ["w0_1", "w1_0"]}).to_csv(pairs, index=False)
    out = tmp_path / "out"
    assert main(["verify", "--pairs", str(pairs), "--metadata", str(meta), "--out", str(out), *common]) == 0
    text = capsys.readouterr().out
    assert "P(same whale) at even odds" in text and "chosen by you" in text
    page = (out / "report.html").read_text()
    assert "chosen by you" in page and 'data-w="whale1"' in page  # image B's whale is the candidate whale
    res = pd.read_csv(out / "results.csv")
    assert list(res["verdict"]) == [verdict_label(p, True) for p in res["probability"]]
