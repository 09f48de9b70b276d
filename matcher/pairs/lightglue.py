"""kornia LightGlue on DISK or ALIKED features, with the released weights loaded offline.

Returns the same ``(matches, similarity)`` pair as :mod:`matcher.pairs.mnn`, the similarity
being LightGlue's match confidence.
"""

from __future__ import annotations

import numpy as np

from .. import presets
from ..io import weights
from .mnn import empty, sort_matches


def _unused_by_lightglue(key: str) -> bool:
    """Entries of the released LightGlue weights that kornia's model has no use for.

    ``log_assignment.<i>.r`` is a leftover of the original release's training code (all ones; the
    match assignment never reads it); the check keeps every other unexpected entry an error.
    """
    parts = key.split(".")
    return len(parts) == 3 and parts[0] == "log_assignment" and parts[1].isdigit() and parts[2] == "r"


class LightGlueMatcher:
    """kornia LightGlue with the weights for DISK or ALIKED, loaded offline.

    Pairs are matched one at a time: LightGlue's early stop and point pruning decide per batch, so a batched
    pair's matches would depend on its batch-mates.
    """

    def __init__(self, conf: dict, device: str = "cpu"):
        from kornia.feature import LightGlue

        features = conf["features"]
        lg_conf = {**LightGlue.features[features], "weights": None, "filter_threshold": conf["filter_threshold"]}
        self.model = LightGlue(features=None, **lg_conf)
        state = weights.load(presets.weights_file(conf))
        for i in range(self.model.conf.n_layers):  # names of the original release, as kornia renames them
            state = {k.replace(f"self_attn.{i}", f"transformers.{i}.self_attn"): v for k, v in state.items()}
            state = {k.replace(f"cross_attn.{i}", f"transformers.{i}.cross_attn"): v for k, v in state.items()}
        unused = [k for k in state if _unused_by_lightglue(k)]
        if any(not bool((state[k] == 1).all()) for k in unused):
            raise RuntimeError(f"LightGlue weights for {features} hold unexpected values in {unused}")
        weights.load_weights_into(self.model, state, f"LightGlue for {features}", _unused_by_lightglue)
        self.model = self.model.to(device).eval()
        self.device = device

    def match(self, f0: dict, f1: dict) -> tuple[np.ndarray, np.ndarray]:
        import torch

        if len(f0["keypoints"]) == 0 or len(f1["keypoints"]) == 0:
            return empty()

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
        return sort_matches(m.reshape(-1, 2), s)
