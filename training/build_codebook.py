"""Fit the stage-0 codebook on the DISK features of the images of a scenario folder (images only, no labels).

    python -m training.build_codebook --data-dir data/dev --cache-dir submission/cache \
        --out weights/codebook-disk-k1024-v1.json [--k 1024 --per-image 256 --iters 20 --seed 0 --version 1]

``make codebook`` runs it with the settings of the shipped file. The features come from the
engine (and its cache) exactly as the main job computes them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from matcher import config, presets
from matcher.cascade.codebook import build_codebook_from_features
from matcher.challenge import layout
from matcher.engine import Engine
from matcher.errors import WhaleMatchError

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("build_codebook")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True, help="a scenario folder (challenge layout)")
    p.add_argument("--cache-dir", type=Path, default=config.default_cache_dir(), help="the engine's caches")
    p.add_argument("--preset", default=presets.DEFAULT_PIPELINE, choices=sorted(presets.PIPELINES))
    p.add_argument("--out", type=Path, required=True, help="the codebook file to write")
    p.add_argument("--k", type=int, default=1024, help="visual words")
    p.add_argument("--per-image", type=int, default=256, help="descriptors sampled per image")
    p.add_argument("--iters", type=int, default=20, help="k-means iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", type=int, default=1)
    args = p.parse_args(argv)
    config.setup_logging()
    try:
        challenge = layout.load(args.data_dir)
        engine = Engine(args.preset, args.cache_dir, "cpu", progress=True)
        paths, bad = challenge.image_paths(challenge.image_ids())
        shas, _ = engine.prepare(paths, bad)
        order = sorted(set(shas.values()))
        info = {"extractor": presets.extractor_settings_key(engine.conf["extractor"]), "images": len(order),
                "version": args.version, "built_from": "labelled development scenarios (images only, no labels)"}
        book = build_codebook_from_features([engine.feature(s)["descriptors"] for s in order], args.k,
                                            args.per_image, args.iters, args.seed, info)
    except WhaleMatchError as exc:
        log.error("%s", exc)
        return 2
    book.save(args.out)
    log.info("wrote %s (%d words, sha256 %s)", args.out, len(book.centroids), book.digest[:12])
    return 0


if __name__ == "__main__":
    sys.exit(main())
