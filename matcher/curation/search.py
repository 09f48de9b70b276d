"""Search: a new photo against a catalogue, its images (and whales) ranked, the best drawn, tables and page written."""

from __future__ import annotations

import os
import shlex
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import WhaleMatchError
from ..io.catalogue import Photo, apply_subset, load_catalogue, resolve_photo
from . import catalogue_search, drawing, new_whale, priors, report, whale_evidence
from .curator import RESULT_COLUMNS, Curator, PairTask, from_options
from .new_whale import Judge
from .review_page import Review

CANDIDATE_COLUMNS = ["rank", "image_b", "whale_id"] + [c for c in RESULT_COLUMNS
                                                       if c not in ("image_a", "path_a", "viewpoint_a")]


def rank_rows(rows: list[dict], curator: Curator) -> list[dict]:
    """Rows with a verdict, best first (confidence, strength, then ids), each given its rank."""
    ok = [r for r in rows if not r.get("error")]
    ok.sort(key=lambda r: (-curator.confidence(r), -(r["strength"] or 0.0), r["image_b"], r["image_a"]))
    for i, r in enumerate(ok, 1):
        r["rank"] = i
    return ok + [r for r in rows if r.get("error")]


def whale_table(ranking: pd.DataFrame, rows: list[dict], whale_of: dict[str, str], curator: Curator,
                threshold: float = 0.5) -> list[dict]:
    """The whales of a ranking (:func:`.whale_evidence.whale_ranking`, best first by their evidence) as rows: the
    evidence and its score, the best image (the whale's strongest pair, with its P and inliers), how many of the
    whale's images were compared and how many verify (P, or the score without a calibration, at least
    ``threshold``)."""
    labelled = [r for r in rows if not r.get("error") and whale_of.get(r["image_b"])]
    counts: Counter = Counter(whale_of[r["image_b"]] for r in labelled)
    verified: Counter = Counter(whale_of[r["image_b"]] for r in labelled if curator.confidence(r) >= threshold)
    by_image = {r["image_b"]: r for r in labelled}
    out = []
    for w in ranking.to_dict("records"):
        r = by_image[w["best_candidate"]]
        out.append({"rank": int(w["rank"]), "whale_id": w["whale"], "best_image": r["image_b"],
                    "probability": r["probability"], "evidence": round(float(w["evidence"]), 3),
                    "score": round(float(w["score"]), 4), "n_inliers": r["n_inliers"], "images": counts[w["whale"]],
                    "images_verified": verified[w["whale"]], "picture": r.get("picture", ""),
                    "note": r.get("note", "")})
    return out


def pictured(rows: list[dict], whales: list[dict], top: int) -> list[dict]:
    """The ranked rows that get a match picture: the best ``top`` images, and the best image of each of the
    best ``top`` whales."""
    ok = [r for r in rows if not r.get("error")]
    chosen = ok[: max(0, top)]
    by_image = {r["image_b"]: r for r in ok}
    chosen += [by_image[w["best_image"]] for w in whales[: max(0, top)] if by_image[w["best_image"]] not in chosen]
    return chosen


@dataclass
class SearchResult:
    query: Photo
    tasks: list[PairTask]
    rows: list[dict]  # ranked candidates (see CANDIDATE_COLUMNS), errors last
    whales: list[dict]  # see whale_table; empty without whale ids
    whale_of: dict[str, str]
    ranking: pd.DataFrame | None = None  # the whale ranking (:mod:`.whale_evidence`) the whales come from
    p_new_whale: float | None = None  # P(new whale) of the new photo alone (None: no model, or no whale ids)

    @property
    def identical(self) -> list[str]:
        """Catalogue images that are the very file of the query."""
        return [r["image_b"] for r in self.rows if not r.get("error") and "identical files" in r["note"]]


def search(cur: Curator, query: Photo, tasks: list[PairTask], catalogue: list[Photo], top: int, images_dir: Path,
           outliers: str = "faint", judge: Judge | None = None) -> SearchResult:
    """Verify the tasks, rank images and whales (and P(new whale) with a ``judge``), and draw the pictures of
    :func:`pictured` into ``images_dir``."""
    rows = rank_rows(cur.verify(tasks), cur)
    by_id = {t.b.id: t for t in tasks}
    whale_of = {p.id: p.whale_id for p in catalogue if p.whale_id}
    pairs = whale_evidence.pairs_table(rows, whale_of) if whale_of else None
    ranking = whale_evidence.whale_ranking(pairs) if whale_of else None
    whales = whale_table(ranking, rows, whale_of, cur) if whale_of else []
    cur.draw_many([(by_id[r["image_b"]], r) for r in pictured(rows, whales, top)], images_dir, outliers)
    pictures = {r["image_b"]: r.get("picture", "") for r in rows if not r.get("error")}
    for w in whales:
        w["picture"] = pictures.get(w["best_image"], "")
    for r in rows:
        r["whale_id"] = whale_of.get(r["image_b"], "")
    p_new = judge.probability(pairs) if judge is not None and pairs is not None else None
    return SearchResult(query, tasks, rows, whales, whale_of, ranking, p_new)


def write_tables(result: SearchResult, out: Path) -> list[Path]:
    """``candidates.csv`` and, with whale ids, ``whales.csv``; the files written."""
    paths = [report.write_csv(pd.DataFrame(result.rows).reindex(columns=CANDIDATE_COLUMNS), out / "candidates.csv")]
    if result.whales:
        paths.append(report.write_csv(pd.DataFrame(result.whales).drop(columns=["picture"]), out / "whales.csv"))
    return paths


def summary_lines(cur: Curator, result: SearchResult, catalogue_source: Path,
                  found: catalogue_search.Candidates | None = None, judge: Judge | None = None) -> list[str]:
    """The page's summary: what was searched (and how the candidates were chosen), duplicates of the query,
    P(new whale), the base rates P(same whale) and P(new whale) assume and why (see :mod:`.priors`), the settings."""
    identical = result.identical
    p_new = ([f"P(new whale) = {result.p_new_whale:.2f}: the probability that none of the catalogue's whales is the "
              "one photographed (decide it on the first table)"] if result.p_new_whale is not None else [])
    return [f"new photo {result.query.path}; {len(result.tasks)} catalogue images from {catalogue_source}"
            + (f": {found.source}" if found is not None else ""),
            *([f"the new photo is already in the catalogue as {', '.join(identical)} (identical file)"]
              if identical else []),
            *p_new,
            cur.prior_line(),
            *([judge.line()] if judge is not None else []),
            *cur.describe(prior=False)]


def labelled_same(rows: list[dict]) -> int:
    """Candidates whose verdict reads same whale or probably same whale."""
    return sum(1 for r in rows if not r.get("error") and r.get("verdict") in ("same whale", "probably same whale"))


def decided_as(photo: Photo) -> str:
    """How a page's decisions name a new photo: its file's absolute path, which apply-decisions finds from
    anywhere (an id from a new photos' CSV, or a path relative to where the search ran, would not be)."""
    return os.path.abspath(photo.path)


def new_whale_table(results: list[SearchResult], page: Path, sighting: str = "",
                    p_new_whale: float | None = None) -> report.Table:
    """The page's question "is this a new whale?": one row for the new photo or, with ``sighting``, one for the
    sighting's photos together (exported once per photo, so apply-decisions gives them one new id)."""
    if sighting:
        best = max((r.whales[0] for r in results if r.whales), key=lambda w: w["score"], default=None)
        rows = [{"photo": f"sighting {sighting} ({len(results)} photos)", "query": decided_as(results[0].query),
                 "photos": [decided_as(r.query) for r in results], "p_new_whale": p_new_whale,
                 "best_whale": best["whale_id"] if best else "", "best_score": best["score"] if best else None,
                 "sighting": sighting}]
    else:
        rows = [{"photo": r.query.id, "query": decided_as(r.query), "photos": [], "p_new_whale": r.p_new_whale,
                 "best_whale": r.whales[0]["whale_id"] if r.whales else "",
                 "best_score": r.whales[0]["score"] if r.whales else None, "sighting": ""} for r in results]
    return report.Table(
        "New whale?", [report.Column("photo", "new photo"), report.Column("p_new_whale", "P(new whale)", "prob"),
                       report.Column("best_whale", "best whale"), report.Column("best_score", "its score", "num")],
        rows, table_id="new-whale",
        note="New whale: none of the catalogue's whales is the one photographed (apply-decisions gives it a new "
             "id); Not new: decide which whale below",
        review=Review("photo", query="query", sighting="sighting", photos="photos", new_whale=True))


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
    if result.p_new_whale is not None or whales:
        tables.append(new_whale_table([result], page))
    if whales:
        tables.append(report.Table(
            "Whales", [report.Column("rank", "#", "int"), report.Column("whale_id", "whale"),
                       report.Column("best_image", "best image"),
                       report.Column("picture", "best match picture", "picture"),
                       report.Column("n_inliers", "inliers", "int"), report.Column("score", "whale score", "num"),
                       report.Column("probability", "P(same) of the best image", "prob"),
                       report.Column("images", "images compared", "int"),
                       report.Column("images_verified", "images with P or score >= 0.5", "int")],
            report.pictures_relative(whales[: max(top, 20)], page), table_id="whales",
            note=f"each whale scored by {whale_evidence.rule()}; a decision here is on its best image, and shows on "
                 "that image's row below too",
            review=Review("best_image", "whale_id", query_value=decided_as(result.query))))
    cand_cols = [c for c in report.PAIR_COLUMNS if c.key != "image_a"]
    cand_cols.insert(2, report.Column("whale_id", "whale"))
    tables.append(report.Table("Catalogue images", cand_cols, report.pictures_relative(rows[: max(top, 50)], page),
                               table_id="candidates",
                               note=f"best {min(len(rows), max(top, 50))} of {len(rows)}; pictures for the best "
                                    f"{top} (and for each listed whale's best image)",
                               review=Review("image_b", "whale_id", query_value=decided_as(result.query))))
    return report.write(report.Report(f"whalematch: candidates for {Path(result.query.id).name}", summary, tables,
                                      report.relative(query_pic, page), f"new photo: {result.query.id}"), page)


# --------------------------------------------------------------------------- the command


def catalogue_of(args) -> list[Photo]:
    """The catalogue the command searches (``--catalogue``, less what ``--subset`` leaves out)."""
    return apply_subset(load_catalogue(args.catalogue), args.subset)


def no_comparable(query: Photo, catalogue: list[Photo]) -> str:
    """What a search says when the catalogue holds no photo of the new photo's view."""
    views = sorted({p.viewpoint or "unknown" for p in catalogue})
    return (f"no catalogue image to compare with (views: {query.viewpoint or 'any'}): the catalogue holds "
            f"{', '.join(views)} views, so no whale of it can be proposed from this photo; if it shows a known whale, "
            "only a photo of a view the catalogue holds can show which")


def run(args, argv: list[str]) -> int:
    """A new photo against a catalogue: images and whales ranked, P(new whale), tables and page (several:
    :mod:`.batch`)."""
    catalogue = catalogue_of(args)
    query = resolve_photo(args.image, None)
    query = Photo(query.id, query.path, (args.viewpoint or "").lower())
    all_views = args.all_views or not args.viewpoint
    cur = from_options(args, args.calibration)
    found = catalogue_search.candidates(cur, catalogue, args.catalogue, args.k, args.exhaustive,
                                        args.per_whale or None)
    comparable = found.comparable_photos(query, all_views)
    if not comparable:
        raise WhaleMatchError(no_comparable(query, catalogue))
    print(f"candidates: {found.source}", file=sys.stderr)
    tasks = found.tasks(query, args.mirror, all_views)
    if query.id in cur.bad:
        raise WhaleMatchError(f"new photo unusable: {cur.bad[query.id]}")
    print(catalogue_search.plan_line(cur, query, tasks, len(comparable)), file=sys.stderr)
    sys.stderr.flush()
    cur.use_prior(priors.for_search(args.prior, comparable))
    judge = new_whale.judge_for(cur.engine.name, cur.engine.settings_key, args.new_whale_prior)
    result = search(cur, query, tasks, catalogue, args.top, args.out / "images", args.outliers, judge)
    tables = write_tables(result, args.out)
    page = write_page(cur, result, summary_lines(cur, result, args.catalogue, found, judge), args.top, args.out)
    print(cur.prior_line())
    print(f"best catalogue images for {query.id}:")
    for r in result.rows[: min(10, len(result.rows))]:
        if r.get("error"):
            break
        print(f"  {r['rank']:>3}. {r['image_b']:<24} {r['whale_id']:<12} inliers {r['n_inliers']:>4}  "
              f"score {r['score']:.3f}  P {report.fmt(r['probability'], '.2f')}  {r['verdict']}"
              + (f"  ({r['note']})" if r["note"] else ""))
    if result.whales:
        print(f"best whales (each scored by {whale_evidence.rule()}):")
        for w in result.whales[:5]:
            print(f"  {w['rank']:>3}. {w['whale_id']:<12} score {w['score']:.3f} (via {w['best_image']}, P "
                  f"{report.fmt(w['probability'], '.2f')}; {w['images_verified']}/{w['images']} images verify)")
    print(judge.line())
    if result.p_new_whale is not None:
        print(f"P(new whale) = {result.p_new_whale:.2f}: the probability that none of the catalogue's whales is "
              "the one photographed")
    print(f"results: {', '.join(map(str, tables))}")
    print(f"review page: {page} (decisions: Same / Different / Not sure / New whale, exported as a CSV for "
          f"whalematch apply-decisions DECISIONS.csv --metadata CATALOGUE.csv --new-photos "
          f"{shlex.quote(str(query.path.parent.resolve()))})")
    return 0
