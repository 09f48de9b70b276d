"""Scaling of pair verification on the Ray backend, against the local backend, and the projection of a catalogue
audit onto clusters.

    python -m benchmarks.ray_scaling [--images data/dev] [--cache-dir submission/cache] [--preset disk-mnn]
        [--n-images 64] [--clusters 1x2,1x1,2x1,3x1] [--local-workers 1,2]
        [--catalogue ../shared/belugas/metadata.csv] [--project-photos 30000] [--project-nodes 1,8,32]
        [--node-cpus 6] [--node-gpus 1] [--gpu-images-per-s 20] [--json benchmarks/results/ray_scaling.json]

Every pair of ``--n-images`` photos of ``--images`` (a catalogue folder or metadata CSV; generated photos when
there is none) is verified, from features already extracted (from ``--cache-dir``; missing ones are extracted
first, untimed), into a fresh in-memory verdict store, by:

    local, W workers   the local backend (the pair verifier's thread pool), for each W of ``--local-workers``
    ray, N x C         the Ray backend on Ray's multi-node harness on this machine (``ray.cluster_utils.Cluster``:
                       a head without CPUs and N worker nodes of C CPUs each, every one a raylet of its own), for
                       each NxC of ``--clusters``, after a warm-up that starts the nodes' worker processes

For each: wall seconds, pairs/s, tasks, the tasks' own seconds (and so the share of the wall time the workers
spent in them), each node's share of the pairs against the mean share, and whether the verdicts equal the local
backend's bit for bit. Then the overhead of Ray against the local backend on the same work and the same number
of CPU workers (one node of W CPUs against W local workers: the wall time ratio, the extra time per task, and
the time the workers sat idle between tasks), and the projection of an audit of every comparable
pair of ``--project-photos`` photos (the share of comparable pairs read from ``--catalogue``'s viewpoints) onto
1, 8 and 32 nodes of ``--node-cpus`` CPUs and ``--node-gpus`` GPUs: verification at the pairs per CPU-second
of a worker measured here (one node with a worker per core; CPU time, so that what the machine's other load took
is left out), divided by the share of time the workers spent in tasks; extraction at ``--gpu-images-per-s`` per
GPU, an assumption this machine (no GPU) cannot measure.

Two cores here: three one-CPU nodes share them, so little is gained from the third; what the run shows is that
the overhead is small and the work spreads. Absolute figures move with the machine's other load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import ray_harness  # noqa: F401, I001 - before ray: every node on 127.0.0.1

REPO = Path(__file__).resolve().parents[1]


def pick_images(source: Path, n: int, tmp: Path) -> dict[str, Path]:
    from matcher.io.catalogue import load_catalogue

    if source and source.exists():
        photos = sorted((p for p in load_catalogue(source) if p.path.is_file()), key=lambda p: p.id)
        if len(photos) >= n:
            step = len(photos) / n
            return {photos[int(i * step)].id: photos[int(i * step)].path for i in range(n)}
    import cv2

    from matcher.synthetic import textured_image, warp_affine

    out = {}  # no photos there: generated ones, three warped views of each pattern
    (tmp / "generated").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = textured_image(i // 3)
        img = base if i % 3 == 0 else warp_affine(base, angle=4.0 * (i % 3), scale=0.95)[0]
        path = tmp / "generated" / f"gen{i:04d}.png"
        cv2.imwrite(str(path), img)
        out[path.stem] = path
    return out


def comparable_share(catalogue: Path | None) -> tuple[float, str]:
    """Share of a catalogue's pairs that are comparable views (top with top, flank with flank, unknown with any)."""
    from collections import Counter

    from matcher.io.catalogue import read_photos, view_group

    if catalogue is None or not Path(catalogue).is_file():
        return 1.0, "every pair (no catalogue metadata to read viewpoints from)"
    photos = list(read_photos(catalogue).values())
    groups = Counter(view_group(p.viewpoint) for p in photos)
    n, unknown = len(photos), groups.pop("", 0)
    comparable = sum(k * (k - 1) // 2 for k in groups.values()) + unknown * (n - unknown) + unknown * (unknown - 1) // 2
    pairs = n * (n - 1) // 2
    return comparable / pairs, f"{comparable:,} of the {pairs:,} pairs of {catalogue} ({n:,} photos)"


def engine_for(args, root: Path, backend: str = "local", workers: int = 1, address: str | None = None):
    from matcher.engine import Engine
    from matcher.pairs.store import VerdictStore

    engine = Engine(args.preset, root, "cpu", workers, progress=False, backend=backend, ray_address=address)
    verifier = engine.verifier()
    verifier.store = VerdictStore(None, verifier.store.settings)  # fresh, in memory: every pair computed
    return engine


def verdict_rows(engine) -> list:
    return engine.verifier().store.conn.execute("SELECT * FROM verdicts ORDER BY sha_a, sha_b").fetchall()


def timed(engine, pairs: set) -> float:
    t0 = time.perf_counter()
    engine.verdicts(pairs, progress=False)
    return time.perf_counter() - t0


def run_local(args, root, images, pairs, workers: int) -> dict:
    engine = engine_for(args, root, "local", workers)
    engine.prepare(images)
    wall = timed(engine, pairs)
    return {"backend": "local", "nodes": 1, "workers": workers, "wall_s": wall, "pairs": len(pairs),
            "rows": verdict_rows(engine)}


def run_ray(args, root, images, pairs, warm, nodes: int, cpus: int) -> dict:
    import ray

    cluster, _ = ray_harness.start_cluster(workers=nodes, cpus=cpus)
    try:
        ray.init(address=cluster.address, log_to_driver=False, namespace="whalematch")
        engine = engine_for(args, root, "ray", 1, cluster.address)
        engine.prepare(images)
        engine.verdicts(warm, progress=False)  # starts every node's worker processes (torch imported once each)
        verifier = engine.verifier()
        verifier.store = type(verifier.store)(None, verifier.store.settings)  # the timed run computes every pair
        before = {k: dict(v) for k, v in engine.backend.work().items()}
        wall = timed(engine, pairs)
        work = {}
        for name, w in engine.backend.work().items():
            b = before.get(name, {"pairs": 0, "tasks": 0, "pair_s": 0.0, "pair_cpu_s": 0.0})
            work[name] = {"pairs": w["pairs"] - b["pairs"], "tasks": w["tasks"] - b["tasks"],
                          "task_s": w["pair_s"] - b["pair_s"], "cpu_s": w["pair_cpu_s"] - b["pair_cpu_s"]}
        rows = verdict_rows(engine)
        return {"backend": "ray", "nodes": nodes, "cpus": cpus, "workers": engine.backend.slots, "wall_s": wall,
                "pairs": len(pairs), "work": work, "rows": rows, "block": engine.backend.block_size(len(pairs))}
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=REPO / "data" / "dev", help="catalogue folder or metadata CSV")
    p.add_argument("--cache-dir", type=Path, default=REPO / "submission" / "cache",
                   help="where the features are (or are extracted to, untimed)")
    p.add_argument("--preset", default="disk-mnn")
    p.add_argument("--n-images", type=int, default=64, help="photos; every pair of them is verified")
    p.add_argument("--clusters", default="1x2,1x1,2x1,3x1",
                   help="harness clusters to run on, each NODESxCPUS (worker nodes, CPUs per node)")
    p.add_argument("--local-workers", default="1,2", help="worker counts of the local backend")
    p.add_argument("--catalogue", type=Path, default=REPO.parent / "shared" / "belugas" / "metadata.csv",
                   help="metadata whose viewpoints give the share of comparable pairs for the projection")
    p.add_argument("--project-photos", type=int, default=30_000)
    p.add_argument("--project-nodes", default="1,8,32")
    p.add_argument("--node-cpus", type=int, default=6)
    p.add_argument("--node-gpus", type=int, default=1)
    p.add_argument("--gpu-images-per-s", type=float, default=20.0,
                   help="extraction rate of one GPU (an assumption: not measurable without a GPU)")
    p.add_argument("--cpu-images-per-s", type=float, default=0.5,
                   help="extraction rate of one CPU worker, for nodes without a GPU (DISK: about 1 image/s on this "
                        "machine's two cores, benchmarks/RESULTS.md)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of every configuration (medians reported)")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args(argv)

    from matcher.config import setup_logging
    from matcher.engine import Engine
    from matcher.pairs.store import canonical

    setup_logging()
    started = datetime.datetime.now()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = pick_images(args.images, args.n_images, tmp)
        # features: from the cache (extracted there first if missing), shared by every run through a symlink
        prep = Engine(args.preset, args.cache_dir, "cpu", 2, progress=True)
        shas, bad = prep.prepare(images)
        images = {i: images[i] for i in shas}
        root = tmp / "cache"
        root.mkdir()
        (root / "features").symlink_to((args.cache_dir / "features").resolve(), target_is_directory=True)
        ids = sorted(shas)
        pairs = {canonical(shas[a], shas[b]) for i, a in enumerate(ids) for b in ids[i + 1 :] if shas[a] != shas[b]}
        warm_ids = ids[: 8]
        warm = {canonical(shas[a], shas[b]) for i, a in enumerate(warm_ids) for b in warm_ids[i + 1 :]}
        print(f"{len(images)} photos, {len(pairs):,} pairs, preset {args.preset}", flush=True)
        configs = [("local", w, 0) for w in (int(v) for v in args.local_workers.split(",") if v)]
        configs += [("ray", *(int(x) for x in spec.lower().split("x"))) for spec in args.clusters.split(",") if spec]
        runs: dict[tuple, list[dict]] = {c: [] for c in configs}
        for round_ in range(args.repeats):  # rounds of every configuration: the machine's other load hits all alike
            for c in configs:
                kind, a, b = c
                r = run_local(args, root, images, pairs, a) if kind == "local" else \
                    run_ray(args, root, images, pairs, warm, a, b)
                runs[c].append(r)
                print(f"round {round_ + 1}: {kind}, " + (f"{a} workers" if kind == "local" else f"{a} nodes x {b} CPUs")
                      + f": {r['wall_s']:.1f} s", flush=True)
        results = []
        for c in configs:  # each configuration's run of median wall time, with every run's wall time
            ordered = sorted(runs[c], key=lambda r: r["wall_s"])
            median = dict(ordered[(len(ordered) - 1) // 2])
            median["walls"] = [r["wall_s"] for r in runs[c]]
            median["identical_all"] = all(r["rows"] == runs[configs[0]][0]["rows"] for r in runs[c])
            results.append(median)

    reference = results[0]["rows"]
    table = ["| run | workers | wall s (median; every round) | pairs/s | tasks | task share of wall | node shares "
             "(min / mean) | verdicts = local |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        r["pairs_per_s"] = r["pairs"] / r["wall_s"]
        r["identical"] = r["rows"] == reference and r["identical_all"]
        if r["backend"] == "ray":
            shares = [w["pairs"] for w in r["work"].values()]
            mean = sum(shares) / r["nodes"]
            r["min_share"] = (min(shares) if len(shares) == r["nodes"] else 0) / mean
            r["tasks"] = sum(w["tasks"] for w in r["work"].values())
            r["task_s"] = sum(w["task_s"] for w in r["work"].values())
            r["cpu_s"] = sum(w["cpu_s"] for w in r["work"].values())
            r["busy"] = r["task_s"] / (r["wall_s"] * r["workers"])
            extra = (f"| {r['tasks']} | {r['busy']:.0%} | {r['min_share']:.2f} "
                     f"({', '.join(str(s) for s in shares)} pairs) ")
        else:
            extra = "| - | - | - "
        name = f"local, {r['workers']} worker{'s' * (r['workers'] != 1)}" if r["backend"] == "local" else \
            f"ray, {r['nodes']} node{'s' * (r['nodes'] != 1)} x {r['cpus']} CPU{'s' * (r['cpus'] != 1)}"
        walls = ", ".join(f"{w:.1f}" for w in r["walls"])
        table.append(f"| {name} | {r['workers']} | {r['wall_s']:.1f} ({walls}) | {r['pairs_per_s']:.0f} {extra}"
                     f"| {'yes' if r['identical'] else 'NO'} |")
    print("\n".join(table))

    # overhead: ray on one node of W CPUs against the local backend with W workers, on the same pairs
    lines = []
    ones = [r for r in results if r["backend"] == "ray" and r["nodes"] == 1]
    for one in ones:
        same = next((r for r in results if r["backend"] == "local" and r["workers"] == one["workers"]), None)
        if same is None:
            continue
        one["overhead"] = ratio = one["wall_s"] / same["wall_s"]
        rounds = [x["wall_s"] / y["wall_s"] for x, y in zip(runs[("ray", 1, one["cpus"])],
                                                            runs[("local", same["workers"], 0)])]
        per_task = (one["wall_s"] - same["wall_s"]) / one["tasks"]
        idle = (one["wall_s"] * one["workers"] - one["task_s"]) / one["tasks"]
        lines.append(f"overhead: ray on 1 node of {one['workers']} CPU{'s' * (one['workers'] != 1)} takes {ratio:.2f}x "
                     f"the wall time of the local backend with {same['workers']} worker{'s' * (same['workers'] != 1)} "
                     f"({one['wall_s']:.1f} s against {same['wall_s']:.1f} s, medians; round by round "
                     f"{', '.join(f'{x:.2f}x' for x in rounds)}; target at most 1.3x): "
                     f"{1000 * per_task:+.0f} ms per task of {one['block']} pairs ({one['tasks']} tasks), of which "
                     f"{1000 * idle:.0f} ms with the worker idle between tasks")
    spread = [r for r in results if r["backend"] == "ray" and r["nodes"] > 1]
    for r in spread:
        lines.append(f"spread: {r['nodes']} nodes, the least loaded did {r['min_share']:.2f} of the mean share "
                     "(target at least 0.70)")
    share, where = comparable_share(args.catalogue)
    cores = os.cpu_count() or 1
    base = max((r for r in ones if r["workers"] <= cores), key=lambda r: r["workers"], default=None)
    if base:
        per_worker = base["pairs"] / base["cpu_s"]  # per CPU second: what a dedicated core does
        efficiency = base["busy"]
        n = args.project_photos
        total = int(share * n * (n - 1) / 2)
        lines.append(f"projection: an audit of every comparable pair of {n:,} photos = {total:,} pairs (comparable "
                     f"share {share:.3f}: {where}); verification at {per_worker:.0f} pairs per CPU-second of a worker "
                     f"(measured here: 1 node of {base['workers']} CPUs on {cores} cores, the tasks' process CPU time, "
                     f"so the share of the cores that other load took is left out) with the workers "
                     f"{efficiency:.0%} of the time in tasks; extraction of {n:,} photos at "
                     + (f"{args.gpu_images_per_s:g} images/s per GPU (assumed)" if args.node_gpus else
                        f"{args.cpu_images_per_s:g} images/s per CPU (assumed)"))
        projection = []
        for nodes in [int(v) for v in args.project_nodes.split(",") if v]:
            verify_s = total / (per_worker * args.node_cpus * nodes * efficiency)
            extract_s = (n / (args.gpu_images_per_s * args.node_gpus * nodes) if args.node_gpus else
                         n / (args.cpu_images_per_s * args.node_cpus * nodes))
            projection.append({"nodes": nodes, "verify_h": verify_s / 3600, "extract_h": extract_s / 3600,
                               "total_h": (verify_s + extract_s) / 3600})
        lines.append("| nodes (each " + f"{args.node_cpus} CPUs + {args.node_gpus} GPU) | extraction | verification | "
                     "wall time |")
        lines.append("|---|---|---|---|")
        for pr in projection:
            lines.append(f"| {pr['nodes']} | {pr['extract_h']:.2f} h | {pr['verify_h']:.1f} h | {pr['total_h']:.1f} h "
                         f"({pr['total_h'] / 24:.1f} days) |")
    print("\n".join(lines))
    print(f"measured {started:%Y-%m-%d %H:%M} on {platform.node()} ({os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": started.isoformat(), "preset": args.preset, "pairs": len(pairs),
                                         "runs": [{k: v for k, v in r.items() if k != "rows"} for r in results],
                                         "table": table,
                                         "summary": lines}, indent=2, default=str))
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
