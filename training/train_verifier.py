"""Train the learned pair model, measure it out of fold (folds split by whale), and ship it.

    python -m training.train_verifier --catalogue ../shared/belugas --cache-dir submission/cache \
        --dev data/dev --labels data/dev_labels.csv --out weights/pair-model-disk-mnn.json [--seed 0]

1. Every photo of the catalogue is prepared by the engine (features cached) and the sampled pairs
   (``pair_dataset.py``) are verified (verdicts cached) and turned into feature rows.
2. Pair-level figures, out of fold: the whales are dealt into 5 folds; each fold's pairs (both
   whales in it) are scored by a model trained on the pairs of the other folds' whales only.
3. Ranking figures, out of fold: each development scenario is ranked by ``main.py`` itself with a
   model trained on pairs of none of that scenario's whales (query or database), for the model on
   the verdict's evidence only and on evidence + metadata, with and without re-ranking, and with the
   metadata withheld at ranking time; today's score (strength) is ranked the same way.
4. The shipped model is trained on every pair with a fixed seed and saved with its settings key, the
   data it saw (counts and a hash), the out-of-fold figures and this command.

``--head`` adds the global head's vote (``head_similarity``, the cosine of the two photos' embeddings by
the learned global head) as a feature, measured without leaking identities (``oof_heads.py``): a training
pair's value comes from the head of a whale fold that holds the pair's whales (both, or each in turn and
averaged), so no head scores a same-whale pair it was trained on; each development scenario is ranked
with a head trained without any of its whales. The shipped model reads the shipped head
(``weights/global-head-disk-v1.pt``, named with its SHA-256 in the model file).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import main as entrypoint
from matcher import config, presets
from matcher.challenge import layout
from matcher.challenge.evaluate import LABEL_COLUMNS, scenario_of_queries, score_by_type, subset_dir
from matcher.engine import Engine
from matcher.io.catalogue import read_photos
from matcher.io.tables import read_csv
from matcher.pairs.model import METADATA_FEATURES, PairModel, feature_names, photo_fingerprints
from training import pair_dataset
from training.head_training import add_cross_options
from training.whale_folds import whale_folds

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("train_verifier")
PARAMS = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 40,
          "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
          "deterministic": True, "force_row_wise": True, "num_threads": 2, "verbose": -1}
ROUNDS = 400
BLANK_SHARE = 0.2  # of the training rows, this share has its metadata withheld: the model learns to do without
INCREASING = ("strength", "n_inliers")  # more inliers never lowers P(same whale)
def fit(table: pd.DataFrame, names: list[str], seed: int) -> str:
    """LightGBM trees on ``table``'s rows (features ``names``, target ``label``); LightGBM's model text."""
    import lightgbm

    x = table[names].to_numpy(np.float64).copy()
    meta = [i for i, n in enumerate(names) if n in METADATA_FEATURES]
    if meta:
        blank = np.random.default_rng(seed).random(len(x)) < BLANK_SHARE
        x[np.ix_(blank, meta)] = np.nan
    params = {**PARAMS, "seed": seed, "monotone_constraints": [int(n in INCREASING) for n in names]}
    booster = lightgbm.train(params, lightgbm.Dataset(x, table["label"].astype(int).to_numpy()), ROUNDS)
    return booster.model_to_string()


def pair_oof(table: pd.DataFrame, names: list[str], seed: int, n_folds: int = 5) -> tuple[dict, pd.DataFrame]:
    """ROC AUC and average precision of held-out pairs (both whales in the held-out fold), and of the strength;
    and the held-out predictions (fold, label, p)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    fold = whale_folds(pd.concat([table["whale_a"], table["whale_b"]]), n_folds, seed)
    fa, fb = table["whale_a"].map(fold), table["whale_b"].map(fold)
    preds, truth, strength, folds = [], [], [], []
    for f in range(n_folds):
        train, test = table[(fa != f) & (fb != f)], table[(fa == f) & (fb == f)]
        model = PairModel(names, "", fit(train, names, seed))
        preds.append(model.predict(test[names].to_numpy()))
        truth.append(test["label"].to_numpy())
        strength.append(test["strength"].to_numpy())
        folds.append(np.full(len(test), f))
    y, p, s = np.concatenate(truth), np.concatenate(preds), np.concatenate(strength)
    figures = {"pairs": int(len(y)), "positives": int(y.sum()), "auc": round(float(roc_auc_score(y, p)), 4),
               "ap": round(float(average_precision_score(y, p)), 4),
               "strength_auc": round(float(roc_auc_score(y, s)), 4),
               "strength_ap": round(float(average_precision_score(y, s)), 4), "folds": n_folds,
               "split": "by whale: a fold's pairs have both whales in it, its model saw none of them"}
    return figures, pd.DataFrame({"fold": np.concatenate(folds), "label": y.astype(int), "p": p})


def calibration(held: pd.DataFrame, preset: str, settings_key: str):
    """Isotonic P(same whale) at even odds on the model's held-out predictions, and its error on each fold's
    predictions when fitted on the other folds' (ECE and Brier, the classes weighing equally)."""
    from matcher.curation import calibration as calib

    eces, briers, raw_eces = [], [], []
    for f in sorted(held["fold"].unique()):
        fit_on, test = held[held["fold"] != f], held[held["fold"] == f]
        cal = calib.fit(fit_on["p"], fit_on["label"], preset, settings_key, input=calib.MODEL)
        w = calib.balancing_weights(test["label"].to_numpy())
        eces.append(calib.expected_calibration_error(cal.probability(test["p"].to_numpy()), test["label"], weights=w))
        briers.append(calib.brier_score(cal.probability(test["p"].to_numpy()), test["label"], w))
        raw_eces.append(calib.expected_calibration_error(test["p"].to_numpy(), test["label"], weights=w))
    cal = calib.fit(held["p"], held["label"], preset, settings_key, input=calib.MODEL,
                    source="the model's held-out predictions (5 folds split by whale)")
    cal.heldout = {"pairs": int(len(held)), "ece": round(float(np.mean(eces)), 4),
                   "brier": round(float(np.mean(briers)), 4), "raw_model_ece": round(float(np.mean(raw_eces)), 4),
                   "split": "each fold's held-out predictions, calibrated on the other folds'"}
    return cal


def strip_metadata(root: Path, out: Path) -> None:
    """``out/metadata.csv``: ``root``'s without the columns a pair model reads (date, viewpoint)."""
    meta = read_csv(root / "metadata.csv", ("image_id", "path"))
    meta.drop(columns=[c for c in ("date", "viewpoint") if c in meta.columns]).to_csv(out / "metadata.csv",
                                                                                      index=False)


def rank_scenario(root: Path, sid: str, tmp: Path, cache: Path, preset: str, extra: list[str],
                  model: Path | None, no_metadata: bool = False) -> pd.DataFrame:
    """main.py's submission for one scenario (its own data folder), with the learned score when ``model``."""
    folder = tmp / f"{sid}-{abs(hash((str(model), tuple(extra), no_metadata)))}"
    folder.mkdir()
    subset_dir(root, {sid}, folder)
    if no_metadata:
        (folder / "metadata.csv").unlink()
        strip_metadata(root, folder)
    out = folder / "submission.csv"
    opts = ["--pair-score", "learned", "--pair-model", str(model)] if model else ["--pair-score", "strength"]
    rc = entrypoint.main(["--data-dir", str(folder), "--output", str(out), "--cache-dir", str(cache), "--preset",
                          preset, "--quiet", *opts, *extra])
    if rc != 0:
        raise SystemExit(f"main.py failed on scenario {sid} ({rc})")
    return pd.read_csv(out, dtype={"query_id": str, "database_image_id": str})


def head_info(path: Path) -> dict:
    """How a pair model names the global head it reads: its file and SHA-256."""
    from matcher.io.weights import file_sha256

    return {"file": str(path), "sha256": file_sha256(path)}


def crossfit_head_similarity(table: pd.DataFrame, fold_emb: dict[int, dict[str, np.ndarray]],
                             fold_of: dict[str, int]) -> np.ndarray:
    """Per pair, the head similarity by the fold heads that never saw the pair's whales together: a pair within
    one fold is scored by that fold's head (trained without it), a pair across folds by each of its two folds'
    heads (each saw one of the whales, never both) and the two averaged."""
    from matcher.pairs.model import head_similarity

    out = np.empty(len(table))
    for n, (a, b, wa, wb) in enumerate(zip(table["image_a"], table["image_b"], table["whale_a"], table["whale_b"])):
        heads = sorted({fold_of[wa], fold_of[wb]})
        out[n] = np.mean([head_similarity({"embedding": fold_emb[f][a]}, {"embedding": fold_emb[f][b]})
                          for f in heads])
    return out


def head_features(table: pd.DataFrame, args) -> tuple[pd.DataFrame, dict[str, Path]]:
    """The table with its cross-fitted ``head_similarity`` (:func:`crossfit_head_similarity`), and the head
    trained without each development scenario's whales, by scenario id (``oof_heads.py``; trained now where
    its cache lacks it)."""
    from training import oof_heads
    from training.head_training import train_settings

    photos = oof_heads.load_photos(args.catalogue, args.cache_dir)
    wanted = oof_heads.exclusions(photos, args.dev, 5, args.seed)
    fold_emb, scenario_heads = {}, {}
    train = train_settings(args, prefix="head-")
    for name, excluded in sorted(wanted.items()):
        path, emb = oof_heads.trained_head(photos, excluded, args.cache_dir, args.seed, train)
        if name.startswith("fold"):
            fold_emb[int(name[4:])] = emb
        else:
            scenario_heads[name] = path
    fold_of = whale_folds(pd.concat([table["whale_a"], table["whale_b"]]), 5, args.seed)
    return table.assign(head_similarity=crossfit_head_similarity(table, fold_emb, fold_of)), scenario_heads


def scenario_oof(table, photos, args, preset: str, tmp: Path, heads: dict[str, Path] | None = None
                 ) -> dict[str, pd.DataFrame]:
    """Per variant, the development scenarios' submissions ranked out of fold (see the module docstring);
    with ``heads`` (the head trained without each scenario's whales), the variants with the head's vote and
    the baseline they are measured against."""
    dev = layout.load(args.dev)
    whale = {p.id: p.whale_id for p in photos.values()}
    variants: dict[str, list[pd.DataFrame]] = {}
    engine = Engine(preset, args.cache_dir, "cpu", progress=False)
    for sc in dev.scenarios:
        ids = set(sc.queries["query_image_id"]) | set(sc.database)
        held = {whale[i] for i in ids}
        train = table[~table["whale_a"].isin(held) & ~table["whale_b"].isin(held)]
        log.info("scenario %s (%s): %d whales held out; model trained on %d pairs", sc.scenario_id,
                 sc.scenario_type, len(held), len(train))
        models = {}
        kinds = ((("evidence + metadata", True, False), ("evidence + metadata + head", True, True),
                  ("evidence + head", False, True)) if heads else
                 (("evidence", False, False), ("evidence + metadata", True, False)))
        for name, use_meta, use_head in kinds:
            path = tmp / f"model-{sc.scenario_id}-{int(use_meta)}{int(use_head)}.json"
            names = feature_names(use_meta, use_head)
            info = {"head": head_info(heads[sc.scenario_id])} if use_head else {}
            PairModel(names, engine.settings_key, fit(train, names, args.seed), info).save(path)
            models[name] = path
        if heads:
            runs = {
                "learned: evidence + metadata": (models["evidence + metadata"], [], False),
                "learned: evidence + metadata + head": (models["evidence + metadata + head"], [], False),
                "learned: evidence + metadata + head, no re-ranking": (models["evidence + metadata + head"],
                                                                       ["--rerank", "none"], False),
                "learned: evidence + metadata + head, metadata withheld": (models["evidence + metadata + head"],
                                                                           [], True),
                "learned: evidence + head": (models["evidence + head"], [], False),
            }
        else:
            runs = {
                "strength": (None, [], False), "strength, no re-ranking": (None, ["--rerank", "none"], False),
                "learned: evidence": (models["evidence"], [], False),
                "learned: evidence, no re-ranking": (models["evidence"], ["--rerank", "none"], False),
                "learned: evidence + metadata": (models["evidence + metadata"], [], False),
                "learned: evidence + metadata, no re-ranking": (models["evidence + metadata"], ["--rerank", "none"],
                                                                False),
                "learned: evidence + metadata, metadata withheld": (models["evidence + metadata"], [], True),
            }
        for label, (model, extra, blank) in runs.items():
            sub = rank_scenario(args.dev, sc.scenario_id, tmp, args.cache_dir, preset, extra, model, blank)
            variants.setdefault(label, []).append(sub)
    return {k: pd.concat(v, ignore_index=True) for k, v in variants.items()}


def shipped_head() -> Path:
    """The global head the shipped pair model reads (the preset's stage-0 head, ``make train-global``)."""
    from matcher.io import weights

    name = presets.GLOBAL_DESCRIPTORS["learned-disk"]["weights"]
    path = weights.locate(name)
    if path is None:
        raise SystemExit(f"{name}: no global head to ship the pair model with (make train-global)")
    return path


def markdown(tables: dict[str, pd.DataFrame]) -> str:
    types = list(next(iter(tables.values()))["type"])
    lines = ["| score (out of fold) | " + " | ".join(types) + " |", "|---|" + "---:|" * len(types)]
    for name, t in tables.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in t["map20"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogue", type=Path, default=REPO.parent / "shared" / "belugas")
    p.add_argument("--cache-dir", type=Path, default=config.default_cache_dir())
    p.add_argument("--preset", default=presets.DEFAULT_PIPELINE, choices=sorted(presets.PIPELINES))
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="train for the preset with this setting changed (see benchmarks/accuracy.py)")
    p.add_argument("--dev", type=Path, default=REPO / "data" / "dev")
    p.add_argument("--labels", type=Path, default=REPO / "data" / "dev_labels.csv")
    p.add_argument("--out", type=Path, default=None, help="where to write the shipped model (default: nowhere)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--similar", type=int, default=15, help="hard negatives per photo: other whales most like it")
    p.add_argument("--random", type=int, default=5, help="random negatives per photo")
    p.add_argument("--same-date", type=int, default=0, help="negatives per photo taken the same day (other whales)")
    p.add_argument("--skip-scenarios", action="store_true", help="pair-level figures only")
    p.add_argument("--append", type=Path, default=None, help="append the tables to this Markdown file")
    p.add_argument("--head", action="store_true",
                   help="add the global head's vote (head_similarity) as a feature (see the module docstring)")
    add_cross_options(p, prefix="head-")  # the heads' settings (--head-cross-encounter ...; train_global.py's)
    p.add_argument("--submissions", type=Path, default=None,
                   help="keep each variant's out-of-fold submission (all scenarios) in this folder")
    args = p.parse_args(argv)
    config.setup_logging(False)
    preset = presets.variant(args.preset, args.set)
    started = time.perf_counter()
    photos = read_photos(args.catalogue / "metadata.csv")
    engine = Engine(preset, args.cache_dir, None)
    t0 = time.perf_counter()
    shas, bad = engine.prepare({i: p.path for i, p in photos.items()})
    t_features = time.perf_counter() - t0
    pairs = pair_dataset.sample_pairs(list(photos.values()), shas, engine, args.seed, args.similar, args.same_date,
                                      args.random)
    log.info("%d pairs (%s)", len(pairs), ", ".join(f"{k} {v}" for k, v in pairs["kind"].value_counts().items()))
    t0 = time.perf_counter()
    table = pair_dataset.feature_table(pairs, photos, shas, engine)
    t_pairs = time.perf_counter() - t0
    lines = [f"Catalogue {args.catalogue.name}: {len(photos)} photos ({len(bad)} unusable) of "
             f"{len({p.whale_id for p in photos.values()})} whales; features {t_features:.0f} s "
             f"({engine.stats.features_extracted} extracted now), {len(table)} pairs verified in {t_pairs:.0f} s "
             f"({engine.verified()} now); preset {preset} on {engine.device}; {dt.date.today().isoformat()}.",
             "Pairs: " + ", ".join(f"{k} {v}" for k, v in table["kind"].value_counts().items())
             + f"; {int(table['label'].sum())} same whale."]
    heads = None
    if args.head:
        t0 = time.perf_counter()
        table, heads = head_features(table, args)
        lines.append(f"Head vote: cross-fitted head similarities and {len(heads)} scenario heads ready in "
                     f"{time.perf_counter() - t0:.0f} s (oof_heads.py; cached heads reused).")
    oof, held = {}, None
    kinds = ((("evidence + metadata", True, False), ("evidence + metadata + head", True, True))
             if args.head else (("evidence", False, False), ("evidence + metadata", True, False)))
    for name, use_meta, use_head in kinds:
        oof[name], held = pair_oof(table, feature_names(use_meta, use_head), args.seed)
        lines.append(f"Held-out pairs, {name}: ROC AUC {oof[name]['auc']} (strength {oof[name]['strength_auc']}), "
                     f"average precision {oof[name]['ap']} (strength {oof[name]['strength_ap']}) on "
                     f"{oof[name]['pairs']} pairs, 5 folds split by whale.")
    ranking = {}
    if not args.skip_scenarios:
        labels = read_csv(args.labels, LABEL_COLUMNS)[list(LABEL_COLUMNS)]
        queries = scenario_of_queries(labels, args.dev)
        with tempfile.TemporaryDirectory(prefix="whalematch-oof-") as tmp:
            subs = scenario_oof(table, photos, args, preset, Path(tmp), heads)
        ranking = {name: score_by_type(sub, labels, queries) for name, sub in subs.items()}
        if args.submissions:
            args.submissions.mkdir(parents=True, exist_ok=True)
            for name, sub in subs.items():
                sub.to_csv(args.submissions / (name.replace(":", "").replace(",", "").replace(" ", "-") + ".csv"),
                           index=False)
        lines += ["", markdown(ranking)]
    names = feature_names(True, args.head)
    model = PairModel(names, engine.settings_key, fit(table, names, args.seed))
    importance = dict(zip(names, model.booster.feature_importance("gain")))
    top = sorted(importance.items(), key=lambda kv: -kv[1])
    total = sum(importance.values()) or 1.0
    lines += ["", "Feature importance (share of the gain, shipped model): "
              + ", ".join(f"{k} {v / total:.3f}" for k, v in top[:12])]
    cal = calibration(held, preset, engine.settings_key)
    lines.append(f"P(same whale) at even odds, isotonic on the held-out predictions: ECE {cal.heldout['ece']} "
                 f"(raw model {cal.heldout['raw_model_ece']}), Brier {cal.heldout['brier']} (each fold calibrated "
                 f"on the others).")
    model.info = {
        "trained_on": {"catalogue": args.catalogue.name, "photos": len(shas), "pairs": int(len(table)),
                       "positives": int(table["label"].sum()), "pairs_sha256": pair_dataset.digest(table),
                       "photos_sha256_16": photo_fingerprints(shas.values()),
                       "kinds": {k: int(v) for k, v in table["kind"].value_counts().items()}},
        "params": {**PARAMS, "rounds": ROUNDS, "blank_metadata_share": BLANK_SHARE, "seed": args.seed,
                   "increasing": list(INCREASING)},
        "out_of_fold_pairs": oof,
        "out_of_fold_ranking": {k: {r.type: round(float(r.map20), 4) for r in t.itertuples()}
                                for k, t in ranking.items()},
        "calibration": cal.to_json(),
        **({"head": {**head_info(shipped_head()), "file": shipped_head().name,
                     "training_values": "cross-fitted: each pair's head similarity by fold heads that never saw its "
                                        "whales together (training/oof_heads.py)"}} if args.head else {}),
        "date": dt.date.today().isoformat(),
        "command": "python -m training.train_verifier " + shlex.join(argv if argv is not None else sys.argv[1:]),
    }
    if args.out:
        model.save(args.out)
        lines.append(f"Wrote {args.out}.")
    lines.append(f"Run time {time.perf_counter() - started:.0f} s.")
    print("\n".join(lines))
    if args.append:
        with open(args.append, "a", encoding="utf-8") as fh:
            fh.write(f"\n### Learned pair model ({preset})\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
