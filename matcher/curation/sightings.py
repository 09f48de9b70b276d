"""Sightings: the new photos of one animal, identified together.

A curator's new photos come in sightings: several photos of one whale taken in one encounter. Grouped by
their ``encounter_id`` (the new photos' metadata CSV), or by date (``--group-by date``: every photo of a
date is taken to show one whale), the photos of a sighting are searched each on its own and then
identified together: each whale's evidence is combined over the sighting's photos
(:func:`matcher.curation.whale_evidence.whale_ranking`), one whale ranking and one P(new whale) per
sighting. A photo with neither (or ``--group-by none``) is a sighting of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..io.catalogue import Photo
from . import whale_evidence
from .new_whale import Judge

GROUPINGS = ("encounter", "date", "none")
COLUMNS = ["sighting", "photos", "photo_ids", "best_whale", "best_score", "second_whale", "second_score",
           "p_new_whale", "results", "error"]


@dataclass
class Sighting:
    id: str
    photos: list[Photo]


def group(photos: list[Photo], by: str = "encounter") -> list[Sighting]:
    """The sightings of new photos (in the photos' order of first appearance)."""
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}")
    groups: dict[str, list[Photo]] = {}
    for p in photos:
        key = {"encounter": p.encounter_id, "date": p.date, "none": ""}[by]
        groups.setdefault(f"{by} {key}" if key else f"photo {p.id}", []).append(p)
    return [Sighting(name if len(ps) > 1 or not name.startswith("photo ") else ps[0].id, ps)
            for name, ps in groups.items()]


@dataclass
class Identified:
    """A sighting's whale ranking (best first) and P(new whale)."""

    sighting: Sighting
    ranking: pd.DataFrame  # whale_evidence.whale_ranking
    searched: list[str]  # the photos that could be searched (usable, with comparable catalogue photos)
    p_new_whale: float | None

    def row(self, results: Path | str = "", error: str = "") -> dict:
        r = self.ranking
        best = r.iloc[0] if len(r) else None
        second = r.iloc[1] if len(r) > 1 else None
        return {"sighting": self.sighting.id, "photos": len(self.sighting.photos),
                "photo_ids": ";".join(p.id for p in self.sighting.photos),
                "best_whale": best["whale"] if best is not None else "",
                "best_score": round(float(best["score"]), 4) if best is not None else None,
                "second_whale": second["whale"] if second is not None else "",
                "second_score": round(float(second["score"]), 4) if second is not None else None,
                "p_new_whale": self.p_new_whale, "results": str(results), "error": error}


def identify(sighting: Sighting, rows_by_photo: dict[str, list[dict]], whale_of: dict[str, str],
             judge: Judge | None) -> Identified:
    """The sighting's whales from each photo's verified result rows (photos without rows take no part)."""
    tables = [whale_evidence.pairs_table(rows_by_photo.get(p.id, []), whale_of, p.id) for p in sighting.photos]
    searched = [p.id for p in sighting.photos if rows_by_photo.get(p.id)]
    pairs = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=whale_evidence.PAIR_COLUMNS)
    ranking = whale_evidence.whale_ranking(pairs)
    p_new = judge.probability(pairs) if judge is not None and whale_of else None
    return Identified(sighting, ranking, searched, p_new)
