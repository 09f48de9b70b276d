"""Curating a whale photo catalogue: verify pairs, search a catalogue, audit its labels.

Everything here runs on :class:`matcher.pipeline.Engine`: features come from its
feature stage (and cache), verdicts from its verifier (and pair cache), so a
pair verified once by any command is never verified again with the same settings.

Left and right flanks are mirror views of a whale, and the verifier refuses
reflections. A left-versus-right pair is therefore matched against the
horizontally mirrored photo of one side: its features are extracted from the
flipped image and cached under a key derived from the image hash (see
:func:`mirror_key`), and its keypoints are mapped back to the unflipped photo
for drawing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import drawing, images
from .calibration import Calibration
from .data import read_csv, safe_join
from .errors import DataError, ImageError
from .extraction import DECODE_MAX_SIDE
from .pair_cache import canonical
from .pipeline import Engine

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
LATERAL = ("left", "right")
RESULT_COLUMNS = [
    "image_a", "image_b", "path_a", "path_b", "viewpoint_a", "viewpoint_b", "mirrored", "n_matches", "n_inliers",
    "strength", "score", "probability", "verdict", "note", "error", "picture",
]


@dataclass(frozen=True)
class Photo:
    id: str
    path: Path
    viewpoint: str = ""
    whale_id: str = ""
    date: str = ""
    encounter_id: str = ""


@dataclass(frozen=True)
class PairTask:
    a: Photo
    b: Photo
    mirror: str = ""  # "", "a" or "b": which photo is matched mirrored


def mirror_key(sha: str) -> str:
    """Cache key of the features of an image's horizontal mirror (a pure function of the image hash)."""
    return hashlib.sha256(f"whalematch-hflip:{sha}".encode()).hexdigest()


def view_group(viewpoint: str) -> str:
    """``top``, ``lateral`` or ``""`` (unknown): photos are comparable within a group."""
    v = (viewpoint or "").strip().lower()
    return "lateral" if v in LATERAL else v


def comparable(a: Photo, b: Photo) -> bool:
    """Whether two photos can show the same marks: same view group, or a view unknown."""
    ga, gb = view_group(a.viewpoint), view_group(b.viewpoint)
    return not ga or not gb or ga == gb


def mirror_side(a: Photo, b: Photo, flag: bool = False, prefer: str = "right") -> str:
    """Which photo to mirror: for a left-versus-right pair the right flank (or ``a`` with
    ``prefer="a"``); otherwise ``b`` when ``flag`` asks for it, else none."""
    va, vb = a.viewpoint.lower(), b.viewpoint.lower()
    if {va, vb} == set(LATERAL):
        if prefer == "a":
            return "a"
        return "a" if va == "right" else "b"
    return "b" if flag else ""


def safe_name(text: str, limit: int = 60) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return name[:limit] or "image"


# --------------------------------------------------------------------------- catalogues


def read_metadata(csv_path: Path) -> dict[str, Photo]:
    """Photos of a metadata CSV (``image_id,path`` and optionally ``viewpoint,whale_id,date,encounter_id``;
    paths relative to the CSV's folder), by image id."""
    csv_path = Path(csv_path)
    df = read_csv(csv_path, ("image_id", "path"))
    if df["image_id"].duplicated().any():
        raise DataError(f"{csv_path}: image_id {df.loc[df['image_id'].duplicated(), 'image_id'].iloc[0]!r} "
                        "is listed twice")
    out = {}
    for row in df.to_dict("records"):
        out[row["image_id"]] = Photo(
            id=row["image_id"],
            path=safe_join(csv_path.parent, row["path"], csv_path),
            viewpoint=str(row.get("viewpoint", "")).strip().lower(),
            whale_id=str(row.get("whale_id", "")).strip(),
            date=str(row.get("date", "")).strip(),
            encounter_id=str(row.get("encounter_id", "")).strip(),
        )
    return out


def load_catalogue(source: Path) -> list[Photo]:
    """A catalogue from a metadata CSV, a folder holding ``metadata.csv``, or a folder of image files."""
    source = Path(source)
    if source.is_file():
        return list(read_metadata(source).values())
    if not source.is_dir():
        raise DataError(f"{source}: catalogue not found (give a folder of images or a metadata CSV)")
    if (source / "metadata.csv").is_file():
        return list(read_metadata(source / "metadata.csv").values())
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{source}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    return [Photo(id=p.relative_to(source).as_posix(), path=p) for p in files]


# --------------------------------------------------------------------------- verdicts


def verdict_label(probability: float | None, calibrated: bool) -> str:
    if probability is None:
        return ""
    if not calibrated:
        return "uncalibrated (see score)"
    if probability >= 0.9:
        return "same whale"
    if probability >= 0.5:
        return "probably same whale"
    if probability >= 0.1:
        return "probably different"
    return "different / no match"


@dataclass
class Curator:
    """Verify, search and audit with one engine (and its caches) and an optional calibration."""

    engine: Engine
    calibration: Calibration | None = None
    prior: float | None = None
    shas: dict = field(default_factory=dict)  # photo id -> content hash
    bad: dict = field(default_factory=dict)  # photo id -> why unusable
    _decoded: dict = field(default_factory=dict)

    # -- features

    def prepare(self, photos: list[Photo]) -> None:
        """Hash the photos and make sure their features exist (from the cache or extracted)."""
        self.hash_only(photos)
        loaded = self.engine.feature_stage.loaded
        todo = {p.id: p.path for p in photos if p.id in self.shas and self.shas[p.id] not in loaded}
        if not todo:
            return
        _, bad_sha = self.engine.features({self.shas[i]: path for i, path in sorted(todo.items())})
        for i in todo:
            if self.shas[i] in bad_sha:
                self.bad[i] = bad_sha[self.shas.pop(i)]
                log.warning("unusable image %s: %s", i, self.bad[i])

    def hash_only(self, photos: list[Photo]) -> None:
        """Content hashes of the photos (unreadable ones recorded in ``bad``)."""
        todo = {p.id: p.path for p in photos if p.id not in self.shas and p.id not in self.bad}
        if todo:
            shas, bad = self.engine.hash_images(todo)
            self.shas.update(shas)
            self.bad.update(bad)
            for i, msg in sorted(bad.items()):
                log.warning("unusable image %s: %s", i, msg)

    def cached_features(self, photos: list[Photo]) -> int:
        stage = self.engine.feature_stage
        n = 0
        for p in photos:
            sha = self.shas.get(p.id)
            if sha and (sha in stage.loaded or (stage.cache.enabled and stage.cache.path(sha).exists())):
                n += 1
        return n

    def prepare_mirrored(self, photos: list[Photo]) -> None:
        """Features of the horizontally mirrored photos (cached like any other features)."""
        stage = self.engine.feature_stage
        todo = []
        for p in dict.fromkeys(photos):
            sha = self.shas.get(p.id)
            if sha is None:
                continue
            key = mirror_key(sha)
            if key in stage.loaded:
                continue
            feats = stage.cache.get(key)
            if feats is None:
                todo.append((p, key))
            else:
                stage.loaded[key] = feats
        bar = tqdm(todo, desc="extracting mirrored features", unit="img", disable=not self.engine.progress or not todo)
        for p, key in bar:
            img = np.ascontiguousarray(self.decode(p)[:, ::-1])
            feats = stage.extractor.extract([img])[0]
            stage.cache.put(key, feats)
            stage.loaded[key] = feats

    def key(self, photo: Photo, mirrored: bool) -> str:
        sha = self.shas[photo.id]
        return mirror_key(sha) if mirrored else sha

    def keys(self, task: PairTask) -> tuple[str, str]:
        return self.key(task.a, task.mirror == "a"), self.key(task.b, task.mirror == "b")

    def decode(self, photo: Photo) -> np.ndarray:
        """The photo as the feature stage sees it (same decoding), kept for a few calls."""
        if photo.id not in self._decoded:
            if len(self._decoded) > 16:
                self._decoded.pop(next(iter(self._decoded)))
            self._decoded[photo.id] = images.decode(images.read_bytes(photo.path), photo.path, max_side=DECODE_MAX_SIDE)
        return self._decoded[photo.id]

    # -- verdicts

    def confidence(self, row: dict) -> float:
        """What thresholds and rankings use: the calibrated probability, else the raw score."""
        v = row.get("probability")
        if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
            v = row.get("score")
        return float(v) if v not in (None, "") else 0.0

    def verify(self, tasks: list[PairTask]) -> list[dict]:
        """A result row per task (see ``RESULT_COLUMNS``), verifying only pairs the cache lacks."""
        photos = {p.id: p for t in tasks for p in (t.a, t.b)}
        self.prepare(list(photos.values()))
        self.prepare_mirrored([t.a for t in tasks if t.mirror == "a"] + [t.b for t in tasks if t.mirror == "b"])
        usable = [t for t in tasks if t.a.id in self.shas and t.b.id in self.shas]
        pairs = {canonical(*self.keys(t)) for t in usable}
        verdicts = self.engine.verifier(pairs, self.engine.feature_stage.loaded) if pairs else {}
        return [self._row(t, verdicts.get(canonical(*self.keys(t))) if self._ok(t) else None) for t in tasks]

    def _ok(self, t: PairTask) -> bool:
        return t.a.id in self.shas and t.b.id in self.shas

    def _row(self, t: PairTask, v: dict | None) -> dict:
        row = {
            "image_a": t.a.id, "image_b": t.b.id, "path_a": str(t.a.path), "path_b": str(t.b.path),
            "viewpoint_a": t.a.viewpoint, "viewpoint_b": t.b.viewpoint,
            "mirrored": {"a": t.a.id, "b": t.b.id}.get(t.mirror, ""),
            "n_matches": None, "n_inliers": None, "strength": None, "score": None, "probability": None,
            "verdict": "", "note": "", "error": "", "picture": "",
        }
        if v is None:
            row["error"] = "; ".join(self.bad[i] for i in (t.a.id, t.b.id) if i in self.bad) or "not verified"
            row["verdict"] = "error"
            return row
        row.update(n_matches=int(v["n_matches"]), n_inliers=int(v["n_inliers"]),
                   strength=round(float(v["strength"]), 4), score=round(float(v["score"]), 4))
        if self.calibration is not None:
            row["probability"] = round(float(self.calibration.probability(v["strength"], self.prior)), 4)
        row["verdict"] = verdict_label(row["probability"] if self.calibration else row["score"],
                                       self.calibration is not None)
        notes = []
        if self.shas[t.a.id] == self.shas[t.b.id]:
            notes.append("identical files")
        if t.mirror:
            side = t.a if t.mirror == "a" else t.b
            views = f"{t.a.viewpoint} vs {t.b.viewpoint}" if t.a.viewpoint and t.b.viewpoint else "--mirror"
            notes.append(f"matched against the mirrored {side.id} ({views})")
        if not comparable(t.a, t.b):
            notes.append(f"different views ({t.a.viewpoint} vs {t.b.viewpoint})")
        row["note"] = "; ".join(notes)
        return row

    # -- pictures

    def correspondences(self, task: PairTask) -> dict:
        """The pair's tentative matches as points in each photo's own pixels (mirrored keypoints
        mapped back), the inlier mask and the verdict."""
        ka, kb = self.keys(task)
        loaded = self.engine.feature_stage.loaded
        ca, cb = canonical(ka, kb)
        v = self.engine.verifier.verify_pair(loaded[ca], loaded[cb], keep_inliers=True)
        m = v["matches"]
        if (ca, cb) != (ka, kb):
            m = m[:, ::-1]
        fa, fb = loaded[ka], loaded[kb]
        pa = fa["keypoints"][m[:, 0]].astype(np.float64) if len(m) else np.zeros((0, 2))
        pb = fb["keypoints"][m[:, 1]].astype(np.float64) if len(m) else np.zeros((0, 2))
        if task.mirror == "a":
            pa[:, 0] = float(fa["size"][0]) - 1.0 - pa[:, 0]
        if task.mirror == "b":
            pb[:, 0] = float(fb["size"][0]) - 1.0 - pb[:, 0]
        return {"pts_a": pa, "pts_b": pb, "inliers": np.asarray(v["inliers"], bool), "verdict": v,
                "size_a": tuple(int(s) for s in fa["size"]), "size_b": tuple(int(s) for s in fb["size"])}

    def draw(self, task: PairTask, row: dict, path: Path, outliers: str = "faint") -> Path:
        c = self.correspondences(task)
        img_a, img_b = self.decode(task.a), self.decode(task.b)

        def to_pixels(pts, img, size):
            scale = np.array([img.shape[1] / size[0], img.shape[0] / size[1]])
            return (pts + 0.5) * scale - 0.5

        pa, pb = to_pixels(c["pts_a"], img_a, c["size_a"]), to_pixels(c["pts_b"], img_b, c["size_b"])
        v = c["verdict"]
        a_lbl = Path(task.a.id).name + (" (mirrored to match)" if task.mirror == "a" else "")
        b_lbl = Path(task.b.id).name + (" (mirrored to match)" if task.mirror == "b" else "")
        prob = row.get("probability")
        ptxt = f"P(same) {prob:.2f}" if isinstance(prob, (int, float)) else "P(same) n/a"
        header = [
            f"A: {a_lbl}   B: {b_lbl}",
            f"{v['n_inliers']} inliers of {v['n_matches']} matches   score {v['score']:.3f}   {ptxt}"
            f"   {row['verdict']}",
        ]
        pic = drawing.match_picture(img_a, img_b, pa, pb, c["inliers"], header, outliers)
        return drawing.save(pic, path)

    def picture_name(self, task: PairTask) -> str:
        digest = hashlib.sha256(f"{task.a.id}\0{task.b.id}\0{task.mirror}".encode()).hexdigest()[:8]
        return f"{safe_name(Path(task.a.id).stem, 40)}__{safe_name(Path(task.b.id).stem, 40)}-{digest}.jpg"

    def draw_many(self, tasks_rows: list[tuple[PairTask, dict]], folder: Path, outliers: str = "faint") -> None:
        """Draw each (task, row) with a verdict into ``folder``; sets ``row["picture"]``."""
        todo = [(t, r) for t, r in tasks_rows if not r.get("error")]
        for t, r in tqdm(todo, desc="drawing match pictures", unit="pic", disable=not self.engine.progress or not todo):
            try:
                r["picture"] = str(self.draw(t, r, Path(folder) / self.picture_name(t), outliers))
            except ImageError as exc:
                r["error"] = str(exc)


# --------------------------------------------------------------------------- search


def rank_rows(rows: list[dict], curator: Curator) -> list[dict]:
    """Rows with a verdict, best first (confidence, strength, then ids), each given its rank."""
    ok = [r for r in rows if not r.get("error")]
    ok.sort(key=lambda r: (-curator.confidence(r), -(r["strength"] or 0.0), r["image_b"], r["image_a"]))
    for i, r in enumerate(ok, 1):
        r["rank"] = i
    return ok + [r for r in rows if r.get("error")]


def whale_ranking(rows: list[dict], whale_of: dict[str, str], curator: Curator, threshold: float = 0.5) -> list[dict]:
    """Per whale: the best image's score (rows sorted best first), its image, and how many images verify."""
    best: dict[str, dict] = {}
    counts: Counter = Counter()
    verified: Counter = Counter()
    for r in rows:
        if r.get("error"):
            continue
        w = whale_of.get(r["image_b"], "")
        if not w:
            continue
        counts[w] += 1
        if curator.confidence(r) >= threshold:
            verified[w] += 1
        if w not in best:
            best[w] = r
    out = []
    for rank, (w, r) in enumerate(sorted(best.items(), key=lambda kv: (-curator.confidence(kv[1]),
                                                                       -(kv[1]["strength"] or 0.0), kv[0])), 1):
        out.append({"rank": rank, "whale_id": w, "best_image": r["image_b"], "probability": r["probability"],
                    "score": r["score"], "n_inliers": r["n_inliers"], "images": counts[w],
                    "images_verified": verified[w], "picture": r.get("picture", ""), "note": r.get("note", "")})
    return out


def search_tasks(query: Photo, catalogue: list[Photo], mirror: bool = False, all_views: bool = False) -> list[PairTask]:
    tasks = []
    for c in catalogue:
        if c.id == query.id and c.path == query.path:
            continue
        if not all_views and not comparable(query, c):
            continue
        tasks.append(PairTask(query, c, mirror_side(query, c, mirror, prefer="a")))
    return tasks


# --------------------------------------------------------------------------- audit


@dataclass
class AuditPlan:
    within: list[tuple[Photo, Photo]]
    cross: list[tuple[Photo, Photo]]
    cross_total: int
    whales: int
    photos: int
    singletons: int  # photos with no comparable photo of the same whale


def _scope_key(p: Photo, scope: str) -> str:
    if scope == "same-date":
        return p.date
    if scope == "same-year":
        return p.date[:4]
    return ""


def plan_audit(photos: list[Photo], scope: str = "all", limit: int | None = None, seed: int = 0) -> AuditPlan:
    """Within-whale pairs (all, comparable views) and cross-whale pairs (all, or a seeded sample of ``limit``).

    Cross-whale pairs are counted per bucket (view group, and date or year with
    ``scope``) without listing them, so a large catalogue costs nothing to plan.
    """
    if scope not in ("all", "same-year", "same-date"):
        raise ValueError(f"unknown scope {scope!r}")
    photos = sorted(photos, key=lambda p: p.id)
    by_whale: dict[str, list[Photo]] = defaultdict(list)
    for p in photos:
        if not p.whale_id:
            raise DataError(f"image {p.id} has no whale_id; the audit needs a labelled catalogue")
        by_whale[p.whale_id].append(p)
    within = [(a, b) for ps in by_whale.values() for a, b in combinations(ps, 2) if comparable(a, b)]
    partnered = {p.id for pair in within for p in pair}
    # Buckets of mutually comparable photos: per scope key (date, year or none) and known view group,
    # that group plus the photos of unknown view (comparable with any). Photos of unknown view pair up
    # in every bucket, so their pairs among themselves are counted once and listed once (deduplicated).
    by_scope: dict[str, dict[str, list[Photo]]] = defaultdict(lambda: defaultdict(list))
    for p in photos:
        by_scope[_scope_key(p, scope)][view_group(p.viewpoint)].append(p)
    buckets: dict[tuple, list[Photo]] = {}
    total = 0
    for key, groups in sorted(by_scope.items()):
        unknown = groups.get("", [])
        known = sorted(g for g in groups if g)
        for g in known or [""]:
            buckets[(key, g)] = groups[g] + unknown if g else unknown
        total += sum(cross_count(buckets[(key, g)]) for g in known or [""])
        total -= max(0, len(known) - 1) * cross_count(unknown)
    counts = {k: cross_count(ps) for k, ps in buckets.items()}
    cross: list[tuple[Photo, Photo]]
    rng = np.random.default_rng(seed)
    if limit is None or limit >= total or limit >= 2_000_000 or 3 * limit >= total:
        seen = set()
        cross = []
        for k, ps in sorted(buckets.items()):
            for a, b in combinations(sorted(ps, key=lambda p: p.id), 2):
                if a.whale_id != b.whale_id and (a.id, b.id) not in seen:
                    seen.add((a.id, b.id))
                    cross.append((a, b))
        if limit is not None and limit < len(cross):
            pick = rng.choice(len(cross), size=limit, replace=False)
            cross = [cross[i] for i in sorted(pick)]
    else:
        keys = sorted(k for k in counts if counts[k] > 0)
        weights = np.array([counts[k] for k in keys], float)
        weights /= weights.sum()
        chosen: set[tuple[str, str]] = set()
        cross = []
        while len(cross) < limit:
            ps = buckets[keys[rng.choice(len(keys), p=weights)]]
            i, j = rng.choice(len(ps), size=2, replace=False)
            a, b = sorted((ps[i], ps[j]), key=lambda p: p.id)
            if a.whale_id == b.whale_id or (a.id, b.id) in chosen:
                continue
            chosen.add((a.id, b.id))
            cross.append((a, b))
        cross.sort(key=lambda ab: (ab[0].id, ab[1].id))
    return AuditPlan(within=within, cross=cross, cross_total=total, whales=len(by_whale), photos=len(photos),
                     singletons=sum(1 for p in photos if p.id not in partnered))


def cross_count(photos: list[Photo]) -> int:
    """Pairs of photos of different whales among ``photos``."""
    n = len(photos)
    per = Counter(p.whale_id for p in photos)
    return n * (n - 1) // 2 - sum(c * (c - 1) // 2 for c in per.values())


def pair_task(a: Photo, b: Photo) -> PairTask:
    return PairTask(a, b, mirror_side(a, b))


def isolated_images(rows: list[dict], photos: dict[str, Photo], curator: Curator, below: float) -> list[dict]:
    """Images whose best verdict against any other (comparable) image of their whale is below ``below``,
    most isolated first; each with its best same-whale partner as evidence."""
    best: dict[str, dict] = {}
    tried: Counter = Counter()
    for r in rows:
        if r.get("error"):
            continue
        for me, other in ((r["image_a"], r["image_b"]), (r["image_b"], r["image_a"])):
            tried[me] += 1
            if me not in best or (curator.confidence(r), r["strength"]) > (curator.confidence(best[me]),
                                                                           best[me]["strength"]):
                best[me] = {**r, "partner": other}
    out = []
    for image_id, r in best.items():
        conf = curator.confidence(r)
        if conf < below:
            out.append({"image_id": image_id, "whale_id": photos[image_id].whale_id,
                        "viewpoint": photos[image_id].viewpoint, "compared_with": tried[image_id],
                        "best_partner": r["partner"], "best_probability": r["probability"], "best_score": r["score"],
                        "best_inliers": r["n_inliers"], "suspicion": round(1.0 - conf, 4), "_row": r})
    out.sort(key=lambda d: (-d["suspicion"], d["image_id"]))
    for i, d in enumerate(out, 1):
        d["rank"] = i
    return out


def strong_cross_pairs(rows: list[dict], photos: dict[str, Photo], curator: Curator, above: float) -> list[dict]:
    """Cross-whale pairs whose verdict reaches ``above``, strongest first."""
    out = []
    for r in rows:
        if r.get("error") or curator.confidence(r) < above:
            continue
        a, b = photos[r["image_a"]], photos[r["image_b"]]
        out.append({**r, "whale_a": a.whale_id, "whale_b": b.whale_id, "confidence": curator.confidence(r),
                    "kind": "identical files" if "identical files" in r["note"] else
                    ("same encounter id" if a.encounter_id and a.encounter_id == b.encounter_id else "")})
    out.sort(key=lambda d: (-d["confidence"], -(d["strength"] or 0.0), d["image_a"], d["image_b"]))
    for i, d in enumerate(out, 1):
        d["rank"] = i
    return out
