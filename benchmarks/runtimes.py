"""Feature runtimes side by side on the CPU: extraction rate, where its time goes, and what the runtime changes.

    python -m benchmarks.runtimes [--catalogue ../shared/belugas] [--cache-dir submission/cache]
        [--dev data/dev --labels data/dev_labels.csv] [--timing-images 24] [--rounds 2]
        [--agreement-images 200] [--pairs 2000] [--json benchmarks/results/runtimes.json]

PyTorch (``--runtime torch``) is the reference; every other runtime that can run here is measured against it
in the same run (these machines are noisy: quote the ratios).

1. **Extraction rate**: the same ``--timing-images`` photos extracted cold (no cache, the engine's own path:
   decoding threads, batches) by each runtime, the runtimes interleaved round by round, PyTorch first.
   Where the time goes, on the same photos: reading and decoding the files, the network alone at each
   photo's detection scales, and the rest (resizing, detection and NMS on the heatmap, descriptor sampling).
2. **Features** of ``--agreement-images`` development photos (from the cache under each runtime's own key, or
   extracted now): share of PyTorch's keypoints that the runtime also finds at the same place (within 1 px,
   and exactly), and the cosine similarity of the two descriptors there.
3. **Verdicts** of ``--pairs`` pairs among those photos (every same-whale pair among them, the rest drawn at
   random): identical, and inliers within 2 of PyTorch's.
4. **Rankings** of the quick development set (``--dev``; every candidate verified, no re-ranking), each
   runtime's own features and verdicts, by the inlier strength (nothing fitted, so nothing is in sample) and
   by the default pair score (``auto``: the shipped ranker where it won, fitted on other features of the same
   photos: its level is in sample, the difference between runtimes is what is measured): mAP@20 per runtime.
5. **Verification**, one thread, on pairs grouped by first photo as the verifier's work items are: mutual
   nearest neighbours and the whole verdict before (the float32 product) and after (the product screened in
   bf16, :mod:`matcher.pairs.mnn_screened`), matches and verdicts checked identical, and the share the float32
   similarity product took of a verdict before.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WITHIN_PX = 1.0  # a keypoint "found again" lies within this many pixels (original image) of the reference's
INLIER_SLACK = 2  # verdicts agree when their inlier counts differ by at most this


def runtimes_here() -> list[str]:
    """PyTorch first, then each other runtime installed here."""
    from matcher.features import runtimes

    return ["torch"] + [r for r in runtimes.RUNTIMES if r not in ("auto", "torch") and runtimes.installed(r)]


def engine(runtime: str, cache_dir: Path | None, workers: int = 2):
    from matcher.engine import Engine

    return Engine("disk-mnn", cache_dir, "cpu", workers, progress=False, runtime=runtime)


# -- 1. extraction rate -------------------------------------------------------------------------------------


def extraction_rates(paths: list[Path], names: list[str], rounds: int, export_dir: Path) -> dict:
    """Cold images/s per runtime (interleaved rounds over the same photos, no cache) and where the time goes."""
    from matcher.io import images

    engines = {}
    for name in names:  # each network built (and exported) before any timing
        e = engine(name, None)
        e._features.export_dir = export_dir
        e.extract(np.full((224, 640, 3), 128, np.uint8))
        engines[name] = e
    shas, _ = engines[names[0]].hash_images({str(i): p for i, p in enumerate(paths)})
    chunks = np.array_split(np.arange(len(paths)), rounds)
    seconds = dict.fromkeys(names, 0.0)
    for chunk in chunks:
        for name in names:  # the engine's own path (decoding threads, batches), photos it has not seen
            t = time.perf_counter()
            engines[name].features({shas[str(i)]: paths[i] for i in chunk}, False)
            seconds[name] += time.perf_counter() - t
    t = time.perf_counter()
    decoded = [images.load(p) for p in paths]
    decode_s = (time.perf_counter() - t) / len(paths)
    network = network_seconds(engines, decoded)
    out = {}
    for name in names:
        per_image = seconds[name] / len(paths)
        out[name] = {"images_per_s": 1.0 / per_image, "seconds_per_image": per_image, "decode_s": decode_s,
                     "network_s": network[name], "rest_s": max(0.0, per_image - decode_s - network[name])}
    for name in names:
        out[name]["speedup_vs_torch"] = out[name]["images_per_s"] / out["torch"]["images_per_s"]
    return out


def network_seconds(engines: dict, decoded: list[np.ndarray]) -> dict[str, float]:
    """Seconds per photo of the network alone at each photo's detection scales, per runtime."""
    import torch
    import torch.nn.functional as F

    from matcher.features import runtimes
    from matcher.io import weights

    ex = engines["torch"]._features.extractor
    unet = ex.model("cpu").unet
    shapes = []
    for img in decoded:
        h, w = img.shape[:2]
        for scale, _ in ex.scales():
            sw, sh = ex.scale_size(w, h, scale)
            shapes.append((sh + (-sh % 16), sw + (-sw % 16)))
    tensors = [torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(i)) for i, (h, w) in enumerate(shapes)]
    calls = {"torch": lambda x: unet(x)}
    for name, e in engines.items():
        if name != "torch":
            other = e._features.extractor
            sha = weights.recorded_sums().get(other.weights_file(), "unrecorded")
            session = runtimes.network(name, unet, sha, e._features.export_dir)
            calls[name] = lambda x, s=session: s(x.numpy())
    out = {}
    with torch.inference_mode():
        for name in engines:
            calls[name](F.pad(tensors[0], (0, 0, 0, 0)))
            t = time.perf_counter()
            for x in tensors:
                calls[name](x)
            out[name] = (time.perf_counter() - t) / len(decoded)
    return out


# -- 2. and 3. features and verdicts against PyTorch's ------------------------------------------------------


def feature_agreement(ref: dict, other: dict) -> dict:
    """Keypoints of ``other`` within :data:`WITHIN_PX` of each of ``ref``'s (and identical), and the cosine
    similarity of the two descriptors there."""
    from scipy.spatial import cKDTree

    kr, ko = np.asarray(ref["keypoints"], np.float64), np.asarray(other["keypoints"], np.float64)
    if not len(kr) or not len(ko):
        return {"found": 0.0, "identical": 0.0, "cosine": float("nan"), "count_ratio": len(ko) / max(1, len(kr))}
    dist, idx = cKDTree(ko).query(kr)
    near = dist <= WITHIN_PX
    dr = np.asarray(ref["descriptors"], np.float32)[near]
    do = np.asarray(other["descriptors"], np.float32)[idx[near]]
    cos = (dr * do).sum(1) / np.maximum(np.linalg.norm(dr, axis=1) * np.linalg.norm(do, axis=1), 1e-12)
    return {"found": float(near.mean()), "identical": float((dist == 0).mean()),
            "cosine": float(cos.mean()) if len(cos) else float("nan"), "count_ratio": len(ko) / len(kr)}


def pair_sample(photos: list, n_pairs: int, seed: int) -> list[tuple[int, int]]:
    """Every same-whale pair among the photos, then random other pairs, ``n_pairs`` in all."""
    rng = random.Random(seed)
    idx = range(len(photos))
    same = [(i, j) for i in idx for j in idx if i < j and photos[i].whale_id == photos[j].whale_id]
    chosen = set(same[:n_pairs])
    while len(chosen) < min(n_pairs, len(photos) * (len(photos) - 1) // 2):
        i, j = sorted(rng.sample(range(len(photos)), 2))
        chosen.add((i, j))
    return sorted(chosen)


def agreement(names: list[str], photos: list, cache_dir: Path, n_pairs: int, seed: int) -> dict:
    """Features and verdicts of each runtime against PyTorch's (see the module docstring, 2 and 3)."""
    from matcher.engine import canonical

    out, engines, shas = {}, {}, {}
    for name in names:
        engines[name] = engine(name, cache_dir)
        shas[name], _ = engines[name].prepare({p.id: p.path for p in photos})
    ids = [p.id for p in photos if all(p.id in shas[n] for n in names)]
    whale = {p.id: p.whale_id for p in photos}
    pairs = pair_sample([p for p in photos if p.id in ids], n_pairs, seed)
    verdicts = {}
    for name in names:
        keys = [canonical(shas[name][ids[i]], shas[name][ids[j]]) for i, j in pairs]
        found = engines[name].verdicts(set(keys))
        verdicts[name] = [found[k] for k in keys]
    for name in names[1:]:
        rows = [feature_agreement(engines["torch"].feature(shas["torch"][i]), engines[name].feature(shas[name][i]))
                for i in ids]
        ref, got = verdicts["torch"], verdicts[name]
        d = np.array([abs(a["n_inliers"] - b["n_inliers"]) for a, b in zip(ref, got)])
        out[name] = {
            "photos": len(ids),
            "keypoints_found_within_1px": float(np.mean([r["found"] for r in rows])),
            "keypoints_identical": float(np.mean([r["identical"] for r in rows])),
            "keypoints_found_min": float(np.min([r["found"] for r in rows])),
            "descriptor_cosine_mean": float(np.nanmean([r["cosine"] for r in rows])),
            "keypoint_count_ratio": float(np.mean([r["count_ratio"] for r in rows])),
            "pairs": len(pairs),
            "same_whale_pairs": sum(whale[ids[i]] == whale[ids[j]] for i, j in pairs),
            "verdicts_identical": float(np.mean([a["n_inliers"] == b["n_inliers"] and a["n_matches"] == b["n_matches"]
                                                 for a, b in zip(ref, got)])),
            "inliers_within_2": float((d <= INLIER_SLACK).mean()),
            "inliers_max_difference": int(d.max()) if len(d) else 0,
        }
    return out


# -- 4. rankings ---------------------------------------------------------------------------------------------


def rankings(names: list[str], dev: Path, labels_path: Path, cache_dir: Path) -> dict:
    """mAP@20 of the quick set per runtime, by the strength and by the default pair score."""
    from matcher.cascade import CascadeSettings, run_cascade
    from matcher.challenge import layout
    from matcher.challenge.evaluate import LABEL_COLUMNS, scenario_of_queries, score_by_type
    from matcher.challenge.run import ranked_rows
    from matcher.io.tables import read_csv

    data = layout.load(dev)
    labels = read_csv(labels_path, LABEL_COLUMNS)[list(LABEL_COLUMNS)]
    queries = scenario_of_queries(labels, dev)
    tasks = data.query_tasks()
    out = {}
    for name in names:
        e = engine(name, cache_dir)
        paths, bad = data.image_paths(data.image_ids())
        shas, _ = e.prepare(paths, bad)
        out[name] = {}
        for score in ("strength", "auto"):
            settings = CascadeSettings(k1=None, k2=0, budget_s=None, stage2="none", pair_score=score, rerank=False)
            result = run_cascade(e, tasks, shas, settings, None, data.photo_metadata())
            table = score_by_type(ranked_rows([t[0] for t in tasks], result), labels, queries)
            out[name][score] = {r.type: round(float(r.map20), 4) for r in table.itertuples()}
    return out


# -- 5. verification -----------------------------------------------------------------------------------------


def verification(cache_dir: Path, photos: list, firsts: int, seconds: int) -> dict:
    """One thread, on ``firsts`` x ``seconds`` pairs grouped by their first photo as the verifier's work items
    are: mutual NN and the whole verdict before (the float32 product, each pair's descriptors converted on
    their own) and after (the first photo's converted once for its item, the product screened in bf16,
    :mod:`matcher.pairs.mnn_screened`), whether matches and verdicts are identical, and the share of the
    float32 similarity product in a verdict before (what bounded pairs/s)."""
    import torch

    from matcher.pairs import mnn_screened
    from matcher.pairs.mnn import mutual_nn, mutual_nn_batch

    e = engine("onnxruntime" if "onnxruntime" in runtimes_here() else "torch", cache_dir, 1)
    shas, _ = e.prepare({p.id: p.path for p in photos[: firsts + seconds]})
    ids = [p.id for p in photos[: firsts + seconds] if p.id in shas]
    first = [e.feature(shas[i]) for i in ids[:firsts]]
    second = [e.feature(shas[i]) for i in ids[firsts:]]
    n = len(first) * len(second)
    verifier = e.verifier()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    screened = mnn_screened.usable(first[0]["descriptors"].shape[1], mutual_nn)  # the check, before any timing

    def verdicts():
        t = time.perf_counter()
        out = [verifier.verify_pair(a, b) for a in first for b in second]
        return out, time.perf_counter() - t

    try:
        t = time.perf_counter()
        before = [mutual_nn(a["descriptors"], b["descriptors"]) for a in first for b in second]
        before_s = time.perf_counter() - t
        t = time.perf_counter()
        after = [m for a in first for m in mutual_nn_batch(a["descriptors"], [b["descriptors"] for b in second])]
        after_s = time.perf_counter() - t
        same = all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(before, after))
        t = time.perf_counter()
        for a in first:
            d0 = torch.from_numpy(np.ascontiguousarray(a["descriptors"], np.float32))
            for b in second:
                d1 = torch.from_numpy(np.ascontiguousarray(b["descriptors"], np.float32))
                with torch.inference_mode():
                    d0 @ d1.T
        gemm_s = time.perf_counter() - t
        mnn_screened.set_enabled(False)
        try:
            plain, plain_s = verdicts()
        finally:
            mnn_screened.set_enabled(True)
        fast, fast_s = verdicts()
    finally:
        torch.set_num_threads(threads)
    same_verdicts = all(json.dumps(x, sort_keys=True, default=str) == json.dumps(y, sort_keys=True, default=str)
                        for x, y in zip(plain, fast))
    return {"pairs": n, "screened": bool(screened), "mnn_before_pairs_per_s": n / before_s,
            "mnn_after_pairs_per_s": n / after_s, "mnn_speedup": before_s / after_s, "matches_identical": bool(same),
            "verdict_before_pairs_per_s": n / plain_s, "verdict_pairs_per_s": n / fast_s,
            "verdict_speedup": plain_s / fast_s, "verdicts_identical": bool(same_verdicts),
            "similarity_product_share": gemm_s / plain_s,
            "keypoints_mean": float(np.mean([len(f["descriptors"]) for f in first + second]))}


# -- report --------------------------------------------------------------------------------------------------


def report(result: dict) -> str:
    names = list(result.get("extraction", {}))
    lines = [] if not names else ["Extraction, cold, no cache (seconds per image; the network alone at every detection "
             "scale; decoding; the rest):", "",
             "| runtime | images/s | vs torch | s/image | network | decode | rest |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        r = result["extraction"][n]
        lines.append(f"| {n} | {r['images_per_s']:.2f} | {r['speedup_vs_torch']:.2f}x | {r['seconds_per_image']:.3f} | "
                     f"{r['network_s']:.3f} | {r['decode_s']:.3f} | {r['rest_s']:.3f} |")
    for n, a in result.get("agreement", {}).items():
        lines += ["", f"{n} against torch: {a['photos']} photos, keypoints found within 1 px "
                  f"{a['keypoints_found_within_1px']:.4f} (identical {a['keypoints_identical']:.4f}, worst photo "
                  f"{a['keypoints_found_min']:.4f}), descriptor cosine {a['descriptor_cosine_mean']:.5f}; "
                  f"{a['pairs']} pairs ({a['same_whale_pairs']} of one whale): verdicts identical "
                  f"{a['verdicts_identical']:.4f}, inliers within 2 {a['inliers_within_2']:.4f} (largest difference "
                  f"{a['inliers_max_difference']})"]
    if result.get("rankings"):
        types = list(next(iter(next(iter(result["rankings"].values())).values())))
        lines += ["", "mAP@20 of the quick set, every candidate verified, no re-ranking:", "",
                  "| runtime, pair score | " + " | ".join(types) + " |", "|---|" + "---:|" * len(types)]
        for n, scores in result["rankings"].items():
            for s, t in scores.items():
                lines.append(f"| {n}, {s} | " + " | ".join(f"{t[k]:.3f}" for k in types) + " |")
    v = result.get("verification")
    if v:
        lines += ["", f"Verification, one thread, {v['pairs']} pairs ({v['keypoints_mean']:.0f} keypoints a photo; "
                  f"bf16 screen {'used' if v['screened'] else 'not usable here'}): mutual NN "
                  f"{v['mnn_before_pairs_per_s']:.0f} -> {v['mnn_after_pairs_per_s']:.0f} pairs/s "
                  f"({v['mnn_speedup']:.2f}x, matches identical: {v['matches_identical']}); whole verdict "
                  f"{v['verdict_before_pairs_per_s']:.0f} -> "
                  f"{v['verdict_pairs_per_s']:.0f} pairs/s ({v['verdict_speedup']:.2f}x, verdicts identical: "
                  f"{v['verdicts_identical']}); the float32 similarity product was "
                  f"{v['similarity_product_share']:.0%} of a verdict before"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogue", type=Path, default=REPO.parent / "shared" / "belugas")
    p.add_argument("--cache-dir", type=Path, default=REPO / "submission" / "cache")
    p.add_argument("--dev", type=Path, default=REPO / "data" / "dev")
    p.add_argument("--labels", type=Path, default=REPO / "data" / "dev_labels.csv")
    p.add_argument("--timing-images", type=int, default=24)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--agreement-images", type=int, default=200)
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--skip", action="append", default=[],
                   choices=("extraction", "agreement", "rankings", "verification"), help="a part not to run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from matcher.io.catalogue import read_photos

    meta = args.catalogue / "metadata.csv"
    if not meta.is_file():
        print(f"no catalogue at {args.catalogue} (its metadata.csv is missing): nothing to measure", file=sys.stderr)
        return 2
    names = runtimes_here()
    photos = sorted(read_photos(meta).values(), key=lambda ph: ph.id)
    rng = random.Random(args.seed)
    timing = rng.sample(photos, min(args.timing_images, len(photos)))
    sample = sorted(rng.sample(photos, min(args.agreement_images, len(photos))), key=lambda ph: ph.id)
    t0 = time.perf_counter()
    result = {"meta": {"runtimes": names, "python": platform.python_version(), "cpu_cores": os.cpu_count(),
                       "catalogue": str(args.catalogue), "seed": args.seed}}
    if "extraction" not in args.skip:
        print(f"extraction: {len(timing)} photos, runtimes {', '.join(names)} ...", file=sys.stderr, flush=True)
        result["extraction"] = extraction_rates([ph.path for ph in timing], names, args.rounds,
                                                args.cache_dir / "exports")
    if "agreement" not in args.skip and len(names) > 1:
        print(f"agreement: {len(sample)} photos, {args.pairs} pairs ...", file=sys.stderr, flush=True)
        result["agreement"] = agreement(names, sample, args.cache_dir, args.pairs, args.seed)
    if "rankings" not in args.skip and (args.dev / "query_scenarios.csv").is_file():
        print(f"rankings of {args.dev} ...", file=sys.stderr, flush=True)
        result["rankings"] = rankings(names, args.dev, args.labels, args.cache_dir)
    if "verification" not in args.skip:
        result["verification"] = verification(args.cache_dir, sample, 10, 30)
    result["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    print(report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
