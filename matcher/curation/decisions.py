"""Decisions from the review page back into the catalogue (``whalematch apply-decisions``).

A decisions CSV (the page's export: ``query_image, candidate_image, candidate_whale, decision, comment,
reviewer, time``) says, pair by pair, same whale, different whales or not sure. Applied to a metadata
CSV they give a new one:

* a photo without a whale id (a search's new photo, or a catalogue photo with a blank whale_id)
  decided the same as a photo of whale W gets W; a new photo becomes a new row (image id from its file
  name, its path relative to the new file's folder, copied into ``--photo-dir`` when it lies outside;
  viewpoint ``top`` when every photo it was confirmed with is a top view, else left blank);
* two photos of whales W1 and W2 decided the same merge W1 and W2 (the audit's case): the id with more
  photos is kept (on a tie the smaller id), every photo of the other is relabelled;
* "new whale" (a row with no candidate: the page's question "is this a new whale?") gives the photo a new
  whale id, the catalogue's pattern continued (``whale123`` after ``whale122``); photos decided new whale
  with the same ``sighting`` (the photos of one sighting on a search's page) or decided the same as each other
  share one new id;
* "different" and "not sure" change nothing; a "different" between two photos of one whale (an
  isolated image's pair) is logged as a label to look at.

Images are named by catalogue image id; a new photo by its file, as the search was given it: an
absolute path, or one relative to the working folder, the decisions file's folder or the catalogue's.
A new photo is taken only from the places a review could have shown it: inside the catalogue's folder
or a folder named with ``--new-photos`` (after following links), and only if it decodes as an image; a
decisions file that names any other file (``/etc/passwd``, a dotfile, a text file) is refused, row named.

Contradictions are refused, naming the rows: a pair decided both same and different; a photo without a
whale id decided the same as photos of two different whales (decide the two catalogue photos the same
to merge them first); a "different" between photos whose whales the decisions put together.
Every change (and every decision that changes nothing, with why) goes to a log. Every output is checked
before anything is written (the log may be neither the metadata, its backup nor an input); then the new
photos are copied, the log written, the old metadata backed up (``--in-place``: ``METADATA.bak``, then
``.bak.2``, ``.bak.3``: a backup is never overwritten) and the new metadata put in place. No image is
matched or verified: verdicts are cached by the photos' contents, so a search or audit on the new
catalogue reuses every cached verdict.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..io.catalogue import Photo, read_photos
from ..io.paths import shorten
from ..io.tables import read_csv
from .photo_sources import Ref, Resolver
from .review_page import DECISIONS, EXPORT_COLUMNS

SAME, DIFFERENT, UNSURE, NEW_WHALE = DECISIONS
WORDS = {"same": SAME, "same whale": SAME, "yes": SAME, "different": DIFFERENT, "different whale": DIFFERENT,
         "different whales": DIFFERENT, "no": DIFFERENT, "not sure": UNSURE, "unsure": UNSURE, "?": UNSURE,
         "new whale": NEW_WHALE, "new": NEW_WHALE, "": ""}
LOG_COLUMNS = ["action", "image_id", "whale_before", "whale_after", "decisions", "detail"]
MAX_LISTED = 20  # problems listed in one error message


@dataclass(frozen=True)
class Decision:
    where: str  # "FILE line N"
    query: str
    candidate: str
    candidate_whale: str = ""
    decision: str = ""  # same | different | not sure | "" (a comment alone)
    comment: str = ""
    reviewer: str = ""
    time: str = ""
    sighting: str = ""  # the sighting the query photo belongs to (a search's page of several photos)


def read_decisions(paths: list[Path]) -> list[Decision]:
    """The decisions of one or more CSV files (the page's export); :class:`DataError` naming the file and lines
    of a missing column, a blank image or a decision that is not same, different or not sure."""
    out = []
    for path in paths:
        path = Path(path)
        df = read_csv(path, ("query_image", "candidate_image", "decision"), nonblank=("query_image",))
        optional = [c for c in EXPORT_COLUMNS if c not in df.columns]
        for c in optional:
            df[c] = ""
        words = df["decision"].str.strip().str.lower().str.replace(r"[\s_-]+", " ", regex=True)
        unknown = ~words.isin(WORDS)
        if unknown.any():
            lines = ", ".join(f"{i + 2} ({df['decision'][i]!r})" for i in df.index[unknown][:MAX_LISTED])
            raise DataError(f"{path}: decision must be same, different, not sure or new whale; line(s) {lines}")
        blank = (df["candidate_image"].str.strip() == "") & (words.map(WORDS) != NEW_WHALE)
        if blank.any():
            lines = ", ".join(str(i + 2) for i in df.index[blank][:MAX_LISTED])
            raise DataError(f"{path}: candidate_image is empty (only a new whale decision has no candidate); "
                            f"line(s) {lines}")
        for i, row in zip(df.index, df.to_dict("records")):
            out.append(Decision(f"{path} line {i + 2}", row["query_image"], row["candidate_image"],
                                str(row["candidate_whale"]).strip(), WORDS[words[i]], str(row["comment"]).strip(),
                                str(row["reviewer"]).strip(), str(row["time"]).strip(),
                                str(row["sighting"]).strip()))
    return out


@dataclass
class Catalogue:
    path: Path  # the metadata CSV
    photos: dict[str, Photo]
    table: pd.DataFrame  # the CSV as written (strings), rows and columns kept for writing back

    @classmethod
    def read(cls, path: Path) -> "Catalogue":
        path = Path(path)
        photos = read_photos(path)
        table = read_csv(path, ("image_id", "path", "whale_id"), nonblank=())
        return cls(path, photos, table)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def whale_counts(self) -> Counter:
        return Counter(p.whale_id for p in self.photos.values() if p.whale_id)


@dataclass
class NewPhoto:
    file: Path
    whale_id: str
    viewpoint: str
    where: list[str]
    image_id: str = ""  # chosen when applied
    path: str = ""  # relative to the new metadata's folder, when applied
    new_whale: bool = False  # its whale id is a new one (decided a new whale)


@dataclass
class Change:
    action: str  # merge | label | add | no change
    image_id: str
    whale_before: str
    whale_after: str
    decisions: str
    detail: str = ""

    def line(self) -> str:
        what = {"merge": f"{self.whale_before} -> {self.whale_after}", "label": f"-> {self.whale_after}",
                "add": f"new row, whale {self.whale_after}"}.get(self.action, "")
        return f"{self.action}: {self.image_id} {what}".rstrip() + f"  ({self.detail}; {self.decisions})"


@dataclass
class ChangePlan:
    changes: list[Change] = field(default_factory=list)  # what the new catalogue changes, in order
    notes: list[Change] = field(default_factory=list)  # decisions that change nothing, and why
    merged: dict[str, str] = field(default_factory=dict)  # whale id -> the id kept for it
    labels: dict[str, str] = field(default_factory=dict)  # unlabelled catalogue photo -> whale id
    new_photos: list[NewPhoto] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # decisions read, by decision
    copies: list[tuple[Path, Path]] = field(default_factory=list)  # (new photo, its copy): made by :func:`write`


class _Union:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a, b) -> None:
        self.parent[self.find(a)] = self.find(b)


def _where(ds) -> str:
    return "; ".join(d.where for d in ds)


def _path_of_edges(edges: list[tuple[str, str, Decision]], start: str, goal: str) -> list[Decision]:
    """The decisions along a shortest chain of merges from whale ``start`` to whale ``goal``."""
    nbrs = defaultdict(list)
    for a, b, d in edges:
        nbrs[a].append((b, d))
        nbrs[b].append((a, d))
    back = {start: None}
    queue = [start]
    while queue:
        w = queue.pop(0)
        if w == goal:
            break
        for n, d in nbrs[w]:
            if n not in back:
                back[n] = (w, d)
                queue.append(n)
    chain, w = [], goal
    while back.get(w):
        w, d = back[w]
        chain.append(d)
    return chain[::-1]


def plan_changes(decisions: list[Decision], cat: Catalogue, bases: list[Path], sources: list[Path] = ()) -> ChangePlan:
    """What the decisions change in the catalogue; :class:`DataError` listing every unknown image, every new photo
    that is refused (see :meth:`Resolver.refusal`; ``sources``: the ``--new-photos`` folders) and every
    contradiction (nothing is changed then). The steps, in order: :class:`_Planning`'s methods."""
    counts = Counter(d.decision or "comment only" for d in decisions)
    steps = _Planning(cat, Resolver(cat.photos, cat.folder, bases, sources), ChangePlan(counts=counts))
    same, different = steps.split(steps.pairs(decisions))
    steps.merges(same)
    steps.loose_photos(same)
    steps.check_different(different)
    steps.record()
    return steps.plan


class _Planning:
    """The steps of :func:`plan_changes` and what they share: the catalogue, the plan being made and the problems
    found so far (each step that can find problems raises them all at its end, with the earlier ones)."""

    def __init__(self, cat: Catalogue, resolve: Resolver, plan: ChangePlan):
        self.cat, self.resolve, self.plan = cat, resolve, plan
        self.problems: list[str] = []
        self.edges: list[tuple[str, str, Decision]] = []  # whale ids decided the same, with the decision
        self.loose = _Union()  # photos without a whale id, joined by same decisions
        self.links: dict[Ref, dict[str, list[Decision]]] = defaultdict(lambda: defaultdict(list))
        self.assigned: dict[Ref, str] = {}  # photo without a whale id -> the whale it is decided to be
        self.new_whale: list[tuple[Ref, Decision]] = []  # photos decided to be a new whale
        self.new_ids: set[str] = set()  # the whale ids given to new whales

    def whale(self, ref: Ref) -> str:
        return "" if ref.new else self.cat.photos[ref.image_id].whale_id

    def final(self, w: str) -> str:
        return self.plan.merged.get(w, w)

    def pairs(self, decisions: list[Decision]) -> list[list[tuple[Decision, Ref, Ref]]]:
        """1. Each decision's two photos resolved (unknown and refused ones are the problems raised here); the
        same or different decisions grouped by unordered pair; notes for the rest."""
        cat, resolve, plan = self.cat, self.resolve, self.plan
        pairs: dict[frozenset, list[tuple[Decision, Ref, Ref]]] = defaultdict(list)
        for d in decisions:
            if d.decision == NEW_WHALE:
                self.new_whale_decision(d)
                continue
            c = resolve(d.candidate)
            q = resolve(d.query)
            if c is None or c.new:
                self.problems.append(f"{d.where}: candidate_image {shorten(d.candidate)!r} is not an image of "
                                     f"{cat.path}")
                continue
            if q is None:
                self.problems.append(f"{d.where}: query_image {shorten(d.query)!r} is neither an image id of "
                                     f"{cat.path} nor an image file (looked in "
                                     f"{', '.join(str(b) for b in resolve.bases)})")
                continue
            why = resolve.refusal(q.file) if q.new and d.decision == SAME else None
            if why:
                self.problems.append(f"{d.where}: query_image {shorten(d.query)!r} refused: {why}")
                continue
            shown, actual = d.candidate_whale, cat.photos[c.image_id].whale_id
            if shown and shown != actual:
                plan.notes.append(Change("no change", c.image_id, shown, actual, d.where,
                                         f"the page showed whale {shown}, the catalogue says {actual!r}: the "
                                         "catalogue's label is used"))
            if d.decision not in (SAME, DIFFERENT):
                continue
            if q == c:
                plan.notes.append(Change("no change", c.image_id, "", "", d.where, "a photo decided against itself"))
                continue
            pairs[frozenset((q, c))].append((d, q, c))
        if self.problems:
            raise DataError(problems_message("unknown or refused images", self.problems))
        return list(pairs.values())

    def new_whale_decision(self, d: Decision) -> None:
        """A "new whale" decision: its photo must be a new photo (taken as :meth:`Resolver.refusal` allows) or a
        catalogue photo without a whale id."""
        q = self.resolve(d.query)
        if q is None:
            self.problems.append(f"{d.where}: query_image {shorten(d.query)!r} is neither an image id of "
                                 f"{self.cat.path} nor an image file (looked in "
                                 f"{', '.join(str(b) for b in self.resolve.bases)})")
        elif q.new and self.resolve.refusal(q.file):
            self.problems.append(f"{d.where}: query_image {shorten(d.query)!r} refused: {self.resolve.refusal(q.file)}")
        elif self.whale(q):  # e.g. decisions applied a second time: the photo got its new id the first time
            self.plan.notes.append(Change("no change", q.image_id, self.whale(q), self.whale(q), d.where,
                                          "decided a new whale, but it has a whale id in the catalogue already (a "
                                          "photo under the wrong whale id is corrected by hand in the metadata)"))
        else:
            self.new_whale.append((q, d))

    def split(self, pairs: list) -> tuple[list, list]:
        """2. The pairs decided the same and those decided different; a pair decided both ways is a problem."""
        same, different = [], []
        for group in pairs:
            kinds = {d.decision for d, _, _ in group}
            if kinds == {SAME, DIFFERENT}:
                q, c = group[0][1], group[0][2]
                said = {k: _where(d for d, _, _ in group if d.decision == k) for k in kinds}
                self.problems.append(f"{q.name()} and {c.name()} are decided same ({said[SAME]}) and different "
                                     f"({said[DIFFERENT]})")
                continue
            (same if SAME in kinds else different).append(group)
        return same, different

    def merges(self, same: list) -> None:
        """3. Whale ids decided the same, merged: each connected set keeps its id with the most photos."""
        merges = _Union()
        for group in same:
            d, q, c = group[0]
            wq, wc = self.whale(q), self.whale(c)
            if wq and wc and wq != wc:
                merges.join(wq, wc)
                self.edges.extend((wq, wc, g[0]) for g in group)
            elif wq and wq == wc:
                self.plan.notes.append(Change("no change", q.image_id, wq, wq, _where(g[0] for g in group),
                                              f"confirms the label: same whale as {c.image_id}"))
        counts = self.cat.whale_counts()
        components = defaultdict(set)
        for w in list(merges.parent):
            components[merges.find(w)].add(w)
        for ws in components.values():
            kept = min(ws, key=lambda w: (-counts[w], w))
            for w in ws - {kept}:
                self.plan.merged[w] = kept

    def loose_photos(self, same: list) -> None:
        """4. Photos without a whale id: joined to each other by same decisions, and each set to the one whale it
        is decided the same as (two whales is a problem)."""
        whale = self.whale
        for group in same:
            d, q, c = group[0]
            if not whale(q) and not whale(c):
                self.loose.join(q, c)
        first_of_sighting: dict[str, Ref] = {}
        for ref, d in self.new_whale:  # a sighting's photos decided new whale are one whale
            self.loose.find(ref)
            if d.sighting:
                self.loose.join(ref, first_of_sighting.setdefault(d.sighting, ref))
        for group in same:
            d, q, c = group[0]
            wq, wc = whale(q), whale(c)
            for a, wb in ((q, wc), (c, wq)):
                if not whale(a) and wb:
                    self.links[self.loose.find(a)][self.final(wb)].extend(g[0] for g in group)
        members = defaultdict(set)
        for group in same:
            for ref in (group[0][1], group[0][2]):
                if not whale(ref):
                    members[self.loose.find(ref)].add(ref)
        new_whale: dict[Ref, list[Decision]] = defaultdict(list)
        for ref, d in self.new_whale:
            members[self.loose.find(ref)].add(ref)
            new_whale[self.loose.find(ref)].append(d)
        fresh = iter(next_whale_ids(set(self.cat.whale_counts()), len(new_whale)))
        for root, refs in members.items():
            found = self.links.get(root, {})
            names = ", ".join(sorted(r.name() for r in refs))
            if root in new_whale and found:
                self.problems.append(f"{names} is decided a new whale ({_where(new_whale[root])}) and the same as "
                                     + " and as ".join(f"whale {w} ({_where(ds)})" for w, ds in sorted(found.items())))
            elif root in new_whale:
                w = next(fresh)
                self.new_ids.add(w)
                self.links[root][w].extend(new_whale[root])
                for r in refs:
                    self.assigned[r] = w
            elif len(found) > 1:
                self.problems.append(f"{names} (no whale id) is decided the same as " + " and as ".join(
                    f"whale {w} ({_where(ds)})" for w, ds in sorted(found.items())) +
                    "; decide two photos of those whales the same to merge them first")
            elif not found:
                self.plan.notes.append(Change("no change", names, "", "", "", "decided the same only as photos "
                                              "without a whale id: nothing to assign"))
            else:
                w = next(iter(found))
                for r in refs:
                    self.assigned[r] = w

    def check_different(self, different: list) -> None:
        """5. Different decisions: a contradiction when the merges and assignments put the two photos' whales
        together. Raises every problem found by the steps so far."""
        for group in different:
            d, q, c = group[0]
            rows = _where(g[0] for g in group)
            wq, wc = self.whale(q), self.whale(c)
            fq = self.final(wq) if wq else self.assigned.get(q, "")
            fc = self.final(wc) if wc else self.assigned.get(c, "")
            together = (fq and fq == fc) or (not wq and not wc and self.loose.find(q) == self.loose.find(c))
            if wq and wq == wc:
                self.plan.notes.append(Change("no change", f"{q.image_id} / {c.image_id}", wq, wq, rows,
                                              f"both labelled {wq} but decided different: one label may be wrong; "
                                              "not changed"))
            elif together:
                why = (f"merges join {wq} and {wc} ({_where(_path_of_edges(self.edges, wq, wc))})" if wq and wc else
                       f"the decisions make both whale {fq or 'one whale'}")
                self.problems.append(f"{q.name()} and {c.name()} are decided different ({rows}), but {why} (a photo "
                                     "under the wrong whale id is corrected by hand in the metadata, not by merging)")
            else:
                self.plan.notes.append(Change("no change", q.name(), fq, fq, rows, f"different from {c.name()}"))
        if self.problems:
            raise DataError(problems_message("contradictory decisions", self.problems))

    def record(self) -> None:
        """6. The changes: every photo of a merged whale, every photo labelled, every new photo added."""
        plan, cat, counts = self.plan, self.cat, self.cat.whale_counts()
        for w, kept in sorted(plan.merged.items()):
            ds = _path_of_edges(self.edges, w, kept)
            detail = (f"whales {w} and {kept} decided the same; kept {kept} ({counts[kept]} photos) over {w} "
                      f"({counts[w]} photos{', a tie: the smaller id is kept' if counts[w] == counts[kept] else ''})")
            for p in cat.photos.values():
                if p.whale_id == w:
                    plan.changes.append(Change("merge", p.id, w, kept, _where(ds), detail))
        for ref, w in sorted(self.assigned.items(), key=lambda kv: kv[0].name()):
            ds = [d for root in [self.loose.find(ref)] for d in self.links[root][w]]
            views = {cat.photos[d_ref].viewpoint for d_ref in _partners(ds, self.resolve, cat)}
            if ref.new:
                plan.new_photos.append(NewPhoto(ref.file, w, "top" if views == {"top"} else "", [d.where for d in ds],
                                                new_whale=w in self.new_ids))
            else:
                plan.labels[ref.image_id] = w
                plan.changes.append(Change("label", ref.image_id, "", w, _where(ds),
                                           "decided a new whale: a new id" if w in self.new_ids else
                                           f"decided the same as whale {w}"))


def _partners(ds: list[Decision], resolve: Resolver, cat: Catalogue) -> list[str]:
    """The labelled catalogue photos of decisions (the side with a whale id)."""
    out = []
    for d in ds:
        for v in (d.candidate, d.query):
            r = resolve(v)
            if r is not None and not r.new and cat.photos[r.image_id].whale_id:
                out.append(r.image_id)
    return out


def next_whale_ids(existing: set[str], n: int) -> list[str]:
    """``n`` whale ids that are not in ``existing``, continuing its most common pattern (a prefix and a number:
    ``whale123``, ``whale124`` after ``whale122``), else ``new-whale-1``, ``new-whale-2``, ..."""
    pattern = Counter()
    width: dict[str, int] = {}
    top: dict[str, int] = {}
    for w in existing:
        m = re.fullmatch(r"(.*?)(\d+)", w)
        if m:
            prefix, digits = m.groups()
            pattern[prefix] += 1
            width[prefix] = max(width.get(prefix, 0), len(digits))
            top[prefix] = max(top.get(prefix, 0), int(digits))
    prefix = pattern.most_common(1)[0][0] if pattern else "new-whale-"
    number, out = top.get(prefix, 0), []
    while len(out) < n:
        number += 1
        w = f"{prefix}{number:0{width.get(prefix, 1)}d}"
        if w not in existing:
            out.append(w)
    return out


def problems_message(what: str, problems: list[str]) -> str:
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{len(problems)} {what}; nothing was written:\n  " + "\n  ".join(problems[:MAX_LISTED]) + more
