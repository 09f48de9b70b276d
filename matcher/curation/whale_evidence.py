"""Whale-level answers: the verified catalogue photos of a new photo, or of a sighting's photos, combined per whale.

The evidence of one pair is its verified strength ``s`` (inliers + their mean similarity,
:mod:`matcher.pairs.ransac`): image evidence alone, no date, so that a new sighting's day never vouches
for a whale. A whale's evidence is the strength of its best pair, over its catalogue photos and over the
sighting's new photos. Sums were measured too (``decay``: the k-th best pair weighs ``decay ** (k - 1)``;
``training/train_new_whale.py``, benchmarks/RESULTS.md) and lose: every pair of photos, of one whale or not,
reaches some strength by chance (a median of 11 against 15 for true pairs, out of fold), so a sum favours the
whales photographed most, not the ones that match.

Only catalogue photos with a whale id take part (a photo without one names no whale to propose). Scores
shown are ``e / (e + 20)``, the pair score's scale.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DECAY = 0.0  # weight of the k-th best item is DECAY ** (k - 1): the best pair alone (see the docstring)
SCALE = 20.0  # score = evidence / (evidence + SCALE), as a pair's score
PAIR_COLUMNS = ("photo", "candidate", "whale", "strength", "n_inliers")
WHALE_COLUMNS = ("whale", "evidence", "score", "best_photo", "best_candidate", "best_strength", "best_inliers",
                 "candidates", "photos")


def decayed_sum(values: np.ndarray, decay: float = DECAY) -> float:
    """``v1 + decay * v2 + decay**2 * v3 + ...`` of the values sorted from the largest."""
    v = np.sort(np.asarray(values, np.float64))[::-1]
    return float((v * decay ** np.arange(len(v))).sum()) if len(v) else 0.0


def score(evidence) -> np.ndarray:
    e = np.asarray(evidence, np.float64)
    return e / (e + SCALE)


def rule() -> str:
    """How a whale's evidence is combined, in words (for pages and printouts)."""
    if DECAY == 0:
        return "its best verified pair"
    return f"its verified pairs, the best counting whole and the k-th best {DECAY}^(k-1) of its strength"


def pairs_table(rows: list[dict], whale_of: dict[str, str], photo: str = "") -> pd.DataFrame:
    """A search's result rows (``image_a`` the new photo, ``image_b`` the candidate, ``strength``,
    ``n_inliers``) as the table :func:`photo_whales` reads: the verified pairs (rows with an error left out) of
    candidates with a whale id in ``whale_of``."""
    ok = [r for r in rows if not r.get("error") and r.get("strength") is not None and whale_of.get(r["image_b"])]
    return pd.DataFrame({"photo": [photo or r["image_a"] for r in ok], "candidate": [r["image_b"] for r in ok],
                         "whale": [whale_of[r["image_b"]] for r in ok],
                         "strength": [float(r["strength"]) for r in ok],
                         "n_inliers": [int(r["n_inliers"]) for r in ok]}, columns=list(PAIR_COLUMNS))


def photo_whales(pairs: pd.DataFrame, decay: float = DECAY) -> pd.DataFrame:
    """Per (photo, whale): the whale's evidence for that photo, its best candidate, strength and inliers, and how
    many of its catalogue photos were verified."""
    if pairs.empty:
        return pd.DataFrame(columns=["photo", "whale", "evidence", "best_candidate", "best_strength", "best_inliers",
                                     "candidates"])
    p = pairs.sort_values(["photo", "whale", "strength", "candidate"], ascending=[True, True, False, True],
                          kind="stable")
    g = p.groupby(["photo", "whale"], sort=True)
    out = g.agg(best_candidate=("candidate", "first"), best_strength=("strength", "first"),
                best_inliers=("n_inliers", "first"), candidates=("candidate", "size")).reset_index()
    out.insert(2, "evidence", g["strength"].apply(lambda s: decayed_sum(s.to_numpy(), decay)).to_numpy())
    return out


def whale_ranking(pairs: pd.DataFrame, decay: float = DECAY, photo_decay: float = DECAY) -> pd.DataFrame:
    """The whales of a new photo's or a sighting's verified pairs (:data:`PAIR_COLUMNS`), best first (evidence,
    then best strength, then whale id), with :data:`WHALE_COLUMNS` and their ``rank`` (from 1). ``decay``
    combines a whale's catalogue photos for one new photo, ``photo_decay`` the new photos of a sighting."""
    per_photo = photo_whales(pairs, decay)
    if per_photo.empty:
        return pd.DataFrame(columns=["rank", *WHALE_COLUMNS])
    per_photo = per_photo.sort_values(["whale", "evidence", "photo"], ascending=[True, False, True], kind="stable")
    g = per_photo.groupby("whale", sort=True)
    out = g.agg(best_photo=("photo", "first"), best_candidate=("best_candidate", "first"),
                best_strength=("best_strength", "max"), best_inliers=("best_inliers", "max"),
                candidates=("candidates", "sum"), photos=("photo", "size")).reset_index()
    out["evidence"] = g["evidence"].apply(lambda e: decayed_sum(e.to_numpy(), photo_decay)).to_numpy()
    out["score"] = score(out["evidence"])
    out = out.sort_values(["evidence", "best_strength", "whale"], ascending=[False, False, True], kind="stable")
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out[["rank", *WHALE_COLUMNS]].reset_index(drop=True)
