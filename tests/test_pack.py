"""The submission zip carries what the preset's pair model reads: its global head, when it reads one."""

from __future__ import annotations

import zipfile

import pytest

from matcher.challenge import pack
from matcher.errors import WhaleMatchError
from matcher.io import weights
from matcher.pairs.model import PairModel, feature_names, model_file

torch = pytest.importorskip("torch")


def write_model(folder, use_head: bool) -> None:
    import lightgbm
    import numpy as np

    names = feature_names(True, use_head)
    x = np.random.default_rng(0).random((40, len(names)))
    booster = lightgbm.train({"objective": "binary", "verbose": -1, "min_data_in_leaf": 5, "num_threads": 1},
                             lightgbm.Dataset(x, (x[:, 0] > 0.5).astype(int)), 3)
    info = {"head": {"file": "head-v9.pt", "sha256": "0" * 64}} if use_head else {}
    PairModel(names, "k", booster.model_to_string(), info).save(folder / model_file("sift-mnn"))


def test_the_pair_models_head_is_found_and_packed(tmp_path, monkeypatch):
    from matcher.features.global_head import GlobalHead, build_head

    folder = tmp_path / "weights"
    folder.mkdir()
    for name in ("README.md", "SHA256SUMS"):
        (folder / name).write_text("x\n")
    monkeypatch.setattr(weights, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(weights, "SUMS_FILE", folder / "SHA256SUMS")
    assert pack.pair_model_head("sift-mnn") is None  # no pair model at all
    write_model(folder, use_head=False)
    assert pack.pair_model_head("sift-mnn") is None  # a model that reads no head
    write_model(folder, use_head=True)
    with pytest.raises(WhaleMatchError, match="head-v9.pt"):
        pack.pair_model_head("sift-mnn")  # it reads a head the folder lacks: said, not packed without it
    conf = {"dim": 128, "clusters": 2, "out": 8}
    GlobalHead(conf, build_head(conf).state_dict()).save(folder / "head-v9.pt")
    assert pack.pair_model_head("sift-mnn") == folder / "head-v9.pt"
    names = pack.pack("sift-mnn", tmp_path / "s.zip")
    with zipfile.ZipFile(tmp_path / "s.zip") as zf:
        listing = set(zf.namelist())
    assert "head-v9.pt" in names and {"weights/head-v9.pt", "weights/head-v9.json",
                                      f"weights/{model_file('sift-mnn')}", "main.py"} <= listing
