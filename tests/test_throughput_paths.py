"""The fast paths give exactly the answers of the straightforward ones (correctness, not speed).

Batched extraction (size-ordered, decoded ahead in threads) and the concurrent verifier (work
items on a thread pool) against one image and one pair at a time; the GPU's padded matching
core, run on the CPU, against the per-pair mutual nearest neighbours; and the memory cap
arithmetic that sizes GPU batches.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from conftest import textured_image, warp_affine

from matcher import presets
from matcher.errors import WeightsError
from matcher.features import extractors as features
from matcher.features.stage import FeatureStage
from matcher.features.store import feature_store
from matcher.io import device as devices
from matcher.io import images, weights
from matcher.pairs import lightglue
from matcher.pairs import mnn as matching
from matcher.pairs.store import VerdictStore, canonical
from matcher.pairs.verifier import PairVerifier


def _write_images(folder, n_bases: int) -> dict[str, object]:
    """Bases and warped copies as PNG files (lossless, so every path decodes the same pixels); sha -> path."""
    out = {}
    for i in range(n_bases):
        base = textured_image(10 + i)
        for j, img in enumerate((base, warp_affine(base, angle=6.0 + 3 * i, scale=0.92)[0])):
            path = folder / f"img{i}{j}.png"
            cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            out[images.content_hash(path.read_bytes())] = path
    return out


@pytest.mark.parametrize("preset,n_bases", [("sift-mnn", 3), ("disk-mnn", 2)])
def test_batched_concurrent_path_gives_the_one_pair_at_a_time_verdicts(tmp_path, preset, n_bases):
    conf = presets.resolve(preset)
    sha_paths = _write_images(tmp_path, n_bases)
    pairs = {canonical(a, b) for a, b in itertools.combinations(sorted(sha_paths), 2)}

    # the engine's way: all images through the feature stage (DISK batches the equal-size images),
    # all pairs through the verifier in small work items on two threads, verdicts through the store
    stage = FeatureStage(conf["extractor"], "cpu", feature_store(tmp_path / "features", conf["extractor"]),
                         progress=False)
    feats, bad = stage(sha_paths)
    assert not bad
    if conf["extractor"]["model"] == "disk":
        assert stage.extractor.batch_for((640, 224)) > 1  # the batched path is the one exercised
    store = VerdictStore(tmp_path / "pairs.sqlite", presets.verdict_settings_key(conf))
    verdicts = PairVerifier(conf, "cpu", store, workers=2, progress=False, item_pairs=2)(pairs, feats)

    # the straightforward way: each pair alone, each image decoded and extracted alone
    single_ex = features.build(conf["extractor"], "cpu", batch_size=1)
    single = PairVerifier(conf, "cpu", VerdictStore(None, presets.verdict_settings_key(conf)), workers=1,
                          progress=False)
    related = 0
    for a, b in sorted(pairs):
        fa = single_ex.extract([images.load(sha_paths[a])])[0]
        fb = single_ex.extract([images.load(sha_paths[b])])[0]
        for k in fa:
            assert np.array_equal(fa[k], feats[a][k]) and np.array_equal(fb[k], feats[b][k])
        alone = single.verify_pair(fa, fb)
        assert alone == verdicts[(a, b)], (a, b)
        related += alone["n_inliers"] >= 20
    assert related >= n_bases  # each base and its warp: the comparison covers real matches, not only rejections

    # the verdicts read back from the store are the same again
    again = PairVerifier(conf, "cpu", store, workers=2, progress=False)(pairs, feats)
    assert {p: (v["n_inliers"], v["score"]) for p, v in again.items()} == {
        p: (v["n_inliers"], v["score"]) for p, v in verdicts.items()}


def _unit_rows(rng, n: int, dim: int = 32) -> np.ndarray:
    d = rng.standard_normal((n, dim)).astype(np.float32)
    return (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float16)


def _reference_mnn(d0: np.ndarray, d1: np.ndarray, min_similarity: float = 0.0):
    """Mutual nearest neighbours the obvious way: argmax both ways (lowest index wins a tie)."""
    if len(d0) == 0 or len(d1) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    s = d0.astype(np.float32) @ d1.astype(np.float32).T
    nn01, nn10 = s.argmax(1), s.argmax(0)
    rows = np.flatnonzero((nn10[nn01] == np.arange(len(d0))) & (s[np.arange(len(d0)), nn01] > min_similarity))
    return np.stack([rows, nn01[rows]], 1).astype(np.int64), np.clip(s[rows, nn01[rows]], 0, 1).astype(np.float32)


def test_mutual_nn_keeps_argmax_tie_rule():
    rng = np.random.default_rng(0)
    d1 = _unit_rows(rng, 40)
    d0 = np.concatenate([d1[[3, 3, 7]], _unit_rows(rng, 20), d1[[7]]])  # exact ties on both sides
    d1 = np.concatenate([d1, d1[[5]]])  # a duplicated column
    m, s = matching.mutual_nn(d0, d1)
    rm, rs = _reference_mnn(d0, d1)
    assert np.array_equal(m, rm) and np.allclose(s, rs, atol=1e-6)
    # of two equal rows only the first is mutual
    assert m[0].tolist() == [0, 3] and 1 not in m[:, 0]
    assert [2, 7] in m.tolist() and len(d0) - 1 not in m[:, 0]


def test_padded_gpu_core_matches_per_pair_on_cpu():
    """The GPU path's batched core and descriptor bank, run on the CPU in float32, equal mutual_nn pair by pair."""
    rng = np.random.default_rng(1)
    sets = {f"img{i}": _unit_rows(rng, n) for i, n in enumerate([50, 64, 65, 10, 0, 130, 50])}
    feats = {k: {"descriptors": v} for k, v in sets.items()}
    bank = matching.DescriptorBank(feats, feats.keys(), "cpu")
    others = [k for k in sets if k != "img0"]
    got = bank.match("img0", others, 0.0, chunk=2)
    for name, (m, s) in zip(others, got):
        rm, rs = matching.mutual_nn(sets["img0"], sets[name])
        assert np.array_equal(m, rm), name
        assert np.allclose(s, rs, atol=1e-6), name
    assert len(got[others.index("img4")][0]) == 0  # an image without keypoints matches nothing
    assert bank.match("img4", ["img1"])[0][0].shape == (0, 2)


def test_memory_cap_sizes_batches_and_chunks(monkeypatch):
    monkeypatch.setenv("WHALEMATCH_GPU_MEMORY_GB", "12")
    assert devices.requested_cap_gb() == 12.0
    monkeypatch.setenv("WHALEMATCH_GPU_MEMORY_GB", "-1")
    with pytest.raises(ValueError):
        devices.requested_cap_gb()
    assert devices.memory_cap("cpu") is None
    # matching chunk: a product of that many (m x n) matrices stays within its share of the memory left
    monkeypatch.setattr(devices, "free_within_cap", lambda device: 2 * 2**30)
    chunk = matching.chunk_pairs("cuda", 1024, 1024)
    assert 1 <= chunk <= matching.MAX_CHUNK
    assert chunk * 1024 * 1024 * matching.CELL_BYTES <= matching.MATCH_SHARE * 2 * 2**30
    assert matching.chunk_pairs("cuda", 1024, 1024, requested=3) == 3
    # extraction batch: from the budget and the working area, never below one image
    ex = features.build(presets.resolve("disk-mnn")["extractor"], "cpu")
    ex.device, ex.memory_budget = "cuda", 12 * 2**30 * features.EXTRACTION_SHARE
    n = ex.batch_for((640, 224))
    assert 1 <= n <= features.MAX_GPU_BATCH
    assert n * 640 * 224 * ex.bytes_per_pixel <= ex.memory_budget
    ex.memory_budget = 1
    assert ex.batch_for((640, 224)) == 1


def test_pretrained_networks_load_with_kornia_0_9():
    """LightGlue's released weights carry unused ``log_assignment.*.r`` entries and ALIKED's lack a derived
    buffer; both load, and a wrong entry still fails."""
    try:
        lg = lightglue.LightGlueMatcher(presets.resolve("disk-lightglue")["matcher"], "cpu")
        features.build(presets.resolve("aliked-mnn")["extractor"], "cpu").model("cpu")
    except WeightsError as exc:
        pytest.skip(f"pretrained weights not installed: {exc}")
    assert lightglue._unused_by_lightglue("log_assignment.3.r")
    assert not lightglue._unused_by_lightglue("log_assignment.3.final_proj.weight")
    state = lg.model.state_dict()
    state["surprise.weight"] = state["log_assignment.0.final_proj.weight"]
    with pytest.raises(RuntimeError, match="do not fit"):
        weights.load_weights_into(lg.model, state, "LightGlue", lightglue._unused_by_lightglue)


def test_gpu_mode_pipeline_on_the_cpu_gives_the_one_pair_verdicts(tmp_path, monkeypatch):
    """The GPU mode's control flow (matching on the calling thread against a descriptor bank, cut into blocks
    when the bank would pass its share of the memory cap, RANSAC on the pool), run on the CPU in float32."""
    conf = presets.resolve("sift-mnn")
    sha_paths = _write_images(tmp_path, 3)
    feats, _ = FeatureStage(conf["extractor"], "cpu", feature_store(None, conf["extractor"]), progress=False)(sha_paths)
    pairs = {canonical(a, b) for a, b in itertools.combinations(sorted(sha_paths), 2)}
    one_image = max(matching.DescriptorBank.nbytes(feats, [s], "cuda") for s in feats)
    monkeypatch.setattr(devices, "memory_cap", lambda device: int(3 * one_image / matching.BANK_SHARE))
    blocks = PairVerifier._bank_blocks(PairVerifier(conf, "cpu", None, 1, False)._items(sorted(pairs)), feats,
                                       int(3 * one_image))
    assert len(blocks) > 1  # the bank is built block by block

    verifier = PairVerifier(conf, "cpu", VerdictStore(None, presets.verdict_settings_key(conf)), workers=2,
                            progress=False, item_pairs=2)
    verifier.batched_matching = True
    verdicts = verifier(pairs, feats)
    single = PairVerifier(conf, "cpu", VerdictStore(None, presets.verdict_settings_key(conf)), workers=1,
                          progress=False)
    assert verdicts.keys() == pairs
    for a, b in pairs:
        alone = single.verify_pair(feats[a], feats[b])
        got = verdicts[(a, b)]
        assert (got["n_matches"], got["n_inliers"], got["model"]) == (
            alone["n_matches"], alone["n_inliers"], alone["model"]), (a, b)
        assert got["score"] == pytest.approx(alone["score"], abs=1e-6)
    assert sum(v["n_inliers"] >= 20 for v in verdicts.values()) >= 3
