"""Pair verdicts for the curation tool: one result row per pair of photos, and its match picture.

Everything runs on :class:`matcher.engine.Engine` through its public methods: features come
from its feature stage (and cache), verdicts from its pair verifier (and verdict store), so
a pair verified once by any command is never verified again with the same settings.

Left and right flanks are mirror views of a whale, and the verifier refuses reflections.
A left-versus-right pair is therefore matched against the horizontally mirrored photo of
one side: the engine extracts its features from the flipped image and keeps them under
:func:`~matcher.features.stage.mirror_key` of the image hash, and :meth:`Curator.correspondences`
maps its keypoints back to the unflipped photo for drawing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..cascade.head_vote import HeadVote
from ..engine import Engine
from ..errors import ImageError, WhaleMatchError
from ..features.stage import mirror_key
from ..io import images
from ..io.catalogue import LATERAL, Photo, comparable
from ..pairs import model as pair_model
from ..pairs.model import PairModel
from ..pairs.store import canonical
from . import calibration as calib
from . import drawing, priors
from .calibration import MODEL, Calibration
from .priors import ONE_PAIR_WHY, Prior

log = logging.getLogger(__name__)

RESULT_COLUMNS = [
    "image_a", "image_b", "path_a", "path_b", "viewpoint_a", "viewpoint_b", "mirrored", "n_matches", "n_inliers",
    "strength", "score", "probability", "verdict", "note", "error", "picture",
]


@dataclass(frozen=True)
class PairTask:
    a: Photo
    b: Photo
    mirror: str = ""  # "", "a" or "b": which photo is matched mirrored


def mirror_side(a: Photo, b: Photo, flag: bool = False, prefer: str = "right") -> str:
    """Which photo to mirror: for a left-versus-right pair the right flank (or ``a`` with
    ``prefer="a"``); otherwise ``b`` when ``flag`` asks for it, else none."""
    va, vb = a.viewpoint.lower(), b.viewpoint.lower()
    if {va, vb} == set(LATERAL):
        if prefer == "a":
            return "a"
        return "a" if va == "right" else "b"
    return "b" if flag else ""


def pair_task(a: Photo, b: Photo) -> PairTask:
    """The pair as verified by the audit and the calibration: the right flank mirrored for left versus right."""
    return PairTask(a, b, mirror_side(a, b))


def safe_name(text: str, limit: int = 60) -> str:
    """``text`` reduced to a file-name-safe stem of at most ``limit`` characters."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return name[:limit] or "image"


def verdict_label(probability: float | None, calibrated: bool) -> str:
    """Words for a verdict: bands of P(same whale) (at the prior the command states), or a pointer to the raw
    score without a calibration."""
    if probability is None:
        return ""
    if not calibrated:
        return "uncalibrated (see score)"
    if probability >= 0.9:
        return "same whale"
    if probability >= 0.5:
        return "probably same whale"
    if probability >= 0.1:
        return "possible match"
    return "different / no match"


@dataclass
class Curator:
    """Verify pairs of photos with one engine (and its caches), an optional learned pair model (the score is then
    its P(same whale) from the verdict's evidence and the photos' dates and viewpoints) and an optional
    calibration of the score (of the strength without a model)."""

    engine: Engine
    calibration: Calibration | None = None
    prior: float | None = None  # share of same-whale pairs P assumes; None: the calibration's (even odds)
    model: PairModel | None = None
    prior_why: str = ONE_PAIR_WHY  # why that prior (see :mod:`.priors`)
    shas: dict = field(default_factory=dict)  # photo id -> content hash
    bad: dict = field(default_factory=dict)  # photo id -> why unusable
    prepared: set = field(default_factory=set)  # content hashes whose features the engine holds
    vote: HeadVote | None = None  # the pair model's global head, when the model reads its vote

    # -- features

    def prepare(self, photos: list[Photo]) -> None:
        """Hash the photos and make sure their features exist (from the cache or extracted)."""
        self.hash_only(photos)
        todo = {p.id: p.path for p in photos if p.id in self.shas and self.shas[p.id] not in self.prepared}
        if not todo:
            return
        _, bad_sha = self.engine.features({self.shas[i]: path for i, path in sorted(todo.items())})
        for i in todo:
            if self.shas[i] in bad_sha:
                self.bad[i] = bad_sha[self.shas.pop(i)]
                log.warning("unusable image %s: %s", i, self.bad[i])
            else:
                self.prepared.add(self.shas[i])

    def release(self, shas) -> None:
        """Drop these content hashes' features from memory (:meth:`Engine.release`); prepared again when needed."""
        shas = set(shas)
        self.engine.release(shas)
        self.prepared -= shas

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
        """How many of the (hashed) photos need no feature extraction."""
        return sum(1 for p in photos if p.id in self.shas and self.engine.has_features(self.shas[p.id]))

    def extraction_line(self, photos: list[Photo]) -> str:
        """One line on the feature work ahead: images cached, images to extract (and how slow that is)."""
        self.hash_only(photos)
        cached = self.cached_features(photos)
        todo = len(photos) - cached - sum(1 for p in photos if p.id in self.bad)
        slow = self.engine.device == "cpu" and self.engine.conf["extractor"]["model"] != "sift"
        return f"features: {cached} of {len(photos)} images cached, {todo} to extract" + \
            (" (about 1 s per image on a CPU)" if slow and todo else "")

    def prepare_mirrored(self, photos: list[Photo]) -> None:
        """Features of the horizontally mirrored photos (cached like any other features)."""
        todo = {self.shas[p.id]: p.path for p in photos if p.id in self.shas}
        if todo:
            self.engine.mirrored_features(todo)

    def key(self, photo: Photo, mirrored: bool) -> str:
        """The engine's key of a photo's features: its content hash, or the key of its mirror."""
        sha = self.shas[photo.id]
        return mirror_key(sha) if mirrored else sha

    def keys(self, task: PairTask) -> tuple[str, str]:
        return self.key(task.a, task.mirror == "a"), self.key(task.b, task.mirror == "b")

    def decode(self, photo: Photo) -> np.ndarray:
        """The photo's pixels as the feature stage sees them (same decoding)."""
        sha = self.shas.get(photo.id)
        if sha in self.prepared:
            return self.engine.image(sha)
        return images.load(photo.path)

    # -- verdicts

    def use_prior(self, prior: Prior) -> None:
        """Give P(same whale) this base rate (set it before verifying: rows keep the P they were made with)."""
        self.prior, self.prior_why = prior.value, prior.why

    def prior_line(self) -> str:
        """Which prior P(same whale) assumes and why (see :mod:`.priors`)."""
        return Prior(self.prior, self.prior_why).line(self.calibration is not None)

    def confidence(self, row: dict) -> float:
        """What thresholds and rankings use: the calibrated probability, else the raw score."""
        v = row.get("probability")
        if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
            v = row.get("score")
        return float(v) if v not in (None, "") else 0.0

    def verdicts(self, tasks: list[PairTask]) -> dict[tuple[str, str], dict]:
        """The verdicts of the tasks' pairs, by their canonical keys, verifying only pairs the cache lacks (one
        call for many tasks: on a cluster, one job)."""
        photos = {p.id: p for t in tasks for p in (t.a, t.b)}
        self.prepare(list(photos.values()))
        self.prepare_mirrored([t.a for t in tasks if t.mirror == "a"] + [t.b for t in tasks if t.mirror == "b"])
        pairs = {canonical(*self.keys(t)) for t in tasks if self._ok(t)}
        return self.engine.verdicts(pairs) if pairs else {}

    def pair_keys(self, tasks: list[PairTask]) -> set[tuple[str, str]]:
        """The canonical keys of the tasks' pairs whose photos are readable (hashes only: nothing extracted)."""
        self.hash_only([p for t in tasks for p in (t.a, t.b)])
        return {canonical(*self.keys(t)) for t in tasks if self._ok(t)}

    def verify(self, tasks: list[PairTask]) -> list[dict]:
        """A result row per task (see ``RESULT_COLUMNS``), verifying only pairs the cache lacks."""
        verdicts = self.verdicts(tasks)
        found = [verdicts.get(canonical(*self.keys(t))) if self._ok(t) else None for t in tasks]
        scores = [None] * len(tasks)
        if self.model is not None:
            done = [i for i, v in enumerate(found) if v is not None]
            metas = [self.metadata(tasks[i]) for i in done]
            if self.model.uses_head:  # the global head's vote: each photo's embedding (of its mirror if mirrored)
                keys = [self.keys(tasks[i]) for i in done]
                if self.vote is None:  # the head is loaded once per curator, not per call
                    self.vote = HeadVote(self.model, self.engine)
                emb = self.vote.embeddings({k for pair in keys for k in pair})
                metas = [({**a, "embedding": emb[ka]}, {**b, "embedding": emb[kb]})
                         for (a, b), (ka, kb) in zip(metas, keys)]
            p = self.model.scores([found[i] for i in done], metas)
            for i, value in zip(done, p):
                scores[i] = float(value)
        return [self._row(t, v, score) for t, v, score in zip(tasks, found, scores)]

    @staticmethod
    def metadata(task: PairTask) -> tuple[dict, dict]:
        """What the pair model reads of the two photos; a mirrored flank counts as the other flank."""
        def meta(photo: Photo, mirrored: bool) -> dict:
            view = photo.viewpoint
            if mirrored and view in LATERAL:
                view = LATERAL[1 - LATERAL.index(view)]
            return {"date": photo.date, "viewpoint": view}

        return meta(task.a, task.mirror == "a"), meta(task.b, task.mirror == "b")

    def _ok(self, t: PairTask) -> bool:
        return t.a.id in self.shas and t.b.id in self.shas

    def _row(self, t: PairTask, v: dict | None, model_score: float | None = None) -> dict:
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
        score = float(v["score"]) if model_score is None else model_score
        row.update(n_matches=int(v["n_matches"]), n_inliers=int(v["n_inliers"]),
                   strength=round(float(v["strength"]), 4), score=round(score, 4))
        if self.calibration is not None:
            x = score if self.calibration.input == MODEL else float(v["strength"])
            row["probability"] = round(float(self.calibration.probability(x, self.prior)), 4)
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

    def describe(self, prior: bool = True) -> list[str]:
        """What the verdicts mean: the preset's stages, settings key, device, caches, calibration and (with ``prior``)
        the prior P(same whale) assumes."""
        engine = self.engine
        conf, v = engine.conf, engine.conf["verifier"]
        caches = engine.cache.describe()
        lines = [
            f"preset {conf['name']}: {conf['extractor']['name']} features, {conf['matcher']['name']} matching, "
            f"{v['model']} model by MAGSAC++ (threshold {v['threshold']} px, at least {v['min_matches']} matches); "
            + (f"score = the pair model's P(same whale) ({self.model.source}: the verdict's evidence and the photos' "
               f"dates and viewpoints)" if self.model is not None else
               f"score = s/(s+{v['score_scale']:g}) with s = inliers + mean inlier similarity"),
            f"settings key {engine.settings_key}; device {engine.device}; caches "
            f"{caches if engine.cache.root else 'in ' + caches}",
        ]
        if self.calibration is not None:
            lines.append(f"calibration {self.calibration.describe()}")
        return lines + [self.prior_line()] if prior else lines

    # -- pictures

    def correspondences(self, task: PairTask) -> dict:
        """The pair's tentative matches as points in each photo's own pixels (mirrored keypoints
        mapped back), the inlier mask and the verdict."""
        ka, kb = self.keys(task)
        v = self.engine.verify_pair(ka, kb)
        m = v["matches"]
        fa, fb = self.engine.feature(ka), self.engine.feature(kb)
        pa = fa["keypoints"][m[:, 0]].astype(np.float64) if len(m) else np.zeros((0, 2))
        pb = fb["keypoints"][m[:, 1]].astype(np.float64) if len(m) else np.zeros((0, 2))
        if task.mirror == "a":
            pa[:, 0] = float(fa["size"][0]) - 1.0 - pa[:, 0]
        if task.mirror == "b":
            pb[:, 0] = float(fb["size"][0]) - 1.0 - pb[:, 0]
        return {"pts_a": pa, "pts_b": pb, "inliers": np.asarray(v["inliers"], bool), "verdict": v,
                "size_a": tuple(int(s) for s in fa["size"]), "size_b": tuple(int(s) for s in fb["size"])}

    def draw(self, task: PairTask, row: dict, path: Path, outliers: str = "faint") -> Path:
        """The pair's match picture, headed by its names and verdict, written to ``path``."""
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
        """A file name for the pair's picture: both stems and a digest of the pair."""
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


def engine_from_options(args) -> Engine:
    """The engine of a command's engine options (:func:`matcher.options.add_engine_options`)."""
    return Engine(args.preset, None if args.no_cache else args.cache_dir, args.device, args.workers,
                  progress=not args.quiet, backend=args.backend, ray_address=args.ray_address, runtime=args.runtime)


def from_options(args, calibration_file: Path | None, auto_score: str = "learned") -> Curator:
    """The engine of the options, its pair score (the learned model's P(same whale), or the strength's score;
    ``--pair-score auto`` means ``auto_score``, the learned one where the preset has a model) and the
    calibration of that score (``calibration_file``, else the model's own, else the preset's)."""
    if args.prior is not None and not 0 < args.prior < 1:
        raise WhaleMatchError(f"--prior must lie strictly between 0 and 1 (got {args.prior})")
    engine = engine_from_options(args)
    model, score = None, auto_score if args.pair_score == "auto" else args.pair_score
    if score != "strength":
        try:
            model = pair_model.for_preset(engine.name, engine.settings_key, args.pair_model)
        except pair_model.NoPairModel as exc:  # only a missing default falls back; a refused file is an error
            if args.pair_score == "learned":  # asked for by name: no model is an error
                raise
            log.info("no learned pair model (%s); scoring pairs by their strength", exc)
    if model is not None and calibration_file is None and "calibration" in model.info:
        cal = calib.Calibration.from_json(model.info["calibration"], f"{model.source} (its calibration)")
    else:
        cal, why = calib.for_preset(engine.conf, calibration_file)
        if cal is None:
            log.warning("%s; P(same whale) left blank, rankings use the raw score", why)
    if cal is not None and (cal.input == calib.MODEL) != (model is not None):
        raise WhaleMatchError(f"{cal.source}: calibrates the {cal.input}, but the pairs are scored by "
                              f"{'the pair model' if model is not None else 'their strength'} (--pair-score)")
    cur = Curator(engine, cal, args.prior, model)
    if args.prior is not None:
        cur.use_prior(priors.given(args.prior))
    return cur
