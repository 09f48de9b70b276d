"""Measure catalogue search out of fold on the development photos, and fit the P(new whale) model that ships.

    python -m training.train_new_whale --catalogue ../shared/belugas --cache-dir submission/cache \\
        [--k 200] [--verify-top 400] [--exhaustive] [--seed 0] [--out weights/new-whale-disk-mnn.json]
        [--head-cross-encounter 1.0 [--head-structured 0.5]]   # fold heads trained with the cross-encounter term

The development photos are played as new sightings (:mod:`training.sighting_split`: each whale's latest
encounter searched against the catalogue without it; whales the catalogue then lacks are the new ones), and
each sighting photo is searched as ``whalematch search`` does with an index (:mod:`training.search_eval`:
stage 0 by the global head of the whale's fold, which never saw the whale). Printed, and written into the
model file's ``info``:

1. stage 0: the share of returning sightings (and photos) with a photo of their whale among the first K, for
   the learned head and for ASMK (the choice of the index's stage 0);
2. whale top-1 / top-5 of the returning sightings, with shortlists of K and (``--exhaustive``) verifying every
   comparable photo, for the ways of combining evidence (:mod:`matcher.curation.whale_evidence`);
3. sightings of two or more photos identified together, against their photos searched one by one;
4. P(new whale) out of fold (folds split by whale): ROC AUC, calibration error (ECE, 10 bins) and Brier score
   of each fold's sightings scored by a model fitted on the other folds', on whole sightings and on single
   photos. The shipped model is then fitted on every sighting (and every photo alone) with a fixed seed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from matcher import config, presets
from matcher.cascade.global_descriptors import GlobalStage
from matcher.curation import new_whale, whale_evidence
from matcher.curation.calibration import brier_score, expected_calibration_error, reliability_table
from matcher.curation.catalogue_search import PER_WHALE
from matcher.curation.options import DEFAULT_K
from matcher.curation.shortlist import capped
from training import search_eval
from training.head_training import TRAIN, add_cross_options, train_settings

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("train_new_whale")
KS = (20, 50, 100, 200, 300, 400)
DECAYS = (0.0, 0.5, 1.0)  # max, halving weights, plain sum


def stage0_recall(s: search_eval.Setup, orders: dict, ks=KS) -> pd.DataFrame:
    """Per stage 0 (head of the whale's fold, ASMK) and K: returning sightings (and photos) with a photo of their
    whale among the first K comparable catalogue photos."""
    asmk = GlobalStage("asmk-disk", s.engine)
    s.cur.prepare(list(s.photos.values()))
    asmk.describe({s.cur.shas[i] for i in s.photos if i in s.cur.shas})
    rows = []
    for name in ("learned head (fold)", f"learned head (fold), at most {PER_WHALE} a whale", "ASMK"):
        sight, photo = {k: [] for k in ks}, {k: [] for k in ks}
        for x in s.sightings:
            if x.new:
                continue
            best = np.inf
            for q in x.photos:
                ranked = [p for p, _ in orders.get((x.id, q), [])]
                if "at most" in name:
                    ranked = [ranked[i] for i in capped(np.arange(len(ranked)),
                                                        np.array([p.whale_id for p in ranked], dtype=object),
                                                        PER_WHALE)]
                if name == "ASMK" and ranked:
                    sims = asmk.score_block([s.cur.shas[q]], [s.cur.shas[p.id] for p in ranked])[0]
                    ranked = [ranked[i] for i in np.lexsort((np.arange(len(ranked)), -sims))]
                first = next((r for r, p in enumerate(ranked) if p.whale_id == x.whale), np.inf)
                best = min(best, first)
                for k in ks:
                    photo[k].append(first < k)
            for k in ks:
                sight[k].append(best < k)
        rows.append({"stage 0": name, "of": "sightings", **{f"K={k}": np.mean(sight[k]) for k in ks}})
        rows.append({"stage 0": name, "of": "photos", **{f"K={k}": np.mean(photo[k]) for k in ks}})
    s.engine.release(set(s.cur.shas.values()))
    s.cur.prepared.clear()
    return pd.DataFrame(rows)


def accuracy_table(s: search_eval.Setup, pairs: pd.DataFrame, ks, exhaustive: bool, k: int) -> pd.DataFrame:
    """Whale top-1 and top-5 of the returning sightings: per K, shortlists with at most PER_WHALE photos of a
    whale and without a limit (the whale's best pair); then, at ``k`` and verifying everything, the sums of a
    whale's pairs (decay: the weight of its k-th best pair, decay ** (k - 1))."""
    rows = []
    for kk in ks:
        for cap in (True, False):
            hits = search_eval.top_hits(s, search_eval.rankings(pairs, kk, per_whale_cap=cap), (1, 5))
            rows.append({"candidates": f"K={kk}", "per whale": PER_WHALE if cap else "no limit",
                         "combined": "best pair", "top-1": hits[1], "top-5": hits[5]})
    for kk in [k, *([None] if exhaustive else [])]:
        for d in DECAYS:
            hits = search_eval.top_hits(s, search_eval.rankings(pairs, kk, d), (1, 5))
            rows.append({"candidates": "every comparable photo" if kk is None else f"K={kk}",
                         "per whale": PER_WHALE if kk else "", "combined": "best pair" if d == 0 else f"decay {d}",
                         "top-1": hits[1], "top-5": hits[5]})
    return pd.DataFrame(rows)


def together_table(s: search_eval.Setup, pairs: pd.DataFrame, k: int | None) -> pd.DataFrame:
    """Returning sightings of two or more photos: top-1 identified together (the shipped rule; and adding up the
    photos' evidence, decay 0.5), against one photo at a time (the photo whose own best whale scores highest,
    the mean photo, and the best photo in hindsight)."""
    several = [x for x in s.sightings if not x.new and len(x.photos) > 1]
    part = search_eval.shortlisted(pairs, k)
    cols = list(whale_evidence.PAIR_COLUMNS)
    together, summed, confident, mean, oracle = [], [], [], [], []
    for x in several:
        g = part[part["sighting"] == x.id]
        for out, decay in ((together, whale_evidence.DECAY), (summed, 0.5)):
            r = whale_evidence.whale_ranking(g[cols], photo_decay=decay)
            out.append(len(r) > 0 and r["whale"].iloc[0] == x.whale)
        single = []
        for q in x.photos:
            rq = whale_evidence.whale_ranking(g[g["photo"] == q][cols])
            if len(rq):
                single.append((float(rq["evidence"].iloc[0]), rq["whale"].iloc[0] == x.whale))
        confident.append(max(single)[1] if single else False)
        mean.append(np.mean([h for _, h in single]) if single else 0.0)
        oracle.append(any(h for _, h in single))
    return pd.DataFrame([{"sightings": len(several), "together": np.mean(together),
                          "together, photos added (decay 0.5)": np.mean(summed),
                          "most confident photo": np.mean(confident), "a photo on average": np.mean(mean),
                          "best photo in hindsight": np.mean(oracle)}])


def feature_rows(s: search_eval.Setup, pairs: pd.DataFrame, k: int) -> pd.DataFrame:
    """One row per sighting and per photo alone (of sightings of several photos): the model's features, whether
    it is a new whale, the whale's fold, and which kind of row."""
    part = search_eval.shortlisted(pairs, k)
    cols = list(whale_evidence.PAIR_COLUMNS)
    by_sighting = {sid: g for sid, g in part.groupby("sighting")}
    rows = []
    for x in s.sightings:
        g = by_sighting.get(x.id, part.iloc[0:0])[cols]
        if g.empty:
            continue
        rows.append([*new_whale.feature_row(g), x.new, x.fold, "sighting", x.id])
        if g["photo"].nunique() > 1:
            for _, gq in g.groupby("photo"):
                rows.append([*new_whale.feature_row(gq), x.new, x.fold, "photo alone", x.id])
    return pd.DataFrame(rows, columns=[*new_whale.FEATURES, "new", "fold", "kind", "sighting"])


def fit(rows: pd.DataFrame, seed: int, settings_key: str, info: dict) -> new_whale.NewWhaleModel:
    """Logistic regression at even odds (classes weighed equally) on standardised features."""
    from sklearn.linear_model import LogisticRegression

    x = rows[list(new_whale.FEATURES)].to_numpy(np.float64)
    y = rows["new"].to_numpy(bool)
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    lr = LogisticRegression(C=1.0, class_weight="balanced", random_state=seed, max_iter=1000)
    lr.fit((x - mean) / scale, y)
    return new_whale.NewWhaleModel(settings_key, mean.tolist(), scale.tolist(), lr.coef_[0].tolist(),
                                   float(lr.intercept_[0]), float(y.mean()), info)


def out_of_fold(rows: pd.DataFrame, seed: int, settings_key: str) -> pd.DataFrame:
    """Each fold's rows scored by a model fitted on the other folds' rows, at the other folds' base rate."""
    out = []
    for f in sorted(rows["fold"].unique()):
        model = fit(rows[rows["fold"] != f], seed, settings_key, {})
        test = rows[rows["fold"] == f]
        out.append(test.assign(p=model.probability(test[list(new_whale.FEATURES)].to_numpy())))
    return pd.concat(out)


def figures(scored: pd.DataFrame) -> dict:
    from sklearn.metrics import roc_auc_score

    out = {}
    for kind in ("sighting", "photo alone"):
        t = scored[scored["kind"] == kind]
        y, p = t["new"].to_numpy(int), t["p"].to_numpy()
        out[kind] = {"rows": int(len(t)), "new": int(y.sum()), "auc": round(float(roc_auc_score(y, p)), 4),
                     "ece": round(float(expected_calibration_error(p, y)), 4),
                     "brier": round(float(brier_score(p, y)), 4)}
    t = scored[scored["kind"] == "sighting"]
    out["reliability"] = reliability_table(t["p"].to_numpy(), t["new"].to_numpy(int))
    return out


def markdown(df: pd.DataFrame) -> str:
    """A table in Markdown, numbers to three decimals."""
    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogue", type=Path, default=REPO.parent / "shared" / "belugas")
    p.add_argument("--cache-dir", type=Path, default=config.default_cache_dir())
    p.add_argument("--k", type=int, default=DEFAULT_K, help="the shortlist the shipped model is fitted with")
    p.add_argument("--verify-top", type=int, default=max(KS), help="stage-0 candidates verified per photo")
    p.add_argument("--exhaustive", action="store_true",
                   help="also verify every comparable photo for the returning sightings (the baseline)")
    p.add_argument("--max-photos", type=int, default=3, help="photos searched per sighting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", type=Path, help="the model file to write (default: no file)")
    p.add_argument("--json", type=Path, help="every figure as JSON")
    add_cross_options(p, "head-")  # the fold heads' training (stage 0): the shipped head's settings by default
    args = p.parse_args(argv)
    config.setup_logging(False)
    for name in ("train_new_whale", "search_eval", "oof_heads", "train_global"):
        logging.getLogger(name).setLevel(logging.INFO)
    t0 = time.perf_counter()
    head_train = train_settings(args, TRAIN, "head-")
    if args.out and head_train != TRAIN:
        p.error("--out writes the model the product ships, whose stage 0 is the shipped head: fit it without "
                "--head-cross-encounter (that option measures other fold heads, with no model written)")
    s = search_eval.setup(args.catalogue, args.cache_dir, args.max_photos, seed=args.seed, workers=args.workers,
                          train=head_train)
    returning = [x for x in s.sightings if not x.new]
    print(f"{len(s.sightings)} sightings: {len(returning)} returning ({sum(len(x.photos) for x in returning)} photos), "
          f"{len(s.sightings) - len(returning)} of whales the catalogue lacks "
          f"({sum(len(x.photos) for x in s.sightings if x.new)} photos); at most {args.max_photos} photos a sighting")
    orders = search_eval.stage0_orders(s)
    recall = stage0_recall(s, orders)
    print("\n## Stage 0: a photo of the whale among the first K (returning sightings, heads out of fold)\n")
    print(markdown(recall))
    pairs = search_eval.verified_pairs(s, args.verify_top, args.exhaustive, orders=orders)
    ks = [k for k in KS if k <= args.verify_top]
    acc = accuracy_table(s, pairs, ks, args.exhaustive, args.k)
    print("\n## Whale top-1 / top-5 of the returning sightings\n")
    print(markdown(acc))
    together = pd.concat([together_table(s, pairs, k).assign(candidates=f"K={k}") for k in (args.k,)] +
                         ([together_table(s, pairs, None).assign(candidates="every comparable photo")]
                          if args.exhaustive else []))
    print("\n## Sightings of two or more photos: top-1 identified together, and one photo at a time\n")
    print(markdown(together))
    key = s.engine.settings_key
    rows = feature_rows(s, pairs, args.k)
    scored = out_of_fold(rows, args.seed, key)
    figs = figures(scored)
    print(f"\n## P(new whale), out of fold (5 folds by whale), shortlists of K={args.k}\n")
    print(markdown(pd.DataFrame([{"rows": k, **v} for k, v in figs.items() if k != "reliability"])))
    print("\nreliability (sightings):")
    print(markdown(pd.DataFrame(figs["reliability"])))
    info = {"fitted_with": {"k": args.k, "stage0": presets.CATALOGUE_STAGE0, "max_photos": args.max_photos,
                            **({"head_training": head_train} if head_train != TRAIN else {}),
                            "rows": int(len(rows)), "sightings": int((rows["kind"] == "sighting").sum()),
                            "new": int(rows["new"].sum())},
            "out_of_fold": {k: v for k, v in figs.items() if k != "reliability"},
            "split": "5 folds by whale: a fold's sightings scored by a model fitted without its whales",
            "trained": dt.date.today().isoformat(), "seed": args.seed,
            "command": "python -m training.train_new_whale " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))}
    model = fit(rows, args.seed, key, info)
    print(f"\nshipped model: base rate {model.prior:.3f} (new whales among the fitted rows), coefficients "
          + ", ".join(f"{n} {c:+.3f}" for n, c in zip(new_whale.FEATURES, model.coef)))
    if args.out:
        model.save(args.out)
        print(f"written: {args.out}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"stage0_recall": recall.to_dict("records"),
                                         "accuracy": acc.to_dict("records"), "together": together.to_dict("records"),
                                         "p_new_whale": figs, "info": info}, indent=1, default=float) + "\n")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
