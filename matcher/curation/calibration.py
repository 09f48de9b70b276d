"""Calibrated probability that a pair shows the same whale, from the pair's verified strength.

The engine's ``score`` (``strength / (strength + 20)``) ranks well but is no
probability. A calibration maps ``strength`` (inliers + mean inlier similarity,
see :mod:`matcher.pairs.ransac`) to P(same whale) with an isotonic fit
(pool-adjacent-violators, :func:`scipy.optimize.isotonic_regression`) on labelled
pairs: monotone by construction, values in [0, 1].

The fitted map is a small JSON file (``weights/calibration-<preset>.json``)::

    format, version        "whalematch-calibration", 1
    preset, settings_key   the pipeline preset and its verdict settings key (the map
                           is only valid for verdicts computed with exactly these settings)
    x, y                   knots: P at strength x[i] is y[i]; linear in between,
                           constant beyond the ends
    prior                  share of same-whale pairs in the fit data (the probability
                           is "at these odds"; :meth:`Calibration.probability` can
                           re-weigh it for another prior)
    fit, heldout           sizes, date, ECE and Brier of the held-out pairs
    command                the command that rebuilds the file

Held-out pairs come from whales that are not in the fit set (split by whale).
More different-whale pairs than same-whale pairs are sampled (the strong chance
matches between different whales are rare, and their share decides the top of the
map); in the fit and in the error measures the two classes weigh equally, so the
probability is "at even odds". ``--prior`` (see :meth:`Calibration.probability`)
moves it to another base rate, e.g. about 1/K when a new photo is searched
against a catalogue of K whales.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import isotonic_regression

from .. import presets
from ..errors import WhaleMatchError
from ..io import weights
from ..io.atomic import atomic_path

FORMAT = "whalematch-calibration"
VERSION = 1
ECE_BINS = 10
BOOTSTRAP = 1000  # resamples for the interval of the held-out ECE and Brier
PSEUDO_COUNT = 1.0  # per pooled block, towards 1/2: a block of 3 positives says 0.875, not 1.0
TIE = 1e-12  # relative difference below which two adjacent block values are equal (rounding of the sums)


STRENGTH = "strength (inliers + mean inlier similarity)"
MODEL = "pair model probability"
INPUTS = (STRENGTH, MODEL)


class CalibrationError(WhaleMatchError):
    """A calibration file is missing, malformed or made for other settings."""


def _pool(y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Weighted isotonic (non-decreasing) regression of ``y`` given in x order, as maximal blocks.

    :func:`scipy.optimize.isotonic_regression` pools the violators; adjacent blocks whose values are equal
    (to within rounding: :data:`TIE`) are pooled too, so the block values increase strictly whatever order
    the sums were taken in. Returns ``(block values, block weights, block index ranges [start, stop))``.
    """
    res = isotonic_regression(y, weights=w)
    starts, values, wts = res.blocks[:-1], res.x[res.blocks[:-1]], res.weights
    first = np.flatnonzero(np.r_[True, np.diff(values) > TIE * np.maximum(1.0, np.abs(values[1:]))])
    sizes = np.diff(np.r_[first, len(values)])
    block_w = np.add.reduceat(wts, first)
    block_v = np.where(sizes == 1, values[first], np.add.reduceat(values * wts, first) / block_w)
    bounds = np.r_[starts[first], len(y)].tolist()
    return block_v, block_w, list(zip(bounds[:-1], bounds[1:]))


def _weights(labels: np.ndarray, weights) -> np.ndarray:
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    if len(w) != len(labels) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be non-negative, one per pair, not all zero")
    return w


def balancing_weights(labels) -> np.ndarray:
    """Weights that give the two classes equal total weight (each class sums to half the pairs):
    sampling more different-whale pairs sharpens the estimate without moving the odds from even."""
    labels = np.asarray(labels, np.float64)
    n_pos, n_neg = labels.sum(), len(labels) - labels.sum()
    if n_pos == 0 or n_neg == 0:
        return np.ones(len(labels))
    return np.where(labels == 1, len(labels) / (2 * n_pos), len(labels) / (2 * n_neg))


def fit_isotonic(x: np.ndarray, labels: np.ndarray, weights=None,
                 pseudo_count: float = PSEUDO_COUNT) -> tuple[list, list]:
    """Knots ``(x, y)`` of a monotone map from ``x`` to P(label = 1) (weighted by ``weights``).

    Equal ``x`` values are pooled first (so ties never split), then the isotonic
    fit pools them into maximal blocks (adjacent blocks of equal value pooled too,
    see :func:`_pool`); blocks are shrunk a little towards 1/2 (``pseudo_count``,
    in units of weight) and pooled again so the result stays monotone; each block
    gives two knots (its lowest and highest x).
    """
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels, np.float64)
    if len(x) == 0 or len(x) != len(labels):
        raise ValueError("fit_isotonic needs as many labels as values, and at least one")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    w = _weights(labels, weights)
    ux, inverse = np.unique(x, return_inverse=True)
    n = np.bincount(inverse, weights=w, minlength=len(ux))
    pos = np.bincount(inverse, weights=w * labels, minlength=len(ux))
    keep = n > 0
    ux, n, pos = ux[keep], n[keep], pos[keep]
    values, wts, blocks = _pool(pos / n, n)
    shrunk = (values * wts + 0.5 * pseudo_count) / (wts + pseudo_count)
    shrunk_blocks, _, groups = _pool(shrunk, wts)
    kx: list[float] = []
    ky: list[float] = []
    for value, (g0, g1) in zip(shrunk_blocks, groups):
        lo, hi = blocks[g0][0], blocks[g1 - 1][1] - 1
        for xv in dict.fromkeys((float(ux[lo]), float(ux[hi]))):
            kx.append(xv)
            ky.append(float(np.clip(value, 0.0, 1.0)))
    return kx, ky


def _bins(p: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((p * bins).astype(int), bins - 1)


def expected_calibration_error(p: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS, weights=None) -> float:
    """ECE with ``bins`` equal-width bins: sum over bins of (share of pairs) * |mean P - share positive|
    (shares and means weighted by ``weights`` when given)."""
    p = np.asarray(p, np.float64)
    labels = np.asarray(labels, np.float64)
    if len(p) == 0:
        raise ValueError("no pairs to measure")
    w = _weights(labels, weights)
    idx = _bins(p, bins)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any() and w[sel].sum() > 0:
            ws = w[sel]
            total += ws.sum() / w.sum() * abs(np.average(p[sel], weights=ws) - np.average(labels[sel], weights=ws))
    return float(total)


def brier_score(p: np.ndarray, labels: np.ndarray, weights=None) -> float:
    p = np.asarray(p, np.float64)
    labels = np.asarray(labels, np.float64)
    if len(p) == 0:
        raise ValueError("no pairs to measure")
    return float(np.average((p - labels) ** 2, weights=_weights(labels, weights)))


def reliability_table(p: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS, weights=None) -> list[dict]:
    """Per non-empty bin: range, pairs, mean P and (weighted) share of same-whale pairs."""
    p = np.asarray(p, np.float64)
    labels = np.asarray(labels, np.float64)
    w = _weights(labels, weights)
    idx = _bins(p, bins)
    rows = []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            rows.append({"bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}", "pairs": int(sel.sum()),
                         "same_whale_pairs": int(labels[sel].sum()),
                         "mean_p": float(np.average(p[sel], weights=w[sel])),
                         "positive_rate": float(np.average(labels[sel], weights=w[sel]))})
    return rows


@dataclass
class Calibration:
    """A fitted strength -> P(same whale) map for one preset's verdict settings."""

    preset: str
    settings_key: str
    x: list
    y: list
    prior: float = 0.5
    fit: dict = field(default_factory=dict)
    heldout: dict = field(default_factory=dict)
    command: str = ""
    method: str = "isotonic regression (pool adjacent violators) of same-whale on strength"
    source: str = ""  # where it was loaded from (not saved)
    input: str = STRENGTH  # what x is: the verdict's strength, or the learned pair model's probability

    def probability(self, x, prior: float | None = None):
        """P(same whale) for an input value (scalar or array), at the fit data's odds or at ``prior``."""
        s = np.asarray(x, np.float64)
        p = np.interp(s, self.x, self.y)
        if prior is not None and 0 < self.prior < 1:
            # Bayes: rescale the odds from the fit data's share of same-whale pairs to ``prior``.
            p = np.clip(p, 1e-9, 1 - 1e-9)
            odds = p / (1 - p) * (prior / (1 - prior)) / (self.prior / (1 - self.prior))
            p = odds / (1 + odds)
        p = np.clip(p, 0.0, 1.0)
        return float(p) if p.ndim == 0 else p

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "method": self.method,
            "input": self.input,
            "interpolation": "linear between knots, constant beyond the ends",
            "preset": self.preset,
            "settings_key": self.settings_key,
            "prior": self.prior,
            "x": [round(v, 6) for v in self.x],
            "y": [round(v, 6) for v in self.y],
            "fit": self.fit,
            "heldout": self.heldout,
            "command": self.command,
        }

    def save(self, path: Path) -> None:
        """The calibration file (atomically); under its shipped name in ``weights/``, its sum recorded."""
        with atomic_path(Path(path)) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        weights.record_sum(Path(path))

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise CalibrationError(f"{path}: calibration file not found") from None
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"{path}: not a readable calibration file ({exc})") from None
        return cls.from_json(doc, path)

    @classmethod
    def from_json(cls, doc: dict, path: Path | str) -> "Calibration":
        """A calibration from its JSON form (a file's, or the one a pair model carries); ``path`` names it."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CalibrationError(f"{path}: not a whalematch calibration file")
        if doc.get("version") != VERSION:
            raise CalibrationError(f"{path}: calibration format version {doc.get('version')} "
                                   f"(this tool reads {VERSION})")
        x, y = np.asarray(doc.get("x", []), float), np.asarray(doc.get("y", []), float)
        if len(x) == 0 or len(x) != len(y) or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0) \
                or y.min() < 0 or y.max() > 1:
            raise CalibrationError(f"{path}: knots must be non-decreasing in x and y, with y in [0, 1]")
        return cls(preset=doc["preset"], settings_key=doc["settings_key"], x=x.tolist(), y=y.tolist(),
                   prior=float(doc.get("prior", 0.5)), fit=doc.get("fit", {}), heldout=doc.get("heldout", {}),
                   command=doc.get("command", ""), method=doc.get("method", ""), source=str(path),
                   input=doc.get("input", STRENGTH) if doc.get("input") in INPUTS else STRENGTH)

    def describe(self) -> str:
        h = self.heldout
        err = f"; held-out ECE {h['ece']:.3f}, Brier {h['brier']:.3f} on {h['pairs']} pairs" if "ece" in h else ""
        return f"{self.source or 'calibration'} ({self.fit.get('pairs', '?')} fit pairs{err})"


def fit(x, labels, preset: str, settings_key: str, balance: bool = True, input: str = STRENGTH,
        **info) -> Calibration:
    """Isotonic calibration of ``labels`` on ``x`` (of kind ``input``); with ``balance`` the classes weigh
    equally (even odds)."""
    labels = np.asarray(labels, float)
    w = balancing_weights(labels) if balance else np.ones(len(labels))
    kx, ky = fit_isotonic(np.asarray(x), labels, w)
    method = f"isotonic regression (pool adjacent violators) of same-whale on {input.split(' (')[0]}"
    return Calibration(preset=preset, settings_key=settings_key, x=kx, y=ky, input=input, method=method,
                       prior=round(float(np.average(labels, weights=w)), 6),
                       fit={"pairs": int(len(labels)), "positives": int(labels.sum()),
                            "negatives": int(len(labels) - labels.sum()),
                            "weighting": "classes weigh equally (even odds)" if balance else "none",
                            "date": dt.date.today().isoformat(), **info})


def evaluate(cal: Calibration, strengths, labels, raw_scores=None, balance: bool = True) -> dict:
    """ECE and Brier of the calibration on labelled pairs (classes weighing equally with ``balance``,
    as in the fit), with a 90% bootstrap interval, and for comparison those of the raw score."""
    labels = np.asarray(labels, float)
    p = np.atleast_1d(cal.probability(np.asarray(strengths, float)))
    w = balancing_weights(labels) if balance else np.ones(len(labels))
    out = {"pairs": int(len(labels)), "positives": int(labels.sum()), "negatives": int(len(labels) - labels.sum()),
           "weighting": "classes weigh equally (even odds)" if balance else "none",
           "ece": round(expected_calibration_error(p, labels, weights=w), 4),
           "brier": round(brier_score(p, labels, w), 4), "ece_bins": ECE_BINS}
    if len(labels) >= 20:  # how much the numbers move with the sample: a 90% bootstrap interval over the pairs
        rng = np.random.default_rng(0)
        eces, briers = [], []
        for _ in range(BOOTSTRAP):
            i = rng.integers(0, len(labels), len(labels))
            wi = balancing_weights(labels[i]) if balance else None
            eces.append(expected_calibration_error(p[i], labels[i], weights=wi))
            briers.append(brier_score(p[i], labels[i], wi))
        out["ece_ci90"] = [round(float(v), 4) for v in np.percentile(eces, [5, 95])]
        out["brier_ci90"] = [round(float(v), 4) for v in np.percentile(briers, [5, 95])]
    if raw_scores is not None:
        raw = np.asarray(raw_scores, float)
        out["raw_score_ece"] = round(expected_calibration_error(raw, labels, weights=w), 4)
        out["raw_score_brier"] = round(brier_score(raw, labels, w), 4)
    return out


def default_path(preset: str) -> Path:
    """``calibration-<preset>.json`` in ``$WHALEMATCH_WEIGHTS_DIR`` or ``weights/`` (:func:`matcher.io.weights.locate`);
    the ``weights/`` path, present or not, when neither holds it."""
    name = f"calibration-{preset}.json"
    return weights.locate(name) or weights.WEIGHTS_DIR / name


def for_preset(conf: dict, path: Path | None = None) -> tuple[Calibration | None, str]:
    """The calibration for a resolved preset, or ``(None, why not)``.

    A file made for other settings is refused: its probabilities would be wrong.
    """
    explicit = path is not None
    path = Path(path) if explicit else default_path(conf["name"])
    if not explicit and not path.is_file():
        return None, f"no calibration for preset {conf['name']} ({path.name}); run `whalematch calibrate`"
    cal = Calibration.load(path)
    key = presets.verdict_settings_key(conf)
    if cal.settings_key != key:
        msg = (f"{path}: calibration made for {cal.preset} settings {cal.settings_key}, not for {conf['name']} "
               f"settings {key}; refit it with `whalematch calibrate`")
        if explicit:
            raise CalibrationError(msg)
        return None, msg
    return cal, ""
