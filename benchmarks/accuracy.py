"""Accuracy benchmark: run the engine on the development scenarios and score it per scenario type.

    python -m benchmarks.accuracy [--preset disk-mnn] [--data-dir data/dev] [--labels data/dev_labels.csv]
                              [--cache-dir DIR] [--score strength|inliers|inlier-ratio]
                              [--set STAGE.KEY=VALUE ...] [--offline-rerank] [--output FILE]
                              [--append benchmarks/RESULTS.md --label TEXT]
                              [main.py options, e.g. --stage2 none --time-budget none]

The ranking is ``main.py``'s own: its ``main()`` runs in this process with the options
above and any option this script does not know (passed through unchanged), and its
submission file is scored. Two options evaluate levers that are not (yet) in the
pipeline, on top of the same cached stage-1 verdicts (DISK + MNN + RANSAC of every
query-database pair, computed where missing):

- ``--score`` ranks each query's candidates by another function of the pair verdict
  (``strength``, the engine's own score; with it and ``--rerank-mode none``, the ranking
  is main.py's with ``--stage2 none --time-budget none``).
- ``--offline-rerank`` also verifies every pair of database images within each scenario and
  re-ranks with :func:`matcher.cascade.rerank.rerank` (uses only the query and its own scenario's
  database, as the challenge allows).

``--set stage.key=value`` (repeatable) runs the preset with a setting changed, under a
preset name that says so (``disk-mnn[verifier.threshold=3]``) and with cache entries of its
own (:func:`matcher.presets.variant`): a setting's lever is measured through main.py's
own code path without editing ``matcher/presets.py``.

It prints mAP@20 and top-1 per scenario type and overall (mean over queries, as in the
challenge), with the run time and what was computed afresh, and with ``--append``
appends the same table, labelled, to a Markdown file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import main as entrypoint
from matcher import config, presets
from matcher.cascade import rerank as reranking
from matcher.cascade.ranking import rank_by_score
from matcher.challenge import layout, submission
from matcher.challenge.evaluate import LABEL_COLUMNS, read_submission, scenario_of_queries, score_by_type, subset_dir
from matcher.challenge.submission import SUBMISSION_COLUMNS
from matcher.engine import Engine, canonical
from matcher.errors import WhaleMatchError
from matcher.io.tables import read_csv
from matcher.pairs.ransac import score_from_strength

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("eval")


# --- score functions of one verdict (n_matches, n_inliers, strength, score, model) ---------------


def _strength(v: dict) -> float:
    return float(v["strength"])


def _inliers(v: dict) -> float:
    return float(v["n_inliers"])


def _inlier_ratio(v: dict) -> float:
    """Inliers weighted by the fraction of tentative matches they make up (chance matches are many and loose)."""
    n, k = v["n_matches"], v["n_inliers"]
    return float(k * k / n) if n else 0.0


SCORE_FUNCTIONS = {"strength": _strength, "inliers": _inliers, "inlier-ratio": _inlier_ratio}


# --- ranking -----------------------------------------------------------------------------------------


def rank_with_levers(challenge, engine: Engine, score_name: str, rerank_opts: dict | None):
    """The submission with another score function and/or database re-ranking, from the engine's verdicts."""
    shas, _ = engine.prepare(*challenge.image_paths(challenge.image_ids()))  # the features main.py cached
    candidates = {qid: (qimg, [d for d in database if d != qimg])
                  for qid, qimg, _, database in challenge.query_tasks()}
    score_fn = SCORE_FUNCTIONS[score_name]
    pairs = {canonical(shas[q], shas[c]) for q, cs in candidates.values() if q in shas for c in cs if c in shas}
    db_pairs = set()
    if rerank_opts is not None:
        for sc in challenge.scenarios:
            db = [d for d in sc.database if d in shas]
            db_pairs.update(canonical(shas[a], shas[b]) for i, a in enumerate(db) for b in db[i + 1 :])
        log.info("re-ranking: %d database-database pairs", len(db_pairs - pairs))
    t0 = time.perf_counter()
    verdicts = engine.verdicts(pairs | db_pairs)
    engine.stats.seconds["verify-levers"] = time.perf_counter() - t0

    def score(a: str, b: str) -> float:
        if a not in shas or b not in shas:
            return 0.0
        return score_from_strength(score_fn(verdicts[canonical(shas[a], shas[b])]), engine.conf["verifier"])

    rows, expected = [], {}
    for sc in challenge.scenarios:
        database = set(sc.database)
        db_scores = None
        if rerank_opts is not None:
            index = {d: i for i, d in enumerate(sc.database)}
            n = len(sc.database)
            db_scores = np.zeros((n, n))
            for i, a in enumerate(sc.database):
                for b in sc.database[i + 1 :]:
                    db_scores[i, index[b]] = db_scores[index[b], i] = score(a, b)
        for qid, qimg in sc.queries.itertuples(index=False):
            expected[qid] = (qimg, database)
            _, cands = candidates[qid]
            q_scores = np.array([score(qimg, c) for c in cands])
            if db_scores is not None and len(cands):
                idx = [index[c] for c in cands]
                q_scores = reranking.rerank(q_scores, db_scores[np.ix_(idx, idx)], **rerank_opts)
            scores = dict(zip(cands, q_scores.tolist()))
            rows += [(qid, c, s) for c, s in rank_by_score(qimg, cands, scores, top_k=submission.TOP_K)]
    return pd.DataFrame(rows, columns=SUBMISSION_COLUMNS), expected


# --- scoring and reporting ---------------------------------------------------------------------------


def markdown(table: pd.DataFrame) -> str:
    lines = ["| scenario type | queries | mAP@20 | top-1 |", "|---|---:|---:|---:|"]
    for r in table.itertuples(index=False):
        name = f"**{r.type}**" if r.type == "overall" else r.type
        lines.append(f"| {name} | {r.queries} | {r.map20:.4f} | {r.top1:.4f} |")
    return "\n".join(lines)


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "matcher", "main.py"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+local changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def describe(args, passthrough: list[str], seconds: float, computed: str) -> str:
    offline = args.score != "strength" or args.offline_rerank  # else main.py ranked, with its own --pair-score
    levers = [f"offline score `{args.score}`" if offline else "main.py's pair score"]
    if args.offline_rerank:
        hops = "until convergence" if args.rerank_hops is None else args.rerank_hops
        graph = "all candidates" if args.rerank_top is None else f"the top {args.rerank_top}"
        levers.append(f"`--offline-rerank` ({args.rerank_mode}, weight {args.rerank_weight}, hops {hops}, "
                      f"graph of {graph})")
    if args.scenarios:
        levers.append(f"only scenarios `{args.scenarios}`")
    main_opts = f"main.py options `{' '.join(passthrough)}`" if passthrough else "main.py defaults"
    return (
        f"preset `{args.preset}`, {main_opts}, {', '.join(levers)}; {os.cpu_count()} CPU cores, "
        f"{platform.machine()}; commit {git_revision()}; {dt.date.today().isoformat()}\n\n"
        f"Run time {seconds:.0f} s ({computed})."
    )


class _Lines(logging.Handler):
    """Keeps the messages of one logger (main.py's summary lines)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--preset", default=os.environ.get("PRESET") or presets.DEFAULT_PIPELINE,
                   choices=sorted(presets.PIPELINES))
    p.add_argument("--data-dir", type=Path, default=REPO / "data" / "dev")
    p.add_argument("--labels", type=Path, default=REPO / "data" / "dev_labels.csv")
    p.add_argument("--cache-dir", type=Path, default=config.default_cache_dir())
    p.add_argument("--device", default=config.env("DEVICE"))
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="run the preset with this setting changed (repeatable), e.g. verifier.threshold=3 or "
                        "extractor.max_keypoints=2048; a lever measured without editing matcher/presets.py")
    p.add_argument("--score", default="strength", choices=sorted(SCORE_FUNCTIONS),
                   help="score function of a stage-1 verdict (strength: the engine's own)")
    p.add_argument("--offline-rerank", action="store_true",
                   help="re-rank from the stored verdicts with these --rerank-* settings (main.py's own re-ranking "
                        "is its --rerank option, passed through)")
    p.add_argument("--rerank-mode", default=reranking.DEFAULT_MODE, choices=sorted(reranking.MODES))
    p.add_argument("--rerank-weight", type=float, default=reranking.DEFAULT_WEIGHT)
    p.add_argument("--rerank-hops", type=lambda t: None if t in ("none", "all") else int(t),
                   default=reranking.DEFAULT_HOPS, help="database steps of a path (none: until convergence)")
    p.add_argument("--rerank-top", type=lambda t: None if t in ("none", "all") else int(t), default=None,
                   help="re-rank within each query's top N candidates only (none: the whole database)")
    p.add_argument("--scenarios", default=None,
                   help="comma-separated scenario ids or types to run (default: all); for quick pilots")
    p.add_argument("--output", type=Path, default=None, help="keep main.py's submission CSV here")
    p.add_argument("--append", type=Path, default=None, help="append the table to this Markdown file")
    p.add_argument("--label", default=None, help="heading of the appended table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_known_args(argv)


def main(argv=None) -> int:
    args, passthrough = parse_args(argv)
    config.setup_logging(False)
    try:
        args.preset = presets.variant(args.preset, args.set)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    lines = _Lines()
    logging.getLogger("main").addHandler(lines)
    try:
        with tempfile.TemporaryDirectory(prefix="whalematch-eval-") as tmp:
            labels = read_csv(args.labels, LABEL_COLUMNS)[list(LABEL_COLUMNS)]
            queries = scenario_of_queries(labels, args.data_dir)
            data_dir = args.data_dir
            if args.scenarios:
                wanted = set(args.scenarios.split(","))
                chosen = queries["scenario"].isin(wanted) | queries["scenario_type"].isin(wanted)
                keep = set(queries["scenario"][chosen])
                if not keep:
                    raise WhaleMatchError(f"--scenarios {args.scenarios}: no such scenario id or type")
                (Path(tmp) / "data").mkdir()
                data_dir = subset_dir(args.data_dir, keep, Path(tmp) / "data")
                queries = queries[queries["scenario"].isin(keep)]
                labels = labels[labels["query_id"].isin(set(queries["query_id"]))]
            output = args.output or Path(tmp) / "submission.csv"
            cmd = ["--data-dir", str(data_dir), "--output", str(output), "--preset", args.preset,
                   "--cache-dir", str(args.cache_dir), *passthrough]
            if args.device:
                cmd += ["--device", args.device]
            if args.workers:
                cmd += ["--workers", str(args.workers)]
            if args.quiet:
                cmd.append("--quiet")
            start = time.perf_counter()
            rc = entrypoint.main(cmd)  # main.py's own code path, in this process
            if rc != 0:
                log.error("main.py failed (exit status %d)", rc)
                return rc
            sub = read_submission(output)
            computed = next((m for m in lines.messages if " images (" in m), "main.py gave no summary")
            if args.score != "strength" or args.offline_rerank:
                challenge = layout.load(data_dir)
                engine = Engine(args.preset, args.cache_dir, args.device, args.workers, not args.quiet)
                opts = ({"mode": args.rerank_mode, "weight": args.rerank_weight, "hops": args.rerank_hops,
                         "top": args.rerank_top}
                        if args.offline_rerank else None)
                sub, expected = rank_with_levers(challenge, engine, args.score, opts)
                submission.validate(sub, expected)
                computed += f"; levers: {engine.stats.summary()}"
            seconds = time.perf_counter() - start
    except WhaleMatchError as exc:
        log.error("%s", exc)
        return 2
    finally:
        logging.getLogger("main").removeHandler(lines)
    table = score_by_type(sub, labels, queries)
    header = describe(args, passthrough, seconds, computed)
    print(header)
    print()
    print(markdown(table))
    if args.append:
        label = args.label or f"{args.preset}" + (f", score {args.score}" if args.score != "strength" else "") + (
            ", re-ranked" if args.offline_rerank else "")
        with open(args.append, "a", encoding="utf-8") as fh:
            fh.write(f"\n### {label}\n\n{header}\n\n{markdown(table)}\n")
        print(f"\nappended to {args.append}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
