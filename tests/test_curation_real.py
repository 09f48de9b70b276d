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
