"""The shortlist cascade on generated whales: stage order, own-image exclusion, K beyond the database,
per-query independence, and the stage-0 global descriptor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scenario_factory import loo_and_split, write_layout

from matcher import presets
from matcher.cascade import CascadeSettings, codebook, stages
from matcher.cascade import global_descriptors as gd
from matcher.cascade import rerank as reranking
from matcher.challenge import layout
from matcher.challenge.run import run, submission_rows
from matcher.engine import Engine
from matcher.errors import WeightsError
from matcher.features import extractors as features
from matcher.io import images
from matcher.timing import Deadline

PRESET = "sift-mnn"


class RecordingStage(stages.PairStage):
    """A stand-in expensive matcher: MNN + RANSAC again (fast, verdicts kept in memory), remembering every
    pair it was asked for."""

    name = "recording"
    calls: list[set] = []

    def __init__(self, engine):
        self.engine = Engine(engine.name, None, "cpu", workers=1, progress=False)
        self.paths = engine.image_paths
        RecordingStage.calls = []

    @property
    def computed(self):
        return self.engine.verified()

    def stored(self):
        return 0

    def cached(self, pairs):
        return set()

    def __call__(self, pairs):
        RecordingStage.calls.append(set(pairs))
        self.engine.features({s: self.paths[s] for pair in pairs for s in pair}, progress=False)
        return self.engine.verdicts(pairs, progress=False)


@pytest.fixture(autouse=True)
def recording_stage(monkeypatch):
    monkeypatch.setitem(stages.STAGE2_FACTORIES, "recording", lambda engine, conf: RecordingStage(engine))


@pytest.fixture(scope="module")
def whales(tmp_path_factory):
    """12 whales x 3 views; one leave-one-out scenario (36 images) and one split scenario."""
    root = tmp_path_factory.mktemp("cascade")
    return root, loo_and_split(root, n_whales=12, n_loo=8, seed=3)


@pytest.fixture(scope="module")
def codebook_dir(whales, tmp_path_factory):
    """A small SIFT codebook fitted on the generated images, as the project fits its DISK one."""
    root, meta = whales
    conf = presets.resolve(PRESET)
    ex = features.build(conf["extractor"])
    descs = [ex.extract([images.load(root / p)])[0]["descriptors"] for p in meta["path"]]
    book = codebook.build_codebook_from_features(descs, k=32, per_image=200, iters=8, seed=0,
                                           info={"extractor": presets.extractor_settings_key(conf["extractor"])})
    folder = tmp_path_factory.mktemp("weights")
    book.save(folder / "codebook-test.json")
    return folder


@pytest.fixture
def with_stage0(codebook_dir, monkeypatch):
    monkeypatch.setenv("WHALEMATCH_WEIGHTS_DIR", str(codebook_dir))
    monkeypatch.setitem(presets.GLOBAL_DESCRIPTORS, "asmk-test", {"model": "asmk", "codebook": "codebook-test.json",
                                                 "alpha": 3.0, "tau": 0.0})
    return "asmk-test"


class Setup:
    """An engine and the cascade's stage 2 and stage 0 for one test run."""

    def __init__(self, path, stage2, global_descriptor):
        self.engine = Engine(PRESET, path, "cpu", progress=False)
        self.stage2, self.global_descriptor = stage2, global_descriptor

    def settings(self, **kw) -> CascadeSettings:
        return CascadeSettings(stage2=self.stage2, global_descriptor=self.global_descriptor, **kw)

    def run(self, challenge, settings: CascadeSettings | None = None, deadline=None):
        """The cascade's result, with its submission rows as ``.submission``."""
        s = settings or CascadeSettings()
        s.stage2, s.global_descriptor = self.stage2, self.global_descriptor
        res = run(challenge, self.engine, s, deadline)
        res.submission = submission_rows(challenge, res, s.stage2_mode)
        return res

    def rank(self, challenge, **kw):
        return self.run(challenge, CascadeSettings(**kw)).submission, challenge.expected()


def engine(tmp_path, name="c", stage2="recording", global_descriptor="none") -> Setup:
    return Setup(tmp_path / name, stage2, global_descriptor)


def _sha_of(eng, image_id, root):
    return images.content_hash(images.read_bytes(root / "images" / f"{image_id}.jpg"))


def test_stages_narrow_and_final_order_follows_the_stages(whales, tmp_path, with_stage0):
    root, meta = whales
    eng = engine(tmp_path, global_descriptor=with_stage0)
    res = eng.run(layout.load(root), CascadeSettings(k1=10, k2=4))
    assert res.plan.k1 == 10 and res.plan.k2 == 4
    assert res.bands == (True, True)
    for _qid, q in res.queries.items():
        assert q.done1 == 10 and q.done2 == 4
        final = res.final_ranking(q, 10, 4)
        ids = [d for d, _ in final]
        scores = np.array([s for _, s in final])
        assert sorted(ids) == sorted(q.candidates)  # every candidate ranked once
        assert (np.diff(scores) <= 0).all() and scores.min() >= 0 and scores.max() <= 1
        stage1_set = {q.candidates[q.usable[p]] for p in q.order0[:10]}
        stage2_set = {q.candidates[q.usable[p]] for p in q.order1[:4]}
        assert set(ids[:4]) == stage2_set  # stage 2's candidates first,
        assert set(ids[4:10]) == stage1_set - stage2_set  # then the rest of stage 1's,
        assert (scores[:4] >= 2 / 3).all() and ((scores[4:10] >= 1 / 3) & (scores[4:10] < 2 / 3)).all()
        assert (scores[10:] < 1 / 3).all()  # then stage 0's, each in its band
    # stage 2 was asked only for each query's top 4 by stage 1
    asked = set().union(*RecordingStage.calls)
    wanted = {tuple(sorted(res.shas[c] for c in divmod(int(code), len(res.shas))))
              for q in res.queries.values() for code in q.pair_codes[q.order1[:4]]}
    assert asked == wanted


def test_no_stage_proposes_the_query_image(whales, tmp_path, with_stage0):
    root, meta = whales
    eng = engine(tmp_path, global_descriptor=with_stage0)
    challenge = layout.load(root)
    res = eng.run(challenge, CascadeSettings(k1=8, k2=5))
    for _qid, q in res.queries.items():
        assert q.query_image not in q.candidates
        for positions in (q.order0, q.order1):
            assert q.query_image not in {q.candidates[q.usable[p]] for p in positions}
    for pairs in RecordingStage.calls:
        assert all(a != b for a, b in pairs)  # never an image against itself
    sub = res.submission
    own = sub["query_id"].map({qid: q.query_image for qid, q in res.queries.items()})
    assert (sub["database_image_id"] != own).all()


def test_nothing_cut_and_no_stage_2_gives_the_verdict_scores(whales, tmp_path, with_stage0):
    root, meta = whales
    res = engine(tmp_path, stage2="none", global_descriptor=with_stage0).run(layout.load(root), CascadeSettings())
    for qid, rows in res.submission.groupby("query_id"):
        q = res.queries[qid]
        pos = {q.candidates[q.usable[p]]: p for p in range(len(q.usable))}
        verdict = [res.stage1[int(q.pair_codes[pos[d]])][0] for d in rows["database_image_id"]]
        # the verdict scores, on the written grid, lowered by a step where two would tie (at most 20 steps)
        assert rows["score"].tolist() == pytest.approx(verdict, abs=20e-6)
        positive = rows["score"].to_numpy()[rows["score"].to_numpy() > 0]
        assert (np.diff(positive) <= -1e-6 + 1e-12).all()  # strictly decreasing as written, but for no evidence


def test_k_larger_than_the_database_is_everything(whales, tmp_path, with_stage0):
    root, meta = whales
    challenge = layout.load(root)
    big = engine(tmp_path, "a", global_descriptor=with_stage0).run(challenge, CascadeSettings(k1=10_000, k2=10_000))
    everything = engine(tmp_path, "b", global_descriptor=with_stage0).run(
        challenge, CascadeSettings(k1=None, k2=None, k2_max=10_000))
    for q in big.queries.values():
        assert q.done1 == len(q.usable) == q.done2
    pd.testing.assert_frame_equal(big.submission, everything.submission)
    counts = big.submission.groupby("query_id").size()
    assert counts.max() == counts.min() == 20  # 35 and 24 candidates, capped at 20


@pytest.mark.parametrize("ks", [(5, 3, False), (None, None, False), (8, 3, True), (None, None, True)])
def test_query_alone_or_in_the_full_run_gets_identical_rows(whales, tmp_path, with_stage0, ks):
    root, meta = whales
    k1, k2, rerank = ks
    full = layout.load(root)
    sub_full, _ = engine(tmp_path, "full", global_descriptor=with_stage0).rank(full, k1=k1, k2=k2,
                                 rerank=rerank)
    alone = layout.load(root)
    target = alone.scenarios[0]
    alone.scenarios = [target]
    target.queries = target.queries.iloc[[3]].reset_index(drop=True)
    sub_alone, _ = engine(tmp_path, "alone", global_descriptor=with_stage0).rank(alone, k1=k1, k2=k2,
                                  rerank=rerank)
    qid = target.queries["query_id"].iloc[0]
    expected = sub_full[sub_full["query_id"] == qid].reset_index(drop=True)
    assert len(expected) == 20
    pd.testing.assert_frame_equal(sub_alone.reset_index(drop=True), expected)


def test_rerank_uses_the_pairs_within_each_scenarios_database(whales, tmp_path):
    """Re-ranking verifies every pair of each scenario's database, re-scores each query's stage-1
    candidates with matcher.rerank on that graph, and the submission follows the new scores."""
    root, meta = whales
    eng = engine(tmp_path, stage2="none")
    # Weaken each query's verdict with the last view of its whale (as across years): only the path
    # through the whale's other view, verified within the database, can lift it again.
    views = meta.groupby("whale_id")["image_id"].agg(list)
    weak = {tuple(sorted((_sha_of(eng, v[0], root), _sha_of(eng, v[-1], root)))) for v in views}
    real = eng.engine.verdicts

    def weakened(pairs, preset=None, progress=None):
        out = real(pairs, preset, progress)
        for p in pairs:
            if tuple(sorted(p)) in weak:
                st = out[p]["strength"] / 5
                out[p] = {**out[p], "strength": st, "score": st / (st + 20)}
        return out

    eng.engine.verdicts = weakened
    challenge = layout.load(root)
    res = eng.run(challenge, CascadeSettings(rerank=True))
    shas = {i: _sha_of(eng, i, root) for i in meta["image_id"]}
    databases = {sc.scenario_id: list(sc.database) for sc in challenge.scenarios}
    assert res.pairs["rerank"] == len({tuple(sorted((shas[a], shas[b]))) for db in databases.values()
                                       for i, a in enumerate(db) for b in db[i + 1:]} - {
        tuple(sorted(res.shas[c] for c in divmod(int(code), len(res.shas)))) for code in res.stage1})
    lifted = 0
    for qid, rows in res.submission.groupby("query_id"):
        q = res.queries[qid]
        cands = [q.candidates[i] for i in q.usable]
        direct = np.array([res.stage1[int(c)][0] for c in q.pair_codes])
        w = np.zeros((len(cands), len(cands)))
        pairs = {(a, b): tuple(sorted((shas[a], shas[b]))) for i, a in enumerate(cands) for b in cands[i + 1:]}
        verdicts = eng.engine.verdicts(set(pairs.values()))  # read back from the store
        for (a, b), key in pairs.items():
            w[cands.index(a), cands.index(b)] = w[cands.index(b), cands.index(a)] = verdicts[key]["score"]
        expected = np.maximum(direct, reranking.rerank(direct, w))
        assert q.rr == pytest.approx(expected)
        assert rows["score"].tolist() == pytest.approx([expected[cands.index(d)] for d in rows["database_image_id"]],
                                                       abs=20e-6)  # on the written grid, ties separated
        assert rows["score"].is_monotonic_decreasing
        lifted += int((expected > direct + 1e-9).sum())
    assert lifted >= len(res.queries)  # at least each query's weakened view was lifted by the database


def test_cascade_finds_the_whales_with_a_tight_k(whales, tmp_path, with_stage0):
    """With stage 0 cutting to 6 of 35 candidates, the two other views of each whale still come first."""
    root, meta = whales
    sub, _ = engine(tmp_path, global_descriptor=with_stage0).rank(layout.load(root), k1=6, k2=3)
    for qid, rows in sub.groupby("query_id"):
        whale = qid.split("-", 1)[1][:5]
        assert rows["database_image_id"].iloc[:2].str[:5].tolist() == [whale, whale], rows.head(4)


def test_an_expired_deadline_still_ranks_every_query(whales, tmp_path, with_stage0):
    root, meta = whales
    eng = engine(tmp_path, global_descriptor=with_stage0)
    challenge = layout.load(root)
    eng.engine.prepare(*challenge.image_paths(set(meta["image_id"])))  # features first; then the budget is gone
    deadline = Deadline(10.0, start=-1e9)
    res = eng.run(challenge, CascadeSettings(budget_s=10.0), deadline)
    assert deadline.tripped
    assert eng.engine.verified() == 0 and not RecordingStage.calls  # nothing verified after the deadline
    counts = res.submission.groupby("query_id").size()
    assert len(counts) == 12 and counts.min() == 20
    assert res.submission["score"].between(0, 1 / 2).all()  # stage 0's band only (stage 1's is empty)


def test_stage0_similarity_of_a_pair_does_not_depend_on_the_others():
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(16, 8)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    descs = []
    for _ in range(7):
        d = rng.normal(size=(60, 8)).astype(np.float32)
        descs.append(gd.aggregate(d / np.linalg.norm(d, axis=1, keepdims=True), centroids))
    conf = {"alpha": 3.0, "tau": 0.0}
    block = gd.similarity_matrix(descs[:3], descs[3:], conf)
    for i in range(3):
        for j in range(4):
            assert gd.similarity_matrix([descs[i]], [descs[3 + j]], conf)[0, 0] == block[i, j]
    self_sim = gd.similarity_matrix(descs[:1], descs[:1], conf)[0, 0]
    assert self_sim == pytest.approx(1.0, abs=5e-3)  # int8 quantisation and block.max() < self_sim


def test_codebook_round_trip_and_corruption(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    book = codebook.Codebook(codebook.spherical_kmeans(x, 8, iters=5, seed=0), {"version": 1})
    assert np.allclose(np.linalg.norm(book.centroids, axis=1), 1.0, atol=1e-5)
    book.save(tmp_path / "cb.json")
    again = codebook.Codebook.load(tmp_path / "cb.json")
    assert again.digest == book.digest and again.centroids.shape == (8, 16)
    text = (tmp_path / "cb.json").read_text().replace('"centroids": "', '"centroids": "AAAA', 1)
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(WeightsError):
        codebook.Codebook.load(tmp_path / "bad.json")


def test_missing_codebook_passes_everything_through(tmp_path, monkeypatch):
    monkeypatch.setenv("WHALEMATCH_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setitem(presets.GLOBAL_DESCRIPTORS, "asmk-missing", {"model": "asmk", "codebook": "nope.json"})
    stage = gd.GlobalStage("asmk-missing", Engine(PRESET, None, "cpu", progress=False))
    assert not stage.enabled
    assert stage.scores("q", ["a", "b"]).tolist() == [0.0, 0.0]


def test_a_resumed_run_with_its_pilot_pairs_cached_still_plans_everything(whales, tmp_path):
    """A run killed after stage 1 verified every query's first candidates leaves those pairs cached; the
    resumed run's pilot then computes nothing, and must time uncached pairs rather than plan blind."""
    root, meta = whales
    challenge = layout.load(root)
    engine(tmp_path, "c", stage2="none").rank(challenge, k1=16)  # the first run, cut short
    eng = engine(tmp_path, "c", stage2="none")
    res = eng.run(layout.load(root), CascadeSettings(budget_s=3600.0), Deadline(3600.0))
    assert res.plan.k1 == res.plan.database_max == 35
    assert eng.engine.verified() > 0  # only what the first run had not verified
    reference = engine(tmp_path, "ref", stage2="none").run(layout.load(root), CascadeSettings())
    pd.testing.assert_frame_equal(res.submission, reference.submission)


def test_rerank_is_done_per_scenario_while_the_budget_allows(whales, tmp_path):
    """On a clock where every verified pair costs one second: stage 1 runs whole, then the smaller
    scenario's database fits in the time left and is re-ranked, the larger one does not and keeps its
    stage-1 ranking; the guard says so and every query is still answered."""
    _, meta = whales
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for p in meta["path"]:
        (root / p).write_bytes((whales[0] / p).read_bytes())
    views = meta.groupby("whale_id")["image_id"].agg(list).tolist()
    write_layout(root, meta, {  # databases share no image and no query-database pair
        "small": ([v[0] for v in views[:2]], [i for v in views[:4] for i in v[1:]]),
        "large": ([v[0] for v in views[4:6]], [i for v in views[4:12] for i in v[1:]]),
    })
    now = [0.0]

    def timed_engine(name):
        eng = engine(tmp_path, name, stage2="none")
        real = eng.engine.verdicts

        def timed(pairs, preset=None, progress=None):
            before = eng.engine.verified()
            out = real(pairs, preset, progress)
            now[0] += eng.engine.verified() - before  # one second per pair computed
            return out

        eng.engine.verdicts = timed
        return eng

    settings = CascadeSettings(k1=10_000, rerank=True)
    ref = timed_engine("ref").run(layout.load(root), settings, Deadline(float("inf"), clock=lambda: now[0]))
    n1 = ref.pairs["stage1"]
    assert n1 == 2 * 8 + 2 * 16 and ref.pairs["rerank"] == 28 + 120
    budget = (n1 + 28 + 30) / 0.99  # the deadline keeps 20 s + 1% back for writing the result
    now[0] = 0.0
    deadline = Deadline(budget, clock=lambda: now[0])
    res = timed_engine("cut").run(layout.load(root), settings, deadline)
    assert res.pairs["stage1"] == n1 and res.pairs["rerank"] == 28
    assert res.cut == ["re-rank"] and any("before scenario large" in t for t in deadline.tripped)
    plain = engine(tmp_path, "ref", stage2="none").run(layout.load(root), CascadeSettings(k1=10_000))
    for qid, q in res.queries.items():
        assert (q.rr is not None) == (q.scenario == "small")
        expected = (ref if q.scenario == "small" else plain).submission
        pd.testing.assert_frame_equal(res.submission[res.submission["query_id"] == qid].reset_index(drop=True),
                                      expected[expected["query_id"] == qid].reset_index(drop=True))
