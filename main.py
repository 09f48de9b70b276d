"""Submission entrypoint in the challenge's code-execution layout.

    python main.py [--data-dir DIR] [--output FILE] [--preset NAME] [--cache-dir DIR]

Reads DIR/query_scenarios.csv, DIR/metadata.csv and the query and database
files they name; writes one CSV with columns query_id,database_image_id,score
(at most 20 rows per query, best first). Every option has an environment
variable: WHALEMATCH_DATA_DIR, WHALEMATCH_OUTPUT, WHALEMATCH_PRESET,
WHALEMATCH_CACHE_DIR, WHALEMATCH_DEVICE, WHALEMATCH_WORKERS.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matcher import data, presets, settings, submission  # noqa: E402
from matcher.errors import WhaleMatchError  # noqa: E402
from matcher.pipeline import Engine, rank_scenarios  # noqa: E402

log = logging.getLogger("main")


def packed_preset() -> str:
    """The preset named in a PRESET file beside main.py (written by ``make pack-submission``), else the default."""
    marker = Path(__file__).resolve().parent / "PRESET"
    name = marker.read_text().strip() if marker.is_file() else ""
    return name if name in presets.PIPELINES else presets.DEFAULT_PIPELINE


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
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    settings.setup_logging(args.verbose)
    start = time.perf_counter()
    try:
        challenge = data.load(args.data_dir)
        n_queries = sum(len(s.queries) for s in challenge.scenarios)
        log.info("%d scenarios, %d queries, %d images in metadata", len(challenge.scenarios), n_queries,
                 len(challenge.metadata))
        engine = Engine(args.preset, None if args.no_cache else args.cache_dir, args.device, args.workers,
                        progress=not args.quiet)
        log.info("preset %s on %s; caches in %s", args.preset, engine.device,
                 "memory only" if args.no_cache else args.cache_dir)
        sub, expected = rank_scenarios(challenge, engine)
        submission.write(sub, args.output, expected)
    except WhaleMatchError as exc:
        log.error("%s", exc)
        return 2
    log.info("%s", engine.stats.summary())
    log.info("wrote %d rows for %d queries to %s in %.1f s", len(sub), len(expected), args.output,
             time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
