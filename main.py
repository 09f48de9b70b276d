"""Submission entrypoint in the challenge's code-execution layout.

    python main.py [--data-dir DIR] [--output FILE] [--preset NAME] [--cache-dir DIR] [--time-budget SECONDS]

Reads DIR/query_scenarios.csv, DIR/metadata.csv and the query and database files they
name; writes one CSV with columns query_id,database_image_id,score (at most 20 rows per
query, best first). Candidates go through the shortlist cascade (stage 0 global
descriptor, stage 1 MNN + RANSAC, re-ranking with each scenario's database, stage 2 an
expensive matcher, off unless --stage2 names one), all sized to end within the time budget
(counted from the start of this script); the plan is logged. With --backend ray the features are
extracted and the pairs verified on a Ray cluster (this process still writes the caches and the
submission, which is the same as the local run's). An option whose help names $WHALEMATCH_<NAME>
takes its default from that environment variable.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the time budget counts from here, before the heavy imports

import argparse  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from matcher import config, presets  # noqa: E402
from matcher.cascade import STAGE2_FACTORIES, CascadeSettings  # noqa: E402
from matcher.cascade.ranking import STAGE2_MODES  # noqa: E402
from matcher.cascade.stages import parse_stage2  # noqa: E402
from matcher.challenge import layout, submission  # noqa: E402
from matcher.challenge.run import run, submission_rows  # noqa: E402
from matcher.engine import Engine  # noqa: E402
from matcher.errors import ConfigError, WhaleMatchError  # noqa: E402
from matcher.io.paths import os_error  # noqa: E402
from matcher.options import add_engine_options, choice  # noqa: E402
from matcher.timing import DEFAULT_BUDGET_S, Deadline  # noqa: E402

log = logging.getLogger("main")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default in its help."""


def packed_preset() -> str:
    """The preset named in a PRESET file beside main.py (written by ``make pack-submission``), else the default."""
    marker = Path(__file__).resolve().parent / "PRESET"
    name = marker.read_text().strip() if marker.is_file() else ""
    return name if name in presets.PIPELINES else presets.DEFAULT_PIPELINE


def budget_seconds(text: str) -> float | None:
    """Seconds of the time budget; ``none``/``inf``/``0`` for no limit (ValueError for anything else that is not
    a positive number: ``nan`` would trip the deadline at once)."""
    if str(text).strip().lower() in ("none", "inf", "0", ""):
        return None
    value = float(text)
    if math.isnan(value) or value < 0:
        raise ValueError("the time budget must be a positive number of seconds, or none")
    return None if math.isinf(value) else value


def optional_int(text: str | None) -> int | None:
    """A whole number, or None for ``auto`` (chosen by the planner)."""
    if text is None or str(text).strip() in ("", "auto"):
        return None
    value = int(text)
    if value < 0:
        raise ValueError("expected a whole number of at least 0, or auto")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The options, their defaults read from the environment (:class:`ConfigError` naming a bad variable)."""
    env, value = config.env, config.env_value
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path(env("DATA_DIR", config.DEFAULT_DATA_DIR)),
                   help="the challenge's data folder ($WHALEMATCH_DATA_DIR)")
    p.add_argument("--output", type=Path, default=Path(env("OUTPUT", config.DEFAULT_OUTPUT)),
                   help="the submission CSV to write ($WHALEMATCH_OUTPUT)")
    add_engine_options(p, packed_preset())
    p.add_argument("--time-budget", type=config.arg_type(budget_seconds),
                   default=value("TIME_BUDGET", budget_seconds, DEFAULT_BUDGET_S),
                   help="wall-clock seconds the run may take ('none' for no limit): the cascade's K are planned to "
                        "fit, and a guard stops the expensive stages if the run falls behind ($WHALEMATCH_TIME_BUDGET)")
    p.add_argument("--ranker", type=Path, default=env("RANKER"),
                   help="the ranker's file (--pair-score ranker, and auto where it won); default: "
                        "ranker-PRESET.json in $WHALEMATCH_WEIGHTS_DIR or weights/ ($WHALEMATCH_RANKER)")
    p.add_argument("--k1", type=config.arg_type(optional_int), default=value("K1", optional_int, None),
                   help="stage-0 candidates per query that stage 1 verifies; default: planned from the budget "
                        "($WHALEMATCH_K1)")
    p.add_argument("--k2", type=config.arg_type(optional_int), default=value("K2", optional_int, None),
                   help="stage-1 candidates per query that stage 2 re-scores; default: planned, at most --k2-max "
                        "($WHALEMATCH_K2)")
    p.add_argument("--k2-max", type=int, default=CascadeSettings.k2_max, help="stage 2's K at most")
    p.add_argument("--stage2", type=config.arg_type(parse_stage2), default=value("STAGE2", parse_stage2, "auto"),
                   help=f"expensive matcher re-scoring each query's top K2: auto (the preset's default: none so far), "
                        f"none, or {'|'.join(sorted(STAGE2_FACTORIES))}[:preset] (lightglue: LightGlue on the "
                        f"preset's features; loftr: needs its weights) ($WHALEMATCH_STAGE2)")
    p.add_argument("--stage2-mode", default=value("STAGE2_MODE", choice(STAGE2_MODES), "max"),
                   choices=list(STAGE2_MODES),
                   help="order of stage 2's candidates: the max or sum of both stages' strengths, or replace "
                        "($WHALEMATCH_STAGE2_MODE)")
    p.add_argument("--rerank", default=value("RERANK", choice(("database", "none")), "database"),
                   choices=["database", "none"],
                   help="database: also verify the pairs within each scenario's database and re-rank each query's "
                        "candidates with them; none: stage-1 scores only ($WHALEMATCH_RERANK)")
    p.add_argument("--rerank-top", type=config.arg_type(optional_int), default=value("RERANK_TOP", optional_int, None),
                   help="with --rerank database: the graph is the pairs among each query's top N stage-1 candidates "
                        "(auto or 0: every pair of the database) ($WHALEMATCH_RERANK_TOP)")
    globals_ = ["auto", *sorted(presets.GLOBAL_DESCRIPTORS)]
    p.add_argument("--global-descriptor", default=value("GLOBAL_DESCRIPTOR", choice(globals_), "auto"),
                   choices=globals_, help="stage-0 global descriptor ($WHALEMATCH_GLOBAL_DESCRIPTOR)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    try:
        parser = build_parser()
    except ConfigError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config.setup_logging(args.verbose)
    start = STARTED if argv is None else time.perf_counter()
    deadline = Deadline(args.time_budget if args.time_budget is not None else float("inf"), start=start)
    try:
        challenge = layout.load(args.data_dir)
        n_queries = sum(len(s.queries) for s in challenge.scenarios)
        log.info("%d scenarios, %d queries, %d images in metadata", len(challenge.scenarios), n_queries,
                 len(challenge.metadata))
        engine = Engine(args.preset, None if args.no_cache else args.cache_dir, args.device, args.workers,
                        progress=not args.quiet, backend=args.backend, ray_address=args.ray_address,
                        runtime=args.runtime)
        log.info("preset %s on %s (%s, network in %s); caches in %s; time budget %s", args.preset, engine.device,
                 engine.backend.label, engine.runtime, engine.cache.describe(),
                 "none" if args.time_budget is None else f"{args.time_budget:.0f} s")
        settings = CascadeSettings(k1=args.k1, k2=args.k2, k2_max=args.k2_max, budget_s=args.time_budget,
                                   stage2=args.stage2, stage2_mode=args.stage2_mode,
                                   global_descriptor=args.global_descriptor, rerank=args.rerank == "database",
                                   rerank_top=args.rerank_top or None,
                                   pair_score=args.pair_score, pair_model=args.pair_model, ranker=args.ranker)
        result = run(challenge, engine, settings, deadline, args.plan_nodes)
        sub, expected = submission_rows(challenge, result, settings.stage2_mode), challenge.expected()
        submission.write(sub, args.output, expected)
    except WhaleMatchError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:  # a file system refusal the checks above did not foresee: named, never a traceback
        log.error("%s", os_error(exc))
        return 2
    log.info("%s", engine.stats.summary())
    elapsed = time.perf_counter() - start
    log.info("wrote %d rows for %d queries to %s in %.1f s", len(sub), len(expected), args.output, elapsed)
    plan = result.plan
    if plan is not None and not plan.fixed:
        projected = plan.first_projection_s or plan.projected_s
        revised = (f"; revised with the measured rates to {plan.revised_projection_s:.0f} s "
                   f"({100 * (plan.revised_projection_s - elapsed) / max(elapsed, 1e-9):+.0f}%)"
                   if plan.revised_projection_s else "")
        log.info("the plan projected %.0f s (%+.0f%%)%s; the run took %.0f s of its %.0f s budget, K1=%d, K2=%d",
                 projected, 100 * (projected - elapsed) / max(elapsed, 1e-9), revised, elapsed, plan.budget_s,
                 plan.k1, plan.k2)
    if deadline.tripped:
        log.warning("the run was cut to fit its %.0f s budget: %s", args.time_budget, "; ".join(deadline.tripped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
