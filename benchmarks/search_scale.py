"""Catalogue search at scale (``make bench-search``): latency per sighting, whale accuracy against catalogue size,
the shortlist on indexes of 10^4 to 10^6 entries, and the index's memory per photo.

1. **Accuracy against catalogue size** (real photos, out of fold): the development photos played as sightings
   (:mod:`training.sighting_split`, stage 0 by the head of the whale's fold: :mod:`training.search_eval`), the
   catalogue cut to a seeded share of the other photos (every photo of the sighting's whale kept, so the
   question stays answerable), shortlists of K: whale top-1 / top-5 of the returning sightings.
2. **Latency** (real photos, warm index): an index of every development photo (built in the cache by the
   product's own update), then single-photo sightings searched as ``whalematch search`` does, from the new
   photo's file to its whale ranking and P(new whale): its own extraction included (nothing of it is cached;
   its pixels and features are the development photo's: it is that photo with random bytes appended, so its
   content hash is new in every run), the shortlist, the verification of K pairs (none cached) and the
   ranking. The match pictures and the page are not drawn (their cost is one picture per shown candidate).
   Then a sighting added to the index: 10 photos' update (features of the rest cached).
3. **Scale, synthetic**: indexes of 10^4, 10^5 and 10^6 entries made of the real embeddings and synthetic ones
   (each a mix of two real embeddings of different whales, with noise, renormalised: int8 vectors whose
   similarity to a real photo is spread like real photos'; the table prints both spreads). Per size: the time
   of the shortlist of one new photo, the projected latency (the real latency with that shortlist time instead),
   whether the right whale's real photos still make the shortlist of K (returning sightings, fold heads: the
   synthetic entries compete with them; they are never verified) and the memory of the index per photo.

    python -m benchmarks.search_scale --catalogue ../shared/belugas --cache-dir submission/cache \\
        [--k 200] [--latency-photos 20] [--sizes 10000,100000,1000000] [--json benchmarks/results/search_scale.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from matcher import config, presets
from matcher.curation import catalogue_search, indexing, new_whale, search
from matcher.curation.catalogue_search import PER_WHALE
from matcher.curation.curator import Curator
from matcher.curation.shortlist import QUANT, shortlist
from matcher.engine import Engine
from matcher.io.catalogue import Photo, load_catalogue
from training import search_eval
from training.train_new_whale import markdown

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("search_scale")


def accuracy_by_size(s: search_eval.Setup, pairs: pd.DataFrame, shares, k: int, seed: int) -> pd.DataFrame:
    """Whale top-1 / top-5 of the returning sightings with the catalogue cut to ``share`` of the photos of other
    whales (each sighting's own whale kept whole), shortlists of ``k`` among what is left."""
    rng = np.random.default_rng(seed)
    everyone = sorted(s.photos)
    rows = []
    for share in shares:
        keep = {i for i in everyone if rng.random() < share}
        returning = [x for x in s.sightings if not x.new]
        part = pairs[pairs["sighting"].isin({x.id for x in returning})]
        whale_of = {i: p.whale_id for i, p in s.photos.items()}
        own = part["whale"] == part["sighting"].map({x.id: x.whale for x in returning})
        part = part[part["candidate"].isin(keep) | own].copy()
        # the shortlist of k among the photos left: re-rank stage 0 within each photo's remaining candidates
        part["stage0_rank"] = part.groupby(["sighting", "photo"])["stage0_rank"].rank(method="first") - 1
        hits = search_eval.top_hits(s, search_eval.rankings(part, k), (1, 5))
        size = len(keep | {i for i in everyone if whale_of[i] in {x.whale for x in returning}})
        rows.append({"catalogue photos": size, "share of other photos": share, "top-1": hits[1], "top-5": hits[5]})
    return pd.DataFrame(rows)


def grown_copy(path: Path, folder: Path) -> Path:
    """The photo with a few random bytes appended: a content hash no cache has seen (so its features and verdicts
    are computed now, in every run), the same pixels (JPEG decoders stop at the image's end)."""
    out = folder / f"{path.stem}-new{path.suffix}"
    shutil.copyfile(path, out)
    with open(out, "ab") as fh:
        fh.write(os.urandom(16))
    return out


def latency(catalogue: Path, cache_dir: Path, k: int, n_photos: int, seed: int, tmp: Path) -> dict:
    """Single-photo sightings searched against an index of the whole catalogue, timed stage by stage."""
    photos = load_catalogue(catalogue)
    engine = Engine(presets.DEFAULT_PIPELINE, cache_dir, "cpu", progress=False)
    cur = Curator(engine)
    stage0 = indexing.stage0_for(engine)
    index = indexing.open_index(cache_dir, catalogue, engine, stage0)
    t = time.perf_counter()
    indexing.update(index, photos, cur, stage0, progress=True)
    built = time.perf_counter() - t
    t = time.perf_counter()
    found = catalogue_search.candidates(cur, photos, catalogue, k)
    load = time.perf_counter() - t
    judge = new_whale.judge_for(engine.name, engine.settings_key)
    rng = np.random.default_rng(seed)
    tops = [p for p in photos if p.viewpoint == "top"]
    times = []
    for p in [tops[i] for i in rng.choice(len(tops), n_photos, replace=False)]:
        query = Photo(f"new-{p.id}", grown_copy(p.path, tmp), "top")
        t0 = time.perf_counter()
        cur.prepare([query])
        t1 = time.perf_counter()
        tasks = found.tasks(query, False, False)
        t2 = time.perf_counter()
        search.search(cur, query, tasks, photos, 0, tmp / "pictures", judge=judge)
        t3 = time.perf_counter()
        times.append({"extract": t1 - t0, "shortlist": t2 - t1, "verify and rank": t3 - t2, "total": t3 - t0,
                      "pairs": len(tasks), "pairs/s": len(tasks) / max(t3 - t2, 1e-9)})
        cur.release([cur.shas[query.id]])
    table = pd.DataFrame(times)
    # a sighting's 10 photos added to the index (the rest cached): copies with new content hashes
    added = [Photo(f"added-{p.id}", grown_copy(p.path, tmp), p.viewpoint, "new-whale") for p in tops[:10]]
    t = time.perf_counter()
    result = indexing.update(index, photos + added, cur, stage0, progress=False)
    add = time.perf_counter() - t
    indexing.update(index, photos, cur, stage0, progress=False)  # and removed again
    return {"catalogue": len(photos), "k": k, "index_build_s": built, "index_load_s": load,
            "searches": table.describe().loc[["mean", "50%", "max"]].round(3).to_dict(),
            "add_10_photos_s": add, "added": len(result.plan.new), "memory_bytes_per_photo":
            found.zero.memory_bytes() / max(1, len(found.zero.photos))}


def synthetic(real: np.ndarray, whales: np.ndarray, n: int, noise: float, seed: int) -> np.ndarray:
    """``n`` synthetic int8 unit vectors: mixes of two real embeddings of different whales, with noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, real.shape[1]), np.int8)
    x = real.astype(np.float32) / QUANT
    for start in range(0, n, 100000):
        m = min(100000, n - start)
        i, j = rng.integers(0, len(x), m), rng.integers(0, len(x), m)
        same = whales[i] == whales[j]
        j[same] = (j[same] + 1) % len(x)
        w = rng.uniform(0.3, 0.7, (m, 1)).astype(np.float32)
        v = w * x[i] + (1 - w) * x[j] + rng.standard_normal((m, x.shape[1])).astype(np.float32) * noise
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[start:start + m] = np.round(v * QUANT).astype(np.int8)
    return out


def scale(s: search_eval.Setup, sizes, k: int, noise: float, seed: int, base_latency: float) -> pd.DataFrame:
    """Per index size: the shortlist's time, the projected latency, the right whale among the shortlist of ``k``
    (returning sightings, fold heads, at most PER_WHALE photos of a whale) and among a shortlist grown with the
    index (``k`` times the size over the real catalogue's), and memory per photo."""
    rows = []
    returning = [x for x in s.sightings if not x.new]
    base_shortlist = None
    real = len(s.stage0[0].photos)
    mirrors = search_eval.mirror_embeddings(s)
    for size in [0, *sizes]:
        grown = int(round(k * max(size, real) / real))
        recall, recall_grown, t_short = [], [], []
        for f, z in s.stage0.items():
            extra = synthetic(z.embeddings, np.array([p.whale_id for p in z.photos]),
                              max(0, size - len(z.photos)), noise, seed + f) if size else np.zeros((0, 256), np.int8)
            emb = np.concatenate([z.embeddings, extra]) if len(extra) else z.embeddings
            views = np.concatenate([z.views, np.full(len(extra), "top", dtype=object)])
            whales = np.concatenate([z.whales, np.full(len(extra), "", dtype=object)])  # each its own whale
            synthetic_rows = np.arange(len(z.photos), len(emb))
            for x in [x for x in returning if x.fold == f]:
                hit = hit_grown = False
                for q in x.photos:
                    if q not in z.row_of:
                        continue
                    own = z.photos[z.row_of[q]]
                    t = time.perf_counter()  # the shortlist as a search makes it: comparable rows, then the K best
                    rows_ok = np.concatenate([z.comparable(own, exclude=x.excluded), synthetic_rows])
                    best, _ = shortlist(z.embeddings[z.row_of[q]], mirrors.get((f, q)), own.viewpoint, emb, views, k,
                                        rows_ok, whales, PER_WHALE)
                    t_short.append(time.perf_counter() - t)
                    hit |= any(b < len(z.photos) and z.photos[b].whale_id == x.whale for b in best)
                    more, _ = shortlist(z.embeddings[z.row_of[q]], mirrors.get((f, q)), own.viewpoint, emb, views,
                                        grown, rows_ok, whales, PER_WHALE)
                    hit_grown |= any(b < len(z.photos) and z.photos[b].whale_id == x.whale for b in more)
                recall.append(hit)
                recall_grown.append(hit_grown)
        entries = size or len(s.stage0[0].photos)
        median = float(np.median(t_short))
        base_shortlist = median if base_shortlist is None else base_shortlist
        rows.append({"index entries": entries, "synthetic": max(0, entries - len(s.stage0[0].photos)),
                     "shortlist s (median)": median,
                     "projected latency s": base_latency - base_shortlist + median,
                     f"whale in the top {k}": float(np.mean(recall)),
                     "K grown with the index": grown, "whale in the top K grown": float(np.mean(recall_grown)),
                     "embeddings MB": entries * 256 / 1e6})
    return pd.DataFrame(rows)


def spreads(s: search_eval.Setup, noise: float, seed: int) -> pd.DataFrame:
    """Similarity of real photos to real photos of other whales, and to synthetic entries (mean, 99th centile)."""
    z = s.stage0[0]
    whales = np.array([p.whale_id for p in z.photos])
    rng = np.random.default_rng(seed)
    q = rng.choice(len(z.photos), 200, replace=False)
    syn = synthetic(z.embeddings, whales, 5000, noise, seed)
    real = (z.embeddings[q].astype(np.float32) @ z.embeddings.T.astype(np.float32)) / QUANT ** 2
    real = real[whales[q][:, None] != whales[None, :]]
    fake = ((z.embeddings[q].astype(np.float32) @ syn.T.astype(np.float32)) / QUANT ** 2).ravel()
    return pd.DataFrame([{"entries": "real photos of other whales", "mean": real.mean(),
                          "99th centile": np.quantile(real, 0.99)},
                         {"entries": f"synthetic (noise {noise})", "mean": fake.mean(),
                          "99th centile": np.quantile(fake, 0.99)}])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogue", type=Path, default=REPO.parent / "shared" / "belugas")
    p.add_argument("--cache-dir", type=Path, default=config.default_cache_dir())
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--latency-photos", type=int, default=20)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--shares", default="0.25,0.5,1.0")
    p.add_argument("--noise", type=float, default=0.04, help="of the synthetic entries (per dimension)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    config.setup_logging(False)
    if not (args.catalogue / "metadata.csv").is_file():
        print(f"no catalogue at {args.catalogue} (--catalogue): nothing to measure", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    s = search_eval.setup(args.catalogue, args.cache_dir)
    pairs = search_eval.verified_pairs(s, args.k)
    acc = accuracy_by_size(s, pairs, [float(v) for v in args.shares.split(",")], args.k, args.seed)
    print(f"\n## Whale top-1 / top-5 against catalogue size (returning sightings, K={args.k}, out of fold)\n")
    print(markdown(acc))
    with tempfile.TemporaryDirectory() as tmp:
        lat = latency(args.catalogue, args.cache_dir, args.k, args.latency_photos, args.seed, Path(tmp))
    print(f"\n## Latency, single-photo sightings against an index of {lat['catalogue']} photos (K={args.k}, "
          "warm index, seconds)\n")
    print(markdown(pd.DataFrame(lat["searches"]).T.reset_index().rename(columns={"index": "statistic"})))
    print(f"\nindex: built (or brought up to date) in {lat['index_build_s']:.1f} s, loaded for searches in "
          f"{lat['index_load_s']:.2f} s, {lat['memory_bytes_per_photo']:.0f} bytes a photo in memory; "
          f"10 photos added in {lat['add_10_photos_s']:.1f} s")
    sp = spreads(s, args.noise, args.seed)
    print("\n## Synthetic entries: similarity to real photos, against real photos of other whales\n")
    print(markdown(sp))
    sc = scale(s, [int(v) for v in args.sizes.split(",")], args.k, args.noise, args.seed,
               float(lat["searches"]["total"]["50%"]))
    print(f"\n## Indexes of 10^4 to 10^6 entries (real embeddings and synthetic ones; K={args.k})\n")
    print(markdown(sc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"accuracy_by_size": acc.to_dict("records"), "latency": lat,
                                         "synthetic_spread": sp.to_dict("records"), "scale": sc.to_dict("records"),
                                         "k": args.k}, indent=1, default=float) + "\n")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
