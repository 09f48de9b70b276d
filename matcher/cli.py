"""``whalematch``: tools for curating a whale photo catalogue.

    whalematch verify A.jpg B.jpg                 verdict of one pair and its match picture
    whalematch verify --pairs pairs.csv           a CSV of verdicts (columns image_a,image_b) and a review page
    whalematch search NEW.jpg --catalogue DIR     catalogue images (and whales) ranked for a new photo
    whalematch audit --metadata metadata.csv      labels to check: isolated images, strong cross-whale pairs
    whalematch calibrate --metadata metadata.csv  refit P(same whale) on a labelled catalogue

Every command shares the engine's caches (``--cache-dir``, else $WHALEMATCH_CACHE_DIR,
else ~/.cache/whalematch): features and pair verdicts are computed once per image and
pair for given settings. ``whalematch COMMAND --help`` lists each command's options.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import calibration as calib
from . import presets, report, settings
from .atomic import atomic_path
from .curation import (
    RESULT_COLUMNS,
    Curator,
    PairTask,
    Photo,
    isolated_images,
    load_catalogue,
    mirror_side,
    pair_task,
    plan_audit,
    rank_rows,
    read_metadata,
    search_tasks,
    strong_cross_pairs,
    whale_ranking,
)
from .data import read_csv
from .errors import DataError, WhaleMatchError

log = logging.getLogger("whalematch")
DEFAULT_OUT = "whalematch-out"
TRUE = {"1", "true", "yes", "y", "t"}


# --------------------------------------------------------------------------- shared


def common_options() -> argparse.ArgumentParser:
    env = settings.env
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("engine")
    g.add_argument("--preset", default=env("PRESET", presets.DEFAULT_PIPELINE), choices=sorted(presets.PIPELINES),
                   help="pipeline preset (default %(default)s)")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="feature and verdict caches (default $WHALEMATCH_CACHE_DIR or ~/.cache/whalematch)")
    g.add_argument("--no-cache", action="store_true", help="keep nothing on disk between runs")
    g.add_argument("--device", default=env("DEVICE"), help="auto (default), cpu or cuda[:N]")
    g.add_argument("--workers", type=int, default=int(env("WORKERS", "0")) or None, help="CPU verification workers")
    g.add_argument("--calibration", type=Path, default=env("CALIBRATION"),
                   help="calibration file (default weights/calibration-<preset>.json; $WHALEMATCH_CALIBRATION)")
    g.add_argument("--prior", type=float, default=None,
                   help="share of same-whale pairs to assume for P(same whale) (default: the calibration's, "
                        "even odds)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("-v", "--verbose", action="store_true")
    return p


def out_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                   help=f"folder for {what} (default %(default)s)")
    p.add_argument("--outliers", choices=("faint", "hide"), default="faint",
                   help="draw matches that failed verification as faint dots, or not at all")


def make_curator(args) -> Curator:
    from .pipeline import Engine

    if args.prior is not None and not 0 < args.prior < 1:
        raise WhaleMatchError(f"--prior must lie strictly between 0 and 1 (got {args.prior})")
    cache_dir = None if args.no_cache else (args.cache_dir or settings.default_cache_dir())
    engine = Engine(args.preset, cache_dir, args.device, args.workers, progress=not args.quiet)
    cal, why = calib.for_preset(engine.conf, args.calibration)
    if cal is None:
        log.warning("%s; P(same whale) left blank, rankings use the raw score", why)
    args._cache_dir = cache_dir
    return Curator(engine, cal, args.prior)


def settings_lines(cur: Curator, args) -> list[str]:
    conf = cur.engine.conf
    v = conf["verifier"]
    lines = [
        f"preset {conf['name']}: {conf['extractor']['name']} features, {conf['matcher']['name']} matching, "
        f"{v['model']} model by MAGSAC++ (threshold {v['threshold']} px, at least {v['min_matches']} matches); "
        f"score = s/(s+{v['score_scale']:g}) with s = inliers + mean inlier similarity",
        f"settings key {presets.verdict_key(conf)}; device {cur.engine.device}; caches "
        f"{args._cache_dir if args._cache_dir else 'in memory only'}",
    ]
    if cur.calibration is not None:
        prior = f"; P assumes {args.prior:.0%} same-whale pairs" if args.prior else \
            "; P assumes even odds (as many same-whale as different-whale pairs)"
        lines.append(f"calibration {cur.calibration.describe()}{prior}")
    else:
        lines.append("no calibration for these settings: P(same whale) not available")
    return lines


def fmt(v, spec=".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return "n/a"
    return format(v, spec)


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    return path


def pictures_relative(rows: list[dict], page: Path, key: str = "picture") -> list[dict]:
    out = []
    for r in rows:
        r = dict(r)
        if r.get(key):
            r[key] = report.relative(Path(r[key]), page)
        out.append(r)
    return out


PAIR_COLUMNS = [
    report.Column("rank", "#", "int", "rank by P(same whale), else by score"),
    report.Column("image_a", "image A"),
    report.Column("image_b", "image B"),
    report.Column("picture", "match picture (click for full size)", "picture"),
    report.Column("n_inliers", "inliers", "int", "matches consistent with one affine map"),
    report.Column("score", "score", "num", "engine score: s/(s+20), s = inliers + mean inlier similarity"),
    report.Column("probability", "P(same)", "prob", "calibrated probability of the same whale (even odds)"),
    report.Column("verdict", "verdict"),
    report.Column("note", "note"),
]


def apply_subset(photos: list[Photo], subset: Path | None) -> list[Photo]:
    """Only the photos whose image id a CSV (column image_id) lists, when one is given."""
    if subset is None:
        return photos
    keep = set(read_csv(subset, ("image_id",))["image_id"])
    out = [p for p in photos if p.id in keep]
    if not out:
        raise DataError(f"{subset}: none of its image ids is in the catalogue")
    return out


def extraction_line(cur: Curator, photos: list[Photo]) -> str:
    cur.hash_only(photos)
    cached = cur.cached_features(photos)
    todo = len(photos) - cached - sum(1 for p in photos if p.id in cur.bad)
    slow = cur.engine.device == "cpu" and cur.engine.conf["extractor"]["model"] != "sift"
    return f"features: {cached} of {len(photos)} images cached, {todo} to extract" + \
        (" (about 1 s per image on a CPU)" if slow and todo else "")


# --------------------------------------------------------------------------- verify


def resolve_photo(value: str, meta: dict[str, Photo] | None, base: Path | None = None) -> Photo:
    """An image id of the metadata, else a path (relative to the working folder, then to ``base``)."""
    if meta is not None and value in meta:
        return meta[value]
    path = Path(value).expanduser()
    if not path.is_absolute() and not path.exists() and base is not None and (base / path).exists():
        path = base / path
    if meta is not None and not path.exists():
        raise DataError(f"{value!r} is neither an image id of the metadata nor an image file")
    return Photo(id=value, path=path)


def cmd_verify(args) -> int:
    if args.pairs is not None:
        if args.images:
            raise WhaleMatchError("give either two images or --pairs CSV, not both")
        return verify_batch(args)
    if len(args.images) != 2:
        raise WhaleMatchError("verify needs two images (A B), or --pairs CSV")
    meta = read_metadata(args.metadata) if args.metadata else None
    a, b = (resolve_photo(v, meta) for v in args.images)
    cur = make_curator(args)
    task = PairTask(a, b, mirror_side(a, b, args.mirror))
    row = cur.verify([task])[0]
    if row["error"]:
        raise WhaleMatchError(row["error"])
    picture = args.picture or args.out / cur.picture_name(task)
    cur.draw(task, row, picture, args.outliers)
    row["picture"] = str(picture)
    if args.json:
        import json

        print(json.dumps({**row, "settings": presets.verdict_key(cur.engine.conf), "preset": args.preset}, indent=2))
        return 0
    print(f"A: {a.id}  ({a.path}{', ' + a.viewpoint if a.viewpoint else ''})")
    print(f"B: {b.id}  ({b.path}{', ' + b.viewpoint if b.viewpoint else ''})")
    if task.mirror:
        side = a if task.mirror == "a" else b
        why = "left versus right flank" if {a.viewpoint, b.viewpoint} == {"left", "right"} else "--mirror"
        print(f"mirrored: {side.id} was flipped horizontally before matching ({why}); the picture shows it unflipped")
    else:
        print("mirrored: no")
    print(f"matches: {row['n_matches']} tentative, {row['n_inliers']} inliers")
    print(f"strength {row['strength']:.2f}   score {row['score']:.3f}   P(same whale) {fmt(row['probability'], '.3f')}")
    print(f"verdict: {row['verdict']}" + (f"  ({row['note']})" if row["note"] else ""))
    for line in settings_lines(cur, args):
        print(f"settings: {line}")
    print(f"picture: {picture}")
    return 0


def read_pairs(path: Path, meta: dict[str, Photo] | None, force_mirror: bool) -> list[PairTask]:
    df = read_csv(path, ("image_a", "image_b"))
    has_mirror = "mirror" in df.columns
    tasks = []
    for row in df.to_dict("records"):
        a = resolve_photo(row["image_a"], meta, path.parent)
        b = resolve_photo(row["image_b"], meta, path.parent)
        flag = force_mirror or (has_mirror and str(row["mirror"]).strip().lower() in TRUE)
        tasks.append(PairTask(a, b, mirror_side(a, b, flag)))
    if not tasks:
        raise DataError(f"{path}: no pairs listed")
    return tasks


def verify_batch(args) -> int:
    meta = read_metadata(args.metadata) if args.metadata else None
    tasks = read_pairs(args.pairs, meta, args.mirror)
    cur = make_curator(args)
    print(f"{len(tasks)} pairs from {args.pairs}; {len({p.id for t in tasks for p in (t.a, t.b)})} images",
          file=sys.stderr)
    rows = cur.verify(tasks)
    order = sorted(range(len(rows)), key=lambda i: (bool(rows[i]["error"]), -cur.confidence(rows[i]),
                                                    -(rows[i]["strength"] or 0.0), i))
    for rank, i in enumerate(order, 1):
        rows[i]["rank"] = rank if not rows[i]["error"] else None
    drawn = [(tasks[i], rows[i]) for i in order[: max(0, args.pictures)]]
    out = args.out
    cur.draw_many(drawn, out / "images", args.outliers)
    csv_path = args.output or out / "results.csv"
    write_csv(pd.DataFrame(rows, columns=["rank"] + RESULT_COLUMNS), csv_path)
    page = out / "report.html"
    ranked = [rows[i] for i in order]
    summary = [f"{len(tasks)} pairs from {args.pairs.name}; {sum(1 for r in rows if r['error'])} could not be verified",
               *settings_lines(cur, args)]
    if args.pictures < len(tasks):
        summary.append(f"pictures for the best {args.pictures} pairs (--pictures)")
    columns = PAIR_COLUMNS + [report.Column("error", "error")]
    report.write(report.Report("whalematch: pair verification", summary,
                               [report.Table("Pairs", columns, pictures_relative(ranked, page), table_id="pairs")]),
                 page)
    n_same = sum(1 for r in rows if not r["error"] and cur.calibration is not None and cur.confidence(r) >= 0.5)
    print(f"verified {len(rows) - sum(1 for r in rows if r['error'])} pairs"
          + (f", {n_same} with P(same whale) >= 0.5" if cur.calibration is not None else ""))
    print(f"results: {csv_path}\nreview page: {page}")
    return 0


# --------------------------------------------------------------------------- search


def cmd_search(args) -> int:
    catalogue = apply_subset(load_catalogue(args.catalogue), args.subset)
    query = resolve_photo(args.image, None)
    query = Photo(query.id, query.path, (args.viewpoint or "").lower())
    cur = make_curator(args)
    tasks = search_tasks(query, catalogue, args.mirror, args.all_views or not args.viewpoint)
    if not tasks:
        raise WhaleMatchError(f"no catalogue image to compare with (views: {args.viewpoint or 'any'})")
    print(f"searching {len(tasks)} catalogue images for {query.id}; "
          f"{extraction_line(cur, [query] + [t.b for t in tasks])}", file=sys.stderr)
    sys.stderr.flush()
    rows = rank_rows(cur.verify(tasks), cur)
    by_id = {t.b.id: t for t in tasks}
    whale_of = {p.id: p.whale_id for p in catalogue if p.whale_id}
    ok = [r for r in rows if not r.get("error")]
    top = ok[: max(0, args.top)]
    if whale_of and args.top > 0:  # and the best image of each of the best whales
        best_of = {}
        for r in ok:
            best_of.setdefault(whale_of.get(r["image_b"], ""), r)
        top += [r for w, r in list(best_of.items())[: args.top] if w and r not in top]
    cur.draw_many([(by_id[r["image_b"]], r) for r in top], args.out / "images", args.outliers)
    whales = whale_ranking(rows, whale_of, cur) if whale_of else []
    out = args.out
    img_cols = ["rank", "image_b", "whale_id"] + [c for c in RESULT_COLUMNS if c not in ("image_a", "path_a",
                                                                                          "viewpoint_a")]
    for r in rows:
        r["whale_id"] = whale_of.get(r["image_b"], "")
    write_csv(pd.DataFrame(rows).reindex(columns=img_cols), out / "candidates.csv")
    if whales:
        write_csv(pd.DataFrame(whales).drop(columns=["picture"]), out / "whales.csv")
    page = out / "report.html"
    identical = [r["image_b"] for r in ok if "identical files" in r["note"]]
    n_whales = len({w for w in whale_of.values()})
    prior_hint = ([f"P(same) is at even odds; for a new photo among {n_whales} whales, --prior {1 / n_whales:.3g} "
                   "is the more realistic base rate"] if cur.calibration is not None and args.prior is None
                  and n_whales > 1 else [])
    summary = [f"new photo {query.path}; {len(tasks)} catalogue images from {args.catalogue}",
               *([f"the new photo is already in the catalogue as {', '.join(identical)} (identical file)"]
                 if identical else []),
               *prior_hint,
               *settings_lines(cur, args)]
    query_pic = out / "images" / "query.jpg"
    from . import drawing

    try:
        drawing.save(cur.decode(query), query_pic)
    except WhaleMatchError as exc:
        raise WhaleMatchError(f"new photo unusable: {exc}") from None
    tables = []
    if whales:
        tables.append(report.Table(
            "Whales", [report.Column("rank", "#", "int"), report.Column("whale_id", "whale"),
                       report.Column("best_image", "best image"),
                       report.Column("picture", "best match picture", "picture"),
                       report.Column("n_inliers", "inliers", "int"), report.Column("score", "score", "num"),
                       report.Column("probability", "P(same)", "prob"),
                       report.Column("images", "images compared", "int"),
                       report.Column("images_verified", "images with P or score >= 0.5", "int")],
            pictures_relative(whales[: max(args.top, 20)], page), table_id="whales",
            note="each whale scored by its best-matching image"))
    cand_cols = [c for c in PAIR_COLUMNS if c.key != "image_a"]
    cand_cols.insert(2, report.Column("whale_id", "whale"))
    tables.append(report.Table("Catalogue images", cand_cols, pictures_relative(rows[: max(args.top, 50)], page),
                               table_id="candidates",
                               note=f"best {min(len(rows), max(args.top, 50))} of {len(rows)}; pictures for the best "
                                    f"{args.top} (and for each listed whale's best image)"))
    report.write(report.Report(f"whalematch: candidates for {Path(query.id).name}", summary, tables,
                               report.relative(query_pic, page), f"new photo: {query.id}"), page)
    print(f"best catalogue images for {query.id}:")
    for r in rows[: min(10, len(rows))]:
        if r.get("error"):
            break
        print(f"  {r['rank']:>3}. {r['image_b']:<24} {r['whale_id']:<12} inliers {r['n_inliers']:>4}  "
              f"score {r['score']:.3f}  P {fmt(r['probability'], '.2f')}  {r['note']}")
    if whales:
        print("best whales:")
        for w in whales[:5]:
            print(f"  {w['rank']:>3}. {w['whale_id']:<12} via {w['best_image']:<24} score {w['score']:.3f}  "
                  f"P {fmt(w['probability'], '.2f')}  ({w['images_verified']}/{w['images']} images verify)")
    print(f"results: {out / 'candidates.csv'}" + (f", {out / 'whales.csv'}" if whales else ""))
    print(f"review page: {page}")
    return 0


# --------------------------------------------------------------------------- audit


def cmd_audit(args) -> int:
    meta = read_metadata(args.metadata)
    photos = apply_subset(list(meta.values()), args.subset)
    if args.whales:
        keep = {w.strip() for w in args.whales.split(",") if w.strip()}
        photos = [p for p in photos if p.whale_id in keep]
    if not photos:
        raise DataError(f"{args.metadata}: no images to audit")
    plan = plan_audit(photos, args.scope, None if args.no_cross else args.limit, args.seed)
    cross = [] if args.no_cross else plan.cross
    cur = make_curator(args)
    print(f"audit of {plan.photos} images of {plan.whales} whales ({args.metadata})")
    print(f"  {extraction_line(cur, photos)}")
    print(f"  (a) {len(plan.within)} same-whale pairs; {plan.singletons} images have no other comparable image "
          "of their whale and cannot be checked")
    scope = {"all": "", "same-year": " taken in the same year", "same-date": " taken on the same date"}[args.scope]
    if args.no_cross:
        print(f"  (b) skipped (--no-cross); {plan.cross_total} cross-whale pairs{scope} exist")
    else:
        sampled = f", a sample of {len(cross)} (--limit, seed {args.seed})" if len(cross) < plan.cross_total else ""
        print(f"  (b) {plan.cross_total} cross-whale pairs of comparable views{scope}{sampled}")
    tasks_within = [pair_task(a, b) for a, b in plan.within]
    tasks_cross = [pair_task(a, b) for a, b in cross]
    known = cur.engine.verifier.store.count()
    print(f"  {len(tasks_within) + len(tasks_cross)} pairs to verify (the pair cache holds {known} verdicts for "
          "these settings; those are not verified again)")
    sys.stdout.flush()
    if args.dry_run:
        return 0
    t0 = time.perf_counter()
    rows_within = cur.verify(tasks_within)
    rows_cross = cur.verify(tasks_cross)
    isolated = isolated_images(rows_within, meta, cur, args.isolated_below)
    strong = strong_cross_pairs(rows_cross, meta, cur, args.strong_above)
    task_of = {(t.a.id, t.b.id): t for t in tasks_within + tasks_cross}
    n = max(0, args.pictures)
    cur.draw_many([(task_of[(d["_row"]["image_a"], d["_row"]["image_b"])], d["_row"]) for d in isolated[:n]],
                  args.out / "images", args.outliers)
    for d in isolated:
        d["picture"] = d["_row"].get("picture", "")
    cur.draw_many([(task_of[(d["image_a"], d["image_b"])], d) for d in strong[:n]], args.out / "images",
                  args.outliers)
    measure = "P(same whale)" if cur.calibration is not None else "raw score (no calibration)"
    iso_cols = ["rank", "image_id", "whale_id", "viewpoint", "suspicion", "compared_with", "best_partner",
                "best_probability", "best_score", "best_inliers", "picture"]
    write_csv(pd.DataFrame(isolated).reindex(columns=iso_cols), args.out / "isolated_images.csv")
    pair_cols = ["rank", "image_a", "whale_a", "image_b", "whale_b", "n_inliers", "strength", "score",
                 "probability", "kind", "note", "picture"]
    write_csv(pd.DataFrame(strong).reindex(columns=pair_cols), args.out / "suspect_pairs.csv")
    page = args.out / "report.html"
    summary = [
        f"{plan.photos} images of {plan.whales} whales from {args.metadata}",
        f"(a) {len(rows_within)} same-whale pairs verified; {len(isolated)} images verify against no other image "
        f"of their whale ({measure} below {args.isolated_below})",
        f"(b) {len(rows_cross)} of {plan.cross_total} cross-whale pairs verified; {len(strong)} verify strongly "
        f"({measure} at least {args.strong_above})",
        *settings_lines(cur, args),
    ]
    iso_table = report.Table(
        "(a) Images that match no other image of their whale",
        [report.Column("rank", "#", "int"), report.Column("image_id", "image"), report.Column("whale_id", "whale"),
         report.Column("suspicion", "suspicion", "num", "1 - best P(same) (or score) against its own whale"),
         report.Column("best_partner", "best same-whale partner"),
         report.Column("picture", "match with that partner", "picture"),
         report.Column("best_inliers", "inliers", "int"), report.Column("best_score", "score", "num"),
         report.Column("best_probability", "P(same)", "prob"),
         report.Column("compared_with", "compared with", "int", "other images of the same whale compared")],
        pictures_relative(isolated, page), table_id="isolated",
        note="possible mislabels, or photos too poor or too different (another body part) to match",
        empty="none: every checkable image matches at least one other image of its whale")
    strong_table = report.Table(
        "(b) Pairs labelled as different whales that verify strongly",
        [report.Column("rank", "#", "int"), report.Column("image_a", "image A"), report.Column("whale_a", "whale A"),
         report.Column("image_b", "image B"), report.Column("whale_b", "whale B"),
         report.Column("picture", "match picture", "picture"), report.Column("n_inliers", "inliers", "int"),
         report.Column("score", "score", "num"), report.Column("probability", "P(same)", "prob"),
         report.Column("kind", "kind"), report.Column("note", "note")],
        pictures_relative(strong, page), table_id="suspects",
        note="possible duplicates of one whale under two ids, or mislabelled images",
        empty="none among the pairs verified")
    report.write(report.Report("whalematch: catalogue audit", summary, [iso_table, strong_table]), page)
    print(f"verified in {time.perf_counter() - t0:.0f} s")
    print(f"(a) {len(isolated)} images verify against no other image of their whale:")
    for d in isolated[:10]:
        print(f"  {d['rank']:>3}. {d['image_id']:<16} {d['whale_id']:<12} best {d['best_partner']:<16} "
              f"inliers {d['best_inliers']:>4}  P {fmt(d['best_probability'], '.2f')}  score {d['best_score']:.3f}")
    print(f"(b) {len(strong)} cross-whale pairs verify strongly:")
    for d in strong[:10]:
        print(f"  {d['rank']:>3}. {d['image_a']} ({d['whale_a']}) ~ {d['image_b']} ({d['whale_b']})  "
              f"inliers {d['n_inliers']}  P {fmt(d['probability'], '.2f')}  score {d['score']:.3f}  {d['kind']}")
    print(f"results: {args.out / 'isolated_images.csv'}, {args.out / 'suspect_pairs.csv'}\nreview page: {page}")
    return 0


# --------------------------------------------------------------------------- calibrate


def sample_calibration_pairs(photos: list[Photo], args) -> dict:
    """Labelled pairs for the fit and held-out sets, from disjoint sets of whales."""
    from .curation import comparable

    rng = np.random.default_rng(args.seed)
    by_whale: dict[str, list[Photo]] = {}
    for p in sorted(photos, key=lambda p: p.id):
        by_whale.setdefault(p.whale_id, []).append(p)
    whales = sorted(by_whale)
    rng.shuffle(whales)
    n_held = max(1, int(round(len(whales) * args.heldout)))
    splits = {"heldout": whales[:n_held], "fit": whales[n_held:]}
    out = {}
    for name, ws in splits.items():
        share = args.heldout if name == "heldout" else 1 - args.heldout
        target = max(1, int(round(args.positives * share)))
        max_images = max(2, int(round(args.max_images * share)))
        queues = []
        for w in ws:
            pairs = [(a, b) for i, a in enumerate(by_whale[w]) for b in by_whale[w][i + 1:] if comparable(a, b)]
            if pairs:
                order = rng.permutation(len(pairs))[: args.max_per_whale]
                queues.append([pairs[i] for i in order])
        positives, used = [], set()
        while len(positives) < target and any(queues):  # round robin: every whale before any whale twice
            for q in queues:
                if q and len(positives) < target:
                    a, b = q.pop(0)
                    if len(used | {a.id, b.id}) > max_images:
                        continue
                    positives.append((a, b))
                    used |= {a.id, b.id}
        pool = sorted({p for ab in positives for p in ab}, key=lambda p: p.id)
        n_neg = max(1, int(round(len(positives) * args.negative_ratio)))
        negatives, seen, tries = [], set(), 0
        while len(negatives) < n_neg and tries < 200 * n_neg and len(pool) > 1:
            tries += 1
            i, j = rng.choice(len(pool), size=2, replace=False)
            a, b = sorted((pool[i], pool[j]), key=lambda p: p.id)
            if a.whale_id == b.whale_id or not comparable(a, b) or (a.id, b.id) in seen:
                continue
            seen.add((a.id, b.id))
            negatives.append((a, b))
        out[name] = {"positives": positives, "negatives": negatives, "whales": len({p.whale_id for p in pool}),
                     "images": len(pool)}
    return out


def ci(h: dict, name: str) -> str:
    lo_hi = h.get(f"{name}_ci90")
    return f" (90% interval {lo_hi[0]:.3f}-{lo_hi[1]:.3f})" if lo_hi else ""


def portable_command(argv: list[str]) -> str:
    """The command line with absolute paths made relative to the working folder (nothing machine-specific)."""
    import os

    parts = []
    for a in argv:
        if os.path.isabs(a):
            rel = os.path.relpath(a)
            a = rel if not rel.startswith("..") else ".../" + "/".join(Path(a).parts[-2:])
        parts.append(a)
    return "whalematch " + shlex.join(parts)


def cmd_calibrate(args, argv: list[str]) -> int:
    meta = read_metadata(args.metadata)
    photos = apply_subset([p for p in meta.values() if p.whale_id], args.subset)
    if len({p.whale_id for p in photos}) < 4:
        raise DataError(f"{args.metadata}: the calibration needs labelled images (whale_id) of at least 4 whales")
    if not 0 < args.heldout < 1:
        raise WhaleMatchError("--heldout must lie strictly between 0 and 1")
    args.calibration = None
    cur = make_curator(args)
    cur.calibration = None  # fit on raw verdicts
    sets = sample_calibration_pairs(photos, args)
    for name in ("fit", "heldout"):
        s = sets[name]
        print(f"{name:>8}: {len(s['positives'])} same-whale + {len(s['negatives'])} different-whale pairs "
              f"from {s['images']} images of {s['whales']} whales", file=sys.stderr)
    used = list({p.id: p for s in sets.values() for ab in s["positives"] + s["negatives"] for p in ab}.values())
    print(extraction_line(cur, used), file=sys.stderr)
    results = {}
    for name, s in sets.items():
        tasks = [pair_task(a, b) for a, b in s["positives"] + s["negatives"]]
        labels = np.array([1] * len(s["positives"]) + [0] * len(s["negatives"]))
        rows = cur.verify(tasks)
        ok = np.array([not r["error"] for r in rows])
        results[name] = {"rows": [r for r, k in zip(rows, ok) if k], "labels": labels[ok],
                         "strength": np.array([r["strength"] for r, k in zip(rows, ok) if k], float),
                         "score": np.array([r["score"] for r, k in zip(rows, ok) if k], float)}
        if (~ok).any():
            log.warning("%d %s pairs could not be verified and are left out", int((~ok).sum()), name)
    fit_set, held = results["fit"], results["heldout"]
    if len(set(fit_set["labels"].tolist())) < 2:
        raise WhaleMatchError("the fit set needs both same-whale and different-whale pairs")
    conf = cur.engine.conf
    cal = calib.fit(fit_set["strength"], fit_set["labels"], conf["name"], presets.verdict_key(conf),
                    images=sets["fit"]["images"], whales=sets["fit"]["whales"], seed=args.seed,
                    same_encounter_positives=sum(1 for a, b in sets["fit"]["positives"]
                                                 if a.encounter_id and a.encounter_id == b.encounter_id),
                    metadata=Path(args.metadata).name)
    cal.heldout = {**calib.evaluate(cal, held["strength"], held["labels"], held["score"]),
                   "images": sets["heldout"]["images"], "whales": sets["heldout"]["whales"],
                   "split": "by whale: no whale in both the fit and the held-out set"}
    cal.command = portable_command(argv)
    output = args.output or args.out / f"calibration-{conf['name']}.json"
    cal.save(output)
    h = cal.heldout
    print(f"calibration of {conf['name']} (settings {cal.settings_key}): isotonic fit on {cal.fit['pairs']} pairs "
          f"({cal.fit['positives']} same whale, {cal.fit['negatives']} different) from {cal.fit['images']} images "
          f"of {cal.fit['whales']} whales")
    print(f"held-out ({h['pairs']} pairs: {h['positives']} same, {h['negatives']} different; {h['images']} images "
          f"of {h['whales']} other whales): ECE {h['ece']:.4f}{ci(h, 'ece')}  Brier {h['brier']:.4f}{ci(h, 'brier')}  "
          f"(raw score read as a probability: ECE {h['raw_score_ece']:.4f}, Brier {h['raw_score_brier']:.4f})")
    print("reliability on the held-out pairs, classes weighed to even odds "
          "(P bin, pairs, of which same whale, mean P, share same whale):")
    p_held = np.atleast_1d(cal.probability(held["strength"]))
    for r in calib.reliability_table(p_held, held["labels"], weights=calib.balancing_weights(held["labels"])):
        print(f"  {r['bin']}  {r['pairs']:>5}  {r['same_whale_pairs']:>5}  {r['mean_p']:.3f}  {r['positive_rate']:.3f}")
    pairs_csv = args.out / f"calibration-pairs-{conf['name']}.csv"
    frames = []
    for name, res in results.items():
        frames.append(pd.DataFrame({"set": name, "image_a": [r["image_a"] for r in res["rows"]],
                                    "image_b": [r["image_b"] for r in res["rows"]], "same_whale": res["labels"],
                                    "n_inliers": [r["n_inliers"] for r in res["rows"]], "strength": res["strength"],
                                    "score": res["score"],
                                    "probability": np.atleast_1d(cal.probability(res["strength"])),
                                    "mirrored": [r["mirrored"] for r in res["rows"]]}))
    write_csv(pd.concat(frames, ignore_index=True), pairs_csv)
    print(f"wrote {output} (and the labelled pairs in {pairs_csv})")
    return 0


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    common = common_options()
    p = argparse.ArgumentParser(prog="whalematch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    p.add_argument("--version", action="version", version=f"whalematch {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("verify", parents=[common], help="verify one pair (A B) or a CSV of pairs (--pairs)",
                       description="Verdict of a pair of photos, with a picture of the inlier correspondences; "
                                   "or, with --pairs, a CSV of verdicts and a review page.")
    v.add_argument("images", nargs="*", help="two image files (or image ids with --metadata)")
    v.add_argument("--pairs", type=Path, help="CSV with columns image_a,image_b (paths, or ids with --metadata); "
                                              "an optional column mirror (1/0)")
    v.add_argument("--metadata", type=Path, help="metadata.csv (image_id,path[,viewpoint,...]) to name images by id "
                                                 "and read their viewpoints")
    v.add_argument("--mirror", action="store_true",
                   help="match A against the horizontally mirrored B (a left versus a right flank); automatic, "
                        "mirroring the right flank, when the metadata gives the viewpoints")
    v.add_argument("--picture", type=Path, help="where to write the match picture of a single pair")
    v.add_argument("--pictures", type=int, default=100, help="batch: pictures for the best N pairs (default 100)")
    v.add_argument("--output", type=Path, help="batch: results CSV (default OUT/results.csv)")
    v.add_argument("--json", action="store_true", help="single pair: print the result as JSON")
    out_options(v, "pictures, results and the review page")

    s = sub.add_parser("search", parents=[common], help="rank catalogue images and whales for a new photo",
                       description="Rank the images of a catalogue (and its whales, when the metadata has whale_id) "
                                   "for a new photo, with match pictures of the best candidates.")
    s.add_argument("image", help="the new photo")
    s.add_argument("--catalogue", type=Path, required=True,
                   help="a folder of images, a folder with metadata.csv, or a metadata CSV")
    s.add_argument("--viewpoint", choices=("top", "left", "right"),
                   help="view of the new photo: compares only comparable catalogue views and mirrors the new photo "
                        "for opposite flanks")
    s.add_argument("--mirror", action="store_true", help="match the mirrored new photo against every catalogue image")
    s.add_argument("--all-views", action="store_true", help="with --viewpoint, still compare every catalogue image")
    s.add_argument("--subset", type=Path, help="CSV with an image_id column: search only these catalogue images")
    s.add_argument("--top", type=int, default=10, help="pictures for the best N images (default 10)")
    out_options(s, "pictures, results and the review page")

    a = sub.add_parser("audit", parents=[common], help="find possible mislabels in a labelled catalogue",
                       description="(a) images that verify against no other image of their whale; (b) pairs labelled "
                                   "as different whales that verify strongly. Prints the pair counts first.")
    a.add_argument("--metadata", type=Path, required=True, help="metadata.csv with image_id,path,whale_id"
                                                                "[,viewpoint,date,encounter_id]")
    a.add_argument("--subset", type=Path, help="CSV with an image_id column: audit only these images")
    a.add_argument("--scope", choices=("all", "same-year", "same-date"), default="all",
                   help="cross-whale pairs to consider: all, or only photos of the same year or date")
    a.add_argument("--limit", type=int, default=None, help="verify a seeded random sample of N cross-whale pairs")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--no-cross", action="store_true", help="skip (b)")
    a.add_argument("--whales", help="comma-separated whale ids to audit (default all)")
    a.add_argument("--isolated-below", type=float, default=0.5,
                   help="(a) flag an image whose best same-whale P(same) (or score) is below this (default 0.5)")
    a.add_argument("--strong-above", type=float, default=0.9,
                   help="(b) flag a cross-whale pair whose P(same) (or score) is at least this (default 0.9)")
    a.add_argument("--pictures", type=int, default=50, help="evidence pictures for the first N of each list")
    a.add_argument("--dry-run", action="store_true", help="print the counts and stop")
    out_options(a, "pictures, results and the review page")

    c = sub.add_parser("calibrate", parents=[common], help="fit P(same whale) on a labelled catalogue",
                       description="Fit the map from pair strength to P(same whale) on labelled pairs (isotonic), "
                                   "and report its calibration error (ECE, Brier) on pairs of held-out whales.")
    c.add_argument("--metadata", type=Path, required=True, help="metadata.csv with image_id,path,whale_id")
    c.add_argument("--subset", type=Path, help="CSV with an image_id column: use only these images")
    c.add_argument("--positives", type=int, default=600, help="same-whale pairs in all (default 600)")
    c.add_argument("--negative-ratio", type=float, default=4.0,
                   help="different-whale pairs per same-whale pair (default 4: the rare strong chance matches "
                        "of different whales need many samples; the classes are weighed to even odds)")
    c.add_argument("--max-images", type=int, default=800, help="images in all (default 800)")
    c.add_argument("--max-per-whale", type=int, default=8, help="same-whale pairs per whale (default 8)")
    c.add_argument("--heldout", type=float, default=0.3, help="share of whales held out (default 0.3)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--output", type=Path, help="calibration file (default OUT/calibration-<preset>.json)")
    c.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="folder for the labelled pairs CSV")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    settings.setup_logging(args.verbose)
    try:
        if args.command == "verify":
            return cmd_verify(args)
        if args.command == "search":
            return cmd_search(args)
        if args.command == "audit":
            return cmd_audit(args)
        return cmd_calibrate(args, argv)
    except WhaleMatchError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
