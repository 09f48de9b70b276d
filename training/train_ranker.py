"""Train the ranker (:mod:`matcher.cascade.ranker`), measure it out of fold on the large benchmark, ship it.

    python -m training.train_ranker --large data/dev-large --large-labels data/dev-large_labels.csv \\
        --cache-dir submission/cache [--dev data/dev --labels data/dev_labels.csv] \\
        [--out weights/ranker-disk-mnn.json] [--seed 0]

1. Every query of the large development benchmark (and, with ``--dev``, of the quick set) becomes a ranking
   group: each of its candidates (every database photo but its own) with its verdict (verified where the
   cache lacks it), its ranker features (:func:`matcher.cascade.ranker.query_rows`) and whether it shows the
   query's whale. A share of the groups (:data:`BLANK_SHARE`) is trained with the photos' metadata withheld,
   so that the ranker also ranks photos without dates.
2. Out of fold by whale (:mod:`training.whale_folds`, the folds of every learned model here): the ranker of
   fold f is trained on the groups of the other folds' queries, less the candidates of fold f's whales, and
   ranks fold f's queries of the large benchmark through the cascade ``main.py`` runs
   (:func:`matcher.cascade.run_cascade`, every candidate verified, no stage 2). The strength ranks the same
   queries the same way. Per scenario type and kind, the challenge's mAP@20.
3. The kinds (:data:`matcher.cascade.ranker.KINDS`) where the ranker beat the strength out of fold are
   written into the model file: ``--pair-score auto`` ranks with it there and with the strength elsewhere.
4. The shipped ranker is trained on every group (fixed seed) and saved with its settings key, what it was
   trained on (counts, a hash, the photos' fingerprints), the out-of-fold figures and this command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import logging
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from matcher import config, presets
from matcher.cascade import CascadeSettings, run_cascade
from matcher.cascade import ranker as ranking
from matcher.challenge import layout
from matcher.challenge.evaluate import LABEL_COLUMNS, scenario_of_queries, score_by_type
from matcher.challenge.run import ranked_rows
from matcher.engine import Engine, canonical
from matcher.io.catalogue import read_photos
from matcher.io.tables import read_csv
from matcher.pairs.model import feature_names as pair_features
from matcher.pairs.model import feature_row, photo_fingerprints
from training.whale_folds import whale_folds

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("train_ranker")
PARAMS = {"objective": "lambdarank", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 50,
          "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
          "lambdarank_truncation_level": 40, "deterministic": True, "force_row_wise": True, "num_threads": 2,
          "verbose": -1}
ROUNDS = 300
BLANK_SHARE = 0.2  # of the training groups, this share has the photos' metadata withheld
WIN_MARGIN = 0.0  # a kind is ranked by the ranker where its out-of-fold mAP@20 beats the strength's by more


@dataclass
class Groups:
    """Ranking groups, one per query: candidates' rows (ranker features), labels, whales, query per row."""

    rows: np.ndarray  # (n, features)
    label: np.ndarray  # (n,) bool
    query: np.ndarray  # (n,) query id per row, rows of a query contiguous
    query_whale: np.ndarray  # (n,)
    candidate_whale: np.ndarray  # (n,)
    blanked: np.ndarray  # (n,) bool: metadata withheld for this group
    candidate: np.ndarray  # (n,) the candidate's image id
    shas: set[str] = field(default_factory=set)  # the content hashes of the photos the groups hold

    def take(self, keep: np.ndarray) -> Groups:
        return Groups(*(a[keep] for a in (self.rows, self.label, self.query, self.query_whale, self.candidate_whale,
                                          self.blanked, self.candidate)), self.shas)

    def sizes(self) -> np.ndarray:
        _, first, counts = np.unique(self.query, return_index=True, return_counts=True)
        return counts[np.argsort(first)]


def build_groups(roots: list[Path], engine: Engine, photos: dict, seed: int, blank_share: float = BLANK_SHARE
                 ) -> Groups:
    """The ranking groups of every query of the given challenge folders (see the module docstring); a share
    ``blank_share`` of them with the photos' metadata withheld."""
    rng = np.random.default_rng(seed)
    names = pair_features(True)
    meta = {i: {"date": p.date, "viewpoint": p.viewpoint} for i, p in photos.items()}
    whale = {i: p.whale_id for i, p in photos.items()}
    parts = {k: [] for k in ("rows", "label", "query", "qw", "cw", "blank", "cand")}
    used: set[str] = set()
    for root in roots:
        data = layout.load(root)
        paths, bad = data.image_paths(data.image_ids())
        shas, _ = engine.prepare(paths, bad)
        used.update(shas.values())
        for qid, q, _, database in data.query_tasks():
            cands = [c for c in database if c != q and c in shas and q in shas]
            if not cands:
                continue
            verdicts = engine.verdicts({canonical(shas[q], shas[c]) for c in cands})
            blank = bool(rng.random() < blank_share)
            qm = None if blank else meta[q]
            base = np.array([feature_row(verdicts[canonical(shas[q], shas[c])], qm, None if blank else meta[c], names)
                             for c in cands])
            parts["rows"].append(ranking.query_rows(base))
            parts["label"].append(np.array([whale[c] == whale[q] for c in cands]))
            parts["query"].append(np.full(len(cands), f"{root.name}/{qid}", dtype=object))
            parts["qw"].append(np.full(len(cands), whale[q], dtype=object))
            parts["cw"].append(np.array([whale[c] for c in cands], dtype=object))
            parts["blank"].append(np.full(len(cands), blank))
            parts["cand"].append(np.array(cands, dtype=object))
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Groups(cat["rows"], cat["label"], cat["query"], cat["qw"], cat["cw"], cat["blank"], cat["cand"], used)


def without_fold(groups: Groups, fold_of: dict, f: int) -> Groups:
    """The groups of the other folds' queries, less every candidate of fold ``f``'s whales: what a model that
    ranks fold ``f`` out of fold is trained on."""
    keep = np.array([fold_of[w] != f for w in groups.query_whale]) & \
        np.array([fold_of[w] != f for w in groups.candidate_whale])
    return groups.take(keep)


def fit(groups: Groups, seed: int) -> str:
    """LightGBM lambdarank on the groups; LightGBM's model text."""
    import lightgbm

    data = lightgbm.Dataset(groups.rows, groups.label.astype(int), group=groups.sizes())
    return lightgbm.train({**PARAMS, "seed": seed}, data, ROUNDS).model_to_string()


def fit_classifier(groups: Groups, seed: int, columns: int | None = None) -> object:
    """A pair classifier on the same rows (LightGBM, binary objective, the pair model's own parameters and
    monotone constraints), on the first ``columns`` features (None: all, the relative ones too)."""
    import lightgbm

    from training import train_verifier

    names = ranking.feature_names()[: columns or groups.rows.shape[1]]
    params = {**train_verifier.PARAMS, "seed": seed,
              "monotone_constraints": [int(n in train_verifier.INCREASING) for n in names]}
    data = lightgbm.Dataset(groups.rows[:, : len(names)], groups.label.astype(int))
    return lightgbm.train(params, data, train_verifier.ROUNDS)


def strength_score(groups: Groups, engine: Engine) -> np.ndarray:
    """The engine's score of each row's strength, ``s / (s + scale)``, in [0, 1) as the cascade writes it."""
    s = groups.rows[:, ranking.feature_names().index("strength")].astype(np.float64)
    return s / (s + float(engine.conf["verifier"]["score_scale"]))


def direct_rows(groups: Groups, scores: np.ndarray) -> pd.DataFrame:
    """Submission rows ranked by ``scores`` (in [0, 1]) over each group's candidates (every candidate verified,
    no re-ranking: the order the cascade gives with these scores), query ids without their folder."""
    from matcher.challenge.submission import SUBMISSION_COLUMNS, TOP_K, distinct_scores

    rows = []
    for q in dict.fromkeys(groups.query):
        idx = np.flatnonzero(groups.query == q)
        top = idx[np.argsort(-scores[idx], kind="stable")[:TOP_K]]
        for c, sc in zip(groups.candidate[top], distinct_scores([float(v) for v in scores[top]])):
            rows.append((q.split("/", 1)[1], c, sc))
    return pd.DataFrame(rows, columns=SUBMISSION_COLUMNS)


def digest(groups: Groups) -> str:
    text = "\n".join(f"{q},{int(y)}" for q, y in zip(groups.query, groups.label))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rank_queries(engine: Engine, data, query_ids: set[str], settings: CascadeSettings, metadata: dict
                 ) -> pd.DataFrame:
    """The submission rows of these queries of ``data``, ranked by the cascade main.py runs."""
    tasks = [t for t in data.query_tasks() if t[0] in query_ids]
    paths, bad = data.image_paths({i for t in tasks for i in (t[1], *t[3])})
    shas, _ = engine.prepare(paths, bad)
    result = run_cascade(engine, tasks, shas, settings, None, metadata)
    return ranked_rows([t[0] for t in tasks], result)


@dataclass(frozen=True)
class Variant:
    """One way of ranking the benchmark out of fold: the pair score, K1 (None: every candidate), stage 0 (its
    learned head trained without the fold's whales, when ``fold_head``), re-ranking and the metadata."""

    label: str
    pair_score: str = "ranker"
    k1: int | None = None
    global_descriptor: str = "auto"
    fold_head: bool = False
    rerank_top: int | None = None  # re-rank with the graph of each query's top N (None: no re-ranking)
    withhold_metadata: bool = False


def variants(args) -> list[Variant]:
    """The default comparison (strength, ranker, ranker without metadata, every candidate verified), and what
    ``--rerank-top`` and ``--shortlists`` add."""
    out = [Variant("strength", "strength"), Variant("ranker"), Variant("ranker, metadata withheld",
                                                                      withhold_metadata=True),
           Variant("shipped pair model (in sample: fitted on every photo)", "learned")]
    for top in args.rerank_top:
        out += [Variant(f"strength, re-ranked (top {top})", "strength", rerank_top=top),
                Variant(f"ranker, re-ranked (top {top})", rerank_top=top)]
    for k in args.shortlists:
        for stage0, head in (("asmk-disk", False), ("learned-disk", True)):
            out += [Variant(f"ranker, K1 {k} of {stage0}", k1=k, global_descriptor=stage0, fold_head=head)]
    return out


def fold_heads(args, photos: dict, fold_of: dict) -> dict[int, Path]:
    """The learned stage-0 head of each fold, trained without the fold's whales (training.oof_heads, cached)."""
    import argparse as _argparse

    from training import oof_heads
    from training.head_training import add_cross_options, train_settings

    p = _argparse.ArgumentParser()
    add_cross_options(p)
    train = train_settings(p.parse_args([]))
    pool = oof_heads.load_photos(args.catalogue, args.cache_dir)
    folds = sorted(set(fold_of.values()))
    return {f: oof_heads.trained_head(pool, {w for w, k in fold_of.items() if k == f}, args.cache_dir, args.seed,
                                      train)[0] for f in folds}


def out_of_fold(args, groups: Groups, engine: Engine, photos: dict, fold_of: dict, tmp: Path,
                roots: list[Path]) -> dict[Path, dict[str, pd.DataFrame]]:
    """Per benchmark folder and variant, its submission ranked out of fold (see the module docstring): the
    queries of fold f by the ranker (and the stage-0 head) trained without fold f's whales."""
    whale = {i: p.whale_id for i, p in photos.items()}
    folds = sorted(set(fold_of.values()))
    rankers = {}
    for f in folds:
        train = without_fold(groups, fold_of, f)
        rankers[f] = tmp / f"ranker-fold{f}.json"
        ranking.Ranker(ranking.feature_names(), engine.settings_key, fit(train, args.seed)).save(rankers[f])
        log.info("fold %d: ranker trained on %d groups (%d rows)", f, len(np.unique(train.query)), len(train.rows))
    wanted = variants(args)
    heads = fold_heads(args, photos, fold_of) if any(v.fold_head for v in wanted) else {}
    out = {}
    extra = classifiers_out_of_fold(args, groups, engine, photos, fold_of) if args.classifiers else {}
    for root in roots:
        data = layout.load(root)
        meta = data.photo_metadata()
        blank = {i: {} for i in meta}
        query_fold = {qid: fold_of[whale[q]] for qid, q, _, _ in data.query_tasks()}
        out[root] = {}
        for v in wanted:
            parts = []
            for f in folds:
                mine = {qid for qid, k in query_fold.items() if k == f}
                settings = CascadeSettings(k1=v.k1, k2=0, budget_s=None, stage2="none",
                                           global_descriptor=v.global_descriptor, pair_score=v.pair_score,
                                           ranker=str(rankers[f]) if v.pair_score == "ranker" else None,
                                           global_head=str(heads[f]) if v.fold_head else None,
                                           rerank=v.rerank_top is not None, rerank_top=v.rerank_top)
                parts.append(rank_queries(engine, data, mine, settings, blank if v.withhold_metadata else meta))
            out[root][v.label] = pd.concat(parts, ignore_index=True)
            log.info("%s: %s ranked", root.name, v.label)
    out[args.large].update(extra)
    return out


def classifiers_out_of_fold(args, groups: Groups, engine: Engine, photos: dict, fold_of: dict
                            ) -> dict[str, pd.DataFrame]:
    """The large benchmark ranked out of fold by pair classifiers trained on the ranker's own rows: the pair
    model's recipe on its features, and on the ranker's (with the relative ones), each trained without the
    fold's whales; and by the strength read from the same rows (a check against the cascade's ranking)."""
    evaluate = build_groups([args.large], engine, photos, args.seed, blank_share=0.0)
    n_pair = len(pair_features(True))
    names = ranking.feature_names()
    scores = {"pair classifier (pair model's recipe and features), out of fold": np.zeros(len(evaluate.rows)),
              "pair classifier with the relative features, out of fold": np.zeros(len(evaluate.rows)),
              "strength (read from the same rows)": strength_score(evaluate, engine)}
    for f in sorted(set(fold_of.values())):
        train = without_fold(groups, fold_of, f)
        mine = np.array([fold_of[w] == f for w in evaluate.query_whale])
        for label, columns in zip(list(scores)[:2], (n_pair, None)):
            model = fit_classifier(train, args.seed, columns)
            scores[label][mine] = model.predict(evaluate.rows[mine][:, : columns or len(names)])
        log.info("fold %d: pair classifiers trained", f)
    return {label: direct_rows(evaluate, s) for label, s in scores.items()}


def by_kind(table: pd.DataFrame) -> dict[str, tuple[int, float]]:
    """(queries, mAP@20) per scenario kind (:data:`matcher.cascade.ranker.TYPE_KINDS`), queries pooled, and
    ``overall``."""
    t = table[table["type"] != "overall"].assign(kind=lambda d: d["type"].map(ranking.TYPE_KINDS))
    out = {kind: (int(g["queries"].sum()), float((g["map20"] * g["queries"]).sum() / g["queries"].sum()))
           for kind, g in t.groupby("kind")}
    row = table[table["type"] == "overall"].iloc[0]
    out["overall"] = (int(row["queries"]), float(row["map20"]))
    return out


def kinds_won(tables: dict[str, pd.DataFrame]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The kinds where the ranker's out-of-fold mAP@20 beats the strength's by more than :data:`WIN_MARGIN`, and
    per score the mAP@20 per kind. ``unknown`` (photos without metadata) is decided by the ranker with the
    metadata withheld against the strength, over every query."""
    kinds = {name: {k: v for k, (_, v) in by_kind(t).items()} for name, t in tables.items()}
    won = [k for k in ranking.KINDS if k in kinds["ranker"] and kinds["ranker"][k] > kinds["strength"][k] + WIN_MARGIN]
    blank = kinds.get("ranker, metadata withheld", {}).get("overall")
    if blank is not None and blank > kinds["strength"]["overall"] + WIN_MARGIN:
        won.append("unknown")
    return won, kinds


def kind_markdown(kinds: dict[str, dict[str, float]]) -> str:
    names = [k for k in (*ranking.KINDS, "overall") if k in kinds["strength"]]
    lines = ["| score (out of fold by whale) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for score, values in kinds.items():
        lines.append(f"| {score} | " + " | ".join(f"{values[k]:.3f}" if k in values else "" for k in names) + " |")
    return "\n".join(lines)


def markdown(tables: dict[str, pd.DataFrame]) -> str:
    types = list(next(iter(tables.values()))["type"])
    lines = ["| score (out of fold by whale) | " + " | ".join(types) + " |", "|---|" + "---:|" * len(types)]
    for name, t in tables.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in t["map20"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogue", type=Path, default=REPO.parent / "shared" / "belugas")
    p.add_argument("--cache-dir", type=Path, default=config.default_cache_dir())
    p.add_argument("--preset", default=presets.DEFAULT_PIPELINE, choices=sorted(presets.PIPELINES))
    p.add_argument("--large", type=Path, default=REPO / "data" / "dev-large")
    p.add_argument("--large-labels", type=Path, default=REPO / "data" / "dev-large_labels.csv")
    p.add_argument("--dev", type=Path, default=None,
                   help="the quick set's folder: its queries are ranked out of fold too (trained on: --train-dev)")
    p.add_argument("--labels", type=Path, default=REPO / "data" / "dev_labels.csv", help="the quick set's labels")
    p.add_argument("--train-dev", action="store_true", help="train on the quick set's queries as well")
    p.add_argument("--rerank-top", type=int, action="append", default=[],
                   help="also rank re-ranked with the graph of each query's top N candidates (repeatable)")
    p.add_argument("--shortlists", type=int, action="append", default=[],
                   help="also rank with stage 1 on the top K1 stage-0 candidates only, of ASMK and of the learned "
                        "head (trained without the fold's whales) (repeatable)")
    p.add_argument("--classifiers", action="store_true",
                   help="also rank the large benchmark out of fold by pair classifiers (binary objective) trained "
                        "on the same rows: with the pair model's features, and with the relative ones too")
    p.add_argument("--out", type=Path, default=None, help="where to write the shipped ranker (default: nowhere)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-oof", action="store_true", help="ship without the out-of-fold figures")
    p.add_argument("--append", type=Path, default=None, help="append the tables to this Markdown file")
    args = p.parse_args(argv)
    config.setup_logging(False)
    started = time.perf_counter()
    photos = read_photos(args.catalogue / "metadata.csv")
    engine = Engine(args.preset, args.cache_dir, None, progress=False)
    roots = [args.large] + ([args.dev] if args.dev else [])
    trained = [args.large] + ([args.dev] if args.dev and args.train_dev else [])
    t0 = time.perf_counter()
    groups = build_groups(trained, engine, photos, args.seed)
    lines = [f"Ranking groups: {len(np.unique(groups.query))} queries of {', '.join(r.name for r in trained)}, "
             f"{len(groups.rows)} candidates ({int(groups.label.sum())} of the query's whale), built in "
             f"{time.perf_counter() - t0:.0f} s ({engine.verified()} pairs verified now); preset {args.preset}; "
             f"{dt.date.today().isoformat()}."]
    fold_of = whale_folds([p.whale_id for p in photos.values()], 5, args.seed)
    tables, won, per_kind, quick = {}, [], None, {}
    if not args.skip_oof:
        with tempfile.TemporaryDirectory(prefix="whalematch-ranker-") as tmp:
            subs = out_of_fold(args, groups, engine, photos, fold_of, Path(tmp), roots)
        for root, labels_path in ((args.large, args.large_labels), (args.dev, args.labels)):
            if root is None:
                continue
            labels = read_csv(labels_path, LABEL_COLUMNS)[list(LABEL_COLUMNS)]
            queries = scenario_of_queries(labels, root)
            scored = {name: score_by_type(sub, labels, queries) for name, sub in subs[root].items()}
            if root == args.large:
                tables = scored
                won, per_kind = kinds_won(tables)
                lines += ["", f"Large benchmark ({root}):", "", markdown(tables), "",
                          "Per scenario kind (queries pooled):", "", kind_markdown(per_kind), "",
                          f"Kinds where the ranker beats the strength out of fold (auto ranks them with it): "
                          f"{', '.join(won) or 'none'}."]
            else:
                quick = scored
                lines += ["", f"Quick set ({root}, databases of 120 photos):", "", markdown(scored)]
    ranker = ranking.Ranker(ranking.feature_names(), engine.settings_key, fit(groups, args.seed))
    ranker.info = {
        "kinds": won,
        "trained_on": {"folders": [r.name for r in trained], "queries": int(len(np.unique(groups.query))),
                       "rows": int(len(groups.rows)), "positives": int(groups.label.sum()),
                       "groups_sha256": digest(groups), "photos_sha256_16": photo_fingerprints(groups.shas)},
        "params": {**PARAMS, "rounds": ROUNDS, "blank_metadata_share": BLANK_SHARE, "seed": args.seed},
        "out_of_fold_ranking": {k: {r.type: round(float(r.map20), 4) for r in t.itertuples()} for k, t in
                                tables.items()},
        "out_of_fold_quick_set": {k: {r.type: round(float(r.map20), 4) for r in t.itertuples()} for k, t in
                                  quick.items()},
        "out_of_fold_by_kind": {name: {k: round(v, 4) for k, v in values.items()} for name, values in
                                (per_kind or {}).items()},
        "split": "5 folds by whale: a fold's queries ranked by a ranker trained without its whales",
        "date": dt.date.today().isoformat(),
        "command": "python -m training.train_ranker " + shlex.join(argv if argv is not None else sys.argv[1:]),
    }
    if args.out:
        ranker.save(args.out)
        lines.append(f"Wrote {args.out}.")
    lines.append(f"Run time {time.perf_counter() - started:.0f} s.")
    print("\n".join(lines))
    if args.append:
        with open(args.append, "a", encoding="utf-8") as fh:
            fh.write(f"\n### Ranker ({args.preset})\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
