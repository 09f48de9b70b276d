"""Train the learned global descriptor head, measure it out of fold (folds split by whale), and ship it.

    python -m training.train_global --catalogue ../shared/belugas --cache-dir submission/cache \
        --dev data/dev --labels data/dev_labels.csv --out weights/global-head-disk-v1.pt [--seed 0]

1. Every photo of the catalogue is prepared by the engine (DISK features cached; nothing is extracted
   when the cache holds them) and turned into the head's keypoint inputs
   (:func:`matcher.features.global_head.keypoint_inputs`).
2. Out of fold: the whales are dealt into ``--folds`` folds; fold ``f``'s head is trained with
   sub-center ArcFace on the photos of the other folds' whales only. A development query is scored by
   the head of its whale's fold, so neither the query nor any of its true matches was seen in training
   (the database's other whales may have been: they are negatives).
3. On the development scenarios (one pass of the cascade with stage 1 on every candidate, stage 2 off,
   verdicts from the pair store): recall of the true matches in the top K of the candidates for the head,
   ASMK, mean pooling and stage 1 (``benchmarks/cascade.py``'s table); mAP@20 per scenario type of the head
   alone, the engine alone, and the two fused by a logistic regression fitted out of fold (on the
   queries of the other folds' whales), with and without re-ranking.
4. The shipped head is trained on every photo with a fixed seed and saved as a state dict (loaded with
   ``weights_only=True``) beside a JSON of its settings, the data it saw and the figures of 2-3.

``--skip-eval`` trains and ships only. Threads: ``--threads`` (default 1: the machine is shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from matcher import config, presets
from matcher.features.global_head import keypoint_inputs
from matcher.features.global_head import similarity as cosine
from training import oof_heads
from training.head_training import CONF, TRAIN, add_cross_options, embed_all, train_head, train_settings
from training.whale_folds import whale_folds

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("train_global")
KS = [10, 20, 40, 80]
def data_digest(photos: dict, shas: dict[str, str]) -> str:
    """SHA-256 of the (image id, content hash, whale) rows the head is trained on."""
    rows = "\n".join(f"{i},{shas[i]},{photos[i].whale_id}" for i in sorted(shas))
    return hashlib.sha256(rows.encode()).hexdigest()


def flipped_embeddings(fold_heads: dict[int, Path], emb: dict[int, dict[str, np.ndarray]], engine, photos, shas,
                       ids) -> dict[int, dict[str, np.ndarray]]:
    """Per fold head, each photo's test-time-flip embedding: the mean of its embedding and its mirror's (the
    mirrored photo's DISK features, extracted once and cached), normalised and stored as int8."""
    from matcher.features.global_head import GlobalHead, flip_average
    from matcher.features.stage import mirror_key

    engine.mirrored_features({shas[i]: photos[i].path for i in ids})
    out = {}
    for f, path in fold_heads.items():
        head = GlobalHead.load(path)
        out[f] = {}
        for i in ids:
            out[f][i] = flip_average(emb[f][i], head.embed(engine.feature(mirror_key(shas[i]))))
    return out


# --- evaluation on the development scenarios ------------------------------------------------------


def cascade_pass(challenge, engine):
    """One cascade pass: stage 0 ASMK, stage 1 on every candidate (verdicts from the store) scored by the
    verdict's strength (the learned pair model in ``weights/`` was trained on every photo, the development
    ones too: its scores here would be in-sample), re-ranking on (``q.rr``), stage 2 off."""
    from matcher.cascade import CascadeSettings
    from matcher.challenge.run import run

    return run(challenge, engine, CascadeSettings(k1=None, k2=0, stage2="none", global_descriptor="asmk-disk",
                                                  rerank=True, pair_score="strength"))


def with_stage0(result, sims: dict[str, np.ndarray], rerank: bool = True):
    """A copy of the cascade result whose stage-0 scores (and order) are ``sims`` per query (per usable
    candidate, in [0, 1]); ``rerank=False`` also drops the re-ranked stage-1 scores."""
    queries = {}
    for qid, q in result.queries.items():
        s0 = sims.get(qid, q.s0)
        order0 = np.lexsort((q.id_rank, -s0)) if len(q.usable) else q.order0
        queries[qid] = dataclasses.replace(q, s0=np.asarray(s0, np.float64), order0=order0,
                                           rr=q.rr if rerank else None)
    return dataclasses.replace(result, queries=queries)


def head_sims(result, emb: dict[int, dict[str, np.ndarray]], fold_of_query: dict[str, int]):
    """Per query, the cosine (mapped to [0, 1]) of its head's embeddings with each usable candidate."""
    out = {}
    for qid, q in result.queries.items():
        if not len(q.usable):
            continue
        e = emb[fold_of_query[qid]]
        cands = np.stack([e[q.candidates[i]] for i in q.usable])
        out[qid] = (1.0 + np.clip(cosine(e[q.query_image][None], cands)[0], -1.0, 1.0)) / 2.0
    return out


def stage_sims(result, global_stage, shas_by_id) -> dict[str, np.ndarray]:
    """Per query, a :class:`GlobalStage`'s similarity with each usable candidate."""
    global_stage.describe(sorted(set(shas_by_id.values())))
    out = {}
    for qid, q in result.queries.items():
        if len(q.usable):
            out[qid] = global_stage.scores(shas_by_id[q.query_image], [shas_by_id[q.candidates[i]] for i in q.usable])
    return out


def pair_rows(result, sims: dict[str, np.ndarray], relevant: dict[str, set], rerank: bool) -> pd.DataFrame:
    """One row per (query, usable candidate): head similarity, stage-1 score and strength (re-ranked or not),
    and whether it is a true match."""
    from matcher.cascade.ranking import stage1_values

    frames = []
    for qid, q in result.queries.items():
        if qid not in sims:
            continue
        pos = np.arange(len(q.usable))
        qq = q if rerank else dataclasses.replace(q, rr=None)
        sc, st = stage1_values(qq, pos, result.stage1, result.scale)
        rel = relevant.get(qid, set())
        frames.append(pd.DataFrame({"query_id": qid, "pos": pos, "head": sims[qid], "asmk": q.s0, "score1": sc,
                                    "strength": st, "label": [q.candidates[i] in rel for i in q.usable]}))
    return pd.concat(frames, ignore_index=True)


FUSION_FEATURES = ["head", "log_strength"]
STAGE0_FEATURES = ["head", "asmk"]


def fused_sims(rows: pd.DataFrame, fold_of_query: dict[str, int], features=FUSION_FEATURES
               ) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Per query, P(true match) from a logistic regression over ``features`` of its pairs (the head's
    similarity and the stage-1 strength by default), fitted on the pairs of the queries of the other folds'
    whales; and each fold's coefficients."""
    from sklearn.linear_model import LogisticRegression

    rows = rows.assign(log_strength=np.log1p(rows["strength"]), fold=rows["query_id"].map(fold_of_query))
    out, coefs = {}, []
    for f in sorted(rows["fold"].unique()):
        fit_on, test = rows[rows["fold"] != f], rows[rows["fold"] == f]
        model = LogisticRegression(C=1.0, max_iter=1000).fit(fit_on[features], fit_on["label"])
        coefs.append(dict(zip(["intercept", *features],
                              [round(float(model.intercept_[0]), 3), *np.round(model.coef_[0], 3).tolist()])))
        p = model.predict_proba(test[features])[:, 1]
        for qid, part in pd.Series(p, index=test.index).groupby(test["query_id"]):
            out[qid] = part.to_numpy()
    return out, coefs


def bridged_sims(result, sims: dict[str, np.ndarray], photos, engine, shas_by_id) -> dict[str, np.ndarray]:
    """The first place's bridge for lateral queries (against top photos): the query's best candidate by the head,
    ``d*``, then every candidate by the mean of the head's similarity and the stage-1 verdict score of
    ``(d*, candidate)`` (a top <-> top pair; verified by re-ranking, read from the pair store), ``d*`` first.
    A query uses its own database only. Top queries keep the head's order."""
    from matcher.pairs.store import canonical

    out = {}
    for qid, q in result.queries.items():
        if qid not in sims:
            continue
        s = np.asarray(sims[qid], np.float64)
        if photos[q.query_image].viewpoint == "top" or not len(s):
            out[qid] = s
            continue
        best = int(np.argmax(s))
        pivot = shas_by_id[q.candidates[q.usable[best]]]
        cands = [shas_by_id[q.candidates[i]] for i in q.usable]
        pairs = {canonical(pivot, c) for c in cands if c != pivot}
        verdicts = engine.verdicts(pairs, progress=False)
        v = np.array([1.0 if c == pivot else verdicts[canonical(pivot, c)]["score"] for c in cands])
        out[qid] = (s + v) / 2.0
    return out


def evaluate(args, inputs, photos, fold_of, emb, rerank_too: bool = True, emb_flip=None,
             head_of_query: dict | None = None) -> tuple[list[str], dict]:
    """The development tables (recall@K, mAP@20 per type) of the out-of-fold heads (and with test-time flip when
    ``emb_flip``), ASMK, mean pooling and the engine, alone and fused. ``emb``: embeddings per head, a query
    scored by the head of its whale's fold, or by ``head_of_query[query id]`` when given (the fusions are fitted
    by whale folds either way). Returns Markdown lines and the figures for the JSON."""
    import cascade as bench

    from matcher.cascade.global_descriptors import GlobalStage
    from matcher.challenge import layout
    from matcher.challenge.evaluate import LABEL_COLUMNS, scenario_of_queries
    from matcher.engine import Engine
    from matcher.io.tables import read_csv

    challenge = layout.load(args.dev)
    labels = read_csv(args.labels, LABEL_COLUMNS)[list(LABEL_COLUMNS)]
    qinfo = scenario_of_queries(labels, args.dev)
    qtypes = dict(zip(qinfo["query_id"], qinfo["scenario_type"].where(qinfo["scenario_type"] != "",
                                                                      qinfo["scenario"])))
    engine = Engine(presets.DEFAULT_PIPELINE, args.cache_dir, "cpu", progress=False)
    t0 = time.perf_counter()
    result = cascade_pass(challenge, engine)
    log.info("cascade pass %.0f s (stage 1 computed now: %d pairs)", time.perf_counter() - t0,
             result.pairs.get("stage1", 0))
    paths, bad = challenge.image_paths(challenge.image_ids())
    shas_by_id, _ = engine.prepare(paths, bad)
    fold_of_query = {qid: fold_of[photos[q.query_image].whale_id] for qid, q in result.queries.items()}
    relevant = labels.groupby("query_id")["database_image_id"].apply(set).to_dict()
    dbmax = max(len(q.order0) for q in result.queries.values())

    t0 = time.perf_counter()
    scored_by = head_of_query or fold_of_query
    sims = {"head": head_sims(result, emb, scored_by)}
    sim_seconds = time.perf_counter() - t0
    sims["mean"] = stage_sims(result, GlobalStage("mean-disk", engine), shas_by_id)
    rows = {rr: pair_rows(result, sims["head"], relevant, rr) for rr in (True, False)}
    sims["head+asmk"], coefs0 = fused_sims(rows[False], fold_of_query, STAGE0_FEATURES)
    variants = {"learned head (OOF)": with_stage0(result, sims["head"]), "ASMK": result,
                "head + ASMK (OOF)": with_stage0(result, sims["head+asmk"]),
                "mean pooling": with_stage0(result, sims["mean"])}
    if emb_flip is not None:
        sims["flip"] = head_sims(result, emb_flip, scored_by)
        variants["head + flip TTA (OOF)"] = with_stage0(result, sims["flip"])
    recall = {}
    for name, res in variants.items():
        table = bench.recall_table(res, labels, qtypes, KS, 0)
        recall[name] = table[[f"s0@{k}" for k in KS]].rename(columns=lambda c: c.replace("s0@", "@"))
    # stage 1's order breaks ties between equal verified scores by stage 0: ASMK's here, the engine's default
    table = bench.recall_table(result, labels, qtypes, KS, 0)
    recall["stage 1 (verified, all candidates)"] = table[[f"s1@{k}" for k in KS]].rename(
        columns=lambda c: c.replace("s1@", "@"))
    recall["chance"] = table[[f"chance@{k}" for k in KS]].rename(columns=lambda c: c.replace("chance@", "@"))

    maps = {"head alone (OOF)": bench.map_by_type(bench.submission_for(variants["learned head (OOF)"], 0, 0,
                                                                        "stage0"), labels, qtypes),
            "ASMK alone": bench.map_by_type(bench.submission_for(result, 0, 0, "stage0"), labels, qtypes),
            "head + ASMK (OOF)": bench.map_by_type(bench.submission_for(variants["head + ASMK (OOF)"], 0, 0,
                                                                        "stage0"), labels, qtypes)}
    if emb_flip is not None:
        maps["head + flip TTA alone (OOF)"] = bench.map_by_type(
            bench.submission_for(variants["head + flip TTA (OOF)"], 0, 0, "stage0"), labels, qtypes)
    coefs = {"stage 0: head + ASMK": coefs0}
    t0 = time.perf_counter()
    sims["bridge"] = bridged_sims(result, sims["head"], photos, engine, shas_by_id)
    log.info("bridge: %.0f s", time.perf_counter() - t0)
    maps["head with the lateral -> top bridge (OOF)"] = bench.map_by_type(
        bench.submission_for(with_stage0(result, sims["bridge"]), 0, 0, "stage0"), labels, qtypes)
    for rr in ((True, False) if rerank_too else (False,)):
        tag = "re-ranked" if rr else "no re-ranking"
        plain = with_stage0(result, {}, rerank=rr)
        maps[f"engine alone, {tag}"] = bench.map_by_type(bench.submission_for(plain, dbmax, 0), labels, qtypes)
        fused, coefs[tag] = fused_sims(rows[rr], fold_of_query)
        maps[f"engine + head fused (OOF), {tag}"] = bench.map_by_type(
            bench.submission_for(with_stage0(result, fused, rerank=rr), 0, 0, "stage0"), labels, qtypes)
        three = [*FUSION_FEATURES, "asmk"]
        fused, coefs[f"{tag}, with ASMK"] = fused_sims(rows[rr], fold_of_query, three)
        maps[f"engine + head + ASMK fused (OOF), {tag}"] = bench.map_by_type(
            bench.submission_for(with_stage0(result, fused, rerank=rr), 0, 0, "stage0"), labels, qtypes)
    maps = pd.DataFrame(maps).T
    pairs = sum(len(q.usable) for q in result.queries.values())
    figures = {"recall": {k: {t: {c: round(float(v), 4) for c, v in row.items()} for t, row in df.iterrows()}
                          for k, df in recall.items()},
               "map20": {k: {t: round(float(v), 4) for t, v in row.items()} for k, row in maps.iterrows()},
               "fusion_coefficients": coefs, "queries": len(result.queries), "pairs": pairs,
               "engine_score": "the verdict's strength (stage 1 on every candidate, stage 2 off)",
               "similarity_us_per_pair": round(1e6 * sim_seconds / max(1, pairs), 2)}
    lines = []
    rec = pd.concat(recall, axis=1)
    lines += [("Recall of the true matches in the top K of the candidates (fraction of true pairs), per scenario "
               "type; the head out of fold (" + (f"{len(emb)} heads, a query scored by the head trained without any "
               "whale of its scenario" if head_of_query else f"{len(emb)} folds by whale, a query scored by the head "
               "that saw none of its whale's photos") + "):"), "```",
              rec.to_string(float_format=lambda x: f"{x:.3f}"), "```", "",
              "mAP@20 per scenario type (challenge metric); fusion fitted out of fold by the same whale folds:",
              "```", maps.to_string(float_format=lambda x: f"{x:.3f}"), "```",
              f"Fusion coefficients per fold: {json.dumps(coefs)}"]
    return lines, figures


def rebuild_args(argv: list[str]) -> list[str]:
    """The command's arguments without those that only save time or say where reports go (the rebuild)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--report":
            skip = True
            continue
        if not a.startswith("--report="):
            out.append(a)
    return out


# --- main ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogue", type=Path, default=REPO.parent / "shared" / "belugas")
    p.add_argument("--cache-dir", type=Path, default=config.default_cache_dir())
    p.add_argument("--dev", type=Path, default=REPO / "data" / "dev")
    p.add_argument("--labels", type=Path, default=REPO / "data" / "dev_labels.csv")
    p.add_argument("--out", type=Path, default=None, help="where to write the shipped head (.pt; .json beside it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    p.add_argument("--keypoints", type=int, default=TRAIN["keypoints"], help="keypoints per photo per step")
    p.add_argument("--min-photos", type=int, default=TRAIN["min_photos"],
                   help="train only on whales with at least this many photos")
    add_cross_options(p)
    p.add_argument("--split", choices=("folds", "scenario"), default="folds",
                   help="out-of-fold heads by whale folds, or one per development scenario trained without any of "
                        "its whales (stricter: the database's other whales unseen too)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-eval", action="store_true", help="train and ship only")
    p.add_argument("--no-rerank", action="store_true", help="figures without re-ranking only")
    p.add_argument("--report", type=Path, default=None, help="write the Markdown report here too")
    p.add_argument("--flip-tta", action="store_true",
                   help="also measure the head with test-time flip: the embeddings of the photo and of its mirror "
                        "averaged (extracts the mirrored development photos' features once, cached)")
    p.add_argument("--skip-ship", action="store_true", help="out-of-fold figures only")
    args = p.parse_args(argv)
    config.setup_logging(False)
    logging.getLogger("train_global").setLevel(logging.INFO)
    import torch

    torch.set_num_threads(args.threads)
    from matcher.engine import Engine
    from matcher.io.catalogue import read_photos

    started = time.perf_counter()
    train = train_settings(args, {**TRAIN, "epochs": args.epochs, "keypoints": args.keypoints,
                                  "min_photos": args.min_photos})
    photos = read_photos(args.catalogue / "metadata.csv")
    engine = Engine(presets.DEFAULT_PIPELINE, args.cache_dir, "cpu", progress=False)
    t0 = time.perf_counter()
    shas, bad = engine.prepare({i: ph.path for i, ph in photos.items()})
    inputs = {i: keypoint_inputs(engine.feature(s)).astype(np.float16) for i, s in shas.items()}
    t_inputs = time.perf_counter() - t0
    ids = sorted(inputs)
    whale = {i: photos[i].whale_id for i in ids}
    pool = oof_heads.Photos(inputs, whale, dict(shas), {i: photos[i].encounter_id for i in ids},
                            {i: photos[i].date for i in ids}, {i: photos[i].viewpoint for i in ids})
    lines = [(f"Catalogue {args.catalogue.name}: {len(ids)} photos ({len(bad)} unusable) of "
              f"{len(set(whale.values()))} whales; DISK features read from the cache and turned into head inputs in "
              f"{t_inputs:.0f} s ({engine.stats.features_extracted} extracted now); head {json.dumps(CONF)}, "
              f"training {json.dumps(train)}; {torch.get_num_threads()} thread(s); {dt.date.today().isoformat()}.")]
    figures, fold_seconds = {}, []
    if not args.skip_eval:
        fold_of = whale_folds(list(whale.values()), args.folds, args.seed)
        from matcher.challenge import layout

        needed = sorted(i for i in layout.load(args.dev).image_ids() if i in inputs)
        emb, fold_heads = {}, {}
        if args.split == "scenario":  # a head per scenario, trained without any of its whales
            wanted = {k: v for k, v in oof_heads.exclusions(pool, args.dev, args.folds, args.seed).items()
                      if not k.startswith("fold")}
            head_of_query = {qid: sc.scenario_id for sc in layout.load(args.dev).scenarios
                             for qid in sc.queries["query_id"]}
        else:  # a head per fold of whales; a query is scored by its whale's fold's head
            wanted = {f: {w for w, k in fold_of.items() if k == f} for f in range(args.folds)}
            head_of_query = None
        for f, excluded in wanted.items():  # trained once, kept in the cache (oof_heads.py), reused by later runs
            fold_heads[f], all_emb = oof_heads.trained_head(pool, excluded, args.cache_dir, args.seed, train)
            emb[f] = {i: all_emb[i] for i in needed}
            fold_seconds.append(json.loads(fold_heads[f].with_suffix(".json").read_text())["info"]["train_seconds"])
        if args.flip_tta:
            emb_flip = flipped_embeddings(fold_heads, emb, engine, photos, shas, needed)
        lines.append(f"Out-of-fold heads: {len(wanted)} ({args.split}: " +
                     ("each trained without one scenario's whales, query or database" if head_of_query else
                      f"{args.folds} folds by whale") + f"), {np.mean(fold_seconds):.0f} s of training each.")
        more, figures = evaluate(args, inputs, photos, fold_of, emb, not args.no_rerank,
                                 emb_flip if args.flip_tta else None, head_of_query)
        lines += [""] + more
    if args.skip_ship:
        print("\n".join(lines))
        if args.report:
            args.report.write_text("\n".join(lines) + "\n")
        return 0
    head = train_head([inputs[i] for i in ids], [whale[i] for i in ids], args.seed, train,
                      encounters=[pool.group(i, train.get("cross_by", "encounter")) for i in ids],
                      dates=[pool.date[i] for i in ids])
    t0 = time.perf_counter()
    sample = ids[:200]
    embed_all(head, inputs, sample)
    ms_embed = 1e3 * (time.perf_counter() - t0) / len(sample)
    head.info.update({
        "trained_on": {"catalogue": args.catalogue.name, "photos": len(ids), "whales": len(set(whale.values())),
                       "data_sha256": data_digest(photos, shas), "features": engine.feature_key},
        "out_of_fold": {**figures, "folds": args.folds, "fold_train_seconds": fold_seconds,
                        "split": "by whale: a query is scored by the head trained without its whale's photos"},
        "costs": {"embed_ms_per_image": round(ms_embed, 2), "descriptor_bytes": int(head.conf["out"]),
                  "threads": torch.get_num_threads()},
        "date": dt.date.today().isoformat(),
        "command": "python -m training.train_global " + shlex.join(rebuild_args(argv if argv is not None
                                                                                 else sys.argv[1:])),
        "rebuild": "make train-global",
    })
    lines.append(f"Shipped head: {len(ids)} photos, trained in {head.info['train_seconds']:.0f} s; embedding "
                 f"{ms_embed:.1f} ms per image from cached features; {head.conf['out']} bytes per image (int8).")
    if args.out:
        head.save(args.out)
        lines.append(f"Wrote {args.out} and {args.out.with_suffix('.json')}.")
    lines.append(f"Run time {time.perf_counter() - started:.0f} s.")
    print("\n".join(lines))
    if args.report:
        args.report.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
