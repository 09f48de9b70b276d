"""``whalematch index CATALOGUE``: build the catalogue's index, or bring it up to date, before searches.

The index (:mod:`.catalogue_index`) is kept in the cache folder, one per catalogue; an update
(:mod:`.indexing`) extracts what the caches lack (features, the mirrored features of flank photos, the
stage-0 embeddings), is incremental (new photos added, removed ones dropped, a changed file redone, each
said), resumes after a kill, and runs on a Ray cluster with ``--backend ray``. ``search`` uses the index
when there is one (:mod:`.catalogue_search`).
"""

from __future__ import annotations

import sys
import time

from ..errors import WhaleMatchError
from ..io.catalogue import load_catalogue
from . import indexing
from .curator import Curator, engine_from_options
from .indexing import catalogue_file, open_index, stage0_for


def run(args, argv: list[str]) -> int:
    """Build or update the index of ``args.catalogue``, printing what changed."""
    if args.no_cache:
        raise WhaleMatchError("the index is kept in the cache folder: drop --no-cache")
    catalogue = load_catalogue(args.catalogue)
    engine = engine_from_options(args)
    stage0 = stage0_for(engine)
    index = open_index(args.cache_dir, args.catalogue, engine, stage0)
    if index.mismatch:
        print(f"rebuilding the index: the one found was made with other settings ({index.mismatch})")
    cur = Curator(engine)
    plan = indexing.plan_update(index, catalogue)
    cur.hash_only([p for p in plan.todo if p.id in plan.stats])
    print(f"index of {len(catalogue)} catalogue photos ({catalogue_file(args.catalogue)}): {index.path}")
    for line in [f"  {plan.counts()}", *plan.listed()]:
        print(line)
    cached = sum(1 for p in plan.todo if p.id in cur.shas and engine.has_features(cur.shas[p.id]))
    print(f"  {len(plan.todo)} photos to describe ({cached} with features in the cache; "
          f"{engine.backend.label})")
    sys.stdout.flush()
    if args.dry_run:
        return 0
    t0 = time.perf_counter()
    result = indexing.update(index, catalogue, cur, stage0, progress=not args.quiet, plan=plan)
    for line in result.unusable_lines():
        print(line)
    usable = sum(1 for e in index.published().values() if e.usable)
    print(f"index up to date{result.same_content()}: {usable} photos searchable, {len(result.unusable)} unusable, "
          f"{result.extracted} extracted now, in {time.perf_counter() - t0:.1f} s")
    index.close()
    return 0

