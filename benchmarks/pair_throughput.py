"""Pair throughput of the engine, against the one-pair-at-a-time way, and the projection to the challenge.

    python -m benchmarks.pair_throughput [--images ../shared/belugas] [--n-images 24] [--n-pairs 200]
        [--presets disk-mnn,sift-mnn,disk-lightglue] [--device auto] [--workers N] [--gpu-memory-gb 12]
        [--json benchmarks/results/pair_throughput.json]

On the GPU when there is one, else the CPU. ``--images`` is a catalogue folder (``metadata.csv`` with
``image_id,path,...`` and the images), or any folder of images; when it is absent, textured images and
warped copies of them are generated (as the tests do) and written as JPEG files, since reading and
decoding files is part of the work measured.

For each preset it measures, on a sample of ``--n-images`` images and ``--n-pairs`` pairs among them:

    extract       images/s of the feature stage (read, decode, resize, network; batched), cold cache
    match         pairs/s of the matching stage alone (features in memory)
    RANSAC        pairs/s of the verification alone on those matches, 1 thread and the pool of W threads,
                  and the CPU cores the pool kept busy (process CPU time / wall time)
    e2e cold      pairs/s from nothing: features extracted, then every pair matched and verified
    e2e warm      pairs/s with the features cached on disk (loaded, then every pair matched and verified)
    verdicts      pairs/s answered from the verdict store of a previous run
    baseline      pairs/s one pair at a time: read and decode both images, extract each alone, match, verify;
                  no cache, no batching, no threads (``--baseline-pairs`` pairs); the speed-ups are the
                  engine's e2e rates over this one, and the verdicts of the two paths are compared
    GPU peak      torch.cuda.max_memory_allocated (n/a on the CPU)
    RSS peak      the process's peak resident memory (each extractor runs in a fresh process)

Then it projects a challenge-scale run (``--total-images`` images, ``--queries`` queries against databases
of ``--mean-db`` images on average; of those query-database pairs, ``--unique-fraction`` are distinct
unordered pairs, since leave-one-out scenarios hold each query-query pair twice and scenarios share
images) from the measured rates: features of every image, then every pair verified (exhaustive), or
``--shortlist-k`` candidates per query verified (the cheap ranking that picks them is not timed here),
and says whether it fits ``--budget-hours`` and the GPU memory cap.

Absolute figures depend on what else runs on the machine: compare the ratios measured within one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


DEFAULT_PRESETS_CPU = "disk-mnn,sift-mnn,disk-lightglue"
DEFAULT_PRESETS_GPU = "disk-mnn,sift-mnn,disk-lightglue,aliked-mnn,aliked-lightglue"


# -- inputs ------------------------------------------------------------------------------------------------


def catalogue_images(folder: Path) -> tuple[list[Path], dict[Path, str] | None]:
    """Image files of a catalogue (and each one's whale when the metadata gives it) that exist on disk."""
    from matcher.io.catalogue import load_catalogue

    photos = [p for p in load_catalogue(folder) if p.path.is_file()]
    whales = {p.path: p.whale_id for p in photos} if photos and all(p.whale_id for p in photos) else None
    return sorted(p.path for p in photos), whales


def generated_images(n: int, out: Path, seed: int) -> list[Path]:
    """``n`` JPEG files: textured images and warped copies of them (so that some pairs truly match)."""
    import cv2

    from matcher.synthetic import textured_image, warp_affine

    rng = random.Random(seed)
    paths = []
    for i in range(n):
        base = textured_image(seed * 1000 + i // 2, (rng.choice([440, 480, 520]), rng.choice([160, 200, 240])))
        img = base if i % 2 == 0 else warp_affine(base, angle=rng.uniform(-10, 10), scale=rng.uniform(0.85, 1.1))[0]
        path = out / f"generated{i:04d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(path)
    return paths


def sample(paths: list[Path], n_images: int, n_pairs: int, seed: int,
           whale_of: dict[Path, str] | None = None) -> tuple[list[Path], list[tuple[int, int]]]:
    """``n_images`` images and ``n_pairs`` unordered pairs among them.

    With identities (a catalogue's ``whale_id``), half the images come two by two from whales with several
    photos and every such same-whale pair is among the pairs, so RANSAC meets true matches as well as the
    unrelated pairs that make up nearly all of a real run.
    """
    rng = random.Random(seed)
    chosen: list[Path] = []
    if whale_of:
        by_whale: dict[str, list[Path]] = {}
        for p in paths:
            by_whale.setdefault(whale_of[p], []).append(p)
        several = sorted(w for w, ps in by_whale.items() if len(ps) >= 2)
        for w in rng.sample(several, min(len(several), n_images // 4)):
            chosen += rng.sample(sorted(by_whale[w]), 2)
    rest = sorted(set(paths) - set(chosen))
    chosen = sorted(chosen + rng.sample(rest, max(0, min(n_images - len(chosen), len(rest)))))
    everything = [(i, j) for i in range(len(chosen)) for j in range(i + 1, len(chosen))]
    same = [(i, j) for i, j in everything if whale_of and whale_of[chosen[i]] == whale_of[chosen[j]]]
    others = [q for q in everything if q not in set(same)]
    picked = same[:n_pairs] + rng.sample(others, max(0, min(n_pairs - len(same), len(others))))
    rng.shuffle(picked)  # any prefix (LightGlue's and the baseline's shorter runs) is a fair sample
    return chosen, picked


# -- one extractor's presets, measured in a fresh process ---------------------------------------------------


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


class Clock:
    """Wall and process CPU time of a block (GPU work is waited for)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        self._sync()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def _sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def measure_extractor(job: dict) -> dict:
    """Every measurement for the presets sharing one extractor (runs in a child process)."""
    import numpy as np
    import torch

    from matcher.engine import Engine, canonical
    from matcher.io import device as devices
    from matcher.io import images
    from matcher.pairs.ransac import verify

    device, workers = job["device"], job["workers"]
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    paths = [Path(p) for p in job["images"]]
    shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    sha_paths = dict(zip(shas, paths))
    all_pairs = [canonical(shas[i], shas[j]) for i, j in job["pairs"]]
    out = {"presets": {}}

    def engine(name: str, cache: Path | None, **kw) -> Engine:
        return Engine(name, cache, device, kw.pop("workers", workers), progress=False, **kw)

    with tempfile.TemporaryDirectory(prefix="whalematch-bench-") as tmp:
        cache = Path(tmp) / "cache"
        # cold features: an engine with an empty cache (the network is loaded first: a fixed cost per run)
        first = engine(job["presets"][0], cache)
        out["extractor"] = first.conf["extractor"]["name"]
        with Clock(device) as load:
            first.extract(np.full((64, 64, 3), 128, np.uint8))
        with Clock(device) as cold:
            feats, bad = first.features(sha_paths)
        if bad:
            raise SystemExit(f"unusable images: {bad}")
        out["model_load_s"] = load.wall
        out["extract_img_s"] = _rate(len(paths), cold.wall)
        out["extract_batch"] = first.batch_size
        out["keypoints_mean"] = float(np.mean([len(f["keypoints"]) for f in feats.values()]))
        # warm features: a fresh engine reads them back from the disk cache
        with Clock(device) as warm_load:
            engine(job["presets"][0], cache).features(sha_paths)
        out["feature_load_img_s"] = _rate(len(paths), warm_load.wall)

        for name in job["presets"]:
            n_pairs = job["pairs_cap"].get(name, len(all_pairs))
            pairs = all_pairs[:n_pairs]
            r: dict = {"pairs": len(pairs), "workers": workers, "same_identity": sum(job["same"][:n_pairs])}
            eng = engine(name, cache)
            warm_feats, _ = eng.features(sha_paths)
            eng.verify_features(warm_feats[shas[0]], warm_feats[shas[1]])  # LightGlue's model loaded before timing

            with Clock(device) as c:
                matches = eng.matches(pairs)
            r["match_pairs_s"] = _rate(len(pairs), c.wall)
            r["matches_mean"] = float(np.mean([len(m) for m, _ in matches.values()]))

            vconf = eng.conf["verifier"]
            jobs = [(warm_feats[a]["keypoints"], warm_feats[b]["keypoints"], m, s)
                    for (a, b), (m, s) in matches.items()]

            def ransac(n_threads: int, jobs=jobs, vconf=vconf) -> Clock:
                with Clock(device) as c, ThreadPoolExecutor(n_threads) as pool:
                    list(pool.map(lambda j: verify(*j, vconf), jobs, chunksize=8))
                return c

            one, many = ransac(1), ransac(workers)
            r["ransac_1_pairs_s"] = _rate(len(jobs), one.wall)
            r["ransac_pairs_s"] = _rate(len(jobs), many.wall)
            r["ransac_cores_busy"] = many.cpu / many.wall if many.wall else 0.0
            r["ransac_cpu_ms_per_pair"] = 1e3 * many.cpu / max(1, len(jobs))

            # end to end, cold: features extracted from nothing (timed above), then the pairs verified
            with Clock(device) as c:
                verdicts = eng.verdicts(pairs)
            verify_cold = c.wall
            r["e2e_cold_pairs_s"] = _rate(len(pairs), cold.wall + c.wall)
            # end to end, warm features: loaded from the disk cache, then the pairs verified into an empty store
            fresh = Path(tmp) / f"fresh-{name}"
            fresh.mkdir()
            (fresh / "features").symlink_to(cache / "features")
            warm = engine(name, fresh)
            warm.features(sha_paths)
            warm.verify_features(warm_feats[shas[0]], warm_feats[shas[1]])
            with Clock(device) as c:
                warm_verdicts = warm.verdicts(pairs)
            r["e2e_warm_pairs_s"] = _rate(len(pairs), warm_load.wall + c.wall)
            # the verification rate with features in memory (best of the two runs: the machine may be shared)
            r["verify_pairs_s"] = _rate(len(pairs), min(verify_cold, c.wall))
            # verdicts already in the store
            with Clock(device) as c:
                eng.verdicts(pairs)
            r["verdict_cache_pairs_s"] = _rate(len(pairs), c.wall)
            r["verified_related"] = sum(v["n_inliers"] >= 20 for v in verdicts.values())
            r["same_verdicts_cold_warm"] = all(
                verdicts[p]["n_inliers"] == warm_verdicts[p]["n_inliers"] for p in pairs)

            # baseline: one pair at a time, nothing kept, nothing batched
            base_pairs = pairs[: job["baseline_pairs"].get(name, 4)]
            single = engine(name, None, workers=1, batch_size=1)
            dummy = single.extract(np.full((64, 64, 3), 128, np.uint8))
            single.verify_features(warm_feats[shas[0]], warm_feats[shas[1]])  # both models loaded before timing
            del dummy
            agree = 0
            with Clock(device) as c:
                for a, b in base_pairs:
                    fa, fb = single.extract(images.load(sha_paths[a])), single.extract(images.load(sha_paths[b]))
                    v = single.verify_features(fa, fb)
                    agree += v["n_inliers"] == verdicts[(a, b)]["n_inliers"] and v["score"] == verdicts[(a, b)]["score"]
            r["baseline_pairs"] = len(base_pairs)
            r["baseline_pairs_s"] = _rate(len(base_pairs), c.wall)
            r["baseline_agree"] = agree
            r["speedup_warm"] = r["e2e_warm_pairs_s"] / r["baseline_pairs_s"]
            r["speedup_cold"] = r["e2e_cold_pairs_s"] / r["baseline_pairs_s"]
            out["presets"][name] = r

    out["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    out["gpu_cap_gib"] = (devices.memory_cap(device) or 0) / 2**30 if on_gpu else None
    out["rss_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return out


# -- projection ---------------------------------------------------------------------------------------------


def projection(args, results: dict) -> dict:
    from matcher.pairs.mnn import padded_length

    exhaustive = args.queries * args.mean_db * args.unique_fraction
    shortlist = args.queries * args.shortlist_k  # shortlists assumed not to repeat pairs (the cautious side)
    budget = args.budget_hours * 3600
    rows = {}
    for group in results.values():
        for name, r in group["presets"].items():
            t_feat = args.total_images / group["extract_img_s"]
            t_ex = t_feat + exhaustive / r["verify_pairs_s"]
            t_sl = t_feat + shortlist / r["verify_pairs_s"]
            gpu = group["gpu_peak_gib"]
            # on a GPU the descriptors of every image stay resident (half precision, padded to 64 rows)
            bank = args.total_images * padded_length(round(group["keypoints_mean"])) * 128 * 2 / 2**30
            mem_ok = None if gpu is None else gpu + bank <= args.gpu_memory_gb
            rows[name] = {
                "ransac_cpu_h_exhaustive": exhaustive * r["ransac_cpu_ms_per_pair"] / 3.6e6,
                "ransac_cpu_h_shortlist": shortlist * r["ransac_cpu_ms_per_pair"] / 3.6e6,
                "gpu_bank_gib": bank,
                "features_h": t_feat / 3600,
                "exhaustive_h": t_ex / 3600,
                "exhaustive_fits": t_ex <= budget and mem_ok is not False,
                "shortlist_h": t_sl / 3600,
                "shortlist_fits": t_sl <= budget and mem_ok is not False,
                "shortlist_under_30_min": t_sl <= 1800 and mem_ok is not False,
                "gpu_memory_within_cap": mem_ok,
            }
    return {
        "assumptions": {
            "total_images": args.total_images, "queries": args.queries, "mean_db": args.mean_db,
            "unique_fraction": args.unique_fraction, "shortlist_k": args.shortlist_k,
            "budget_hours": args.budget_hours, "gpu_memory_gb": args.gpu_memory_gb,
            "exhaustive_pairs": exhaustive, "shortlist_pairs": shortlist,
        },
        "presets": rows,
    }


# -- report -------------------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(2, "-" * len(lines[0]))
    return "\n".join(lines)


def report(meta: dict, results: dict, proj: dict) -> str:
    rows = [
        ["preset", "extract", "match", "RANSAC 1 thr", "RANSAC W thr", "e2e cold", "e2e warm", "verdicts",
         "baseline", "speed-up", "speed-up", "GPU peak", "RSS peak"],
        ["", "img/s", "pairs/s", "pairs/s", "pairs/s (cores)", "pairs/s", "pairs/s", "cached/s",
         "pairs/s", "warm", "cold", "GiB", "MiB"],
    ]
    for group in results.values():
        for name, r in group["presets"].items():
            rows.append([
                name, _f(group["extract_img_s"]), _f(r["match_pairs_s"]), _f(r["ransac_1_pairs_s"]),
                f"{_f(r['ransac_pairs_s'])} ({r['ransac_cores_busy']:.2f})", _f(r["e2e_cold_pairs_s"]),
                _f(r["e2e_warm_pairs_s"]), _f(r["verdict_cache_pairs_s"]), _f(r["baseline_pairs_s"]),
                f"{r['speedup_warm']:.1f}x", f"{r['speedup_cold']:.1f}x", _f(group["gpu_peak_gib"]),
                f"{group['rss_peak_mib']:,.0f}",
            ])
    a = proj["assumptions"]
    prow = [
        ["preset", "features", "exhaustive", f"fits {a['budget_hours']:g} h", f"shortlist K={a['shortlist_k']}",
         f"fits {a['budget_hours']:g} h", "fits 30 min", "RANSAC CPU", "RANSAC CPU", "descriptors",
         f"GPU <= {a['gpu_memory_gb']:g} GB"],
        ["", "h", "h", "", "h", "", "", "h exhaust.", "h shortlist", "on GPU GiB", ""],
    ]
    yes = {True: "yes", False: "no", None: "n/a"}
    for name, p in proj["presets"].items():
        prow.append([name, f"{p['features_h']:.2f}", f"{p['exhaustive_h']:.2f}", yes[p["exhaustive_fits"]],
                     f"{p['shortlist_h']:.2f}", yes[p["shortlist_fits"]], yes[p["shortlist_under_30_min"]],
                     f"{p['ransac_cpu_h_exhaustive']:.2f}", f"{p['ransac_cpu_h_shortlist']:.2f}",
                     f"{p['gpu_bank_gib']:.2f}", yes[p["gpu_memory_within_cap"]]])
    details = []
    for group in results.values():
        for name, r in group["presets"].items():
            details.append(
                f"  {name}: {r['pairs']} pairs ({r['verified_related']} with >= 20 inliers), "
                f"{r['same_identity']} same whale, {r['matches_mean']:.0f} matches/pair, "
                f"RANSAC {r['ransac_cpu_ms_per_pair']:.2f} CPU ms/pair; "
                f"baseline {r['baseline_pairs']} pairs, same verdict as the engine on {r['baseline_agree']}; "
                f"verdicts identical with cold and warm features: {r['same_verdicts_cold_warm']}")
        details.append(
            f"  {group['extractor']}: {group['keypoints_mean']:.0f} keypoints/image, extraction batch "
            f"{group['extract_batch']}, model load {group['model_load_s']:.1f} s, cached features read at "
            f"{_f(group['feature_load_img_s'])} img/s")
    gpu_note = (f"GPU: {meta['gpu']}, memory cap {a['gpu_memory_gb']:g} GB" if meta["gpu"] else
                "no CUDA GPU here: every figure is the CPU's; GPU figures were not measured")
    return "\n".join([
        f"pair throughput on {meta['device']} ({gpu_note}); {meta['workers']} CPU worker threads of "
        f"{meta['cpu_cores']} cores; torch {meta['torch']}",
        f"{meta['n_images']} images ({meta['source']}), {meta['n_pairs']} pairs among them",
        "",
        table(rows),
        "",
        *details,
        "",
        f"projection: {a['total_images']:,} images; exhaustive {a['queries']:,} queries x {a['mean_db']:,} database "
        f"images x {a['unique_fraction']:g} distinct = {a['exhaustive_pairs'] / 1e6:.2f} M pairs; shortlist "
        f"{a['queries']:,} x {a['shortlist_k']} = {a['shortlist_pairs'] / 1e6:.2f} M pairs (shortlist stage itself "
        f"not timed); at the verification rate with features in memory, on this machine",
        "",
        table(prow),
        "",
        "RANSAC CPU h: the verification's CPU time alone (measured CPU ms per pair x pairs), which a machine "
        "divides by its cores; descriptors on GPU: every image's, resident in half precision during matching; "
        "GPU <= cap: the measured peak plus those descriptors (n/a without a GPU)",
    ])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=REPO.parent / "shared" / "belugas",
                   help="catalogue or image folder (default ../shared/belugas; generated images if absent)")
    p.add_argument("--n-images", type=int, default=24)
    p.add_argument("--n-pairs", type=int, default=200)
    p.add_argument("--presets", default=None, help=f"comma-separated (default {DEFAULT_PRESETS_CPU}; "
                   f"on a GPU {DEFAULT_PRESETS_GPU})")
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda[:N]")
    p.add_argument("--workers", type=int, default=None, help="CPU threads for RANSAC (default: the cores, at most 8)")
    p.add_argument("--gpu-memory-gb", type=float, default=12.0, help="GPU memory cap (WHALEMATCH_GPU_MEMORY_GB)")
    p.add_argument("--baseline-pairs", type=int, default=None,
                   help="pairs done one at a time (default: 4 for networks on the CPU, else 24)")
    p.add_argument("--lightglue-pairs", type=int, default=None,
                   help="pairs for LightGlue presets (default: 24 on the CPU, else --n-pairs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "pair_throughput.json")
    g = p.add_argument_group("projection")
    g.add_argument("--total-images", type=int, default=3400)
    g.add_argument("--queries", type=int, default=4419)
    g.add_argument("--mean-db", type=int, default=1000)
    g.add_argument("--unique-fraction", type=float, default=0.8)
    g.add_argument("--shortlist-k", type=int, default=100)
    g.add_argument("--budget-hours", type=float, default=3.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["WHALEMATCH_GPU_MEMORY_GB"] = f"{args.gpu_memory_gb:g}"
    import torch

    from matcher import presets
    from matcher.io import device as devices

    device = devices.pick(args.device)
    on_gpu = device.startswith("cuda")
    workers = devices.cpu_workers(args.workers)
    names = (args.presets or (DEFAULT_PRESETS_GPU if on_gpu else DEFAULT_PRESETS_CPU)).split(",")
    for n in names:
        presets.resolve(n)  # unknown names fail here

    with tempfile.TemporaryDirectory(prefix="whalematch-gen-") as gen:
        paths, whales = catalogue_images(args.images) if args.images.is_dir() else ([], None)
        source = f"real photos from {args.images}"
        if len(paths) < 2:
            print(f"no images at {args.images}: using generated ones", file=sys.stderr)
            paths, source = generated_images(args.n_images, Path(gen), args.seed), "generated images"
            whales = {p: str(int(p.stem[-4:]) // 2) for p in paths}  # a base and its warped copy
        chosen, pairs = sample(paths, args.n_images, args.n_pairs, args.seed, whales)
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(presets.extractor_settings_key(presets.resolve(n)["extractor"]), []).append(n)
        results = {}
        for key, group in groups.items():
            cheap = presets.resolve(group[0])["extractor"]["model"] == "sift" or on_gpu
            job = {
                "device": device, "workers": workers, "images": [str(p) for p in chosen], "pairs": pairs,
                "same": [whales is not None and whales[chosen[i]] == whales[chosen[j]] for i, j in pairs],
                "presets": group,
                "pairs_cap": {n: (args.lightglue_pairs or (len(pairs) if on_gpu else 24))
                              for n in group if presets.resolve(n)["matcher"]["model"] == "lightglue"},
                "baseline_pairs": {n: args.baseline_pairs or (24 if cheap else (2 if "lightglue" in n else 4))
                                   for n in group},
            }
            print(f"measuring {', '.join(group)} ...", file=sys.stderr, flush=True)
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # fresh process: own peak memory
                results[key] = pool.submit(measure_extractor, job).result()

    meta = {
        "device": device, "gpu": torch.cuda.get_device_name(device) if on_gpu else None, "workers": workers,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__, "python": platform.python_version(),
        "n_images": len(chosen), "n_pairs": len(pairs), "source": source, "seed": args.seed,
    }
    proj = projection(args, results)
    print(report(meta, results, proj))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results, "projection": proj}, indent=2))
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
