"""Search in batch: several new photos (a folder, a metadata CSV or a text file of paths) against one catalogue.

Each new photo's candidates are chosen as ``search`` chooses them (the index's shortlist when there is an
index, :mod:`.catalogue_search`); every pair of every new photo is verified in one call (on a cluster with
``--backend ray``, one job that keeps every worker busy), then each new photo is ranked exactly as
``search`` ranks one (:mod:`.search`: the same tables, pictures and review page, in a folder of its own
under ``--out``), with its own prior (1 in the K whales it is comparable with). ``OUT/batch.csv`` sums up:
one row per new photo with its best catalogue image and whale and P(new whale), or why it could not be
searched. The photos of one sighting (:mod:`.sightings`: one encounter_id, or one date with ``--group-by
date``) are then identified together: ``OUT/encounters.csv`` has one row per sighting (its whale ranking's
best two, P(new whale)), and a sighting of several photos gets a review page of its own under
``OUT/sightings/``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..io.catalogue import Photo, load_catalogue, resolve_photo
from ..io.paths import checked
from . import catalogue_search, cluster, priors, report, search, sightings, whale_evidence
from .curator import Curator, PairTask, from_options, safe_name
from .new_whale import Judge, judge_for
from .review_page import Review

LIST_SUFFIXES = (".txt", ".lst", ".list")
SUMMARY_COLUMNS = ["new_photo", "path", "viewpoint", "compared", "best_image", "best_whale", "n_inliers", "score",
                   "probability", "verdict", "p_new_whale", "sighting", "results", "error"]


def read_new_photos(source: Path, viewpoint: str | None = None) -> list[Photo]:
    """The new photos of a folder of images, a metadata CSV (``image_id,path[,viewpoint]``) or a text file of paths
    (one a line, relative to the working folder or to the file's; ``#`` starts a comment); ``viewpoint`` for those
    that have none."""
    source = checked(source, "new photos")
    if source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
        lines = [line.strip() for line in source.read_text(encoding="utf-8-sig").splitlines()]
        photos = [resolve_photo(line, None, source.parent) for line in lines
                  if line and not line.startswith("#")]
    else:
        photos = load_catalogue(source)
    if not photos:
        raise DataError(f"{source}: no new photos listed")
    seen: dict[str, Path] = {}
    for p in photos:
        if seen.setdefault(p.id, p.path) != p.path:
            raise DataError(f"{source}: {p.id!r} is listed twice with different files")
    view = (viewpoint or "").lower()
    return [replace(p, viewpoint=p.viewpoint or view) for p in dict.fromkeys(photos)]


def distinct_ids(queries: list[Photo], catalogue: list[Photo]) -> list[Photo]:
    """The new photos, one whose id is a catalogue id of another file named by its path instead (ids name one
    file each)."""
    by_id = {c.id: c.path for c in catalogue}
    return [replace(q, id=str(q.path)) if by_id.get(q.id, q.path) != q.path else q for q in queries]


def batch_tasks(queries: list[Photo], found: catalogue_search.Candidates, mirror: bool = False,
                all_views: bool = False) -> dict[str, list[PairTask]]:
    """Per new photo (by id), its pairs with the catalogue as ``found`` chooses them (every comparable photo, or
    the index's shortlist)."""
    found.cur.prepare(queries)  # the new photos' features in one go (batched), before each one's shortlist
    return {q.id: found.tasks(q, mirror, all_views) for q in queries}


def folder_names(queries: list[Photo]) -> dict[str, str]:
    """A distinct, file-name-safe folder name per new photo."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for q in queries:
        base = safe_name(Path(q.id).stem, 60)
        name, k = base, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        names[q.id] = name
    return names


@dataclass
class BatchResult:
    summary: list[dict]  # batch.csv's rows
    path: Path  # batch.csv
    results: dict[str, search.SearchResult]  # per new photo searched
    sightings: list[sightings.Identified]
    encounters: Path  # encounters.csv


def search_batch(cur: Curator, queries: list[Photo], tasks: dict[str, list[PairTask]],
                 found: catalogue_search.Candidates, catalogue: list[Photo], judge: Judge, args) -> BatchResult:
    """Verify every pair at once, then rank, draw and write each new photo's results and each sighting's
    (``args``: the search command's options)."""
    cur.verdicts([t for q in queries for t in tasks[q.id]])
    names = folder_names(queries)
    groups = sightings.group(queries, args.group_by)
    sighting_of = {p.id: g.id for g in groups for p in g.photos}
    summary, results = [], {}
    for q in queries:
        out = args.out / names[q.id]
        row = dict.fromkeys(SUMMARY_COLUMNS, "")
        row.update(new_photo=q.id, path=str(q.path), viewpoint=q.viewpoint, compared=len(tasks[q.id]),
                   sighting=sighting_of[q.id], results=str(out))
        summary.append(row)
        if q.id in cur.bad:
            row["error"] = cur.bad[q.id]
            continue
        if not tasks[q.id]:
            row["error"] = search.no_comparable(q, catalogue)
            continue
        cur.use_prior(priors.for_search(args.prior, found.comparable_photos(q, args.all_views or not q.viewpoint)))
        result = results[q.id] = search.search(cur, q, tasks[q.id], catalogue, args.top, out / "images",
                                               args.outliers, judge)
        search.write_tables(result, out)
        search.write_page(cur, result, search.summary_lines(cur, result, args.catalogue, found, judge), args.top, out)
        best = next((r for r in result.rows if not r.get("error")), None)
        if best is None:
            row["error"] = result.rows[0]["error"] if result.rows else "not verified"
            continue
        row.update(best_image=best["image_b"], best_whale=best["whale_id"], n_inliers=best["n_inliers"],
                   score=best["score"], probability=best["probability"], verdict=best["verdict"],
                   p_new_whale=result.p_new_whale if result.p_new_whale is not None else "")
    path = report.write_csv(pd.DataFrame(summary, columns=SUMMARY_COLUMNS), args.out / "batch.csv")
    whale_of = {p.id: p.whale_id for p in catalogue if p.whale_id}
    rows_by_photo = {i: r.rows for i, r in results.items()}
    identified, encounter_rows = [], []
    for g in groups:
        found_g = sightings.identify(g, rows_by_photo, whale_of, judge)
        identified.append(found_g)
        folder = args.out / "sightings" / safe_name(g.id, 60) if len(g.photos) > 1 and found_g.searched else None
        error = "" if found_g.searched else "; ".join(dict.fromkeys(r["error"] for r in summary
                                                                   if r["sighting"] == g.id and r["error"]))
        encounter_rows.append(found_g.row(folder or "", error))
        if folder is not None:
            sighting_page(cur, found_g, [results[i] for i in found_g.searched], judge, folder, args)
    encounters = report.write_csv(pd.DataFrame(encounter_rows, columns=sightings.COLUMNS), args.out / "encounters.csv")
    return BatchResult(summary, path, results, identified, encounters)


def sighting_page(cur: Curator, found: sightings.Identified, results: list[search.SearchResult], judge: Judge,
                  out: Path, args) -> Path:
    """``report.html`` of a sighting of several photos: is it a new whale (one row per photo, decided for the
    sighting), and its whales ranked by their evidence over all its photos, each with its best pair's picture."""
    page = out / "report.html"
    by_pair = {(r.query.id, row["image_b"]): row for r in results for row in r.rows if not row.get("error")}
    path_of = {r.query.id: search.decided_as(r.query) for r in results}
    whales = []
    for w in found.ranking.head(max(args.top, 20)).to_dict("records"):
        best = by_pair.get((w["best_photo"], w["best_candidate"]), {})
        whales.append({"rank": int(w["rank"]), "whale_id": w["whale"], "score": round(float(w["score"]), 4),
                       "best_photo": w["best_photo"], "best_image": w["best_candidate"],
                       "n_inliers": int(w["best_inliers"]), "photos_matching": int(w["photos"]),
                       "picture": best.get("picture", ""), "probability": best.get("probability"),
                       "sighting": found.sighting.id, "photos": [path_of[i] for i in found.searched],
                       "best_photo_file": path_of[w["best_photo"]]})
    tables = [search.new_whale_table(results, page, found.sighting.id, found.p_new_whale),
              report.Table("Whales of the sighting",
                           [report.Column("rank", "#", "int"), report.Column("whale_id", "whale"),
                            report.Column("score", "whale score", "num"), report.Column("best_photo", "new photo"),
                            report.Column("best_image", "catalogue image"),
                            report.Column("picture", "best match picture", "picture"),
                            report.Column("n_inliers", "inliers", "int"),
                            report.Column("probability", "P(same) of the pair", "prob"),
                            report.Column("photos_matching", "new photos with a verified image of it", "int")],
                           report.pictures_relative(whales, page), table_id="whales",
                           note=f"each whale scored by {whale_evidence.rule()} over every photo of the sighting; "
                                "a decision on a row is exported for every photo of the sighting",
                           review=Review("best_image", "whale_id", query="best_photo_file", sighting="sighting",
                                         photos="photos"))]
    photos = ", ".join(p.id for p in found.sighting.photos)
    summary = [f"sighting {found.sighting.id}: {len(found.sighting.photos)} new photos ({photos}), "
               f"{len(found.searched)} searched",
               *([f"P(new whale) = {found.p_new_whale:.2f} for the sighting"] if found.p_new_whale is not None else []),
               judge.line(), *cur.describe(prior=False),
               "each photo's own results: its folder beside this one (batch.csv)"]
    return report.write(report.Report(f"whalematch: sighting {found.sighting.id}", summary, tables), page)


# --------------------------------------------------------------------------- the command


def run(args, argv: list[str]) -> int:
    """Several new photos against a catalogue: candidates chosen, every pair verified in one go, each photo ranked
    on its own, each sighting identified."""
    catalogue = search.catalogue_of(args)
    queries = distinct_ids(read_new_photos(args.batch, args.viewpoint), catalogue)
    cur = from_options(args, args.calibration)
    found = catalogue_search.candidates(cur, catalogue, args.catalogue, args.k, args.exhaustive,
                                        args.per_whale or None)
    print(f"searching {len(queries)} new photos from {args.batch} against {len(catalogue)} catalogue images; "
          f"{cur.extraction_line(queries)}; candidates: {found.source}", file=sys.stderr)
    tasks = batch_tasks(queries, found, args.mirror, args.all_views)
    every = [t for ts in tasks.values() for t in ts]
    print(catalogue_search.batch_plan_line(cur, every, len(queries)))
    if cluster.wanted(cur, every):
        print("\n".join(cluster.plan_lines(cur, every, args.plan_nodes)))
    sys.stdout.flush()
    judge = judge_for(cur.engine.name, cur.engine.settings_key, args.new_whale_prior)
    done = search_batch(cur, queries, tasks, found, catalogue, judge, args)
    print(f"best catalogue image of each new photo ({cur.engine.verified()} pairs verified by this run; "
          f"{cur.engine.backend.label}):")
    for r in done.summary:
        print(f"  {r['new_photo']:<28} " + (f"error: {r['error']}" if r["error"] else
              f"{r['best_image']:<24} {r['best_whale']:<12} inliers {r['n_inliers']:>4}  score {r['score']:.3f}  "
              f"P {report.fmt(r['probability'], '.2f')}  {r['verdict']}  P(new whale) "
              f"{report.fmt(r['p_new_whale'] if r['p_new_whale'] != '' else None, '.2f')}"))
    several = [s for s in done.sightings if len(s.sighting.photos) > 1]
    if several:
        print(f"sightings of several photos, identified together (--group-by {args.group_by}):")
        for s in several:
            row = s.row()
            print(f"  {s.sighting.id:<28} {len(s.searched)}/{row['photos']} photos searched; best whale "
                  f"{row['best_whale'] or '-'} ({report.fmt(row['best_score'], '.3f')}), P(new whale) "
                  f"{report.fmt(s.p_new_whale, '.2f')}")
    print(judge.line())
    print(f"summary: {done.path}; sightings: {done.encounters}; each new photo's results, pictures and review page "
          f"in {args.out}/<photo>/, each sighting of several photos in {args.out}/sightings/<sighting>/")
    return 0
