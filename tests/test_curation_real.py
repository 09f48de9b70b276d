"""The audit on real beluga photos: a mislabel planted in a small labelled set is found.

13 top-view photos of 3 whales (DISK features, about 1 s per photo on a CPU), each of
which verifies strongly against another photo of its whale. One photo of whale039 is
relabelled as whale242: the audit must flag it as matching no image of its (wrong)
whale, and flag its pairs with the other whale039 photos as strong cross-whale pairs;
the same set without the plant flags neither. (The photos were chosen so that the rest
of whale039 still hangs together without the planted one.)
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from matcher.curation.cli import main

WHALES = {
    "whale039": ["train0044", "train2842", "train2932", "train3393", "train3685"],
    "whale216": ["train0344", "train3090", "train3104", "train3188", "train3466"],
    "whale242": ["train0410", "train0549", "train2852"],
}
PLANTED, TRUE_WHALE, WRONG_WHALE = "train3685", "whale039", "whale242"


def small_catalogue(belugas, root, plant: bool):
    meta = pd.read_csv(belugas / "metadata.csv", dtype=str).set_index("image_id")
    rows = []
    for whale, ids in WHALES.items():
        for image_id in ids:
            src = belugas / meta.at[image_id, "path"]
            dst = root / "images" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                shutil.copyfile(src, dst)
            label = WRONG_WHALE if plant and image_id == PLANTED else whale
            assert meta.at[image_id, "whale_id"] == whale and meta.at[image_id, "viewpoint"] == "top"
            rows.append({"image_id": image_id, "path": f"images/{src.name}", "viewpoint": "top",
                         "date": meta.at[image_id, "date"], "whale_id": label})
    path = root / ("planted.csv" if plant else "clean.csv")
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def run_audit(meta, out, cache):
    assert main(["audit", "--metadata", str(meta), "--preset", "disk-mnn", "--cache-dir", str(cache),
                 "--out", str(out), "--quiet"]) == 0
    iso = pd.read_csv(out / "isolated_images.csv", dtype={"image_id": str})
    sus = pd.read_csv(out / "suspect_pairs.csv", dtype=str)
    return iso, sus


def test_audit_finds_a_mislabel_planted_among_real_photos(belugas, tmp_path):
    cache = tmp_path / "cache"  # shared by both runs: the second costs almost nothing
    iso, sus = run_audit(small_catalogue(belugas, tmp_path, plant=True), tmp_path / "planted", cache)
    # (a) the planted photo matches none of its (wrong) whale's photos, and is the most suspicious one.
    assert iso["image_id"].iloc[0] == PLANTED
    assert iso["whale_id"].iloc[0] == WRONG_WHALE
    # (b) its pairs with its true whale verify strongly, and lead the list.
    assert len(sus) >= 1
    top = sus.iloc[0]
    assert PLANTED in (top["image_a"], top["image_b"])
    assert {top["whale_a"], top["whale_b"]} == {TRUE_WHALE, WRONG_WHALE}
    involved = sus[(sus.image_a == PLANTED) | (sus.image_b == PLANTED)]
    partners = set(involved.image_a) | set(involved.image_b)
    assert partners - {PLANTED} <= set(WHALES[TRUE_WHALE])
    assert sus["picture"].notna().all() and (tmp_path / "planted" / "report.html").is_file()

    iso0, sus0 = run_audit(small_catalogue(belugas, tmp_path, plant=False), tmp_path / "clean", cache)
    assert PLANTED not in set(iso0["image_id"])
    assert not ((sus0.image_a == PLANTED) | (sus0.image_b == PLANTED)).any()


def test_search_prior_on_real_photos_reports_wrong_whales_labelled_same(belugas, tmp_path):
    """REPORTS (prints) how many wrong whales a search of the development subset's top photos labels "same whale"
    or "probably same whale" at even odds and at the search's own prior (1/K), beside the calibration's false-positive
    rate at each (its held-out different-whale pairs, when its pairs CSV is at hand). Three photos are searched among
    the other top photos of data/dev, with the features of submission/cache (linked, never extracted or written
    there); only that each new photo's wrong whales read same no more often at 1/K is asserted."""
    import hashlib
    import os
    import time

    import numpy as np
    from conftest import REPO

    from matcher import cache, presets
    from matcher.curation import calibration as calib
    from matcher.curation import catalogue_search, priors, search
    from matcher.curation.curator import Curator
    from matcher.engine import Engine
    from matcher.io.catalogue import Photo

    t0 = time.perf_counter()
    conf = presets.resolve("disk-mnn")
    features = REPO / "submission" / "cache" / "features" / cache.feature_key(conf)
    if not features.is_dir():
        pytest.skip(f"no cached DISK features at {features} (this measurement reuses them rather than extracting)")
    cal, why = calib.for_preset(conf)
    if cal is None:
        pytest.skip(why)
    dev = REPO / "data" / "dev" / "metadata.csv"
    if not dev.is_file():
        pytest.skip(f"{dev} not found")
    meta = pd.read_csv(belugas / "metadata.csv", dtype=str, keep_default_na=False).set_index("image_id")
    ids = [i for i, v in pd.read_csv(dev, dtype=str, keep_default_na=False)[["image_id", "viewpoint"]].values
           if v == "top" and i in meta.index and meta.at[i, "whale_id"]]
    key_dir = tmp_path / "cache" / "features" / features.name
    photos = []
    for image_id in ids:
        src = belugas / meta.at[image_id, "path"]
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        entry = features / sha[:2] / f"{sha}.npz"
        if not entry.is_file():
            continue  # not cached: left out rather than extracted
        (key_dir / sha[:2]).mkdir(parents=True, exist_ok=True)
        os.symlink(entry, key_dir / sha[:2] / f"{sha}.npz")
        link = tmp_path / "images" / src.name
        link.parent.mkdir(exist_ok=True)
        os.symlink(src, link)
        photos.append(Photo(image_id, link, "top", meta.at[image_id, "whale_id"], meta.at[image_id, "date"]))
    by_whale = pd.Series([p.whale_id for p in photos]).value_counts()
    rng = np.random.default_rng(0)
    eligible = [p for p in photos if by_whale[p.whale_id] >= 3]
    if len(photos) < 100 or len(eligible) < 3:
        pytest.skip(f"only {len(photos)} development top photos have cached features")
    queries = [eligible[i] for i in rng.choice(len(eligible), size=3, replace=False)]
    cur = Curator(Engine("disk-mnn", tmp_path / "cache", "cpu", None, progress=False), cal)
    same_words = ("same whale", "probably same whale")
    counts = {"even odds": [0, 0, 0, 0], "1/K": [0, 0, 0, 0]}  # labelled same, wrong whales; the same in the top 10
    lines = []
    for q in queries:
        catalogue = [p for p in photos if p.id != q.id]
        query = Photo(q.id, q.path, "top")  # the new photo: no whale id, no date
        tasks = catalogue_search.search_tasks(query, catalogue)
        prior = priors.for_search(None, [t.b for t in tasks])
        per = {}
        for name, p in (("even odds", priors.Prior(None, "before")), ("1/K", prior)):
            cur.use_prior(p)
            rows = search.rank_rows(cur.verify(tasks), cur)
            whale_of = {t.b.id: t.b.whale_id for t in tasks}
            wrong = [r for r in rows if not r["error"] and whale_of[r["image_b"]] != q.whale_id]
            top = [r for r in rows[:10] if r in wrong]
            got = [sum(r["verdict"] in same_words for r in wrong), len(wrong),
                   sum(r["verdict"] in same_words for r in top), len(top)]
            counts[name] = [a + b for a, b in zip(counts[name], got)]
            right = next(r for r in rows if whale_of[r["image_b"]] == q.whale_id)
            per[name] = (got, right)
        assert per["1/K"][0][0] <= per["even odds"][0][0]
        (even, right_even), (honest, right_honest) = per["even odds"], per["1/K"]
        lines.append(f"  {q.id} ({q.whale_id}) among {len(tasks)} photos of {round(1 / prior.value)} whales: "
                     f"wrong whales labelled same {even[0]}/{even[1]} at even odds, {honest[0]}/{honest[1]} at 1/K; "
                     f"in the top 10 {even[2]}/{even[3]} -> {honest[2]}/{honest[3]}; its own whale first at rank "
                     f"{right_honest['rank']} (P {right_even['probability']:.2f} -> "
                     f"{right_honest['probability']:.2f}, {right_honest['verdict']})")
    fpr = ""
    pairs_csv = REPO / "submission" / "calibration" / "calibration-pairs-disk-mnn.csv"
    if pairs_csv.is_file():
        pairs = pd.read_csv(pairs_csv)
        neg = pairs[(pairs["set"] == "heldout") & (pairs["same_whale"] == 0)]["strength"].to_numpy(float)
        k = round(1 / prior.value)
        fpr = (f"; the calibration's false-positive rate on its {len(neg)} held-out different-whale pairs: "
               f"{np.mean(cal.probability(neg) >= 0.5):.3f} at even odds, "
               f"{np.mean(cal.probability(neg, 1 / k) >= 0.5):.3f} at 1/{k}")
    share = {n: (c[0] / c[1], c[2] / max(1, c[3])) for n, c in counts.items()}
    print(f"\nreal photos, 3 searches of the development top photos: wrong whales labelled same / probably same "
          f"{share['even odds'][0]:.3f} at even odds -> {share['1/K'][0]:.3f} at the search's prior; in the top 10 "
          f"{share['even odds'][1]:.3f} -> {share['1/K'][1]:.3f}{fpr}; {time.perf_counter() - t0:.0f} s")
    print("\n".join(lines))
