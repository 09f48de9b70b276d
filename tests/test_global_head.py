"""The learned global descriptor head (matcher/features/global_head.py): it learns identities, its int8 embeddings
depend on the image alone, its weights load without pickle, a missing file is a WeightsError that says what to
do, and stage 0 ``learned-disk`` runs on real photos (skipped, with the reason, when they are absent)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from matcher import presets
from matcher.errors import WeightsError
from matcher.features.global_head import GlobalHead, build_head, keypoint_inputs, pad_batch, similarity
from matcher.io import weights

torch = pytest.importorskip("torch")

DIM = 16
TINY = {"dim": DIM, "clusters": 4, "out": 16}



def without_head_sums(tmp_path, monkeypatch) -> None:
    """Let a test's own head stand under the shipped head's name: the sums in force are the shipped ones less the
    head's (with them, a copy of another content is refused and the shipped head taken instead)."""
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("".join(line + "\n" for line in weights.SUMS_FILE.read_text().splitlines()
                            if "global-head-" not in line))
    monkeypatch.setattr(weights, "SUMS_FILE", sums)

def synthetic_photo(marks: np.ndarray, places: np.ndarray, background: np.ndarray, rng) -> dict:
    """Features of one made-up photo: 8 of its whale's 12 marks (descriptor + place, with noise) among 8
    keypoints of a background shared by every whale."""
    pick = rng.choice(len(marks), 8, replace=False)
    desc = marks[pick] + 0.15 * rng.standard_normal((8, DIM))
    kp = places[pick] + rng.normal(0, 3, (8, 2))
    bg = background[rng.choice(len(background), 8)] + 0.15 * rng.standard_normal((8, DIM))
    desc = np.concatenate([desc, bg])
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    kp = np.concatenate([kp, rng.uniform(0, [100, 300], (8, 2))])
    return {"keypoints": kp.astype(np.float32), "descriptors": desc.astype(np.float16),
            "scores": rng.uniform(0.5, 1, len(kp)).astype(np.float32), "size": np.array([100, 300], np.int32)}


def synthetic_catalogue(n_whales: int, per_whale: int, seed: int):
    rng = np.random.default_rng(seed)
    background = rng.standard_normal((20, DIM))
    whales = [(rng.standard_normal((12, DIM)), rng.uniform(0, [100, 300], (12, 2))) for _ in range(n_whales)]
    return whales, background, rng


def random_head(conf: dict, seed: int = 0) -> GlobalHead:
    torch.manual_seed(seed)
    return GlobalHead(conf, build_head(conf).state_dict(), {"seed": seed})


def test_tiny_head_learns_to_separate_identities():
    from training import head_training

    whales, background, rng = synthetic_catalogue(4, 16, seed=3)
    feats, labels = [], []
    for w, (marks, places) in enumerate(whales):
        for _ in range(16):
            feats.append(synthetic_photo(marks, places, background, rng))
            labels.append(f"whale{w}")
    torch.set_num_threads(1)
    head = head_training.train_head([keypoint_inputs(f) for f in feats], labels, seed=0, conf=TINY,
                                   train={"epochs": 30, "batch": 16, "keypoints": 10, "lr": 1e-2})
    # New photos of the same whales: each one's nearest other photo is of its own whale.
    test = [(w, synthetic_photo(m, p, background, rng)) for w, (m, p) in enumerate(whales) for _ in range(4)]
    owner = np.array([w for w, _ in test])

    def separation(h):
        sims = similarity(np.stack([h.embed(f) for _, f in test]), np.stack([h.embed(f) for _, f in test]))
        np.fill_diagonal(sims, -np.inf)
        same = sims[(owner[:, None] == owner[None]) & np.isfinite(sims)].mean()
        return (owner[sims.argmax(1)] == owner).mean(), same - sims[owner[:, None] != owner[None]].mean()

    top1, gap = separation(head)
    untrained_top1, untrained_gap = separation(random_head(TINY))
    assert top1 >= 0.85 and gap > 0.3 and gap > untrained_gap + 0.1, (top1, gap, untrained_top1, untrained_gap)


def test_embeddings_depend_on_the_image_alone():
    whales, background, rng = synthetic_catalogue(2, 1, seed=5)
    a = synthetic_photo(*whales[0], background, rng)
    b = synthetic_photo(*whales[1], background, rng)
    b = {k: (np.concatenate([v, v]) if k != "size" else v) for k, v in b.items()}  # more keypoints than a
    head = random_head(TINY)
    alone = head.embed(a)
    assert alone.dtype == np.int8 and alone.shape == (16,)
    head.embed(b)
    assert np.array_equal(head.embed(a), alone)
    # In a zero-padded batch beside a longer image, the masked pooling gives the same vector as alone.
    xa, xb = keypoint_inputs(a), keypoint_inputs(b)
    x, mask = pad_batch([xa, xb], DIM + 3)
    with torch.inference_mode():
        batched = head.net(torch.from_numpy(x), torch.from_numpy(mask))[0].numpy()
        single = head.net(torch.from_numpy(xa)[None], torch.ones(1, len(xa)))[0].numpy()
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert abs(np.linalg.norm(single) - 1) < 1e-5
    # An image without keypoints has the zero vector (similarity 0 to everything), not an error.
    empty = {"keypoints": np.zeros((0, 2), np.float32), "descriptors": np.zeros((0, DIM), np.float16),
             "scores": np.zeros(0, np.float32), "size": np.array([10, 10])}
    assert not head.embed(empty).any()


def test_weights_round_trip_without_pickle(tmp_path):
    head = random_head(TINY, seed=1)
    head.info = {"photos": 3}
    path = tmp_path / "global-head-test.pt"
    head.save(path)
    state = torch.load(path, weights_only=True)  # plain tensors: no pickled code
    assert set(state) == set(head.net.state_dict())
    doc = json.loads(path.with_suffix(".json").read_text())
    assert doc["conf"] == TINY and doc["info"] == {"photos": 3}
    loaded = GlobalHead.load(path)
    whales, background, rng = synthetic_catalogue(1, 1, seed=2)
    f = synthetic_photo(*whales[0], background, rng)
    assert np.array_equal(loaded.embed(f), head.embed(f))


def test_missing_or_foreign_weights_are_a_weights_error(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="make train-global"):
        GlobalHead.load(tmp_path / "absent.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a state dict")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(WeightsError, match="cannot load the global head"):
        GlobalHead.load(tmp_path / "bad.pt")

    from matcher.cascade.global_descriptors import GlobalStage
    from matcher.engine import Engine

    monkeypatch.setitem(presets.GLOBAL_DESCRIPTORS, "learned-absent", {"model": "learned", "weights": "absent.pt"})
    with pytest.raises(WeightsError, match=r"'learned-absent'.*absent\.pt.*make train-global"):
        GlobalStage("learned-absent", Engine("sift-mnn", None, "cpu", progress=False))


def test_learned_stage0_on_real_photos(belugas, tmp_path, monkeypatch):
    from matcher.cascade import CascadeSettings, run_cascade
    from matcher.cascade.global_descriptors import GlobalStage
    from matcher.engine import Engine

    meta = pd.read_csv(belugas / "metadata.csv", dtype=str)
    top = meta[meta["viewpoint"] == "top"]
    sizes = top["whale_id"].value_counts()
    whales = sorted(sizes[sizes >= 2].index)[:2]
    chosen = top[top["whale_id"].isin(whales)].groupby("whale_id").head(2).iloc[:3]  # 2 of one whale, 1 of another
    ids = chosen["image_id"].tolist()
    # A head of the shipped settings with random weights, found through WHALEMATCH_WEIGHTS_DIR (the file
    # shipped in weights/ is not needed to test the plumbing).
    conf = {"dim": 128, "clusters": 8, "out": 64}
    random_head(conf, seed=4).save(tmp_path / presets.GLOBAL_DESCRIPTORS["learned-disk"]["weights"])
    monkeypatch.setenv("WHALEMATCH_WEIGHTS_DIR", str(tmp_path))
    without_head_sums(tmp_path, monkeypatch)
    engine = Engine("disk-mnn", tmp_path / "cache", "cpu", progress=False)
    shas, bad = engine.prepare({i: belugas / p for i, p in zip(chosen["image_id"], chosen["path"])})
    assert not bad
    tasks = [("q0", ids[0], "s", ids), ("q1", ids[2], "s", ids[:2])]
    result = run_cascade(engine, tasks, shas, CascadeSettings(k1=None, k2=0, stage2="none",
                                                              global_descriptor="learned-disk"))
    assert result.bands[0]
    stage = GlobalStage("learned-disk", engine)
    assert list((tmp_path / "cache" / "global").iterdir()) == [engine.cache.global_descriptors(stage.key)]
    stage.describe(shas.values())
    assert stage.computed == 0  # every embedding came from the cache the run wrote
    for q in result.queries.values():
        cands = [shas[q.candidates[i]] for i in q.usable]
        expected = stage.scores(shas[q.query_image], cands)
        assert np.array_equal(q.s0, expected) and ((expected >= 0) & (expected <= 1)).all()
        emb = np.stack([stage.loaded[s]["emb"] for s in cands])
        cos = similarity(stage.loaded[shas[q.query_image]]["emb"][None], emb)[0]
        np.testing.assert_allclose(expected, (1 + np.clip(cos, -1, 1)) / 2)
        assert len(result.final_ranking(q, len(q.order0), 0)) == 2


def test_flip_stage0_averages_each_image_with_its_mirror(tmp_path, monkeypatch):
    """``learned-disk-flip``: each image's embedding is the normalised mean of its own and its mirror's (whose
    features the stage extracts and caches), kept apart from the plain head's cache."""
    import cv2
    from conftest import textured_image

    from matcher.cascade.global_descriptors import GlobalStage
    from matcher.engine import Engine
    from matcher.features.global_head import flip_average
    from matcher.features.stage import mirror_key

    conf = {"dim": 128, "clusters": 4, "out": 32}
    head = random_head(conf, seed=2)
    head.save(tmp_path / presets.GLOBAL_DESCRIPTORS["learned-disk"]["weights"])
    monkeypatch.setenv("WHALEMATCH_WEIGHTS_DIR", str(tmp_path))
    without_head_sums(tmp_path, monkeypatch)
    paths = {}
    for k in range(2):
        paths[f"img{k}"] = tmp_path / f"img{k}.png"
        cv2.imwrite(str(paths[f"img{k}"]), textured_image(30 + k)[:, :, ::-1])
    engine = Engine("sift-mnn", tmp_path / "cache", "cpu", progress=False)  # SIFT: 128-d like DISK, no weights
    shas, bad = engine.prepare(paths)
    assert not bad
    plain, flip = GlobalStage("learned-disk", engine), GlobalStage("learned-disk-flip", engine)
    assert plain.key != flip.key
    plain.describe(shas.values())
    flip.describe(shas.values())
    for sha in shas.values():
        mirrored = engine.feature(mirror_key(sha))  # extracted by the flip stage
        assert not np.array_equal(mirrored["keypoints"], engine.feature(sha)["keypoints"])
        expected = flip_average(head.embed(engine.feature(sha)), head.embed(mirrored))
        assert np.array_equal(flip.loaded[sha]["emb"], expected)
        assert not np.array_equal(expected, plain.loaded[sha]["emb"])
        norm = np.linalg.norm(expected.astype(float)) / 127
        assert abs(norm - 1) < 0.02
