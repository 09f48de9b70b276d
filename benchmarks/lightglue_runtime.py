"""LightGlue's cost per pair on the CPU, in PyTorch and in ONNX Runtime: a figure for the next accuracy step.

LightGlue (``disk-lightglue``) ranks hard true pairs above false ones more often than mutual NN, but costs
about a second a pair on a CPU, which keeps it out of the default cascade. This measures what ONNX Runtime
makes of it. The export needs a fixed computation: LightGlue's adaptive depth (early stop) and point pruning
decide per pair, so the exported network runs every layer on every point. Timed on the same real pairs of
development photos, one after the other, a pair at a time:

* PyTorch as the cascade runs it (adaptive depth and pruning, the shipped settings);
* PyTorch running every layer (what the export computes);
* ONNX Runtime running every layer (exported here by ``torch.onnx.export(dynamo=True)``, which needs the
  package onnxscript: ``pip install onnxscript``).

Printed: seconds a pair and the agreement of the matches with PyTorch's every-layer matches (the share of
matches both find, of those either finds).

    python -m benchmarks.lightglue_runtime --catalogue ../shared/belugas --cache-dir submission/cache [--pairs 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from matcher import config, presets
from matcher.engine import Engine
from matcher.io.catalogue import read_photos
from matcher.pairs.lightglue import LightGlueMatcher

REPO = Path(__file__).resolve().parents[1]


def export(model, path: Path, example: dict) -> None:
    """LightGlue (every layer, every point) as ONNX with the numbers of keypoints dynamic."""
    import torch

    class Core(torch.nn.Module):
        def __init__(self, lg):
            super().__init__()
            self.lg = lg

        def forward(self, k0, k1, d0, d1, s0, s1):
            out = self.lg({"image0": {"keypoints": k0, "descriptors": d0, "image_size": s0},
                           "image1": {"keypoints": k1, "descriptors": d1, "image_size": s1}})
            return out["matches0"], out["matching_scores0"]

    n0, n1 = torch.export.Dim("n0", min=32, max=8192), torch.export.Dim("n1", min=32, max=8192)
    args = tuple(torch.from_numpy(example[k]) for k in ("k0", "k1", "d0", "d1", "s0", "s1"))
    torch.onnx.export(Core(model).eval(), args, str(path), dynamo=True, input_names=list(example),
                      output_names=["matches0", "scores0"],
                      dynamic_shapes=({1: n0}, {1: n1}, {1: n0}, {1: n1}, None, None))


def inputs(f0: dict, f1: dict) -> dict:
    return {"k0": f0["keypoints"][None].astype(np.float32), "k1": f1["keypoints"][None].astype(np.float32),
            "d0": f0["descriptors"][None].astype(np.float32), "d1": f1["descriptors"][None].astype(np.float32),
            "s0": f0["size"][None].astype(np.float32), "s1": f1["size"][None].astype(np.float32)}


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Matches both found, of those either found (1 when neither found any)."""
    sa, sb = {tuple(x) for x in a.tolist()}, {tuple(x) for x in b.tolist()}
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogue", type=Path, default=REPO.parent / "shared" / "belugas")
    p.add_argument("--cache-dir", type=Path, default=config.default_cache_dir())
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    config.setup_logging(False)
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # the exporter's passes log every initializer
    if importlib.util.find_spec("onnxscript") is None or importlib.util.find_spec("onnxruntime") is None:
        print("the export needs onnxscript and the timing onnxruntime: pip install onnxscript onnxruntime",
              file=sys.stderr)
        return 2
    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    photos = read_photos(args.catalogue / "metadata.csv")
    tops = sorted((ph for ph in photos.values() if ph.viewpoint == "top"), key=lambda ph: ph.id)
    rng = np.random.default_rng(0)
    by_whale: dict[str, list] = {}
    for ph in tops:
        by_whale.setdefault(ph.whale_id, []).append(ph)
    same = [ws[:2] for ws in by_whale.values() if len(ws) > 1]
    chosen = [same[i] for i in rng.choice(len(same), args.pairs // 2, replace=False)]
    chosen += [[tops[i], tops[j]] for i, j in rng.integers(0, len(tops), (args.pairs - len(chosen), 2))]
    engine = Engine("disk-mnn", args.cache_dir, "cpu", progress=False)
    shas, _ = engine.prepare({ph.id: ph.path for pair in chosen for ph in pair})
    pairs = [(engine.feature(shas[a.id]), engine.feature(shas[b.id])) for a, b in chosen]
    conf = presets.resolve("disk-lightglue")["matcher"]
    shipped = LightGlueMatcher(conf, "cpu")
    every = LightGlueMatcher(conf, "cpu")
    every.model.conf.depth_confidence, every.model.conf.width_confidence = -1, -1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lightglue.onnx"
        t = time.perf_counter()
        export(every.model, path, inputs(*pairs[0]))
        exported = time.perf_counter() - t
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        def onnx(f0, f1):
            m0, _ = session.run(None, inputs(f0, f1))
            valid = np.flatnonzero(m0[0] > -1)
            return np.stack([valid, m0[0][valid]], 1), None

        runs = {"PyTorch, shipped (adaptive depth and pruning)": shipped.match,
                "PyTorch, every layer": every.match, "ONNX Runtime, every layer": onnx}
        for fn in runs.values():  # warm up
            fn(*pairs[0])
        best: dict[str, float] = {}
        matches: dict[str, list] = {}
        for _ in range(2):  # interleaved rounds, the best of each
            for name, fn in runs.items():
                t = time.perf_counter()
                matches[name] = [fn(a, b)[0] for a, b in pairs]
                best[name] = min(best.get(name, np.inf), (time.perf_counter() - t) / len(pairs))
    ref = matches["PyTorch, every layer"]
    kp = np.mean([len(a["keypoints"]) for a, _ in pairs])
    print(f"LightGlue on {len(pairs)} pairs of development photos (half of one whale, half drawn at random; {kp:.0f} "
          f"keypoints a photo), {args.threads} threads; export {exported:.0f} s\n")
    print("| run | s a pair | vs PyTorch every layer | matches shared with PyTorch every layer |")
    print("|---|---:|---:|---:|")
    for name in runs:
        agree = np.mean([jaccard(a, b) for a, b in zip(matches[name], ref)])
        print(f"| {name} | {best[name]:.3f} | {best['PyTorch, every layer'] / best[name]:.2f}x | {agree:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
