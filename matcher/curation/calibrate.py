"""The calibrate command's work: labelled pairs sampled by whale, verified, a calibration fitted and measured.

Same-whale and different-whale pairs are drawn from two disjoint sets of whales (fit
and held out); the isotonic map (:mod:`.calibration`) is fitted on the first set and its
calibration error measured on the second.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, WhaleMatchError
from ..io.catalogue import Photo, apply_subset, comparable, read_photos
from . import calibration as calib
from . import report
from .curator import Curator, from_options, pair_task

log = logging.getLogger("whalematch")
SETS = ("fit", "heldout")


def check_inputs(photos: list[Photo], metadata: Path, heldout: float) -> None:
    """:class:`DataError` or :class:`WhaleMatchError` when the labelled photos or the split cannot give a fit."""
    if len({p.whale_id for p in photos}) < 4:
        raise DataError(f"{metadata}: the calibration needs labelled images (whale_id) of at least 4 whales")
    if not 0 < heldout < 1:
        raise WhaleMatchError("--heldout must lie strictly between 0 and 1")


def sample_calibration_pairs(photos: list[Photo], seed: int = 0, heldout: float = 0.3, positives: int = 600,
                             max_images: int = 800, max_per_whale: int = 8, negative_ratio: float = 4.0) -> dict:
    """Labelled pairs for the fit and held-out sets, from disjoint sets of whales.

    ``heldout`` is the share of whales held out; ``positives`` and ``max_images`` are shared between the sets
    in that proportion; each whale gives at most ``max_per_whale`` same-whale pairs (taken round robin, every
    whale before any whale twice), and ``negative_ratio`` different-whale pairs per same-whale pair are drawn
    among the images of the same-whale pairs. Per set: ``positives``, ``negatives`` (lists of photo pairs),
    ``whales`` and ``images``.
    """
    rng = np.random.default_rng(seed)
    by_whale: dict[str, list[Photo]] = {}
    for p in sorted(photos, key=lambda p: p.id):
        by_whale.setdefault(p.whale_id, []).append(p)
    whales = sorted(by_whale)
    rng.shuffle(whales)
    n_held = max(1, int(round(len(whales) * heldout)))
    splits = {"heldout": whales[:n_held], "fit": whales[n_held:]}
    out = {}
    for name, ws in splits.items():
        share = heldout if name == "heldout" else 1 - heldout
        target = max(1, int(round(positives * share)))
        image_cap = max(2, int(round(max_images * share)))
        queues = []
        for w in ws:
            pairs = [(a, b) for i, a in enumerate(by_whale[w]) for b in by_whale[w][i + 1:] if comparable(a, b)]
            if pairs:
                order = rng.permutation(len(pairs))[:max_per_whale]
                queues.append([pairs[i] for i in order])
        chosen, used = [], set()
        while len(chosen) < target and any(queues):  # round robin: every whale before any whale twice
            for q in queues:
                if q and len(chosen) < target:
                    a, b = q.pop(0)
                    if len(used | {a.id, b.id}) > image_cap:
                        continue
                    chosen.append((a, b))
                    used |= {a.id, b.id}
        pool = sorted({p for ab in chosen for p in ab}, key=lambda p: p.id)
        n_neg = max(1, int(round(len(chosen) * negative_ratio)))
        negatives, seen, tries = [], set(), 0
        while len(negatives) < n_neg and tries < 200 * n_neg and len(pool) > 1:
            tries += 1
            i, j = rng.choice(len(pool), size=2, replace=False)
            a, b = sorted((pool[i], pool[j]), key=lambda p: p.id)
            if a.whale_id == b.whale_id or not comparable(a, b) or (a.id, b.id) in seen:
                continue
            seen.add((a.id, b.id))
            negatives.append((a, b))
        out[name] = {"positives": chosen, "negatives": negatives, "whales": len({p.whale_id for p in pool}),
                     "images": len(pool)}
    return out


def photos_used(sets: dict) -> list[Photo]:
    """Every photo of the sampled pairs, once."""
    return list({p.id: p for s in sets.values() for ab in s["positives"] + s["negatives"] for p in ab}.values())


def portable_command(argv: list[str]) -> str:
    """The command line with absolute paths made relative to the working folder (nothing machine-specific)."""
    parts = []
    for a in argv:
        if os.path.isabs(a):
            rel = os.path.relpath(a)
            a = rel if not rel.startswith("..") else ".../" + "/".join(Path(a).parts[-2:])
        parts.append(a)
    return "whalematch " + shlex.join(parts)


def verify_sets(cur: Curator, sets: dict) -> dict:
    """Per set, the verified pairs: ``rows``, ``labels`` (1 same whale), ``strength`` and ``score`` (pairs that
    could not be verified are left out, with a warning)."""
    results = {}
    for name, s in sets.items():
        tasks = [pair_task(a, b) for a, b in s["positives"] + s["negatives"]]
        labels = np.array([1] * len(s["positives"]) + [0] * len(s["negatives"]))
        rows = cur.verify(tasks)
        ok = np.array([not r["error"] for r in rows])
        results[name] = {"rows": [r for r, k in zip(rows, ok) if k], "labels": labels[ok],
                         "strength": np.array([r["strength"] for r, k in zip(rows, ok) if k], float),
                         "score": np.array([r["score"] for r, k in zip(rows, ok) if k], float)}
        # what the calibration maps: the pair model's score where the pairs are scored by it, else the strength
        results[name]["x"] = results[name]["score"] if cur.model is not None else results[name]["strength"]
        if (~ok).any():
            log.warning("%d %s pairs could not be verified and are left out", int((~ok).sum()), name)
    return results


def calibrate(cur: Curator, sets: dict, seed: int, metadata: Path, command: str
              ) -> tuple[calib.Calibration, dict]:
    """Verify the sampled sets with the engine's raw verdicts, fit the calibration on the fit set and measure
    it on the held-out set; ``(calibration, per-set results of verify_sets)``."""
    cur.calibration = None  # fit on raw verdicts
    results = verify_sets(cur, sets)
    fit_set, held = results["fit"], results["heldout"]
    if len(set(fit_set["labels"].tolist())) < 2:
        raise WhaleMatchError("the fit set needs both same-whale and different-whale pairs")
    engine = cur.engine
    cal = calib.fit(fit_set["x"], fit_set["labels"], engine.name, engine.settings_key,
                    input=calib.MODEL if cur.model is not None else calib.STRENGTH,
                    images=sets["fit"]["images"], whales=sets["fit"]["whales"], seed=seed,
                    same_encounter_positives=sum(1 for a, b in sets["fit"]["positives"]
                                                 if a.encounter_id and a.encounter_id == b.encounter_id),
                    metadata=Path(metadata).name)
    cal.heldout = {**calib.evaluate(cal, held["x"], held["labels"], held["score"]),
                   "images": sets["heldout"]["images"], "whales": sets["heldout"]["whales"],
                   "split": "by whale: no whale in both the fit and the held-out set"}
    cal.command = command
    return cal, results


def heldout_reliability(cal: calib.Calibration, results: dict) -> list[dict]:
    """The reliability table of the held-out pairs, classes weighed to even odds."""
    held = results["heldout"]
    p_held = np.atleast_1d(cal.probability(held["x"]))
    return calib.reliability_table(p_held, held["labels"], weights=calib.balancing_weights(held["labels"]))


def pairs_table(cal: calib.Calibration, results: dict) -> pd.DataFrame:
    """Every verified labelled pair with its set, strength, score and calibrated probability."""
    frames = []
    for name, res in results.items():
        frames.append(pd.DataFrame({"set": name, "image_a": [r["image_a"] for r in res["rows"]],
                                    "image_b": [r["image_b"] for r in res["rows"]], "same_whale": res["labels"],
                                    "n_inliers": [r["n_inliers"] for r in res["rows"]], "strength": res["strength"],
                                    "score": res["score"],
                                    "probability": np.atleast_1d(cal.probability(res["x"])),
                                    "mirrored": [r["mirrored"] for r in res["rows"]]}))
    return pd.concat(frames, ignore_index=True)


def save(cal: calib.Calibration, results: dict, output: Path, pairs_csv: Path) -> None:
    """Write the calibration file and the CSV of its labelled pairs."""
    cal.save(output)
    report.write_csv(pairs_table(cal, results), pairs_csv)


# --------------------------------------------------------------------------- the command


def ci(h: dict, name: str) -> str:
    """The 90% bootstrap interval of a held-out measure, when there is one."""
    lo_hi = h.get(f"{name}_ci90")
    return f" (90% interval {lo_hi[0]:.3f}-{lo_hi[1]:.3f})" if lo_hi else ""


def run(args, argv: list[str]) -> int:
    """Fit P(same whale) on a labelled catalogue and report its held-out error."""
    meta = read_photos(args.metadata)
    photos = apply_subset([p for p in meta.values() if p.whale_id], args.subset)
    check_inputs(photos, args.metadata, args.heldout)
    cur = from_options(args, None)
    sets = sample_calibration_pairs(photos, args.seed, args.heldout, args.positives, args.max_images,
                                              args.max_per_whale, args.negative_ratio)
    for name in SETS:
        s = sets[name]
        print(f"{name:>8}: {len(s['positives'])} same-whale + {len(s['negatives'])} different-whale pairs "
              f"from {s['images']} images of {s['whales']} whales", file=sys.stderr)
    print(cur.extraction_line(photos_used(sets)), file=sys.stderr)
    cal, results = calibrate(cur, sets, args.seed, args.metadata, portable_command(argv))
    output = args.output or args.out / f"calibration-{cal.preset}.json"
    pairs_csv = args.out / f"calibration-pairs-{cal.preset}.csv"
    save(cal, results, output, pairs_csv)
    h = cal.heldout
    print(f"calibration of {cal.preset} (settings {cal.settings_key}): isotonic fit on {cal.fit['pairs']} pairs "
          f"({cal.fit['positives']} same whale, {cal.fit['negatives']} different) from {cal.fit['images']} images "
          f"of {cal.fit['whales']} whales")
    print(f"held-out ({h['pairs']} pairs: {h['positives']} same, {h['negatives']} different; {h['images']} images "
          f"of {h['whales']} other whales): ECE {h['ece']:.4f}{ci(h, 'ece')}  Brier {h['brier']:.4f}{ci(h, 'brier')}  "
          f"(raw score read as a probability: ECE {h['raw_score_ece']:.4f}, Brier {h['raw_score_brier']:.4f})")
    print("reliability on the held-out pairs, classes weighed to even odds "
          "(P bin, pairs, of which same whale, mean P, share same whale):")
    for r in heldout_reliability(cal, results):
        print(f"  {r['bin']}  {r['pairs']:>5}  {r['same_whale_pairs']:>5}  {r['mean_p']:.3f}  {r['positive_rate']:.3f}")
    print(f"wrote {output} (and the labelled pairs in {pairs_csv})")
    return 0
