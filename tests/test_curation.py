"""Curation tool on generated images: verify (with pictures), mirroring, batch with caches, search and audit."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import textured_image, warp_affine
from curation_helpers import PRESET, save_rgb, write_catalogue

from matcher.curation import drawing
from matcher.curation.audit import plan_audit
from matcher.curation.cli import main
from matcher.curation.curator import Curator, PairTask, mirror_side
from matcher.engine import Engine
from matcher.features.stage import mirror_key
from matcher.io.catalogue import Photo, comparable, load_catalogue, read_photos


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.c_[pts, np.ones(len(pts))] @ m.T


@pytest.fixture
def pair_files(tmp_path):
    img = textured_image(1)
    warped, m = warp_affine(img)
    a = save_rgb(tmp_path / "imgs" / "a.png", img)
    b = save_rgb(tmp_path / "imgs" / "b.png", warped)
    c = save_rgb(tmp_path / "imgs" / "c.png", textured_image(2))
    mirrored = save_rgb(tmp_path / "imgs" / "b_mirrored.png", np.ascontiguousarray(warped[:, ::-1]))
    return {"a": a, "b": b, "c": c, "mirrored": mirrored, "model": m, "width": img.shape[1]}


def curator(tmp_path) -> Curator:
    return Curator(Engine(PRESET, tmp_path / "cache", "cpu", 1, progress=False))


def test_known_warp_verifies_and_the_picture_draws_its_inliers(tmp_path, pair_files):
    cur = curator(tmp_path)
    a, b = Photo("a", pair_files["a"]), Photo("b", pair_files["b"])
    task = PairTask(a, b)
    row = cur.verify([task])[0]
    assert row["error"] == "" and row["n_inliers"] >= 40 and row["score"] > 0.5
    c = cur.correspondences(task)
    assert int(c["inliers"].sum()) == row["n_inliers"]  # the drawing recomputes the cached verdict exactly
    resid = np.linalg.norm(apply(pair_files["model"], c["pts_a"][c["inliers"]]) - c["pts_b"][c["inliers"]], axis=1)
    assert np.median(resid) < 2.0 and np.percentile(resid, 90) < 6.0

    img_a, img_b = cur.decode(a), cur.decode(b)
    drawn, qa, qb = drawing.match_picture(img_a, img_b, c["pts_a"], c["pts_b"], c["inliers"], outliers="hide",
                                          return_points=True)
    bare = drawing.match_picture(img_a, img_b, c["pts_a"], c["pts_b"], np.zeros_like(c["inliers"]),
                                 outliers="hide")
    assert drawn.shape == bare.shape
    # Without inliers (outliers hidden) the picture is just the two photos; with them, every inlier end is marked.
    ends = np.vstack([qa[c["inliers"]], qb[c["inliers"]]]).round().astype(int)
    changed = np.abs(drawn.astype(int) - bare.astype(int)).sum(axis=2)[ends[:, 1], ends[:, 0]] > 0
    assert changed.mean() > 0.95
    # The photos are on the picture: A's top-left region equals A resized (no marks drawn there by chance).
    assert bare.shape[0] >= img_a.shape[0] * 0.5

    out = cur.draw(task, row, tmp_path / "pic.jpg")
    pic = cv2.imread(str(out))
    assert pic is not None and pic.shape[0] > 100 and pic.shape[1] > 200


def test_unrelated_pair_is_drawn_with_few_inliers(tmp_path, pair_files):
    cur = curator(tmp_path)
    row = cur.verify([PairTask(Photo("a", pair_files["a"]), Photo("c", pair_files["c"]))])[0]
    assert row["n_inliers"] < 15 and row["score"] < 0.5


def test_mirrored_flank_is_matched_against_the_mirror_and_drawn_unflipped(tmp_path, pair_files):
    cur = curator(tmp_path)
    a = Photo("a", pair_files["a"], viewpoint="left")
    b = Photo("bm", pair_files["mirrored"], viewpoint="right")
    plain = cur.verify([PairTask(a, b)])[0]
    assert plain["n_inliers"] < 15  # a reflection is refused by the verifier
    side = mirror_side(a, b)
    assert side == "b"  # the right flank is mirrored
    task = PairTask(a, b, side)
    row = cur.verify([task])[0]
    assert row["n_inliers"] >= 40 and row["mirrored"] == "bm" and "mirrored" in row["note"]
    mirrored = cur.engine.feature(mirror_key(cur.shas["bm"]))  # held in memory (KeyError if not)
    assert len(mirrored["keypoints"]) > 0
    # Points drawn on the unflipped right-flank photo: the true map followed by the flip.
    c = cur.correspondences(task)
    w = pair_files["width"]
    expected = apply(pair_files["model"], c["pts_a"][c["inliers"]])
    expected[:, 0] = w - 1 - expected[:, 0]
    resid = np.linalg.norm(expected - c["pts_b"][c["inliers"]], axis=1)
    assert np.median(resid) < 2.0
    # The same decision from a --mirror flag without viewpoints.
    assert mirror_side(Photo("x", pair_files["a"]), Photo("y", pair_files["b"]), flag=True) == "b"
    assert mirror_side(Photo("x", pair_files["a"]), Photo("y", pair_files["b"])) == ""


def test_cli_verify_one_pair_prints_the_verdict_and_writes_the_picture(tmp_path, pair_files, capsys):
    out = tmp_path / "out"
    rc = main(["verify", str(pair_files["a"]), str(pair_files["mirrored"]), "--mirror", "--preset", PRESET,
               "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "b_mirrored.png was flipped horizontally" in text
    inliers = int(text.split(" inliers")[0].split()[-1])
    assert inliers >= 40
    assert "settings: preset sift-mnn" in text and "P(same whale)" in text
    pics = list(out.glob("*.jpg"))
    assert len(pics) == 1 and cv2.imread(str(pics[0])) is not None


def test_cli_batch_writes_results_and_reuses_the_caches(tmp_path, pair_files, capsys):
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_a", "image_b", "mirror"])
        w.writerow(["imgs/a.png", "imgs/c.png", "0"])  # relative to the CSV's folder
        w.writerow([pair_files["a"], pair_files["b"], "0"])
        w.writerow([pair_files["a"], pair_files["mirrored"], "1"])
        w.writerow([pair_files["a"], tmp_path / "missing.png", "0"])
    args = ["verify", "--pairs", str(pairs), "--preset", PRESET, "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 0
    res = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(res) == 4
    res[["mirrored", "error", "picture"]] = res[["mirrored", "error", "picture"]].fillna("")
    by_b = {r["image_b"].rsplit("/", 1)[-1]: r for r in res.to_dict("records")}
    assert by_b["b.png"]["n_inliers"] >= 40 and by_b["b_mirrored.png"]["n_inliers"] >= 40
    assert by_b["c.png"]["n_inliers"] < 15
    assert by_b["b_mirrored.png"]["mirrored"] == str(pair_files["mirrored"])
    assert by_b["c.png"]["image_a"] == "imgs/a.png"  # named as given in the CSV
    assert "not found" in by_b["missing.png"]["error"] and np.isnan(by_b["missing.png"]["n_inliers"])
    assert by_b["c.png"]["rank"] == 3  # ranked below both true pairs
    assert (tmp_path / "out" / "report.html").is_file()
    assert sum(1 for r in res.to_dict("records") if r["picture"]) == 3
    # A second engine on the same cache extracts and verifies nothing.
    cur = curator(tmp_path)
    tasks = [PairTask(Photo("a", pair_files["a"]), Photo("c", pair_files["c"])),
             PairTask(Photo("a", pair_files["a"]), Photo("m", pair_files["mirrored"]), "b")]
    rows = cur.verify(tasks)
    assert cur.engine.stats.features_extracted == 0 and cur.engine.verified() == 0
    assert rows[1]["n_inliers"] == by_b["b_mirrored.png"]["n_inliers"]


def test_search_ranks_the_right_whale_first(tmp_path, capsys):
    write_catalogue(tmp_path / "cat")
    query = save_rgb(tmp_path / "new.png", warp_affine(textured_image(101), angle=-6, scale=0.95)[0])
    out = tmp_path / "out"
    assert main(["search", str(query), "--catalogue", str(tmp_path / "cat"), "--preset", PRESET, "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(out), "--top", "2", "--quiet"]) == 0
    cands = pd.read_csv(out / "candidates.csv")
    assert list(cands["whale_id"][:3]) == ["whale1"] * 3
    assert cands["n_inliers"].iloc[2] > 3 * cands["n_inliers"].iloc[3]
    whales = pd.read_csv(out / "whales.csv")
    assert whales["whale_id"].iloc[0] == "whale1" and whales["images_verified"].iloc[0] == 3
    # Pictures for the top 2 images and for the best image of each of the 2 best whales, no more.
    drawn = set(cands.loc[cands["picture"].notna(), "image_b"])
    assert drawn == set(cands["image_b"][:2]) | set(whales["best_image"][:2]) and len(drawn) == 3
    assert len(list((out / "images").glob("*__*.jpg"))) == 3
    assert "best whales" in capsys.readouterr().out
    # A folder of images without metadata works too (ids are file paths).
    photos = load_catalogue(tmp_path / "cat" / "images")
    assert sorted(p.id for p in photos)[0] == "w0_0.png" and not photos[0].whale_id


def test_search_mirrors_the_new_photo_for_the_opposite_flank(tmp_path):
    root = tmp_path / "cat"
    rows = []
    for k in range(3):
        img = warp_affine(textured_image(200 + k), angle=3)[0]
        save_rgb(root / f"r{k}.png", np.ascontiguousarray(img[:, ::-1]))  # right flanks
        rows.append({"image_id": f"r{k}", "path": f"r{k}.png", "viewpoint": "right", "whale_id": f"whale{k}"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    query = save_rgb(tmp_path / "left.png", textured_image(202))
    out = tmp_path / "out"
    assert main(["search", str(query), "--catalogue", str(root / "metadata.csv"), "--viewpoint", "left",
                 "--preset", PRESET, "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--quiet"]) == 0
    cands = pd.read_csv(out / "candidates.csv", keep_default_na=False)
    assert cands["image_b"].iloc[0] == "r2" and cands["n_inliers"].iloc[0] >= 40
    assert (cands["mirrored"] == str(query)).all()  # the new photo is the one mirrored


def test_audit_finds_a_planted_mislabel_in_generated_catalogue(tmp_path, capsys):
    meta = write_catalogue(tmp_path / "cat", whales=3, per_whale=3, plant=("w0_1", "whale2"))
    out = tmp_path / "out"
    assert main(["audit", "--metadata", str(meta), "--preset", PRESET, "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out), "--isolated-below", "0.4", "--strong-above", "0.6", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "(b) 26 cross-whale pairs" in text  # 36 pairs in all, 1 + 3 + 6 of them labelled same-whale
    iso = pd.read_csv(out / "isolated_images.csv")
    assert list(iso["image_id"]) == ["w0_1"]
    sus = pd.read_csv(out / "suspect_pairs.csv")
    assert set(map(tuple, sus[["image_a", "image_b"]].values)) == {("w0_0", "w0_1"), ("w0_1", "w0_2")}
    assert (sus["picture"].notna()).all()
    assert (out / "report.html").is_file()


def test_audit_plan_counts_and_samples_cross_pairs_without_listing_them():
    photos = [Photo(f"i{k:03d}", None, "top", f"w{k % 40}", "2018-08-0%d" % (1 + k % 3)) for k in range(400)]
    photos += [Photo(f"l{k:03d}", None, "left" if k % 2 else "right", f"w{k % 5}") for k in range(20)]
    full = plan_audit(photos)
    n_top = 400 * 399 // 2 - 40 * (10 * 9 // 2)
    n_lat = 20 * 19 // 2 - 5 * (4 * 3 // 2)
    assert full.cross_total == len(full.cross) == n_top + n_lat
    sample = plan_audit(photos, limit=500, seed=1)
    assert sample.cross_total == full.cross_total and len(sample.cross) == 500
    assert len({(a.id, b.id) for a, b in sample.cross}) == 500
    assert all(a.whale_id != b.whale_id and (a.viewpoint == "top") == (b.viewpoint == "top") for a, b in sample.cross)
    assert [(a.id, b.id) for a, b in plan_audit(photos, limit=500, seed=1).cross] == \
        [(a.id, b.id) for a, b in sample.cross]  # seeded
    same_date = plan_audit(photos, scope="same-date")
    assert all(a.date == b.date for a, b in same_date.cross if a.viewpoint == "top")
    assert len(full.within) == 40 * 45 + 5 * 6


@pytest.mark.parametrize("scope", ["all", "same-date"])
def test_audit_plan_matches_brute_force_with_unknown_views(scope):
    rng = np.random.default_rng(7)
    views = ["top", "left", "right", ""]
    photos = [Photo(f"p{k:02d}", None, views[rng.integers(4)], f"w{rng.integers(6)}", f"2018-08-0{rng.integers(1, 3)}")
              for k in range(40)]
    expected = {(a.id, b.id) for i, a in enumerate(photos) for b in photos[i + 1:]
                if a.whale_id != b.whale_id and comparable(a, b) and (scope == "all" or a.date == b.date)}
    plan = plan_audit(photos, scope=scope)
    assert plan.cross_total == len(expected)
    assert {(a.id, b.id) for a, b in plan.cross} == expected and len(plan.cross) == len(expected)  # no repeats
    no_views = [Photo(p.id, None, "", p.whale_id, p.date) for p in photos]
    assert plan_audit(no_views).cross_total == sum(a.whale_id != b.whale_id for i, a in enumerate(no_views)
                                                   for b in no_views[i + 1:])


def test_cli_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope.png"), str(tmp_path / "nope2.png"), "--preset", PRESET,
                 "--no-cache", "--quiet"]) == 2
    assert main(["verify", "--preset", PRESET, "--no-cache", "--quiet"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    assert main(["verify", "a", "b", "--calibration", str(bad), "--no-cache", "--quiet"]) == 2


@pytest.mark.parametrize("head_vote", [False, True], ids=["evidence", "with-head-vote"])
def test_search_scores_with_a_learned_pair_model_and_its_calibration(tmp_path, capsys, head_vote):
    """With a pair model for the preset, search's score is the model's P(same whale) and P is its own
    calibration's (also for a model that reads a global head's vote); a strength calibration given for a
    model's scores is refused."""
    pytest.importorskip("lightgbm")
    from toy_model import fit_toy_model

    head_path = None
    if head_vote:
        torch = pytest.importorskip("torch")
        from matcher.features.global_head import GlobalHead, build_head

        torch.manual_seed(0)
        conf = {"dim": 128, "clusters": 4, "out": 16}
        head_path = tmp_path / "head.pt"
        GlobalHead(conf, build_head(conf).state_dict()).save(head_path)
    meta_csv = write_catalogue(tmp_path / "cat")
    photos = read_photos(meta_csv)
    engine = Engine(PRESET, tmp_path / "cache", "cpu", progress=False)
    model = fit_toy_model(engine, {i: p.path for i, p in photos.items()}, {i: p.whale_id for i, p in photos.items()},
                          {i: {"date": p.date, "viewpoint": p.viewpoint} for i, p in photos.items()}, head_path)
    assert model.uses_head == head_vote
    model.save(tmp_path / "model.json")
    query = save_rgb(tmp_path / "new.png", warp_affine(textured_image(101), angle=-6, scale=0.95)[0])
    out = tmp_path / "out"
    assert main(["search", str(query), "--catalogue", str(tmp_path / "cat"), "--preset", PRESET, "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(out), "--top", "2", "--quiet", "--pair-score", "learned",
                 "--pair-model", str(tmp_path / "model.json")]) == 0
    cands = pd.read_csv(out / "candidates.csv")
    assert list(cands["whale_id"][:3]) == ["whale1"] * 3
    assert (cands["score"] <= 1).all() and cands["score"].iloc[0] > 0.5 > cands["score"].iloc[-1]
    assert cands["probability"].notna().all() and cands["probability"].is_monotonic_decreasing
    assert "pair model" in capsys.readouterr().out or (out / "report.html").read_text().count("pair model") > 0
    from matcher.curation import calibration as calib

    strength_cal = calib.fit([1.0, 5.0, 30.0, 60.0], [0, 0, 1, 1], PRESET, engine.settings_key)  # of the strength
    strength_cal.save(tmp_path / "strength.json")
    rc = main(["search", str(query), "--catalogue", str(tmp_path / "cat"), "--preset", PRESET, "--cache-dir",
               str(tmp_path / "cache"), "--out", str(out), "--quiet", "--pair-score", "learned", "--pair-model",
               str(tmp_path / "model.json"), "--calibration", str(tmp_path / "strength.json")])
    assert rc == 2 and "calibrates the strength" in capsys.readouterr().err


def test_every_command_is_registered_once_and_an_unknown_one_is_refused(capsys):
    """One registry (name -> options, summary, handler): each command's handler lives in its own module, and a
    name that is not registered is an error (it used to fall through to calibrate)."""
    from matcher.curation.options import COMMANDS, build_parser

    assert set(COMMANDS) == {"verify", "index", "search", "audit", "calibrate", "apply-decisions"}
    parser = build_parser()
    for name, cmd in COMMANDS.items():
        assert cmd.run.__module__.startswith("matcher.curation.")
        needed = {"apply-decisions": ["x.csv", "--metadata", "m.csv"], "audit": ["--metadata", "m.csv"],
                  "calibrate": ["--metadata", "m.csv"], "search": ["--catalogue", "c"], "index": ["c"]}
        assert parser.parse_args([name, *needed.get(name, [])]).run is cmd.run
    with pytest.raises(SystemExit) as exc:
        main(["calibrat"])
    assert exc.value.code == 2
    assert "invalid choice: 'calibrat'" in capsys.readouterr().err
