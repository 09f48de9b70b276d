"""The learned ranking of a query's verified candidates (``--pair-score ranker``, and ``auto`` where it wins).

A pair model judges each pair alone. In a database of whole survey days a query's own day holds a hundred
photos of other whales, and what sets the true match apart is how its evidence compares with the query's
other candidates. The ranker is LightGBM's lambdarank over each candidate's features: the pair model's
(the verdict's evidence and the two photos' metadata) and the same candidate seen against the query's
other verified candidates (:data:`RELATIVE`: where its strength ranks, its share of the best strength, of
the best on the query's day and on other days, how many candidates there are and how many share the
query's day). Its raw score orders the candidates; the final score is its logistic, in (0, 1) (an order,
not a probability: P(same whale) stays the pair model's). Everything is a function of the query and its
scenario's database alone.

The model ships as ``weights/ranker-<preset>.json`` (:mod:`matcher.io.tree_file`: checksum, trees checked,
no pickle) with its out-of-fold figures on the large development benchmark per scenario kind, and the
kinds (:func:`scenario_kind`) where it beat the strength there: ``--pair-score auto`` uses it for those.
``python -m training.train_ranker`` rebuilds it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import WeightsError
from ..io import tree_file, weights
from ..pairs.model import LATERAL, feature_row
from ..pairs.model import feature_names as pair_features
from .ranking import stage1_order

log = logging.getLogger(__name__)

FORMAT = "whalematch-ranker"
VERSION = 1
RELATIVE = ("s_rank", "s_rank_frac", "s_rel_max", "s_over_q90", "s_minus_med", "n_cand", "n_same_day",
            "share_same_day", "s_rel_max_sd", "s_rank_sd", "s_rel_max_od")
TINY = 1e-6
# Scenario kinds, from the photos' metadata: the query's view and year against its database's.
KINDS = ("all_years", "within_year", "across_years", "top_to_lateral", "lateral_to_top", "unknown")
TYPE_KINDS = {"top_all_loo": "all_years", "top_2017": "within_year", "top_2018": "within_year",
              "top_2019": "within_year", "top_2018_to_2017": "across_years", "top_2019_to_2017": "across_years",
              "top_2019_to_2018": "across_years", "top_to_lateral": "top_to_lateral",
              "lateral_to_top": "lateral_to_top"}  # the development scenario types (matcher.challenge.scenarios)


def feature_names() -> list[str]:
    """The ranker's features: the pair model's (with metadata), then :data:`RELATIVE`."""
    return [*pair_features(True), *RELATIVE]


def _rank_desc(x: np.ndarray, method: str) -> np.ndarray:
    """Ranks (1 = largest): ``min`` (ties share the best rank) or ``average``."""
    order = np.argsort(-x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + 1) if method == "min" else (i + j + 2) / 2
        i = j + 1
    return ranks


def relative_features(strength, same_day) -> np.ndarray:
    """(n, len(RELATIVE)) for one query's candidates: ``strength`` of each verdict and whether the candidate was
    photographed on the query's day (1; 0 or NaN: not, or not known)."""
    s = np.asarray(strength, np.float64)
    sd = np.nan_to_num(np.asarray(same_day, np.float64), nan=0.0) > 0.5
    n = len(s)
    out = np.full((n, len(RELATIVE)), np.nan)
    if n == 0:
        return out
    rank = _rank_desc(s, "min")
    q90 = float(np.quantile(s, 0.9))
    out[:, 0] = rank
    out[:, 1] = rank / n
    out[:, 2] = s / max(float(s.max()), TINY)
    out[:, 3] = s / max(q90, TINY)
    out[:, 4] = s - float(np.median(s))
    out[:, 5] = n
    out[:, 6] = sd.sum()
    out[:, 7] = sd.sum() / n
    if sd.any():
        out[sd, 8] = s[sd] / max(float(s[sd].max()), TINY)
        out[sd, 9] = _rank_desc(s[sd], "average")
    out[:, 10] = s / max(float(s[~sd].max()) if (~sd).any() else TINY, TINY)
    return out


def query_rows(base: np.ndarray) -> np.ndarray:
    """The ranker's feature rows of one query's candidates from their pair-model rows (:func:`pair_features`
    order, metadata included)."""
    names = pair_features(True)
    base = np.asarray(base, np.float64).reshape(-1, len(names))
    rel = relative_features(base[:, names.index("strength")], base[:, names.index("same_date")])
    return np.hstack([base, rel])


def _year(text) -> int | None:
    try:
        return dt.date.fromisoformat(str(text).strip()[:10]).year
    except (TypeError, ValueError):
        return None


def _group(view) -> str:
    v = str(view or "").strip().lower()
    return "lateral" if v in LATERAL else v


def scenario_kind(query: dict | None, database: list[dict | None]) -> str:
    """The kind (:data:`KINDS`) of a query against its database, from ``viewpoint`` and ``date``: a top view
    against flanks (or the reverse), else by years: the query's year only, earlier years only, or several years
    including the query's; ``unknown`` where the metadata does not say."""
    q = query or {}
    qv, qy = _group(q.get("viewpoint")), _year(q.get("date"))
    views = {_group((m or {}).get("viewpoint")) for m in database}
    years = {_year((m or {}).get("date")) for m in database}
    if not qv or "" in views or len(views) != 1:
        return "unknown"
    (dbv,) = views
    if qv != dbv:
        return f"{qv}_to_{dbv}" if {qv, dbv} == {"top", "lateral"} else "unknown"
    if qy is None or None in years:
        return "unknown"
    if years == {qy}:
        return "within_year"
    if max(years) < qy:
        return "across_years"
    return "all_years" if qy in years else "unknown"


@dataclass
class Ranker:
    """A trained ranker and what it was trained for; ``kinds``: where ``auto`` uses it."""

    features: list[str]
    settings_key: str
    booster_text: str
    info: dict = field(default_factory=dict)
    source: str = ""
    _booster: object = None

    @property
    def booster(self):
        if self._booster is None:
            import lightgbm

            self._booster = lightgbm.Booster(model_str=self.booster_text)
        return self._booster

    @property
    def kinds(self) -> list[str]:
        """The scenario kinds where the ranker beat the strength out of fold (what ``auto`` ranks with it)."""
        return list(self.info.get("kinds", []))

    def raw(self, rows: np.ndarray) -> np.ndarray:
        x = np.asarray(rows, np.float64).reshape(-1, len(self.features))
        return np.asarray(self.booster.predict(x), np.float64) if len(x) else np.zeros(0)

    def scores(self, base: np.ndarray) -> np.ndarray:
        """Scores in (0, 1) of one query's candidates from their pair-model rows (higher: more likely its
        whale)."""
        return 1.0 / (1.0 + np.exp(-self.raw(query_rows(base))))

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "kind": "lightgbm lambdarank", "features": self.features,
                "settings_key": self.settings_key, "info": self.info, "lightgbm_model": self.booster_text}

    def save(self, path: Path) -> None:
        tree_file.write(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> Ranker:
        doc = tree_file.read(Path(path), FORMAT, VERSION, "ranker", objectives=("lambdarank",), validate=_validate)
        return cls(list(doc["features"]), str(doc["settings_key"]), doc["lightgbm_model"], dict(doc.get("info", {})),
                   str(path))


def _validate(doc: dict) -> None:
    if doc["features"] != feature_names():
        raise ValueError("its features are not the ones this version computes")
    unknown = set((doc.get("info") or {}).get("kinds", [])) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown scenario kinds {', '.join(sorted(unknown))}")


class NoRanker(WeightsError):
    """No ranker file exists for the preset (none given, none ships)."""


def model_file(preset: str) -> str:
    return f"ranker-{preset}.json"


def for_preset(preset: str, settings_key: str, path: Path | None = None) -> Ranker:
    """The ranker for a preset's verdicts: ``path``, else :func:`model_file` in the weights folders;
    :class:`NoRanker` when there is none and none was given, :class:`WeightsError` for one that is refused or
    made for other settings."""
    found = weights.locate(model_file(preset), [("as the ranker", Path(path))] if path else [])
    if found is None:
        raise NoRanker(f"{model_file(preset)}: no ranker for preset {preset} in "
                       f"{', '.join(str(d) for d in weights.project_dirs())} (python -m training.train_ranker)")
    ranker = Ranker.load(found)
    if ranker.settings_key != settings_key:
        raise WeightsError(f"{found}: ranker trained for verdicts {ranker.settings_key}, not for {settings_key} "
                           f"({preset}); retrain it (python -m training.train_ranker)")
    return ranker


class QueryRanking:
    """The ranker applied, after stage 1, to every query of a run whose scenario kind is in ``kinds`` (None:
    every kind): each such query's verified candidates get the ranker's scores (:attr:`QueryState.s1`) and
    their stage-1 order; the other queries keep the pair scores. ``metadata``: per content hash, the photo's
    ``date`` and ``viewpoint`` (what the features and the kind read)."""

    def __init__(self, ranker: Ranker, metadata: dict[str, dict | None], kinds: list[str] | None = None):
        self.ranker = ranker
        self.metadata = metadata
        self.kinds = set(KINDS if kinds is None else kinds)
        self.counts: Counter = Counter()

    def kind(self, q, shas: list[str]) -> str:
        meta = self.metadata.get
        return scenario_kind(meta(shas[q.query_idx]), [meta(shas[int(i)]) for i in q.sha_idx])

    def apply(self, run) -> None:
        """Score and re-order the queries of ``run`` (a :class:`~matcher.cascade.scheduler.Cascade` after stage
        1) whose kind the ranker ranks."""
        shas = run.codes.shas
        chosen = []
        for q in run.queries.values():
            if q.order1 is None or len(q.order1) < 2:
                continue
            kind = self.kind(q, shas)
            ranked = kind in self.kinds
            self.counts[(kind, ranked)] += 1
            if ranked:
                chosen.append(q)
        pairs = {run.codes.decode(int(c)) for q in chosen for c in q.pair_codes[q.order1]}
        verdicts = run.stage1(pairs) if pairs else {}
        names = pair_features(True)
        for q in chosen:
            qsha, qmeta = shas[q.query_idx], self.metadata.get(shas[q.query_idx])
            rows = []
            for p in q.order1:
                csha = shas[int(q.sha_idx[p])]
                pair = (qsha, csha) if qsha <= csha else (csha, qsha)
                rows.append(feature_row(verdicts[pair], qmeta, self.metadata.get(csha), names))
            q.s1 = np.full(len(q.usable), np.nan)
            q.s1[q.order1] = self.ranker.scores(np.array(rows))
            q.order1 = stage1_order(q, run.v1, len(q.order1), run.scale)
        ranked = sorted({k for (k, r) in self.counts if r})
        others = sorted({k for (k, r) in self.counts if not r})
        log.info("ranker %s: %d queries ranked by it (%s)%s", self.ranker.source, len(chosen), ", ".join(ranked) or
                 "none", f"; {sum(n for (k, r), n in self.counts.items() if not r)} by the pair score "
                 f"({', '.join(others)}: kinds where it did not win out of fold)" if others else "")
