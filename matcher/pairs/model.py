"""The learned pair model: P(same whale) of a verified pair from its evidence and what the metadata says.

Gradient-boosted trees (LightGBM) over the verdict's evidence (:mod:`matcher.pairs.evidence`) and the
two photos' metadata: days apart, same date, same year and the pair of viewpoints. Features come from
the pair and its two photos only, so a query's ranking still depends on its image and its scenario's
database alone. Metadata may be missing (a curator's new photo without a date): its features are
then missing values, which the trees were trained to handle.

The model ships as one JSON file (``weights/pair-model-<preset>.json``): the format and version, the
feature names, the verdict settings key it was trained for, what it was trained on, its out-of-fold
figures and the command that rebuilds it, and the trees in LightGBM's own text format (loaded with
``lightgbm.Booster(model_str=...)``: no pickle). The file carries the SHA-256 of its own content
(``sha256``), checked on every load, and the shipped file is also checked against ``weights/SHA256SUMS``
(:func:`matcher.io.weights.locate`); the trees are checked before LightGBM reads them
(:mod:`matcher.io.tree_file`: its parser trusts its input, and a model cut short crashes the process).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import WeightsError
from ..features.global_head import similarity
from ..io import tree_file, weights
from . import evidence

FORMAT = "whalematch-pair-model"
VERSION = 1
FINGERPRINT = 16  # hex digits of a training photo's content hash kept in the model file (PairModel.trained_on)
LATERAL = ("left", "right")
METADATA_FEATURES = ("days_apart", "same_date", "same_year", "views")
HEAD_FEATURES = ("head_similarity",)  # the global head's vote: cosine of the two photos' embeddings, in [0, 1]
VIEWS = {("top", "top"): 0.0, ("left", "top"): 1.0, ("right", "top"): 1.0, ("left", "left"): 2.0,
         ("right", "right"): 2.0, ("left", "right"): 3.0}  # top-top, top-flank, same flank, opposite flanks


def _date(text) -> dt.date | None:
    try:
        return dt.date.fromisoformat(str(text).strip()[:10])
    except (TypeError, ValueError):
        return None


def metadata_features(meta_a: dict | None, meta_b: dict | None) -> list[float]:
    """:data:`METADATA_FEATURES` of two photos' metadata (``date``, ``viewpoint``); NaN where either is unknown."""
    a, b = meta_a or {}, meta_b or {}
    da, db = _date(a.get("date")), _date(b.get("date"))
    if da and db:
        days = abs((da - db).days)
        dates = [float(days), float(days == 0), float(da.year == db.year)]
    else:
        dates = [math.nan] * 3
    va, vb = (str(m.get("viewpoint") or "").strip().lower() for m in (a, b))
    views = VIEWS.get(tuple(sorted((va, vb))), math.nan)
    return dates + [views]


def head_similarity(meta_a: dict | None, meta_b: dict | None) -> float:
    """The global head's similarity of two photos, ``(1 + cosine) / 2`` of their int8 embeddings (``embedding``
    in each photo's dict; :mod:`matcher.features.global_head`); NaN where either is missing."""
    a, b = (m.get("embedding") if m else None for m in (meta_a, meta_b))
    if a is None or b is None:
        return math.nan
    cos = float(similarity(np.asarray(a)[None], np.asarray(b)[None])[0, 0])
    return (1.0 + min(1.0, max(-1.0, cos))) / 2.0


def feature_names(use_metadata: bool = True, use_head: bool = False) -> list[str]:
    return ["strength", *evidence.FIELDS, *(METADATA_FEATURES if use_metadata else ()),
            *(HEAD_FEATURES if use_head else ())]


def feature_row(verdict: dict, meta_a: dict | None, meta_b: dict | None, names: list[str]) -> list[float]:
    """One row of ``names`` for a verdict (with its evidence) and its two photos' metadata (and, for the head's
    vote, their ``embedding``)."""
    ev = verdict.get("evidence") or {}
    values = {"strength": float(verdict["strength"]), **{k: float(ev.get(k, math.nan)) for k in evidence.FIELDS},
              **dict(zip(METADATA_FEATURES, metadata_features(meta_a, meta_b)))}
    if HEAD_FEATURES[0] in names:
        values[HEAD_FEATURES[0]] = head_similarity(meta_a, meta_b)
    return [values[n] for n in names]


@dataclass
class PairModel:
    """A trained pair model and what it was trained for."""

    features: list[str]
    settings_key: str
    booster_text: str
    info: dict = field(default_factory=dict)  # training data, out-of-fold figures, command, parameters
    source: str = ""
    _booster: object = None

    @property
    def booster(self):
        if self._booster is None:
            import lightgbm

            self._booster = lightgbm.Booster(model_str=self.booster_text)
        return self._booster

    @property
    def uses_metadata(self) -> bool:
        return any(f in METADATA_FEATURES for f in self.features)

    @property
    def uses_head(self) -> bool:
        """Whether the model reads the global head's vote (then ``info['head']`` names the head: ``file`` and
        ``sha256``)."""
        return any(f in HEAD_FEATURES for f in self.features)

    def trained_on(self, shas) -> int:
        """How many of these photos (content hashes) the model saw in training (:func:`photo_fingerprints`): a
        figure measured on them is not out of fold."""
        seen = set(self.info.get("trained_on", {}).get("photos_sha256_16", []))
        return sum(1 for sha in set(shas) if sha[:FINGERPRINT] in seen)

    def predict(self, rows) -> np.ndarray:
        """P(same whale) per feature row (rows in the order of :attr:`features`)."""
        x = np.asarray(rows, np.float64).reshape(-1, len(self.features))
        if len(x) == 0:
            return np.zeros(0)
        return np.clip(np.asarray(self.booster.predict(x), np.float64), 0.0, 1.0)

    def scores(self, verdicts: list[dict], metas: list[tuple[dict | None, dict | None]]) -> np.ndarray:
        """P(same whale) of verdicts given with their two photos' metadata."""
        return self.predict([feature_row(v, a, b, self.features) for v, (a, b) in zip(verdicts, metas)])

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "kind": "lightgbm binary classifier",
                "features": self.features, "settings_key": self.settings_key, "info": self.info,
                "lightgbm_model": self.booster_text}

    def save(self, path: Path) -> None:
        """The model file (:func:`matcher.io.tree_file.write`: with its checksum; a shipped file's sum recorded)."""
        tree_file.write(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> PairModel:
        """The model of a file, refused (:class:`WeightsError` naming it) unless its content matches its own
        SHA-256 and its trees are well formed: nothing malformed reaches LightGBM (:func:`tree_file.read`)."""
        doc = tree_file.read(Path(path), FORMAT, VERSION, "pair model", validate=_validate)
        return cls(list(doc["features"]), str(doc["settings_key"]), doc["lightgbm_model"], dict(doc.get("info", {})),
                   str(path))


def _validate(doc: dict) -> None:
    unknown = set(doc["features"]) - set(feature_names(True, True))
    if unknown:
        raise ValueError(f"it uses features this version does not compute: {', '.join(sorted(unknown))}")
    head = (doc.get("info") or {}).get("head") or {}
    if set(HEAD_FEATURES) & set(doc["features"]) and not {"file", "sha256"} <= set(head):
        raise ValueError("it reads a global head's vote but does not say which head (info.head.file and "
                         "info.head.sha256)")


def photo_fingerprints(shas) -> list[str]:
    """What a model file keeps of its training photos: the first 16 hex digits of each content hash (sorted)."""
    return sorted({sha[:FINGERPRINT] for sha in shas})


def model_file(preset: str) -> str:
    """The file name of a preset's shipped pair model."""
    return f"pair-model-{preset}.json"


class NoPairModel(WeightsError):
    """No pair model file exists for the preset (none was given and none ships): the only case where a score
    falls back to the strength."""


def for_preset(preset: str, settings_key: str, path: Path | None = None) -> PairModel:
    """The pair model for a preset's verdicts: ``path``, else :func:`model_file` in the weights folders.
    :class:`NoPairModel` when no file exists and none was given; :class:`WeightsError` for a given file that is
    missing, any file that is refused, or a model trained for verdicts of other settings."""
    found = weights.locate(model_file(preset), [("as the pair model", Path(path))] if path else [])
    if found is None:
        raise NoPairModel(f"{model_file(preset)}: no pair model for preset {preset} in "
                          f"{', '.join(str(d) for d in weights.project_dirs())} (make train-verifier builds one)")
    model = PairModel.load(found)
    if model.settings_key != settings_key:
        raise WeightsError(f"{found}: pair model trained for verdicts {model.settings_key}, not for {settings_key} "
                           f"({preset}); retrain it (make train-verifier)")
    return model
