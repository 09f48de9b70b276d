"""Audit of a labelled catalogue: (a) images that verify against no other image of their whale, (b) pairs
labelled as different whales that verify strongly; the pairs to verify, the findings, their tables and page."""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..io.catalogue import Photo, apply_subset, comparable, read_photos, view_group
from . import cluster, priors, report
from .curator import Curator, from_options, pair_task
from .review_page import Review

SCOPES = ("all", "same-year", "same-date")
ISOLATED_COLUMNS = ["rank", "image_id", "whale_id", "viewpoint", "suspicion", "compared_with", "best_partner",
                    "best_probability", "best_score", "best_inliers", "picture"]
SUSPECT_COLUMNS = ["rank", "image_a", "whale_a", "image_b", "whale_b", "n_inliers", "strength", "score",
                   "probability", "kind", "note", "picture"]


@dataclass
class AuditPlan:
    within: list[tuple[Photo, Photo]]
    cross: list[tuple[Photo, Photo]]
    cross_total: int
    whales: int
    photos: int
    singletons: int  # photos with no comparable photo of the same whale


def _scope_key(p: Photo, scope: str) -> str:
    if scope == "same-date":
        return p.date
    if scope == "same-year":
        return p.date[:4]
    return ""


def plan_audit(photos: list[Photo], scope: str = "all", limit: int | None = None, seed: int = 0) -> AuditPlan:
    """Within-whale pairs (all, comparable views) and cross-whale pairs (all, or a seeded sample of ``limit``).

    Cross-whale pairs are counted per bucket (view group, and date or year with
    ``scope``) without listing them, so a large catalogue costs nothing to plan.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    photos = sorted(photos, key=lambda p: p.id)
    by_whale: dict[str, list[Photo]] = defaultdict(list)
    for p in photos:
        if not p.whale_id:
            raise DataError(f"image {p.id} has no whale_id; the audit needs a labelled catalogue")
        by_whale[p.whale_id].append(p)
    within = [(a, b) for ps in by_whale.values() for a, b in combinations(ps, 2) if comparable(a, b)]
    partnered = {p.id for pair in within for p in pair}
    # Buckets of mutually comparable photos: per scope key (date, year or none) and known view group,
    # that group plus the photos of unknown view (comparable with any). Photos of unknown view pair up
    # in every bucket, so their pairs among themselves are counted once and listed once (deduplicated).
    by_scope: dict[str, dict[str, list[Photo]]] = defaultdict(lambda: defaultdict(list))
    for p in photos:
        by_scope[_scope_key(p, scope)][view_group(p.viewpoint)].append(p)
    buckets: dict[tuple, list[Photo]] = {}
    total = 0
    for key, groups in sorted(by_scope.items()):
        unknown = groups.get("", [])
        known = sorted(g for g in groups if g)
        for g in known or [""]:
            buckets[(key, g)] = groups[g] + unknown if g else unknown
        total += sum(cross_count(buckets[(key, g)]) for g in known or [""])
        total -= max(0, len(known) - 1) * cross_count(unknown)
    counts = {k: cross_count(ps) for k, ps in buckets.items()}
    cross: list[tuple[Photo, Photo]]
    rng = np.random.default_rng(seed)
    if limit is None or limit >= total or limit >= 2_000_000 or 3 * limit >= total:
        seen = set()
        cross = []
        for _k, ps in sorted(buckets.items()):
            for a, b in combinations(sorted(ps, key=lambda p: p.id), 2):
                if a.whale_id != b.whale_id and (a.id, b.id) not in seen:
                    seen.add((a.id, b.id))
                    cross.append((a, b))
        if limit is not None and limit < len(cross):
            pick = rng.choice(len(cross), size=limit, replace=False)
            cross = [cross[i] for i in sorted(pick)]
    else:
        keys = sorted(k for k in counts if counts[k] > 0)
        weights = np.array([counts[k] for k in keys], float)
        weights /= weights.sum()
        chosen: set[tuple[str, str]] = set()
        cross = []
        while len(cross) < limit:
            ps = buckets[keys[rng.choice(len(keys), p=weights)]]
            i, j = rng.choice(len(ps), size=2, replace=False)
            a, b = sorted((ps[i], ps[j]), key=lambda p: p.id)
            if a.whale_id == b.whale_id or (a.id, b.id) in chosen:
                continue
            chosen.add((a.id, b.id))
            cross.append((a, b))
        cross.sort(key=lambda ab: (ab[0].id, ab[1].id))
    return AuditPlan(within=within, cross=cross, cross_total=total, whales=len(by_whale), photos=len(photos),
                     singletons=sum(1 for p in photos if p.id not in partnered))


def cross_count(photos: list[Photo]) -> int:
    """Pairs of photos of different whales among ``photos``."""
    n = len(photos)
    per = Counter(p.whale_id for p in photos)
    return n * (n - 1) // 2 - sum(c * (c - 1) // 2 for c in per.values())


def isolated_images(rows: list[dict], photos: dict[str, Photo], curator: Curator, below: float) -> list[dict]:
    """Images whose best verdict against any other (comparable) image of their whale is below ``below``,
    most isolated first; each with its best same-whale partner as evidence."""
    best: dict[str, dict] = {}
    tried: Counter = Counter()
    for r in rows:
        if r.get("error"):
            continue
        for me, other in ((r["image_a"], r["image_b"]), (r["image_b"], r["image_a"])):
            tried[me] += 1
            if me not in best or (curator.confidence(r), r["strength"]) > (curator.confidence(best[me]),
                                                                           best[me]["strength"]):
                best[me] = {**r, "partner": other}
    out = []
    for image_id, r in best.items():
        conf = curator.confidence(r)
        if conf < below:
            out.append({"image_id": image_id, "whale_id": photos[image_id].whale_id,
                        "viewpoint": photos[image_id].viewpoint, "compared_with": tried[image_id],
                        "best_partner": r["partner"], "best_probability": r["probability"], "best_score": r["score"],
                        "best_inliers": r["n_inliers"], "suspicion": round(1.0 - conf, 4), "_row": r})
    out.sort(key=lambda d: (-d["suspicion"], d["image_id"]))
    for i, d in enumerate(out, 1):
        d["rank"] = i
    return out


def strong_cross_pairs(rows: list[dict], photos: dict[str, Photo], curator: Curator, above: float) -> list[dict]:
    """Cross-whale pairs whose verdict reaches ``above``, strongest first."""
    out = []
    for r in rows:
        if r.get("error") or curator.confidence(r) < above:
            continue
        a, b = photos[r["image_a"]], photos[r["image_b"]]
        out.append({**r, "whale_a": a.whale_id, "whale_b": b.whale_id, "confidence": curator.confidence(r),
                    "kind": "identical files" if "identical files" in r["note"] else
                    ("same encounter id" if a.encounter_id and a.encounter_id == b.encounter_id else "")})
    out.sort(key=lambda d: (-d["confidence"], -(d["strength"] or 0.0), d["image_a"], d["image_b"]))
    for i, d in enumerate(out, 1):
        d["rank"] = i
    return out


@dataclass
class AuditFindings:
    rows_within: list[dict]  # verdict rows of the same-whale pairs
    rows_cross: list[dict]  # verdict rows of the cross-whale pairs
    isolated: list[dict]  # see isolated_images, each with its evidence "picture"
    strong: list[dict]  # see strong_cross_pairs


def audit(cur: Curator, photos: dict[str, Photo], within: list[tuple[Photo, Photo]],
          cross: list[tuple[Photo, Photo]], isolated_below: float, strong_above: float, pictures: int,
          images_dir: Path, outliers: str = "faint") -> AuditFindings:
    """Verify the pairs, list (a) isolated images and (b) strong cross-whale pairs, and draw the evidence of the
    first ``pictures`` of each list into ``images_dir``."""
    tasks_within = [pair_task(a, b) for a, b in within]
    tasks_cross = [pair_task(a, b) for a, b in cross]
    rows_within = cur.verify(tasks_within)
    rows_cross = cur.verify(tasks_cross)
    isolated = isolated_images(rows_within, photos, cur, isolated_below)
    strong = strong_cross_pairs(rows_cross, photos, cur, strong_above)
    task_of = {(t.a.id, t.b.id): t for t in tasks_within + tasks_cross}
    n = max(0, pictures)
    cur.draw_many([(task_of[(d["_row"]["image_a"], d["_row"]["image_b"])], d["_row"]) for d in isolated[:n]],
                  images_dir, outliers)
    for d in isolated:
        d["picture"] = d["_row"].get("picture", "")
    cur.draw_many([(task_of[(d["image_a"], d["image_b"])], d) for d in strong[:n]], images_dir, outliers)
    return AuditFindings(rows_within, rows_cross, isolated, strong)


def write_tables(found: AuditFindings, out: Path) -> tuple[Path, Path]:
    """``isolated_images.csv`` and ``suspect_pairs.csv``."""
    return (report.write_csv(pd.DataFrame(found.isolated).reindex(columns=ISOLATED_COLUMNS),
                             out / "isolated_images.csv"),
            report.write_csv(pd.DataFrame(found.strong).reindex(columns=SUSPECT_COLUMNS), out / "suspect_pairs.csv"))


def summary_lines(cur: Curator, plan: AuditPlan, found: AuditFindings, metadata: Path, isolated_below: float,
                  strong_above: float) -> list[str]:
    """The page's summary: the catalogue, what each list holds and by which measure, the settings."""
    measure = "P(same whale)" if cur.calibration is not None else "raw score (no calibration)"
    return [
        f"{plan.photos} images of {plan.whales} whales from {metadata}",
        f"(a) {len(found.rows_within)} same-whale pairs verified; {len(found.isolated)} images verify against no "
        f"other image of their whale ({measure} below {isolated_below})",
        f"(b) {len(found.rows_cross)} of {plan.cross_total} cross-whale pairs verified; {len(found.strong)} verify "
        f"strongly ({measure} at least {strong_above})",
        cur.prior_line(),
        *cur.describe(prior=False),
    ]


def write_page(found: AuditFindings, summary: list[str], out: Path) -> Path:
    """``report.html`` with the two lists and their evidence pictures."""
    page = out / "report.html"
    iso_table = report.Table(
        "(a) Images that match no other image of their whale",
        [report.Column("rank", "#", "int"), report.Column("image_id", "image"), report.Column("whale_id", "whale"),
         report.Column("suspicion", "suspicion", "num", "1 - best P(same) (or score) against its own whale"),
         report.Column("best_partner", "best same-whale partner"),
         report.Column("picture", "match with that partner", "picture"),
         report.Column("best_inliers", "inliers", "int"), report.Column("best_score", "score", "num"),
         report.Column("best_probability", "P(same)", "prob"),
         report.Column("compared_with", "compared with", "int", "other images of the same whale compared")],
        report.pictures_relative(found.isolated, page), table_id="isolated",
        note="possible mislabels, or photos too poor or too different (another body part) to match; most doubtful "
             "first; a decision is on the image and its best same-whale partner (Different: the label needs a look)",
        empty="none: every checkable image matches at least one other image of its whale",
        review=Review("best_partner", "whale_id", query="image_id"))
    strong_table = report.Table(
        "(b) Pairs labelled as different whales that verify strongly",
        [report.Column("rank", "#", "int"), report.Column("image_a", "image A"), report.Column("whale_a", "whale A"),
         report.Column("image_b", "image B"), report.Column("whale_b", "whale B"),
         report.Column("picture", "match picture", "picture"), report.Column("n_inliers", "inliers", "int"),
         report.Column("score", "score", "num"), report.Column("probability", "P(same)", "prob"),
         report.Column("kind", "kind"), report.Column("note", "note")],
        report.pictures_relative(found.strong, page), table_id="suspects",
        note="possible duplicates of one whale under two ids, or mislabelled images; most doubtful first; Same on a "
             "pair merges the two whale ids with whalematch apply-decisions",
        empty="none among the pairs verified",
        review=Review("image_b", "whale_b", query="image_a"))
    return report.write(report.Report("whalematch: catalogue audit", summary, [iso_table, strong_table]), page)


# --------------------------------------------------------------------------- the command

# An audit judges labels that came with their photos' dates: its pairs are scored by their image evidence alone,
# since the learned pair model reads the dates too (a photo filed under a whale seen the day before would pass).
AUDIT_SCORE_WHY = ("the image evidence alone, by default: the learned pair model also reads the dates, and photos "
                   "of one encounter would vouch for each other's labels; --pair-score learned asks for it")


def run(args, argv: list[str]) -> int:
    """A labelled catalogue: the pair counts, then isolated images and strong cross-whale pairs."""
    meta = read_photos(args.metadata)
    photos = apply_subset(list(meta.values()), args.subset)
    if args.whales:
        keep = {w.strip() for w in args.whales.split(",") if w.strip()}
        photos = [p for p in photos if p.whale_id in keep]
    if not photos:
        raise DataError(f"{args.metadata}: no images to audit")
    plan = plan_audit(photos, args.scope, None if args.no_cross else args.limit, args.seed)
    cross = [] if args.no_cross else plan.cross
    cur = from_options(args, args.calibration, auto_score="strength")  # see AUDIT_SCORE_WHY
    cur.use_prior(priors.for_pairs(args.prior, priors.AUDIT_WHY))
    print(f"audit of {plan.photos} images of {plan.whales} whales ({args.metadata})")
    print(f"  {cur.extraction_line(photos)}")
    print("  pair score: " + (f"strength, {AUDIT_SCORE_WHY}" if cur.model is None else
                              "the learned pair model (--pair-score learned): it reads the photos' dates too, so a "
                              "mislabel within an encounter can hide"))
    print(f"  {cur.prior_line()}")
    print(f"  (a) {len(plan.within)} same-whale pairs; {plan.singletons} images have no other comparable image "
          "of their whale and cannot be checked")
    scope = {"all": "", "same-year": " taken in the same year", "same-date": " taken on the same date"}[args.scope]
    if args.no_cross:
        print(f"  (b) skipped (--no-cross); {plan.cross_total} cross-whale pairs{scope} exist")
    else:
        sampled = f", a sample of {len(cross)} (--limit, seed {args.seed})" if len(cross) < plan.cross_total else ""
        print(f"  (b) {plan.cross_total} cross-whale pairs of comparable views{scope}{sampled}")
    print(f"  {len(plan.within) + len(cross)} pairs to verify (the pair cache holds {cur.engine.stored_verdicts()} "
          "verdicts for these settings; those are not verified again)")
    if cluster.wanted(cur, plan.within + cross):
        tasks = [pair_task(a, b) for a, b in plan.within + cross]
        print("\n".join(f"  {line}" for line in cluster.plan_lines(cur, tasks, args.plan_nodes)))
    sys.stdout.flush()
    if args.dry_run:
        return 0
    t0 = time.perf_counter()
    found = audit(cur, meta, plan.within, cross, args.isolated_below, args.strong_above, args.pictures,
                        args.out / "images", args.outliers)
    iso_csv, sus_csv = write_tables(found, args.out)
    summary = summary_lines(cur, plan, found, args.metadata, args.isolated_below, args.strong_above)
    page = write_page(found, summary, args.out)
    print(f"verified in {time.perf_counter() - t0:.0f} s ({cur.engine.verified()} pairs verified by this run, "
          f"{cur.engine.stats.features_extracted} images' features extracted; {cur.engine.backend.label})")
    print(f"(a) {len(found.isolated)} images verify against no other image of their whale:")
    for d in found.isolated[:10]:
        print(f"  {d['rank']:>3}. {d['image_id']:<16} {d['whale_id']:<12} best {d['best_partner']:<16} "
              f"inliers {d['best_inliers']:>4}  P {report.fmt(d['best_probability'], '.2f')}  "
              f"score {d['best_score']:.3f}")
    print(f"(b) {len(found.strong)} cross-whale pairs verify strongly:")
    for d in found.strong[:10]:
        print(f"  {d['rank']:>3}. {d['image_a']} ({d['whale_a']}) ~ {d['image_b']} ({d['whale_b']})  "
              f"inliers {d['n_inliers']}  P {report.fmt(d['probability'], '.2f')}  score {d['score']:.3f}  {d['kind']}")
    print(f"results: {iso_csv}, {sus_csv}\nreview page: {page} (both lists, most doubtful first, with decisions: "
          "Same on a cross-whale pair merges the two ids with whalematch apply-decisions)")
    return 0
