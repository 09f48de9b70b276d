"""The pair model's training benchmark end to end on generated whales (SIFT: no weights, fast): pairs sampled
and verified, out-of-fold figures with folds split by whale, each scenario ranked by a model that never saw its
whales, and a shipped model that main.py loads."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from conftest import run_main
from scenario_factory import make_whales, write_layout

pytest.importorskip("lightgbm")
pytest.importorskip("sklearn")


def test_training_benchmark_on_generated_whales(tmp_path, capsys):
    from training import train_verifier

    dev = tmp_path / "dev"
    meta = make_whales(dev, n_whales=16, per_whale=3, seed=21)  # a catalogue of 16 whales; scenarios use 10
    ids = meta["image_id"].tolist()
    firsts = meta.groupby("whale_id")["image_id"].first().tolist()
    used = [i for i in ids if int(i[3:5]) < 10]
    write_layout(dev, meta, {"loo": (firsts[:6], used), "split": (firsts[6:10], [i for i in used if i not in firsts])})
    catalogue = tmp_path / "catalogue"
    (catalogue / "images").mkdir(parents=True)
    for p in meta["path"]:
        os.link(dev / p, catalogue / p)
    meta.to_csv(catalogue / "metadata.csv", index=False)
    whale = dict(zip(meta["image_id"], meta["whale_id"]))
    rows = []
    for sid in ("loo", "split"):
        q = pd.read_csv(dev / "queries" / f"{sid}.csv", dtype=str)
        db = pd.read_csv(dev / "databases" / f"{sid}.csv", dtype=str)["database_image_id"]
        rows += [(qid, d) for qid, qi in zip(q["query_id"], q["query_image_id"]) for d in db
                 if d != qi and whale[d] == whale[qi]]
    pd.DataFrame(rows, columns=["query_id", "database_image_id"]).to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "pair-model-sift-mnn.json"
    rc = train_verifier.main(["--catalogue", str(catalogue), "--cache-dir", str(tmp_path / "cache"), "--preset",
                              "sift-mnn", "--dev", str(dev), "--labels", str(tmp_path / "labels.csv"), "--out",
                              str(out), "--seed", "0"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "5 folds split by whale" in printed and "learned: evidence + metadata" in printed
    doc = json.loads(out.read_text())
    info = doc["info"]
    assert info["trained_on"]["photos"] == 48 and info["trained_on"]["positives"] == 48  # 16 whales x 3 pairs
    assert set(info["out_of_fold_ranking"]) >= {"strength", "learned: evidence + metadata"}
    assert info["calibration"]["input"] == "pair model probability" and "ece" in info["calibration"]["heldout"]
    res = run_main(dev, tmp_path / "sub.csv", tmp_path / "cache", "--pair-score", "learned", "--pair-model", str(out),
                   "--time-budget", "none")
    assert res.returncode == 0, res.stderr
