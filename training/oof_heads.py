"""Global heads trained without chosen whales, for out-of-fold figures of anything that reads the head.

A head that has seen a whale scores that whale's photos as it never will a new whale's, so a feature
built from the head (the pair model's ``head_similarity``) is measured and trained only on heads that
saw none of the whales concerned:

* one head per fold of whales (``whale_folds.py``: the same deal as the pair model's folds),
  trained on the other folds' whales: the cross-fitted feature of the pair model's training pairs;
* one head per development scenario, trained on every whale that is not in the scenario (query or
  database): the head ``main.py`` uses when it ranks that scenario out of fold.

Each head is kept under ``<cache>/oof-heads/<key>.pt`` (with its ``.json``) and its embeddings of every
catalogue photo in ``<key>.npz``; the key hashes the training photos (id, content hash, whale), the head's
settings and the seed, so a head is trained once and reused by every later run.

    python -m training.oof_heads --catalogue ../shared/belugas --cache-dir submission/cache \
        --dev data/dev [--shard 0/2]

trains the missing heads (``--shard k/n``: every n-th from the k-th, for n processes side by side).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matcher import config, presets
from matcher.features.global_head import keypoint_inputs
from training.head_training import CONF, add_cross_options, embed_all, train_head, train_settings

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("oof_heads")


@dataclass
class Photos:
    """The catalogue's usable photos: keypoint inputs, whale and content hash by image id."""

    inputs: dict[str, np.ndarray]
    whale: dict[str, str]
    sha: dict[str, str]
    encounter: dict[str, str] = field(default_factory=dict)  # what cross-encounter training reads
    date: dict[str, str] = field(default_factory=dict)
    view: dict[str, str] = field(default_factory=dict)
    features: str = ""  # the feature cache key the inputs were read under (extractor, runtime, software, weights)

    def group(self, image_id: str, by: str) -> str:
        """What a cross-encounter positive's two photos differ in: the encounter, or the view (top, lateral)."""
        if by == "view":
            return "top" if self.view.get(image_id, "top") == "top" else "lateral"
        return self.encounter.get(image_id, "")


def load_photos(catalogue: Path, cache_dir: Path) -> Photos:
    """Every usable catalogue photo's head inputs, from the engine's cached DISK features."""
    from matcher.engine import Engine
    from matcher.io.catalogue import read_photos

    photos = read_photos(catalogue / "metadata.csv")
    engine = Engine(presets.DEFAULT_PIPELINE, cache_dir, "cpu", progress=False)
    shas, _ = engine.prepare({i: ph.path for i, ph in photos.items()})
    inputs = {i: keypoint_inputs(engine.feature(s)).astype(np.float16) for i, s in shas.items()}
    return Photos(inputs, {i: photos[i].whale_id for i in inputs}, dict(shas),
                  {i: photos[i].encounter_id for i in inputs}, {i: photos[i].date for i in inputs},
                  {i: photos[i].viewpoint for i in inputs}, engine.feature_key)


def head_key(photos: Photos, excluded: set[str], seed: int, train: dict) -> str:
    """What a head trained without ``excluded`` whales is made of, hashed: its photos, the features they were read
    as (their cache key), settings and seed."""
    rows = "\n".join(f"{i},{photos.sha[i]},{photos.whale[i]}" for i in sorted(photos.inputs)
                     if photos.whale[i] not in excluded)
    text = json.dumps({"photos": hashlib.sha256(rows.encode()).hexdigest(), "conf": CONF, "train": train,
                       "seed": seed, **({"features": photos.features} if photos.features else {})}, sort_keys=True)
    return "head-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def exclusions(photos: Photos, dev: Path | None, folds: int, seed: int) -> dict[str, set[str]]:
    """The heads wanted: ``fold<k>`` (without fold k's whales) and ``<scenario id>`` (without its whales)."""
    from training.whale_folds import whale_folds

    fold_of = whale_folds(list(photos.whale.values()), folds, seed)
    out = {f"fold{f}": {w for w, k in fold_of.items() if k == f} for f in range(folds)}
    if dev is not None:
        from matcher.challenge import layout

        for sc in layout.load(dev).scenarios:
            ids = set(sc.queries["query_image_id"]) | set(sc.database)
            out[sc.scenario_id] = {photos.whale[i] for i in ids if i in photos.whale}
    return out


def head_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    folder = Path(cache_dir) / "oof-heads"
    return folder / f"{key}.pt", folder / f"{key}.npz"


def trained_head(photos: Photos, excluded: set[str], cache_dir: Path, seed: int, train: dict
                 ) -> tuple[Path, dict[str, np.ndarray]]:
    """The head trained without the ``excluded`` whales (from the cache, else trained now and kept there):
    its weights file and its int8 embedding of every photo."""
    key = head_key(photos, excluded, seed, train)
    pt, npz = head_paths(cache_dir, key)
    if not (pt.is_file() and pt.with_suffix(".json").is_file() and npz.is_file()):  # the head is its .pt and .json
        ids = sorted(i for i in photos.inputs if photos.whale[i] not in excluded)
        log.info("training %s without %d whales (%d photos)", key, len(excluded), len(ids))
        head = train_head([photos.inputs[i] for i in ids], [photos.whale[i] for i in ids], seed, train,
                          encounters=[photos.group(i, train.get("cross_by", "encounter")) for i in ids],
                          dates=[photos.date.get(i, "") for i in ids])
        head.info["excluded_whales"] = sorted(excluded)
        pt.parent.mkdir(parents=True, exist_ok=True)
        head.save(pt)
        everyone = sorted(photos.inputs)
        emb = embed_all(head, photos.inputs, everyone)
        np.savez(npz, ids=np.array(everyone), emb=np.stack([emb[i] for i in everyone]))
    saved = np.load(npz)
    return pt, dict(zip(saved["ids"].tolist(), saved["emb"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogue", type=Path, default=REPO.parent / "shared" / "belugas")
    p.add_argument("--cache-dir", type=Path, default=config.default_cache_dir())
    p.add_argument("--dev", type=Path, default=REPO / "data" / "dev")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shard", default="0/1", help="k/n: train every n-th missing head from the k-th")
    p.add_argument("--folds-only", action="store_true", help="the fold heads only, not the scenario heads")
    add_cross_options(p)
    args = p.parse_args(argv)
    config.setup_logging(False)
    logging.getLogger("oof_heads").setLevel(logging.INFO)
    logging.getLogger("train_global").setLevel(logging.INFO)
    import torch

    torch.set_num_threads(args.threads)
    k, n = (int(v) for v in args.shard.split("/"))
    photos = load_photos(args.catalogue, args.cache_dir)
    dev = args.dev if args.dev.exists() and not args.folds_only else None
    wanted = sorted(exclusions(photos, dev, args.folds, args.seed).items())
    train = train_settings(args)  # the settings train_global.py uses for the same options (same cache key)
    for name, excluded in wanted[k::n]:
        pt, _ = trained_head(photos, excluded, args.cache_dir, args.seed, train)
        print(f"{name}: {pt.name} (without {len(excluded)} whales)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
