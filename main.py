"""Submission entrypoint in the challenge's code-execution layout.

    python main.py [--data-dir DIR] [--output FILE] [--preset NAME] [--cache-dir DIR]
                   [--time-budget SECONDS] [--k1 N] [--k2 N] [--stage2 NAME] [--global-descriptor NAME]
                   [--rerank database|none]

Reads DIR/query_scenarios.csv, DIR/metadata.csv and the query and database
files they name; writes one CSV with columns query_id,database_image_id,score
(at most 20 rows per query, best first). Candidates go through the shortlist
cascade (stage 0 global descriptor, stage 1 MNN + RANSAC, stage 2 an expensive
matcher, off unless --stage2 names one), then re-ranking with the verified pairs
within each scenario's database (--rerank), all sized to end within the time budget
(default 3 hours, counted from the start of this script); the plan is logged.
Every option has an environment variable: WHALEMATCH_DATA_DIR, WHALEMATCH_OUTPUT,
WHALEMATCH_PRESET, WHALEMATCH_CACHE_DIR, WHALEMATCH_DEVICE, WHALEMATCH_WORKERS,
WHALEMATCH_TIME_BUDGET, WHALEMATCH_K1, WHALEMATCH_K2, WHALEMATCH_STAGE2, WHALEMATCH_STAGE2_MODE,
WHALEMATCH_GLOBAL_DESCRIPTOR, WHALEMATCH_RERANK.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the time budget counts from here, before the heavy imports

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matcher import data, global_descriptors, presets, settings, submission  # noqa: E402
from matcher.budget import DEFAULT_BUDGET_S, Deadline  # noqa: E402
from matcher.errors import WhaleMatchError  # noqa: E402
from matcher.pipeline import Engine, rank_scenarios  # noqa: E402
from matcher.shortlist import STAGE2_FACTORIES, STAGE2_MODES, CascadeSettings  # noqa: E402

log = logging.getLogger("main")


def packed_preset() -> str:
    """The preset named in a PRESET file beside main.py (written by ``make pack-submission``), else the default."""
    marker = Path(__file__).resolve().parent / "PRESET"
    name = marker.read_text().strip() if marker.is_file() else ""
    return name if name in presets.PIPELINES else presets.DEFAULT_PIPELINE


def budget_seconds(text: str) -> float | None:
    """Seconds of the time budget; ``none``/``0`` for no limit."""
    if str(text).strip().lower() in ("none", "inf", "0", ""):
        return None
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("the time budget must be positive")
    return value


def optional_int(text: str | None) -> int | None:
    return None if text in (None, "", "auto") else int(text)


def parse_args(argv=None) -> argparse.Namespace:
    env = settings.env
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path(env("DATA_DIR", settings.DEFAULT_DATA_DIR)))
    p.add_argument("--output", type=Path, default=Path(env("OUTPUT", settings.DEFAULT_OUTPUT)))
    p.add_argument("--preset", default=env("PRESET", packed_preset()), choices=sorted(presets.PIPELINES))
    p.add_argument("--cache-dir", type=Path, default=settings.default_cache_dir())
    p.add_argument("--no-cache", action="store_true", help="keep nothing on disk between runs")
    p.add_argument("--device", default=env("DEVICE"), help="auto (default), cpu or cuda[:N]")
    p.add_argument("--workers", type=int, default=int(env("WORKERS", "0")) or None, help="CPU verification workers")
    p.add_argument("--time-budget", type=budget_seconds, default=budget_seconds(env("TIME_BUDGET", str(DEFAULT_BUDGET_S))),
                   help="wall-clock seconds the run may take (default 10800; 'none' for no limit): the cascade's K "
                        "are planned to fit, and a guard stops the expensive stages if the run falls behind")
    p.add_argument("--k1", type=optional_int, default=optional_int(env("K1")),
                   help="stage-0 candidates per query that stage 1 verifies (default: planned from the budget)")
    p.add_argument("--k2", type=optional_int, default=optional_int(env("K2")),
                   help="stage-1 candidates per query that stage 2 re-scores (default: planned, at most --k2-max)")
    p.add_argument("--k2-max", type=int, default=CascadeSettings.k2_max)
    p.add_argument("--stage2", default=env("STAGE2", "auto"),
                   help=f"expensive matcher re-scoring each query's top K2: auto (the preset's default: none so "
                        f"far, see README), none, or {'|'.join(sorted(STAGE2_FACTORIES))}[:preset] "
                        f"(lightglue: LightGlue on the preset's features; loftr: needs its weights)")
    p.add_argument("--stage2-mode", default=env("STAGE2_MODE", "max"), choices=list(STAGE2_MODES),
                   help="order of stage 2's candidates: max (default) or sum of both stages' strengths, or replace")
    p.add_argument("--rerank", default=env("RERANK", "database"), choices=["database", "none"],
                   help="database (default): also verify the pairs within each scenario's database and re-rank each "
                        "query's candidates with them (the database's own structure; see benchmarks/RESULTS.md); "
                        "none: stage-1 scores only")
    p.add_argument("--global-descriptor", default=env("GLOBAL_DESCRIPTOR", "auto"),
                   choices=["auto", *sorted(global_descriptors.GLOBALS)], help="stage-0 global descriptor")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    settings.setup_logging(args.verbose)
    start = STARTED if argv is None else time.perf_counter()
    deadline = Deadline(args.time_budget if args.time_budget is not None else float("inf"), start=start)
    try:
        challenge = data.load(args.data_dir)
        n_queries = sum(len(s.queries) for s in challenge.scenarios)
        log.info("%d scenarios, %d queries, %d images in metadata", len(challenge.scenarios), n_queries,
                 len(challenge.metadata))
        engine = Engine(args.preset, None if args.no_cache else args.cache_dir, args.device, args.workers,
                        progress=not args.quiet, stage2=args.stage2, global_descriptor=args.global_descriptor)
        log.info("preset %s on %s; caches in %s; time budget %s", args.preset, engine.device,
                 "memory only" if args.no_cache else args.cache_dir,
                 "none" if args.time_budget is None else f"{args.time_budget:.0f} s")
        sub, expected = rank_scenarios(challenge, engine, args.time_budget, args.k1, args.k2, args.k2_max,
                                       deadline=deadline, stage2_mode=args.stage2_mode,
                                       rerank=args.rerank == "database")
        submission.write(sub, args.output, expected)
    except WhaleMatchError as exc:
        log.error("%s", exc)
        return 2
    log.info("%s", engine.stats.summary())
    elapsed = time.perf_counter() - start
    log.info("wrote %d rows for %d queries to %s in %.1f s", len(sub), len(expected), args.output, elapsed)
    plan = engine.last_plan
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
