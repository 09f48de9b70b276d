"""A learned global descriptor: a small head over an image's DISK keypoints, trained on whale identities.

The frozen pretrained backbone is DISK itself (the engine's cached features): each keypoint's 128-d
descriptor, its place on the body (along and across the photo's long axis) and its detection score go
through a learned mixing layer, NetVLAD pooling (Arandjelovic et al., CVPR 2016) and a projection to a
unit vector. Trained with a sub-center ArcFace loss (Deng et al., ECCV 2020) on the whales of the
labelled catalogue (``training/train_global.py``, ``make train-global``); shipped as a state dict loaded
with ``torch.load(weights_only=True)`` (no pickled code runs) beside a JSON of its settings and figures.

Embeddings are computed per image (one image at a time, so one never depends on another) and kept as
int8 (x 127): the similarity of two images is an exact integer dot product, whatever the batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import WeightsError
from ..io import weights

QUANT = 127
FORMAT = "whalematch-global-head"
VERSION = 1


def keypoint_inputs(feats: dict, max_keypoints: int | None = None, rng=None) -> np.ndarray:
    """(N, D + 3) float32 (D = 128 for DISK): descriptor, position along and across the photo's long axis
    (0..1), detection score (standardised in the image); ``max_keypoints`` keypoints drawn at random or all."""
    kp = np.asarray(feats["keypoints"], np.float32)
    desc = np.asarray(feats["descriptors"], np.float32)
    scores = np.asarray(feats["scores"], np.float32)
    w, h = (float(v) for v in feats["size"])
    if len(kp) == 0:
        return np.zeros((0, desc.shape[1] + 3 if desc.ndim == 2 else 131), np.float32)
    along, across = (kp[:, 0] / w, kp[:, 1] / h) if w >= h else (kp[:, 1] / h, kp[:, 0] / w)
    z = (scores - scores.mean()) / (scores.std() + 1e-6)
    x = np.concatenate([desc, along[:, None], across[:, None], z[:, None]], axis=1).astype(np.float32)
    if max_keypoints is not None and len(x) > max_keypoints:
        x = x[np.sort((rng or np.random.default_rng(0)).choice(len(x), max_keypoints, replace=False))]
    return x


def pad_batch(xs: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint sets of several images as one zero-padded batch ``(B, N, width)`` and its mask ``(B, N)``."""
    n = max(1, max((len(x) for x in xs), default=1))
    x = np.zeros((len(xs), n, width), np.float32)
    mask = np.zeros((len(xs), n), np.float32)
    for j, xi in enumerate(xs):
        x[j, :len(xi)], mask[j, :len(xi)] = xi, 1.0
    return x, mask


def build_head(conf: dict):
    """The head's network (torch): mixing layer, NetVLAD, projection."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    dim, clusters, out = int(conf.get("dim", 128)), int(conf.get("clusters", 32)), int(conf.get("out", 256))

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Linear(dim + 3, dim)
            self.assign = nn.Linear(dim, clusters)
            self.centroids = nn.Parameter(torch.randn(clusters, dim) * 0.1)
            self.proj = nn.Linear(clusters * dim, out)

        def forward(self, x, mask):
            """x (B, N, dim + 3), mask (B, N) -> (B, out) unit vectors."""
            h = F.normalize(x[..., :dim] + self.mix(x), dim=-1)
            a = torch.softmax(self.assign(h), dim=-1) * mask[..., None]
            vlad = torch.einsum("bnk,bnd->bkd", a, h) - a.sum(1)[..., None] * self.centroids
            vlad = F.normalize(F.normalize(vlad, dim=-1).flatten(1), dim=-1)
            return F.normalize(self.proj(vlad), dim=-1)

    return Head()


class GlobalHead:
    """A trained head and its settings, loaded from ``<name>.pt`` (state dict) and ``<name>.json``."""

    def __init__(self, conf: dict, state: dict, info: dict | None = None, source: str = ""):
        import torch

        self.conf, self.info, self.source = conf, info or {}, source
        self.net = build_head(conf)
        self.net.load_state_dict(state)
        self.net.eval()
        self._torch = torch

    @classmethod
    def load(cls, weights_path: Path) -> GlobalHead:
        """The head of ``weights_path`` (``.pt``) with its settings from the ``.json`` beside it."""
        import torch

        weights_path = Path(weights_path)
        meta = weights_path.with_suffix(".json")
        for shipped in (weights_path, meta):  # the shipped head's two files must match weights/SHA256SUMS
            weights.check_recorded(shipped)
        try:
            doc = json.loads(meta.read_text())
            if doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} file of version {VERSION}")
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            return cls(doc["conf"], state, doc.get("info", {}), str(weights_path))
        except FileNotFoundError as exc:
            raise WeightsError(f"{weights_path}: global head not found ({exc.filename}); rebuild it with "
                               "`make train-global`") from None
        except Exception as exc:  # noqa: BLE001 - any unpickling or shape failure is a bad file
            raise WeightsError(f"{weights_path}: cannot load the global head ({exc})") from None

    def save(self, weights_path: Path) -> None:
        """``weights_path`` (``.pt``, the state dict) and the ``.json`` of settings and figures beside it."""
        from ..io.atomic import atomic_path

        weights_path = Path(weights_path)
        with atomic_path(weights_path, suffix=".pt") as tmp:
            self._torch.save(self.net.state_dict(), tmp)
        with atomic_path(weights_path.with_suffix(".json"), suffix=".json") as tmp:
            tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, "conf": self.conf,
                                       "info": self.info}, indent=1) + "\n")
        for shipped in (weights_path, weights_path.with_suffix(".json")):
            weights.record_sum(shipped)

    def embed(self, feats: dict) -> np.ndarray:
        """The image's embedding as int8 (``QUANT`` scale), from its own features alone (all its keypoints)."""
        return self.embed_inputs(keypoint_inputs(feats))

    def embed_inputs(self, x: np.ndarray) -> np.ndarray:
        """The int8 embedding of one image's :func:`keypoint_inputs` (computed alone: no batch to depend on)."""
        x = np.asarray(x, np.float32)
        if len(x) == 0:
            return np.zeros(int(self.conf.get("out", 256)), np.int8)
        with self._torch.inference_mode():
            t = self._torch.from_numpy(x)[None]
            e = self.net(t, self._torch.ones(t.shape[:2]))[0].numpy()
        return np.round(e * QUANT).astype(np.int8)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of int8 embeddings (rows), exact: (len(a), len(b))."""
    return (np.asarray(a, np.int32) @ np.asarray(b, np.int32).T).astype(np.float64) / (QUANT * QUANT)


def flip_average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Test-time flip: the int8 embeddings of an image and of its mirror averaged, renormalised, as int8."""
    v = np.asarray(a, np.float64) + np.asarray(b, np.float64)
    n = np.linalg.norm(v)
    return np.round(QUANT * v / n).astype(np.int8) if n > 0 else np.zeros(len(v), np.int8)
