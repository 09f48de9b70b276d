"""Issue 15: the Ray backend on a real cluster, Ray's multi-node harness on this machine (a head without CPUs and
three worker nodes of one CPU each, every node a raylet of its own), started and stopped by this module.

What is proved: the same features, verdicts, audit tables, batch-search tables and challenge submission as the
local backend (byte for byte); the work spread over every node; a node removed mid-run costs nothing (its tasks
are submitted again, and the log says which); a driver killed mid-run is resumed from the caches with nothing
finished redone; an unreachable address, a cluster without a free CPU or without any CPU are clear errors.
Every test runs under a guard that fails it if it hangs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import ray_harness as H  # noqa: I001 - before ray: every node on the loopback address

ray = pytest.importorskip("ray", reason="the Ray backend's tests need ray: pip install 'whalematch[ray]'")

from conftest import REPO, run_main  # noqa: E402
from faultdata import clean_folder  # noqa: E402
from scenario_factory import make_whales, write_image  # noqa: E402

from matcher.backends.ray_backend import RayBackend  # noqa: E402
from matcher.curation.cli import main as whalematch  # noqa: E402
from matcher.engine import Engine  # noqa: E402
from matcher.errors import BackendError  # noqa: E402
from matcher.features.stage import mirror_key  # noqa: E402
from matcher.synthetic import warp_affine  # noqa: E402

PRESET = "sift-mnn"
ENV = {**os.environ, "WHALEMATCH_TIME_BUDGET": "none", "WHALEMATCH_STAGE2": "none", "PYTHONUNBUFFERED": "1"}
TEST_S = 600  # the guard of one test (about 40 s alone; several times that on a loaded 2-core machine)


class Harness:
    def __init__(self, cluster, nodes):
        self.cluster, self.nodes = cluster, nodes
        self.address = cluster.address


@pytest.fixture(scope="module")
def cluster():
    with H.hang_guard(600):
        c, nodes = H.start_cluster(workers=3, cpus=1)
        ray.init(address=c.address, log_to_driver=False, namespace="whalematch")
    yield Harness(c, nodes)
    ray.shutdown()
    c.shutdown()


@pytest.fixture(autouse=True)
def guard():
    with H.hang_guard(TEST_S):
        yield


@pytest.fixture(scope="module")
def whales(tmp_path_factory):
    """24 generated photos of 8 whales, with a labelled metadata CSV."""
    root = tmp_path_factory.mktemp("whales")
    meta = make_whales(root, n_whales=8, per_whale=3)
    meta.to_csv(root / "metadata.csv", index=False)
    return root, {r.image_id: root / r.path for r in meta.itertuples()}


def rows(cache: Path) -> list[tuple]:
    conn = sqlite3.connect(cache / "pairs.sqlite")
    try:
        return conn.execute("SELECT * FROM verdicts ORDER BY sha_a, sha_b, settings").fetchall()
    finally:
        conn.close()


def run_engine(backend: str, cache: Path, paths: dict, address: str | None = None, **backend_settings):
    engine = Engine(PRESET, cache, "cpu", 2, progress=False, backend=backend, ray_address=address)
    for k, v in backend_settings.items():
        setattr(engine.backend, k, v)
    shas, bad = engine.prepare(paths)
    assert not bad
    ids = sorted(shas)
    pairs = {(shas[a], shas[b]) for i, a in enumerate(ids) for b in ids[i + 1 :]}
    return engine, pairs


def test_features_and_verdicts_on_the_cluster_equal_the_local_ones(cluster, whales, tmp_path):
    _, paths = whales
    local, pairs = run_engine("local", tmp_path / "local", paths)
    local.verdicts(pairs)
    remote, pairs_r = run_engine("ray", tmp_path / "ray", paths, cluster.address)
    assert pairs_r == pairs and remote.stats.features_extracted == len(paths)
    remote.verdicts(pairs)
    assert remote.verified() == len(pairs) == 276
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")  # every verdict, evidence included, bit for bit
    files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").glob("features/*/*/*.npz"))
    assert files == sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").glob("features/*/*/*.npz"))
    for f in files:
        with np.load(tmp_path / "local" / f) as a, np.load(tmp_path / "ray" / f) as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files)
    # the work went to every node, and the driver wrote everything
    work = remote.backend.work()
    assert len(work) == 3 and all(w["pairs"] > 0 for w in work.values()), work
    assert sum(w["pairs"] for w in work.values()) == len(pairs)
    assert sum(w["images"] for w in work.values()) == len(paths)
    # mirrored features (a left flank matched against the mirrored right one) come from the cluster too
    some = dict(list({sha: paths[i] for i, sha in sorted(local_shas(local, paths).items())}.items())[:5])
    local.mirrored_features(some)
    remote.mirrored_features(some)
    for sha in some:
        key = mirror_key(sha)
        assert all(np.array_equal(local.feature(key)[k], remote.feature(key)[k]) for k in local.feature(key))
        assert (remote.cache.features(remote.feature_key) / key[:2] / f"{key}.npz").is_file()  # written here
    assert sum(w["images"] for w in remote.backend.work().values()) == len(paths) + len(some)
    # resumed from the caches: nothing extracted or verified again
    again, _ = run_engine("ray", tmp_path / "ray", paths, cluster.address)
    again.verdicts(pairs)
    assert again.stats.features_extracted == 0 and again.verified() == 0


def local_shas(engine, paths: dict) -> dict:
    shas, _ = engine.hash_images(paths)
    return shas


def test_audit_and_batch_search_on_the_cluster_write_the_same_results(cluster, whales, tmp_path, capsys):
    root, paths = whales
    new = tmp_path / "new"
    for k, image_id in enumerate(["img000", "img031", "img052"]):  # new views of whales 0, 3 and 5
        from matcher.io.images import load

        write_image(new / f"new{k}.jpg", warp_affine(load(paths[image_id]), angle=3.0, scale=0.97)[0])
    out = tmp_path / "out"
    results = {}
    for backend in ("local", "ray"):
        cache = tmp_path / f"cache-{backend}"
        common = ["--preset", PRESET, "--cache-dir", str(cache), "--quiet", "--backend", backend,
                  "--ray-address", cluster.address, "--plan-nodes", "1,8"]
        assert whalematch(["audit", "--metadata", str(root / "metadata.csv"), "--out", str(out / "audit"),
                           "--pictures", "2", *common]) == 0
        assert whalematch(["search", "--batch", str(new), "--catalogue", str(root / "metadata.csv"),
                           "--out", str(out / "search"), "--top", "1", *common]) == 0
        text = capsys.readouterr().out
        results[backend] = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.csv"))}
        if backend == "ray":
            assert "plan (ray: 3 nodes, 3 CPUs)" in text and "projected wall time of the rest" in text, text
            assert re.search(r"this cluster \(3 nodes, 3 CPUs\): \d", text) and "8 nodes:" in text, text
        else:
            assert "plan (" not in text
        shutil.rmtree(out)
    assert results["ray"] == results["local"]
    assert {str(p) for p in results["ray"]} >= {"audit/isolated_images.csv", "audit/suspect_pairs.csv",
                                                "search/batch.csv", "search/new0/candidates.csv"}
    assert rows(tmp_path / "cache-ray") == rows(tmp_path / "cache-local")
    best = [line.split(",")[4] for line in results["ray"][Path("search/batch.csv")].decode().splitlines()[1:]]
    assert best[0].startswith("img00") and best[1].startswith("img03") and best[2].startswith("img05")


@pytest.fixture(scope="module")
def challenge(tmp_path_factory):
    """A challenge folder (30 whales, 60 photos; 1,770 database pairs to re-rank with) and its local submission."""
    root = tmp_path_factory.mktemp("challenge")
    data = clean_folder(root / "data", n_whales=30).root
    res = run_main(data, root / "local.csv", root / "cache-local", env=ENV)
    assert res.returncode == 0, res.stderr
    return data, (root / "local.csv").read_bytes(), rows(root / "cache-local"), work_done(res.stderr)


def work_done(stderr: str) -> tuple[int, int, int]:
    """(features extracted, pairs, pairs verified) from main.py's summary line."""
    m = re.search(r"(\d+) extracted\), (\d+) pairs \((\d+) verified now\)", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def ray_args(cluster) -> list[str]:
    return ["--backend", "ray", "--ray-address", cluster.address]


def test_main_on_the_cluster_writes_the_same_submission(cluster, challenge, tmp_path):
    data, submission, verdicts, (extracted, pairs, _) = challenge
    res = run_main(data, tmp_path / "ray.csv", tmp_path / "cache", *ray_args(cluster), env=ENV)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ray.csv").read_bytes() == submission
    assert rows(tmp_path / "cache") == verdicts
    assert work_done(res.stderr) == (extracted, pairs, pairs)
    assert "plan (ray: 3 nodes, 3 CPUs)" in res.stderr and "projected wall time of the rest" in res.stderr


def stored(cache: Path) -> int:
    try:
        conn = sqlite3.connect(cache / "pairs.sqlite", timeout=10)
        try:
            return conn.execute("SELECT count(*) FROM verdicts").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def features(cache: Path) -> int:
    return len(list(cache.glob("features/*/*/*.npz")))


@pytest.mark.parametrize("moment", ["features half extracted", "first verdicts stored"])
def test_driver_killed_mid_run_resumes_from_the_caches(cluster, challenge, tmp_path, moment):
    data, submission, verdicts, (extracted, pairs, _) = challenge
    cache, out = tmp_path / "cache", tmp_path / "ray.csv"
    cmd = [sys.executable, str(REPO / "main.py"), "--data-dir", str(data), "--output", str(out), "--cache-dir",
           str(cache), "--preset", PRESET, "--quiet", *ray_args(cluster)]
    when = {"features half extracted": lambda: features(cache) >= extracted // 2,
            "first verdicts stored": lambda: (cache / "pairs.sqlite").exists() and stored(cache) > 0}[moment]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        while proc.poll() is None and not when():
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before the moment to kill it"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    features_left, verdicts_left = features(cache), stored(cache)
    assert not out.exists() and features_left > 0 and verdicts_left < pairs
    res = run_main(data, out, cache, *ray_args(cluster), env=ENV)
    assert res.returncode == 0, res.stderr
    assert work_done(res.stderr) == (extracted - features_left, pairs, pairs - verdicts_left)  # nothing redone
    assert out.read_bytes() == submission and rows(cache) == verdicts


BLOCK = 8  # pairs per task: 35 tasks


@pytest.mark.parametrize("fault", ["node removed", "worker killed"])
def test_a_node_or_worker_lost_mid_run_loses_nothing_and_the_log_says_what_was_retried(cluster, whales, tmp_path,
                                                                                        fault):
    _, paths = whales
    local, pairs = run_engine("local", tmp_path / "local", paths)
    local.verdicts(pairs)
    engine, _ = run_engine("ray", tmp_path / "ray", paths, cluster.address, block_pairs=BLOCK)
    victim = cluster.nodes[-1]
    done = []

    def strike_once_the_first_block_is_in(kind: str, count: int, node_id: str) -> None:
        """When the first block is in, wait until the victim is running one, then remove it (or kill its worker)."""
        if kind != "pairs" or done:
            return
        pid = H.running(victim, "verify_block")
        assert pid is not None, "the victim node ran no block"
        done.append(pid)
        if fault == "node removed":
            cluster.cluster.remove_node(victim, allow_graceful=False)
        else:
            os.kill(pid, signal.SIGKILL)

    engine.backend.listeners.append(strike_once_the_first_block_is_in)
    logged: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())
    logger = logging.getLogger("matcher.backends.ray_backend")
    logger.addHandler(handler)
    try:
        engine.verdicts(pairs)
        assert done
        assert rows(tmp_path / "ray") == rows(tmp_path / "local")  # nothing lost, nothing different
        assert engine.verified() == len(pairs)
        lost = engine.backend.lost
        assert lost and all(m in logged for m in lost), (lost, logged)
        why = (rf"node 127\.0\.0\.1/{victim.node_id[:6]} (had )?left the cluster; NodeDiedError"
               if fault == "node removed" else r"its worker process died; WorkerCrashedError")
        assert re.search(rf"pair block \d+ of {-(-len(pairs) // BLOCK)} \({BLOCK} pairs from [0-9a-f]{{8}}\.\.\) "
                         rf"was lost \({why}: .*\); submitted again \(try 2 of 4\)", lost[0]), lost
        assert len(engine.backend.nodes()) == (2 if fault == "node removed" else 3)
    finally:
        logger.removeHandler(handler)
        if fault == "node removed":
            cluster.nodes[-1] = H.add_node(cluster.cluster)
            H.wait_cpus(3)


def test_bad_cluster_input_is_a_clear_error_not_a_hang(cluster, whales, tmp_path):
    root, _ = whales
    # an address nothing listens on: exit code 2 within seconds, naming the address
    address = f"127.0.0.1:{H.free_port()}"
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "matcher.curation.cli", "audit", "--metadata",
                          str(root / "metadata.csv"), "--preset", PRESET, "--cache-dir", str(tmp_path / "cache"),
                          "--backend", "ray", "--ray-address", address, "--dry-run"],
                         capture_output=True, text=True, timeout=120, env=ENV, cwd=REPO)
    assert res.returncode == 2, res.stderr
    assert f"cannot reach the Ray cluster at {address}" in res.stderr and "Traceback" not in res.stderr
    assert time.perf_counter() - t0 < 60
    # every CPU held by another job: the probes wait a little, then a clear error
    @ray.remote(num_cpus=1)
    class Hog:  # an actor holding one CPU, as another job's would (defined here: the workers cannot import tests)
        def ping(self) -> int:
            return 1

    hogs = [Hog.remote() for _ in range(3)]
    ray.get([h.ping.remote() for h in hogs])
    try:
        with pytest.raises(BackendError, match=r"no CPU of the Ray cluster at .* became free within 3 s \(3 CPUs"):
            RayBackend(cluster.address, wait_s=3)
    finally:
        for h in hogs:
            ray.kill(h)
    # a cluster without any CPU (its worker nodes gone): a clear error at once
    for node in cluster.nodes:
        cluster.cluster.remove_node(node, allow_graceful=False)
    try:
        H.wait_cpus(0)
        with pytest.raises(BackendError, match=r"has no CPU to work on \(1 node\(s\), 0 CPUs\)"):
            RayBackend(cluster.address)
    finally:
        cluster.nodes[:] = [H.add_node(cluster.cluster) for _ in range(3)]
        H.wait_cpus(3)
