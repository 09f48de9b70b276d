"""A small learned pair model fitted on generated photos, for tests of the paths that use one."""

from __future__ import annotations

import numpy as np

from matcher.curation import calibration as calib
from matcher.engine import Engine, canonical
from matcher.pairs.model import PairModel, feature_names, feature_row


def fit_toy_model(engine: Engine, paths: dict[str, object], whale: dict[str, str],
                  meta: dict[str, dict], head_path=None) -> PairModel:
    """A LightGBM pair model for ``engine``'s verdict settings, fitted on every pair of the given photos
    (``paths``, ``whale`` and ``meta`` by image id), carrying an isotonic calibration of its output; with
    ``head_path`` (a global head file), it also reads that head's vote."""
    import lightgbm

    shas, _ = engine.prepare(paths)
    ids = sorted(shas)
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
    verdicts = engine.verdicts({canonical(shas[a], shas[b]) for a, b in pairs})
    names = feature_names(True, head_path is not None)
    info = {}
    if head_path is not None:
        from matcher.features.global_head import GlobalHead
        from matcher.io.weights import file_sha256

        head = GlobalHead.load(head_path)
        meta = {i: {**(meta.get(i) or {}), "embedding": head.embed(engine.feature(shas[i]))} for i in ids}
        info["head"] = {"file": str(head_path), "sha256": file_sha256(head_path)}
    x = np.array([feature_row(verdicts[canonical(shas[a], shas[b])], meta.get(a), meta.get(b), names)
                  for a, b in pairs])
    y = np.array([whale[a] == whale[b] for a, b in pairs], int)
    booster = lightgbm.train({"objective": "binary", "verbose": -1, "min_data_in_leaf": 3, "num_threads": 1,
                              "deterministic": True, "seed": 0}, lightgbm.Dataset(x, y), 30)
    model = PairModel(names, engine.settings_key, booster.model_to_string())
    cal = calib.fit(model.predict(x), y, engine.name, engine.settings_key, input=calib.MODEL)
    model.info = {**info, "calibration": cal.to_json()}
    return model
