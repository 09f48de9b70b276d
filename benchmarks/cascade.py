"""Shortlist-cascade benchmark on the labelled development scenarios.

    python -m benchmarks.cascade [--data-dir data/dev] [--labels data/dev_labels.csv] [--cache-dir DIR]
        [--preset disk-mnn] [--stage2 lightglue|none|loftr] [--global-descriptor auto|none|mean-disk|...]
        [--queries-per-scenario N] [--k0 5,10,20,40,60] [--k1 20,40,60,all] [--k2 0,3,5,10]
        [--timing-budget SECONDS] [--append FILE]

One pass of the cascade with nothing cut (stage 1 verifies every candidate, stage
2 re-scores each query's top max(--k2)) gives every stage's scores; the tables
are then computed for each K from those scores (a K smaller than the pass's is
exactly its prefix; the few stage-2 pairs a smaller K1 brings in are computed
on demand). Per scenario type it prints:

1. recall of the true matches that survive each stage: stage 0's top K (what
   stage 1 gets), stage 1's top K (what stage 2 gets, K1 = all), the final
   top 20 (the submission), with chance (K / database size) beside stage 0's;
2. mAP@20 of each stage's ranking: stage 0 alone, stage 1 (exhaustive), and the
   final cascade ranking for each (K1, K2);
3. per (K1, K2): the pairs each stage processes, the share of the pairs an
   exhaustive expensive matcher would take, and the time at the rates measured.

``--timing-budget S`` also runs the main job (``matcher.challenge.run`` with that budget,
as main.py does) with the features cached and a fresh pair store, and prints the
planner's projected run time against the actual one.

Targets (printed, not asserted): the final mAP@20 at least that of exhaustive
stage 1 at a fraction of the expensive matcher's pairs; projected within 15% of
actual.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from matcher import config, presets
from matcher.cascade import CascadeSettings
from matcher.cascade.stages import build_stage2
from matcher.challenge import layout, submission
from matcher.challenge.evaluate import LABEL_COLUMNS, scenario_of_queries
from matcher.challenge.metric import mean_average_precision
from matcher.challenge.run import run, submission_rows
from matcher.challenge.submission import SUBMISSION_COLUMNS, TOP_K
from matcher.engine import Engine
from matcher.errors import WhaleMatchError
from matcher.io.tables import read_csv
from matcher.timing import Deadline

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("cascade")


def ks(text: str) -> list[int | None]:
    return [None if t.strip() == "all" else int(t) for t in text.split(",") if t.strip()]


def build_engine(args, cache_dir: Path):
    """The engine, and the stage-2 matcher the cascade will use (None when --stage2 none)."""
    engine = Engine(args.preset, cache_dir, args.device, args.workers, progress=not args.quiet)
    stage2 = build_stage2(engine, args.stage2)
    if args.stage2 not in (None, "", "none") and stage2 is None:
        raise WhaleMatchError(f"stage 2 ({args.stage2}) cannot be built here (see the warning above)")
    return engine, stage2


def settings(args, **kw) -> CascadeSettings:
    return CascadeSettings(stage2=args.stage2, global_descriptor=args.global_descriptor, **kw)


def stage0_name(args, engine) -> str:
    return presets.default_global(engine.conf) if args.global_descriptor == "auto" else args.global_descriptor


def subsample(challenge, n: int | None):
    if n:
        for sc in challenge.scenarios:
            sc.queries = sc.queries.iloc[:n].reset_index(drop=True)
    return challenge


def submission_for(result, k1: int, k2: int, order: str = "final", mode: str = "max") -> pd.DataFrame:
    rows = []
    for qid, q in result.queries.items():
        if order == "stage0":
            ranked = [(q.candidates[q.usable[p]], float(q.s0[p])) for p in q.order0][:TOP_K]
            ranked = [(d, max(0.0, min(1.0, s))) for d, s in ranked]
        else:
            ranked = result.final_ranking(q, k1, k2, TOP_K, mode)
        rows.extend((qid, d, s) for d, s in ranked)
    return pd.DataFrame(rows, columns=SUBMISSION_COLUMNS)


def ensure_stage2(result, stage2, k1: int, k2: int) -> int:
    """Compute the stage-2 verdicts a (k1, k2) cascade needs that the pass did not; returns how many."""
    missing = set()
    for q in result.queries.values():
        n1 = min(k1, len(q.order0))
        order1 = result.stage1_order(q, n1)
        missing.update(int(c) for c in q.pair_codes[order1[:k2]] if int(c) not in result.stage2)
    if missing and stage2 is not None:
        n = len(result.shas)
        got = stage2({(result.shas[c // n], result.shas[c % n]) for c in missing})
        for c in missing:
            v = got[(result.shas[c // n], result.shas[c % n])]
            result.stage2[c] = (float(v["score"]), float(v["strength"]))
    return len(missing)


def stage_pairs(result, k1: int, k2: int) -> tuple[int, int]:
    p1, p2 = set(), set()
    for q in result.queries.values():
        n1 = min(k1, len(q.order0))
        p1.update(int(c) for c in q.pair_codes[q.order0[:n1]])
        order1 = result.stage1_order(q, n1)
        p2.update(int(c) for c in q.pair_codes[order1[:k2]])
    return len(p1), len(p2)


def recall_table(result, labels, qtypes, k0s, k2_final) -> pd.DataFrame:
    relevant = labels.groupby("query_id")["database_image_id"].apply(set).to_dict()
    rows = []
    for qid, q in result.queries.items():
        rel = relevant.get(qid, set())
        if not rel:
            continue
        order0 = [q.candidates[q.usable[p]] for p in q.order0]
        order1 = [q.candidates[q.usable[p]] for p in result.stage1_order(q, len(q.order0))]
        final = [d for d, _ in result.final_ranking(q, len(q.order0), k2_final, TOP_K)]
        row = {"type": qtypes[qid], "n_rel": len(rel)}
        for k in k0s:
            row[f"s0@{k}"] = len(rel & set(order0[:k]))
            row[f"chance@{k}"] = len(rel) * min(1.0, k / max(1, len(q.candidates)))
        for k in k0s:
            row[f"s1@{k}"] = len(rel & set(order1[:k]))
        row["final@20"] = len(rel & set(final))
        rows.append(row)
    df = pd.DataFrame(rows)
    cols = [c for c in df.columns if c not in ("type", "n_rel")]
    out = df.groupby("type", sort=False)[cols + ["n_rel"]].sum()
    out.loc["overall"] = df[cols + ["n_rel"]].sum()
    return out[cols].div(out["n_rel"], axis=0)


def map_by_type(sub, labels, qtypes) -> pd.Series:
    _, ap = mean_average_precision(sub, labels)
    t = pd.Series(qtypes).reindex(ap.index)
    out = ap.groupby(t, sort=False).mean()
    out.loc["overall"] = ap.mean()
    return out


def timing_run(args, challenge, budget: float) -> str:
    """The main job with a fresh pair store (features and global descriptors reused): projected vs actual."""
    tmp = Path(tempfile.mkdtemp(prefix="cascade-timing-"))
    try:
        for sub in ("features", "global"):
            if (args.cache_dir / sub).is_dir():
                (tmp / sub).symlink_to((args.cache_dir / sub).resolve())
        start = time.perf_counter()
        deadline = Deadline(budget, start=start)
        engine, _ = build_engine(args, tmp)
        result = run(challenge, engine, settings(args, budget_s=budget, k2_max=args.k2_max), deadline)
        rows = submission_rows(challenge, result)
        submission.validate(rows, challenge.expected())
        actual = time.perf_counter() - start
        plan = result.plan
        projected = plan.first_projection_s or plan.projected_s
        err = (projected - actual) / actual
        return (f"timing run, budget {budget:.0f} s, fresh pair store: plan K1={plan.k1} K2={plan.k2}, "
                f"{plan.pairs1} + {plan.pairs2} pairs; projected {projected:.0f} s, actual {actual:.0f} s "
                f"({err:+.0%}); stage times {', '.join(f'{k} {v:.0f}s' for k, v in result.seconds.items())}; "
                f"cut: {', '.join(result.cut) or 'nothing'}; valid submission of {len(rows)} rows")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fmt(df: pd.DataFrame) -> str:
    return df.to_string(float_format=lambda x: f"{x:.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=presets.DEFAULT_PIPELINE, choices=sorted(presets.PIPELINES))
    p.add_argument("--data-dir", type=Path, default=REPO / "data" / "dev")
    p.add_argument("--labels", type=Path, default=REPO / "data" / "dev_labels.csv")
    p.add_argument("--cache-dir", type=Path, default=config.default_cache_dir())
    p.add_argument("--device", default=config.env("DEVICE"))
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--stage2", default="lightglue", help="expensive matcher to measure (none: stages 0 and 1 only)")
    p.add_argument("--global-descriptor", default="auto")
    p.add_argument("--queries-per-scenario", type=int, default=None,
                   help="only the first N queries of each scenario (stage 2 on a CPU is slow)")
    p.add_argument("--k0", type=ks, default=ks("5,10,20,40,60"), help="stage-0 shortlist sizes for recall")
    p.add_argument("--k1", type=ks, default=ks("20,40,60,all"), help="K1 values of the cascade grid")
    p.add_argument("--k2", type=ks, default=ks("0,3,5,10"), help="K2 values of the cascade grid")
    p.add_argument("--k2-max", type=int, default=CascadeSettings.k2_max)
    p.add_argument("--stage2-modes", type=lambda t: t.split(","), default=["sum", "replace"],
                   help="other orders of stage 2's candidates to score besides 'max' "
                        "(see matcher.cascade.ranking.final_ranking)")
    p.add_argument("--pair-ms", type=lambda t: [float(x) for x in t.split(",")], default=None,
                   help="ms per pair of stages 1 and 2 for the time estimates when their pairs are all cached "
                        "(e.g. 7,1900: what a fresh run measured)")
    p.add_argument("--timing-budget", type=float, default=None)
    p.add_argument("--append", type=Path, default=None, help="append the report to this Markdown file")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    config.setup_logging(False)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    try:
        challenge = subsample(layout.load(args.data_dir), args.queries_per_scenario)
        labels = read_csv(args.labels, LABEL_COLUMNS)[list(LABEL_COLUMNS)]
        qinfo = scenario_of_queries(labels, args.data_dir)
        asked = {qid for sc in challenge.scenarios for qid in sc.queries["query_id"]}
        labels = labels[labels["query_id"].isin(asked)]
        qtypes = dict(zip(qinfo["query_id"], qinfo["scenario_type"].where(qinfo["scenario_type"] != "",
                                                                          qinfo["scenario"])))
        engine, stage2 = build_engine(args, args.cache_dir)
        k2_pass = max(k for k in args.k2 if k is not None)
        t0 = time.perf_counter()
        result = run(challenge, engine, settings(args, k1=None, k2=k2_pass))
        wall = time.perf_counter() - t0
        dbmax = max(len(q.order0) for q in result.queries.values())
        nq = len(result.queries)
        all_pairs = stage_pairs(result, dbmax, 0)[0]  # distinct query-candidate pairs
        c1 = result.seconds.get("stage1", 0) / max(1, result.pairs["stage1"]) if result.pairs["stage1"] else None
        c2 = result.seconds.get("stage2", 0) / max(1, result.pairs["stage2"]) if result.pairs["stage2"] else None
        given = (args.pair_ms or [None, None]) + [None]
        c1 = c1 if c1 is not None or given[0] is None else given[0] / 1e3
        c2 = c2 if c2 is not None or given[1] is None else given[1] / 1e3
        say(f"## Shortlist cascade on {args.data_dir.name}: {nq} queries, databases up to {dbmax} images; "
            f"preset {args.preset}, stage 0 {stage0_name(args, engine) if result.bands[0] else 'off'}, "
            f"stage 2 {stage2.name if stage2 else 'off'}; {engine.device}, {os.cpu_count()} cores")
        say(f"pass: {wall:.0f} s; computed now: stage 1 {result.pairs['stage1']} pairs "
            f"({'%.1f ms/pair' % (1e3 * c1) if c1 else 'none: all cached'}), stage 2 {result.pairs['stage2']} pairs "
            f"({'%.0f ms/pair' % (1e3 * c2) if c2 else 'none'}); stage 0 {result.seconds.get('stage0', 0):.1f} s")
        say()
        say("### Recall of the true matches that reach the next stage (fraction of true pairs)")
        say("s0@K: in stage 0's top K (chance@K beside it); s1@K: in stage 1's top K with K1 = all; "
            "final@20: in the submission")
        say("```")
        say(fmt(recall_table(result, labels, qtypes, [k for k in args.k0 if k], k2_pass)))
        say("```")

        grid = []
        k1s = sorted({min(k or dbmax, dbmax) for k in args.k1})
        k2s = sorted({k for k in args.k2 if k is not None})
        extra = 0
        for k1 in k1s:
            for k2 in k2s:
                extra += ensure_stage2(result, stage2, k1, min(k2, k1))
        maps = {"stage 0 alone": map_by_type(submission_for(result, 0, 0, "stage0"), labels, qtypes)}
        for k1 in k1s:
            for k2 in k2s:
                name = f"K1={k1 if k1 < dbmax else 'all'} K2={k2}"
                maps[name] = map_by_type(submission_for(result, k1, min(k2, k1)), labels, qtypes)
                row_sum = {}
                if k2 and stage2 is not None:
                    for mode in args.stage2_modes:
                        maps[f"{name} {mode}"] = map_by_type(submission_for(result, k1, min(k2, k1), mode=mode),
                                                             labels, qtypes)
                        row_sum[f"mAP@20 {mode}"] = maps[f"{name} {mode}"]["overall"]
                n1, n2 = stage_pairs(result, k1, min(k2, k1))
                t = (n1 * (c1 or 0)) + (n2 * (c2 or 0))
                grid.append({"cascade": name, "stage1 pairs": n1, "stage2 pairs": n2,
                             "stage2 share": n2 / all_pairs, "time s (est.)": t, "mAP@20": maps[name]["overall"],
                             **row_sum})
        say()
        say("### mAP@20 per scenario type: stage 0 alone, then the cascade (K2=0: stage 1's ranking; "
            "stage 2's candidates ordered by the max of both stages' strengths, or by their sum, or by stage 2 alone)")
        say("```")
        say(fmt(pd.DataFrame(maps)))
        say("```")
        say()
        say(f"### Work per cascade (all pairs: {all_pairs}; stage-2 pairs computed for smaller K1: {extra})")
        say("```")
        say(pd.DataFrame(grid).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        say("```")
        base = maps["K1=all K2=0"]["overall"]
        best = max((g for g in grid if g["stage2 pairs"] > 0), key=lambda g: g["mAP@20"], default=None)
        if best:
            say(f"exhaustive stage 1: mAP@20 {base:.4f}; best cascade (max) {best['cascade']}: {best['mAP@20']:.4f} "
                f"({best['mAP@20'] - base:+.4f}) with the expensive matcher on {best['stage2 share']:.1%} of the pairs")
        if args.timing_budget:
            say()
            say(timing_run(args, challenge, args.timing_budget))
    except WhaleMatchError as exc:
        log.error("%s", exc)
        return 2
    if args.append:
        with open(args.append, "a", encoding="utf-8") as fh:
            fh.write("\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
