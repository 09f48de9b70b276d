"""LoFTR (kornia) as a detector-free matcher, with weights the user supplies.

LoFTR does not fit the engine's two stages (per-image keypoints and descriptors,
then descriptor matching): it finds its correspondences from both images at once.
It is offered here as a standalone matcher for an expensive re-verification stage
(for instance the last stage of a shortlist cascade)::

    matcher = LoFTRMatcher()                       # weights: see find_weights()
    kpts0, kpts1, conf = matcher.match_images(rgb0, rgb1, key0=sha0, key1=sha1)
    verdict = matcher.verify(rgb0, rgb1, key0=sha0, key1=sha1)   # the engine's verdict dict

Weights. Nothing is downloaded (LoFTR's weights are not on any package registry, and
``kornia.feature.LoFTR(pretrained="outdoor")`` would fetch them from the internet).
:func:`find_weights` looks, in order, at the path given, ``$WHALEMATCH_LOFTR_WEIGHTS``,
``$WHALEMATCH_WEIGHTS_DIR/loftr_outdoor.ckpt`` and ``weights/loftr_outdoor.ckpt``, and
raises :class:`~matcher.errors.WeightsError` naming every place it looked. The file (the
original ``loftr_outdoor.ckpt``, a ``{"state_dict": ...}`` checkpoint) is loaded with
``torch.load(weights_only=True)``; when ``weights/SHA256SUMS`` records a sum for its file
name, the file must match it.

Per-image features. The backbone's features of an image do not depend on the image it is
matched with, and kornia exposes them (:meth:`kornia.feature.LoFTR.extract_features`,
1/8-resolution position-encoded coarse maps and 1/2-resolution fine maps). They are kept
in memory, keyed by the caller's key (the content hash), for the ``cache_size`` most
recently used images, so a query matched against a shortlist runs its backbone once. They
are not written to disk: the fine map alone is 128 channels at half resolution, about
9 MB per image in float16 at the default working size (6 GB for the 719 development
images), against about 0.2 MB for an image's DISK features.

Coordinates. Images are resized to a working size that depends on the image alone (as
for the extractors: ``target_area`` pixels, sides a multiple of 8), converted to
grayscale, and the keypoints come back in the original image's pixels with kornia's
convention (pixel centres at integer coordinates).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from .. import presets
from ..errors import WeightsError
from ..io import weights
from ..io.images import working_size
from . import evidence
from .ransac import verify as verify_matches

log = logging.getLogger(__name__)

WEIGHTS_FILE = "loftr_outdoor.ckpt"
ENV_WEIGHTS = "WHALEMATCH_LOFTR_WEIGHTS"


def find_weights(path: str | Path | None = None) -> Path:
    """The LoFTR weight file: ``path``, else ``$WHALEMATCH_LOFTR_WEIGHTS``, else the file in the weights
    folders (:func:`matcher.io.weights.locate`); :class:`WeightsError` naming every place looked at otherwise.
    A path given explicitly (argument or environment variable) that does not exist is an error of its own:
    the user asked for that file."""
    explicit = [(what, Path(p)) for what, p in (("as the weights path", path),
                                                (f"in ${ENV_WEIGHTS}", os.environ.get(ENV_WEIGHTS))) if p]
    found = weights.locate(WEIGHTS_FILE, explicit)
    if found is not None:
        return found
    places = [folder / WEIGHTS_FILE for folder in weights.project_dirs()]
    raise WeightsError(
        "LoFTR weights not found (looked in: " + "; ".join(str(p) for p in places) + "). "
        f"They cannot be downloaded here: obtain {WEIGHTS_FILE} (the original LoFTR release, outdoor model) "
        f"and put it in weights/, or give its path in ${ENV_WEIGHTS}."
    )


def load_weights(path: Path) -> dict:
    """The model's state dict from a LoFTR checkpoint, loaded without running pickled code."""
    expected = weights.recorded_sums().get(path.name)
    if expected is not None and weights.file_sha256(path) != expected:
        raise WeightsError(f"{path}: SHA-256 does not match the sum recorded for {path.name} in {weights.SUMS_FILE}")
    if expected is None:
        log.warning("%s: no SHA-256 recorded for %s in weights/SHA256SUMS; loading it unchecked", path, path.name)
    state = weights.load_state_dict(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{path}: not a LoFTR checkpoint (no state dict inside)")
    return state


class LoFTRMatcher:
    """kornia LoFTR with user-supplied weights and an in-memory cache of per-image backbone features."""

    def __init__(self, conf: dict | None = None, weights_path: str | Path | None = None, device: str = "cpu",
                 cache_size: int = 64):
        import torch
        from kornia.feature import LoFTR
        from kornia.feature.loftr.loftr import default_cfg

        self.conf = {**presets.DENSE_MATCHERS["loftr"], **(conf or {})}
        cfg = {**default_cfg, "match_coarse": {**default_cfg["match_coarse"], "thr": self.conf["coarse_threshold"]}}
        self.weights_path = find_weights(weights_path or self.conf.get("weights_path"))
        model = LoFTR(pretrained=None, config=cfg)
        state = load_weights(self.weights_path)
        try:
            model.load_state_dict(dict(state))
        except RuntimeError as exc:
            raise WeightsError(f"{self.weights_path}: weights do not fit kornia's LoFTR ({exc})") from None
        self.model = model.to(device).eval()
        self.device = device
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[dict, tuple[int, int], tuple[int, int]]] = OrderedDict()
        self._torch = torch

    # --- per-image features ---------------------------------------------------------------------

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        c = self.conf
        return working_size(width, height, c["target_area"], c["max_upscale"], 8)

    def _gray_tensor(self, image: np.ndarray, size: tuple[int, int]):
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return self._torch.from_numpy(resized.astype(np.float32) / 255.0)[None, None].to(self.device)

    def features(self, image: np.ndarray, key: str | None = None) -> tuple[dict, tuple[int, int], tuple[int, int]]:
        """Backbone features of one image, its original (w, h) and working (w, h); cached under ``key``."""
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        h, w = image.shape[:2]
        size = self.working_size(w, h)
        with self._torch.inference_mode():
            feats = self.model.extract_features(self._gray_tensor(image, size))
        entry = (feats, (w, h), size)
        if key is not None and self.cache_size > 0:
            self._cache[key] = entry
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return entry

    # --- matching -------------------------------------------------------------------------------

    def match_images(self, img0: np.ndarray, img1: np.ndarray, key0: str | None = None, key1: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Correspondences of two images (RGB or grayscale uint8 arrays).

        Returns ``kpts0`` (K, 2) and ``kpts1`` (K, 2) float32 x y in each original image's
        pixels (row i of both is one match) and ``confidence`` (K,) float32 in [0, 1].
        ``key0`` / ``key1`` (content hashes) let an image's backbone features be reused.
        """
        f0, orig0, size0 = self.features(img0, key0)
        f1, orig1, size1 = self.features(img1, key1)
        with self._torch.inference_mode():
            out = self.model({"features0": f0, "features1": f1})
        k0 = out["keypoints0"].float().cpu().numpy().reshape(-1, 2)
        k1 = out["keypoints1"].float().cpu().numpy().reshape(-1, 2)
        conf = out["confidence"].float().cpu().numpy().reshape(-1)
        return self._to_original(k0, orig0, size0), self._to_original(k1, orig1, size1), np.clip(conf, 0, 1)

    @staticmethod
    def _to_original(kpts: np.ndarray, orig: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        # LoFTR puts pixel centres at +0.5 (see kornia's LoFTR docstring); kornia's frame has them at integers.
        scale = np.array([orig[0] / size[0], orig[1] / size[1]], np.float32)
        return (kpts.astype(np.float32) * scale - 0.5).astype(np.float32)

    def verify(self, img0: np.ndarray, img1: np.ndarray, verifier_conf: dict | None = None,
               key0: str | None = None, key1: str | None = None) -> dict:
        """The engine's verdict dict (n_matches, n_inliers, strength, score, model, inliers) for LoFTR's matches.

        ``verifier_conf`` defaults to the ``affine`` verifier preset; the match confidence
        plays the part of the descriptor similarity in the strength.
        """
        vconf = verifier_conf or presets.VERIFIERS["affine"]
        k0, k1, conf = self.match_images(img0, img1, key0, key1)
        idx = np.arange(len(k0), dtype=np.int64)
        matches, sim = np.stack([idx, idx], axis=1), conf.astype(np.float32)
        v = verify_matches(k0, k1, matches, sim, vconf)
        f0 = {"keypoints": k0, "size": img0.shape[1::-1], "scores": sim}
        f1 = {"keypoints": k1, "size": img1.shape[1::-1], "scores": sim}
        v["evidence"] = evidence.describe(f0, f1, matches, sim, v["inliers"], v["model"], vconf["threshold"])
        return v

    def clear_cache(self) -> None:
        self._cache.clear()

