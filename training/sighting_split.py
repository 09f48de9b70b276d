"""The labelled catalogue as searches for new sightings: the split every catalogue-search figure is measured on.

A curator's question is "who is this?" for the photos of a new sighting. On a labelled catalogue it is
played out of sample by taking each whale's **latest encounter** out of the catalogue and searching for it:

* a *returning* sighting: a whale seen in two or more encounters; its latest encounter (latest date, then
  encounter id) is searched against every other photo, the whale's earlier encounters among them;
* a *new-whale* sighting: with the encounter out, the catalogue holds no photo of the whale of the sighting's
  view group (a whale seen once, or a lateral sighting of a whale the catalogue has only from above), and
  the right answer is "a new whale".

A sighting's photos are its encounter's photos of one view group (a lateral encounter and a top encounter of
one day are two sightings), at most ``max_photos`` of them (a seeded draw: encounters of dozens of near
duplicates would weigh on the figures as many sightings). Each sighting carries the fold of its whale
(:func:`training.whale_folds.whale_folds`, the deal every learned model here uses), so that a model scoring it
(the global head of stage 0, the P(new whale) model) can be one trained without its whale.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from matcher.io.catalogue import Photo, view_group
from training.whale_folds import whale_folds


@dataclass(frozen=True)
class Sighting:
    id: str  # the encounter id (with the view group when an encounter holds two)
    whale: str
    photos: tuple[str, ...]  # the image ids searched, sorted
    excluded: frozenset  # the catalogue image ids left out: every photo of the encounter
    new: bool  # the catalogue holds no other photo of the whale in the sighting's view group
    fold: int


def sightings(photos: dict[str, Photo], max_photos: int = 3, folds: int = 5, seed: int = 0) -> list[Sighting]:
    """Every whale's latest encounter as a sighting (see the module's docstring), sorted by id."""
    rng = np.random.default_rng(seed)
    fold_of = whale_folds([p.whale_id for p in photos.values()], folds, seed)
    encounters: dict[str, dict[str, list[Photo]]] = defaultdict(lambda: defaultdict(list))
    for p in sorted(photos.values(), key=lambda p: p.id):
        encounters[p.whale_id][p.encounter_id or p.id].append(p)
    out = []
    for whale, by_encounter in sorted(encounters.items()):
        latest = max(by_encounter, key=lambda e: (max(p.date for p in by_encounter[e]), e))
        members = by_encounter[latest]
        groups: dict[str, list[Photo]] = defaultdict(list)
        for p in members:
            groups[view_group(p.viewpoint) or "unknown"].append(p)
        for group, ps in sorted(groups.items()):
            seen = any((view_group(p.viewpoint) or "unknown") == group
                       for e, others in by_encounter.items() if e != latest for p in others)
            ids = sorted(p.id for p in ps)
            if len(ids) > max_photos:
                ids = sorted(ids[i] for i in rng.choice(len(ids), max_photos, replace=False))
            name = latest if len(groups) == 1 else f"{latest}/{group}"
            out.append(Sighting(name, whale, tuple(ids), frozenset(p.id for p in members), not seen,
                                fold_of[whale]))
    return sorted(out, key=lambda s: s.id)
