"""Descriptor matching: mutual nearest neighbours (batched) and LightGlue.

Every function returns, for each pair, ``matches`` as an (K, 2) int array of
keypoint indices (first image, second image) sorted by the first column, and
``similarity`` (K,) float32 in [0, 1] (cosine similarity for MNN, LightGlue's
match confidence for LightGlue). Pairs are always matched in their canonical
order (see :mod:`matcher.pairs`), so (a, b) and (b, a) get the same answer.
"""

from __future__ import annotations

import numpy as np

from . import weights


def _sorted(matches: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((matches[:, 1], matches[:, 0])) if len(matches) else np.zeros(0, np.int64)
    return matches[order].astype(np.int64), sims[order].astype(np.float32)


def mutual_nn_batch(
    desc0: np.ndarray, others: list[np.ndarray], device: str = "cpu", min_similarity: float = 0.0, chunk: int = 64
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Mutual nearest neighbours of ``desc0`` against each descriptor set in ``others``.

    On a GPU the second sets are padded and matched ``chunk`` at a time in one
    batched matrix product in half precision; on the CPU one at a time in float32.
    """
    import torch

    on_gpu = device.startswith("cuda")
    dtype = torch.float16 if on_gpu else torch.float32
    if not on_gpu:
        chunk = 1
    results: list[tuple[np.ndarray, np.ndarray]] = []
    d0 = torch.from_numpy(np.ascontiguousarray(desc0)).to(device=device, dtype=dtype)
    for start in range(0, len(others), chunk):
        group = others[start : start + chunk]
        n_max = max([len(d) for d in group] + [1])
        padded = np.zeros((len(group), n_max, desc0.shape[1]), np.float32)
        for i, d in enumerate(group):
            padded[i, : len(d)] = d
        d1 = torch.from_numpy(padded).to(device=device, dtype=dtype)
        with torch.inference_mode():
            sim = torch.einsum("md,bnd->bmn", d0, d1).float()  # (B, M, N)
            for i, d in enumerate(group):
                n = len(d)
                if n == 0 or len(desc0) == 0:
                    results.append((np.zeros((0, 2), np.int64), np.zeros(0, np.float32)))
                    continue
                s = sim[i, :, :n]
                nn01 = s.argmax(dim=1)
                nn10 = s.argmax(dim=0)
                idx0 = torch.arange(len(desc0), device=s.device)
                mutual = nn10[nn01] == idx0
                best = s[idx0, nn01]
                keep = mutual & (best > min_similarity)
                m = torch.stack([idx0[keep], nn01[keep]], dim=1).cpu().numpy()
                sims = best[keep].clamp(0, 1).cpu().numpy()
                results.append(_sorted(m, sims))
    return results


def mutual_nn(desc0: np.ndarray, desc1: np.ndarray, min_similarity: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    return mutual_nn_batch(desc0, [desc1], "cpu", min_similarity)[0]


class LightGlueMatcher:
    """kornia LightGlue with the weights for DISK or ALIKED, loaded offline."""

    WEIGHT_FILES = {"disk": "disk_lightglue.pth", "aliked": "aliked_lightglue.pth"}

    def __init__(self, conf: dict, device: str = "cpu"):
        from kornia.feature import LightGlue

        features = conf["features"]
        lg_conf = {**LightGlue.features[features], "weights": None, "filter_threshold": conf["filter_threshold"]}
        self.model = LightGlue(features=None, **lg_conf)
        state = weights.load(self.WEIGHT_FILES[features])
        for i in range(self.model.conf.n_layers):  # names of the original release, as kornia renames them
            state = {k.replace(f"self_attn.{i}", f"transformers.{i}.self_attn"): v for k, v in state.items()}
            state = {k.replace(f"cross_attn.{i}", f"transformers.{i}.cross_attn"): v for k, v in state.items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        learned = {n for n, _ in self.model.named_parameters()}
        if any(k in learned for k in missing) or unexpected:
            raise RuntimeError(f"LightGlue weights for {features} do not fit the model: {missing} {unexpected}")
        self.model = self.model.to(device).eval()
        self.device = device

    def match(self, f0: dict, f1: dict) -> tuple[np.ndarray, np.ndarray]:
        import torch

        if len(f0["keypoints"]) == 0 or len(f1["keypoints"]) == 0:
            return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)

        def side(f):
            return {
                "keypoints": torch.from_numpy(f["keypoints"]).float()[None].to(self.device),
                "descriptors": torch.from_numpy(f["descriptors"].astype(np.float32))[None].to(self.device),
                "image_size": torch.from_numpy(f["size"].astype(np.float32))[None].to(self.device),
            }

        with torch.inference_mode():
            out = self.model({"image0": side(f0), "image1": side(f1)})
        m = out["matches"][0].cpu().numpy()
        s = out["scores"][0].float().cpu().numpy()
        return _sorted(m.reshape(-1, 2), s)
