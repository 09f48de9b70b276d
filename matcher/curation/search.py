"""Search: a new photo against a catalogue, its images (and whales) ranked, the best drawn, tables and page written."""

from __future__ import annotations

import shlex
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import WhaleMatchError
from ..io.catalogue import Photo, apply_subset, comparable, load_catalogue, resolve_photo
from . import drawing, priors, report
from .curator import RESULT_COLUMNS, Curator, PairTask, from_options, mirror_side
from .review_page import Review

CANDIDATE_COLUMNS = ["rank", "image_b", "whale_id"] + [c for c in RESULT_COLUMNS
                                                       if c not in ("image_a", "path_a", "viewpoint_a")]


def search_tasks(query: Photo, catalogue: list[Photo], mirror: bool = False, all_views: bool = False) -> list[PairTask]:
    """The query against every catalogue image (but itself) of a comparable view (any view with ``all_views``);
    the query is the photo mirrored for an opposite flank or with ``mirror``."""
    tasks = []
    for c in catalogue:
        if c.id == query.id and c.path == query.path:
            continue
        if not all_views and not comparable(query, c):
            continue
        tasks.append(PairTask(query, c, mirror_side(query, c, mirror, prefer="a")))
    return tasks


def rank_rows(rows: list[dict], curator: Curator) -> list[dict]:
    """Rows with a verdict, best first (confidence, strength, then ids), each given its rank."""
    ok = [r for r in rows if not r.get("error")]
    ok.sort(key=lambda r: (-curator.confidence(r), -(r["strength"] or 0.0), r["image_b"], r["image_a"]))
    for i, r in enumerate(ok, 1):
        r["rank"] = i
    return ok + [r for r in rows if r.get("error")]


def whale_ranking(rows: list[dict], whale_of: dict[str, str], curator: Curator, threshold: float = 0.5) -> list[dict]:
    """Per whale: the best image's score (rows sorted best first), its image, and how many images verify."""
    best: dict[str, dict] = {}
    counts: Counter = Counter()
    verified: Counter = Counter()
    for r in rows:
        if r.get("error"):
            continue
        w = whale_of.get(r["image_b"], "")
        if not w:
            continue
        counts[w] += 1
        if curator.confidence(r) >= threshold:
            verified[w] += 1
        if w not in best:
            best[w] = r
    out = []
    for rank, (w, r) in enumerate(sorted(best.items(), key=lambda kv: (-curator.confidence(kv[1]),
                                                                       -(kv[1]["strength"] or 0.0), kv[0])), 1):
        out.append({"rank": rank, "whale_id": w, "best_image": r["image_b"], "probability": r["probability"],
                    "score": r["score"], "n_inliers": r["n_inliers"], "images": counts[w],
                    "images_verified": verified[w], "picture": r.get("picture", ""), "note": r.get("note", "")})
    return out


def pictured(rows: list[dict], whale_of: dict[str, str], top: int) -> list[dict]:
    """The ranked rows that get a match picture: the best ``top`` images, and the best image of each of the
    best ``top`` whales."""
    ok = [r for r in rows if not r.get("error")]
    chosen = ok[: max(0, top)]
    if whale_of and top > 0:
        best_of: dict[str, dict] = {}
        for r in ok:
            best_of.setdefault(whale_of.get(r["image_b"], ""), r)
        chosen += [r for w, r in list(best_of.items())[:top] if w and r not in chosen]
    return chosen


@dataclass
class SearchResult:
    query: Photo
    tasks: list[PairTask]
    rows: list[dict]  # ranked candidates (see CANDIDATE_COLUMNS), errors last
    whales: list[dict]  # see whale_ranking; empty without whale ids
    whale_of: dict[str, str]

    @property
    def identical(self) -> list[str]:
        """Catalogue images that are the very file of the query."""
        return [r["image_b"] for r in self.rows if not r.get("error") and "identical files" in r["note"]]


def search(cur: Curator, query: Photo, tasks: list[PairTask], catalogue: list[Photo], top: int, images_dir: Path,
           outliers: str = "faint") -> SearchResult:
    """Verify the tasks, rank images and whales, and draw the pictures of :func:`pictured` into ``images_dir``."""
    rows = rank_rows(cur.verify(tasks), cur)
    by_id = {t.b.id: t for t in tasks}
    whale_of = {p.id: p.whale_id for p in catalogue if p.whale_id}
    cur.draw_many([(by_id[r["image_b"]], r) for r in pictured(rows, whale_of, top)], images_dir, outliers)
    whales = whale_ranking(rows, whale_of, cur) if whale_of else []
    for r in rows:
        r["whale_id"] = whale_of.get(r["image_b"], "")
    return SearchResult(query, tasks, rows, whales, whale_of)


def write_tables(result: SearchResult, out: Path) -> list[Path]:
    """``candidates.csv`` and, with whale ids, ``whales.csv``; the files written."""
    paths = [report.write_csv(pd.DataFrame(result.rows).reindex(columns=CANDIDATE_COLUMNS), out / "candidates.csv")]
    if result.whales:
        paths.append(report.write_csv(pd.DataFrame(result.whales).drop(columns=["picture"]), out / "whales.csv"))
    return paths


def summary_lines(cur: Curator, result: SearchResult, catalogue_source: Path) -> list[str]:
    """The page's summary: what was searched, duplicates of the query, the base rate P assumes and why (see
    :mod:`.priors`), the settings."""
    identical = result.identical
    return [f"new photo {result.query.path}; {len(result.tasks)} catalogue images from {catalogue_source}",
            *([f"the new photo is already in the catalogue as {', '.join(identical)} (identical file)"]
              if identical else []),
            cur.prior_line(),
            *cur.describe(prior=False)]


def labelled_same(rows: list[dict]) -> int:
    """Candidates whose verdict reads same whale or probably same whale."""
    return sum(1 for r in rows if not r.get("error") and r.get("verdict") in ("same whale", "probably same whale"))


def write_page(cur: Curator, result: SearchResult, summary: list[str], top: int, out: Path) -> Path:
    """``report.html`` with the new photo, the whales and the catalogue images (with their pictures)."""
    page = out / "report.html"
    query_pic = out / "images" / "query.jpg"
    try:
        drawing.save(cur.decode(result.query), query_pic)
    except WhaleMatchError as exc:
        raise WhaleMatchError(f"new photo unusable: {exc}") from None
    rows, whales = result.rows, result.whales
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
            report.pictures_relative(whales[: max(top, 20)], page), table_id="whales",
            note="each whale scored by its best-matching image; a decision here is on that image, and shows on "
                 "its row below too",
            review=Review("best_image", "whale_id", query_value=result.query.id)))
    cand_cols = [c for c in report.PAIR_COLUMNS if c.key != "image_a"]
    cand_cols.insert(2, report.Column("whale_id", "whale"))
    tables.append(report.Table("Catalogue images", cand_cols, report.pictures_relative(rows[: max(top, 50)], page),
                               table_id="candidates",
                               note=f"best {min(len(rows), max(top, 50))} of {len(rows)}; pictures for the best "
                                    f"{top} (and for each listed whale's best image)",
                               review=Review("image_b", "whale_id", query_value=result.query.id)))
    return report.write(report.Report(f"whalematch: candidates for {Path(result.query.id).name}", summary, tables,
                                      report.relative(query_pic, page), f"new photo: {result.query.id}"), page)


# --------------------------------------------------------------------------- the command


def catalogue_of(args) -> list[Photo]:
    """The catalogue the command searches (``--catalogue``, less what ``--subset`` leaves out)."""
    return apply_subset(load_catalogue(args.catalogue), args.subset)


def run(args, argv: list[str]) -> int:
    """A new photo against a catalogue: images and whales ranked, tables and page (several: :mod:`.batch`)."""
    catalogue = catalogue_of(args)
    query = resolve_photo(args.image, None)
    query = Photo(query.id, query.path, (args.viewpoint or "").lower())
    cur = from_options(args, args.calibration)
    tasks = search_tasks(query, catalogue, args.mirror, args.all_views or not args.viewpoint)
    if not tasks:
        raise WhaleMatchError(f"no catalogue image to compare with (views: {args.viewpoint or 'any'})")
    cur.use_prior(priors.for_search(args.prior, [t.b for t in tasks]))
    print(f"searching {len(tasks)} catalogue images for {query.id}; "
          f"{cur.extraction_line([query] + [t.b for t in tasks])}", file=sys.stderr)
    sys.stderr.flush()
    result = search(cur, query, tasks, catalogue, args.top, args.out / "images", args.outliers)
    tables = write_tables(result, args.out)
    page = write_page(cur, result, summary_lines(cur, result, args.catalogue), args.top, args.out)
    print(cur.prior_line())
    print(f"best catalogue images for {query.id}:")
    for r in result.rows[: min(10, len(result.rows))]:
        if r.get("error"):
            break
        print(f"  {r['rank']:>3}. {r['image_b']:<24} {r['whale_id']:<12} inliers {r['n_inliers']:>4}  "
              f"score {r['score']:.3f}  P {report.fmt(r['probability'], '.2f')}  {r['verdict']}"
              + (f"  ({r['note']})" if r["note"] else ""))
    if result.whales:
        print("best whales:")
        for w in result.whales[:5]:
            print(f"  {w['rank']:>3}. {w['whale_id']:<12} via {w['best_image']:<24} score {w['score']:.3f}  "
                  f"P {report.fmt(w['probability'], '.2f')}  ({w['images_verified']}/{w['images']} images verify)")
    print(f"results: {', '.join(map(str, tables))}")
    print(f"review page: {page} (decisions: Same / Different / Not sure, exported as a CSV for "
          f"whalematch apply-decisions DECISIONS.csv --metadata CATALOGUE.csv --new-photos "
          f"{shlex.quote(str(query.path.parent.resolve()))})")
    return 0
