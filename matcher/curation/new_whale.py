"""P(new whale): the probability that none of the catalogue's whales is the one a sighting shows.

Read from the sighting's verified pairs (:mod:`.whale_evidence`): how strong the best whale's evidence is,
the second whale's, the level that chance matches reach for these photos (the 90th centile of their
verified pairs' strengths: photos with much texture in the water match everything a little), and how many
photos were searched. A logistic model over those (:data:`FEATURES`), fitted with the two classes weighing
equally, gives the log-odds at even odds; the base rate of new whales then moves it (``prior``: by default
the share of new whales among the sightings it was fitted on, which the file states, since a catalogue's own
share is what a curator knows best: ``--new-whale-prior``). Fitted and measured out of fold, folds split by
whale, on the development photos played as sightings (``training/train_new_whale.py``: each whale's latest
encounter searched against the catalogue without it; whales the catalogue then lacks are the new ones).

The model ships as JSON (``weights/new-whale-<preset>.json``): format and version, the verdict settings
key it is valid for, the stage-0 settings and shortlist size it was fitted with, the coefficients, what
it was fitted on, its out-of-fold figures, the command that rebuilds it and the SHA-256 of its content,
checked on every load (and against ``weights/SHA256SUMS`` for the shipped file). No pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import WeightsError
from ..io import tree_file, weights
from . import whale_evidence

FORMAT = "whalematch-new-whale"
VERSION = 1
FEATURES = ("log_best_whale", "log_second_whale", "log_chance_level", "log_photos")
CHANCE_CENTILE = 0.9  # of a photo's verified pairs' strengths: the level chance matches reach for it


def feature_row(pairs: pd.DataFrame) -> list[float]:
    """:data:`FEATURES` of a sighting from its verified pairs (:data:`.whale_evidence.PAIR_COLUMNS`)."""
    if pairs.empty:
        return [0.0, 0.0, 0.0, 0.0]
    ev = whale_evidence.whale_ranking(pairs)["evidence"].to_numpy(np.float64)
    chance = float(pairs.groupby("photo")["strength"].quantile(CHANCE_CENTILE).mean())
    return [math.log1p(ev[0]), math.log1p(ev[1] if len(ev) > 1 else 0.0), math.log1p(chance),
            math.log(pairs["photo"].nunique())]


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@dataclass
class NewWhaleModel:
    """A fitted logistic model: ``P = sigmoid(intercept + coef . (x - mean) / scale + logit(prior))``."""

    settings_key: str
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float  # log-odds at even odds (the classes weighed equally in the fit)
    prior: float  # share of new whales assumed unless told otherwise (the fit data's share)
    info: dict = field(default_factory=dict)  # stage 0, K, fit data, out-of-fold figures, command
    source: str = ""

    def probability(self, rows, prior: float | None = None) -> np.ndarray:
        """P(new whale) per feature row (:data:`FEATURES`), at base rate ``prior`` (default: the model's)."""
        x = np.asarray(rows, np.float64).reshape(-1, len(FEATURES))
        z = self.intercept + ((x - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef)
        z = z + logit(self.prior if prior is None else prior)
        return 1.0 / (1.0 + np.exp(-z))

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "kind": "logistic regression at even odds",
                "features": list(FEATURES), "settings_key": self.settings_key, "mean": self.mean,
                "scale": self.scale, "coef": self.coef, "intercept": self.intercept, "prior": self.prior,
                "info": self.info}

    def save(self, path: Path) -> None:
        """The model file with its checksum (:func:`matcher.io.tree_file.write`; a shipped file's sum recorded)."""
        tree_file.write(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> NewWhaleModel:
        """The model of a file; :class:`WeightsError` naming it for another format or version, a content that does
        not match its own SHA-256 (or the recorded sum of a shipped file) or values that make no model."""
        path = Path(path)
        try:
            weights.check_recorded(path)
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} file of version {VERSION}")
            if doc.get("sha256") != tree_file.content_sha256(doc):
                raise ValueError("its content does not match its checksum (edited or damaged)")
            if list(doc["features"]) != list(FEATURES):
                raise ValueError(f"it reads other features ({', '.join(doc['features'])})")
            vectors = [np.asarray(doc[k], np.float64) for k in ("mean", "scale", "coef")]
            if any(v.shape != (len(FEATURES),) or not np.isfinite(v).all() for v in vectors) or \
                    not (vectors[1] > 0).all() or not math.isfinite(float(doc["intercept"])) or \
                    not 0 < float(doc["prior"]) < 1:
                raise ValueError("its coefficients make no model")
        except WeightsError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WeightsError(f"{path}: cannot load the new-whale model ({exc})") from None
        return cls(str(doc["settings_key"]), *(list(map(float, doc[k])) for k in ("mean", "scale", "coef")),
                   float(doc["intercept"]), float(doc["prior"]), dict(doc.get("info", {})), str(path))


def model_file(preset: str) -> str:
    return f"new-whale-{preset}.json"


def for_preset(preset: str, settings_key: str) -> NewWhaleModel | None:
    """The shipped model for a preset's verdicts, or ``None`` when there is none (P(new whale) is then left
    blank, and the command says so); :class:`WeightsError` for a refused file or one fitted for other verdicts."""
    found = weights.locate(model_file(preset))
    if found is None:
        return None
    model = NewWhaleModel.load(found)
    if model.settings_key != settings_key:
        raise WeightsError(f"{found}: fitted for verdicts {model.settings_key}, not {settings_key} ({preset}); "
                           "refit it (make train-new-whale)")
    return model


@dataclass
class Judge:
    """P(new whale) for a command: the shipped model (or none: then it is left blank, ``why``) at a base rate."""

    model: NewWhaleModel | None
    prior: float | None = None  # share of new whales assumed; None: the model's
    why: str = ""  # why there is no model

    @property
    def base_rate(self) -> float | None:
        return None if self.model is None else (self.model.prior if self.prior is None else self.prior)

    def probability(self, pairs: pd.DataFrame) -> float | None:
        """P(new whale) of a sighting from its verified pairs (None without a model, or with no pair)."""
        if self.model is None or pairs.empty:
            return None
        return round(float(self.model.probability([feature_row(pairs)], self.base_rate)[0]), 4)

    def line(self) -> str:
        """Which base rate P(new whale) assumes and why, or why there is none."""
        if self.model is None:
            return f"P(new whale) left blank: {self.why}"
        m = self.model
        given = "as given by --new-whale-prior" if self.prior is not None else \
            "the share of new whales among the sightings it was fitted on (--new-whale-prior sets your catalogue's)"
        fitted = m.info.get("fitted_with", {})
        how = f"; fitted on searches of the {fitted['k']} photos stage 0 finds most alike" if "k" in fitted else ""
        return f"P(new whale) at a base rate of {self.base_rate:.2f}: {given}{how} ({m.source})"


def judge_for(preset: str, settings_key: str, prior: float | None = None) -> Judge:
    """The :class:`Judge` of a preset's verdicts (no model: blank, and the line says why)."""
    model = for_preset(preset, settings_key)
    if model is None:
        return Judge(None, prior, f"no {model_file(preset)} for preset {preset} (make train-new-whale fits one)")
    return Judge(model, prior)
