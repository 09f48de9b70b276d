"""Issue 6, item 2: a run killed at any moment resumes from its caches, redoes nothing finished,
and writes the identical submission; corrupt cache entries are dropped and recomputed.

Every run here is a real subprocess of main.py (``sift-mnn``, no time budget so no deadline
can change an answer). Kills are SIGKILL: either armed inside the process at an exact point
(``tests/faultdata.py SPEC -- ...``: after the N-th feature file, halfway through writing one,
inside an SQLite transaction, halfway through writing the submission, just before its rename),
or sent from outside once the cache folder shows a given state. Work done is read from the
summary line main.py prints: "N images (... X extracted), M pairs (Y verified now)".
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from faultdata import clean_folder

PRESET = "sift-mnn"
HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "WHALEMATCH_TIME_BUDGET": "none", "WHALEMATCH_STAGE2": "none", "PYTHONUNBUFFERED": "1"}


def command(data: Path, out: Path, cache: Path, spec: str | None = None) -> list[str]:
    args = ["--data-dir", str(data), "--output", str(out), "--cache-dir", str(cache), "--preset", PRESET, "--quiet"]
    if spec:
        return [sys.executable, str(HERE / "faultdata.py"), spec, "--", *args]
    return [sys.executable, str(REPO / "main.py"), *args]


def run(data: Path, out: Path, cache: Path, spec: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command(data, out, cache, spec), capture_output=True, text=True, timeout=600, env=ENV)


def work_done(stderr: str) -> tuple[int, int, int]:
    """(features extracted, pairs, pairs verified) from main.py's summary line."""
    m = re.search(r"(\d+) extracted\), (\d+) pairs \((\d+) verified now\)", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def feature_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("features/*/*/*.npz"))


def temp_files(*folders: Path) -> list[Path]:
    return sorted(p for f in folders for p in f.rglob("*.tmp"))


def stored_verdicts(cache: Path) -> int:
    db = cache / "pairs.sqlite"
    if not db.exists():
        return 0
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute("SELECT count(*) FROM verdicts").fetchone()[0]
    except sqlite3.OperationalError:  # the killed run died before creating the table
        return 0
    finally:
        conn.close()


class Reference:
    def __init__(self, root: Path):
        self.folder = clean_folder(root / "data", n_whales=12)
        self.data = self.folder.root
        self.cache = root / "cache"
        self.out = root / "reference.csv"
        res = run(self.data, self.out, self.cache)
        assert res.returncode == 0, res.stderr
        self.extracted, self.pairs, self.verified = work_done(res.stderr)
        self.bytes = self.out.read_bytes()


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Reference:
    """An undisturbed run from an empty cache: its submission and the work it did."""
    r = Reference(tmp_path_factory.mktemp("interrupt"))
    assert r.extracted == 24 and r.verified == r.pairs > 0
    return r


def resume_and_check(ref: Reference, out: Path, cache: Path) -> str:
    """Run again on what the killed run left: nothing finished is redone, the output is identical."""
    features_left, verdicts_left = len(feature_files(cache)), stored_verdicts(cache)
    res = run(ref.data, out, cache)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "corrupt" not in res.stderr, res.stderr
    extracted, pairs, verified = work_done(res.stderr)
    assert extracted == ref.extracted - features_left
    assert pairs == ref.pairs and verified == ref.pairs - verdicts_left
    assert out.read_bytes() == ref.bytes
    assert len(feature_files(cache)) == ref.extracted and stored_verdicts(cache) == ref.pairs
    return res.stderr


OLD_SUBMISSION = b"query_id,database_image_id,score\nold,old,0.500000\n"


# Feature files are written from a pool of two threads, so the file count at the moment of death is
# known to within the one write the other thread may have in flight (or may have finished).
@pytest.mark.parametrize(
    "spec, features_after, verdicts_after, temp_left",
    [
        ("feature-put:5", (5, 6), 0, None),  # killed right after the 5th feature file was renamed into place
        ("feature-write:7", (5, 7), 0, True),  # killed halfway through writing the 7th: only its temporary file
        ("pair-commit:1", (24, 24), "some", False),  # killed right after the first verdict transaction committed
        ("pair-midtx:1", (24, 24), 0, False),  # killed inside the first transaction, rows written: none kept
        ("submission-write:1", (24, 24), "all", True),  # killed halfway through writing the submission's temp file
        ("submission-rename:1", (24, 24), "all", True),  # submission complete in its temporary file, not renamed
    ],
)
def test_sigkill_at_a_point_then_resume_is_identical(ref, tmp_path, spec, features_after, verdicts_after, temp_left):
    cache, out = tmp_path / "cache", tmp_path / "out" / "submission.csv"
    out.parent.mkdir()
    out.write_bytes(OLD_SUBMISSION)  # a previous run's file: untouched until a complete, valid one replaces it
    killed = run(ref.data, out, cache, spec)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert out.read_bytes() == OLD_SUBMISSION
    assert features_after[0] <= len(feature_files(cache)) <= features_after[1]
    rows = stored_verdicts(cache)
    if verdicts_after == "some":
        assert 0 < rows <= ref.pairs
    elif verdicts_after == "all":
        assert rows == ref.pairs
    else:
        assert rows == verdicts_after
    if temp_left is not None:
        assert bool(temp_files(cache, out.parent)) == temp_left
    for entry in feature_files(cache):  # every entry under its real name is complete
        with np.load(entry) as f:
            assert len(f["keypoints"]) == len(f["descriptors"]) > 0
    resume_and_check(ref, out, cache)


def test_killed_again_and_again_loses_nothing(ref, tmp_path):
    """One cache through four kills at different stages, then a clean finish."""
    cache, out = tmp_path / "cache", tmp_path / "submission.csv"
    extracted_by_kills = []
    for spec in ("feature-put:3", "feature-write:4", "pair-midtx:1", "pair-commit:1"):
        before = len(feature_files(cache))
        assert run(ref.data, out, cache, spec).returncode == -signal.SIGKILL, spec
        extracted_by_kills.append(len(feature_files(cache)) - before)
    # each run went on from where the last one stopped (an entry written by the second I/O thread may add one)
    assert 3 <= extracted_by_kills[0] <= 4 and 2 <= extracted_by_kills[1] <= 5
    assert sum(extracted_by_kills) == ref.extracted
    assert 0 < stored_verdicts(cache) <= ref.pairs
    resume_and_check(ref, out, cache)


def _kill_when(cmd: list[str], condition, poll_s: float = 0.005) -> bool:
    """Start ``cmd``; SIGKILL it as soon as ``condition()`` holds. True if it was killed, False if it ended first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        while proc.poll() is None:
            if condition():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(poll_s)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("moment", ["half the feature files", "first verdicts stored"])
def test_sigkill_from_outside_then_resume_is_identical(ref, tmp_path, moment):
    """SIGKILL sent by another process when the cache shows a state (the moment varies run to run;
    whatever it is, the resumed run redoes nothing stored and writes the identical submission)."""
    cache, out = tmp_path / "cache", tmp_path / "submission.csv"
    conditions = {
        "half the feature files": lambda: len(feature_files(cache)) >= ref.extracted // 2,
        "first verdicts stored": lambda: _safe_count(cache) > 0,
    }
    killed = _kill_when(command(ref.data, out, cache), conditions[moment])
    if killed:
        assert not out.exists() or out.read_bytes() == ref.bytes
    resume_and_check(ref, out, cache)


def _safe_count(cache: Path) -> int:
    try:
        return stored_verdicts(cache)
    except sqlite3.Error:
        return 0


# -------------------------------------------------------------------- corrupt cache entries


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "flipped-byte":  # caught by the zip member's CRC-32
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :])
    elif how == "wrong-shapes":
        np.savez(path, keypoints=np.zeros((5, 3), np.float32), descriptors=np.zeros((4, 128), np.float16),
                 scores=np.zeros(5, np.float32), size=np.array([10, 10], np.int32))
    elif how == "missing-field":
        np.savez(path, keypoints=np.zeros((5, 2), np.float32))
    elif how == "pickled-object":
        np.savez(path, keypoints=np.array([{"x": 1}], dtype=object), descriptors=np.zeros((1, 128)),
                 scores=np.zeros(1), size=np.array([10, 10]))
    elif how == "nan-keypoints":
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        arrays["keypoints"][0, 0] = np.nan
        np.savez(path, **arrays)
    else:
        raise ValueError(how)


CORRUPTIONS = ["truncated", "empty", "garbage", "flipped-byte", "wrong-shapes", "missing-field", "pickled-object",
               "nan-keypoints"]


def test_corrupt_feature_entries_are_dropped_and_recomputed(ref, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "submission.csv"
    shutil.copytree(ref.cache, cache)
    entries = feature_files(cache)
    damaged = dict(zip(CORRUPTIONS, entries[: len(CORRUPTIONS)]))
    for how, path in damaged.items():
        _corrupt(path, how)
    assert len(feature_files(cache)) == ref.extracted
    res = run(ref.data, out, cache)
    assert res.returncode == 0, res.stderr
    for how, path in damaged.items():
        pattern = rf"feature cache entry \S*{path.name} is corrupt .*; dropping it and recomputing"
        assert re.search(pattern, res.stderr), how
    extracted, _, verified = work_done(res.stderr)
    assert extracted == len(CORRUPTIONS) and verified == 0  # only the damaged entries; verdicts still stand
    assert out.read_bytes() == ref.bytes
    for path in damaged.values():  # recomputed entries are valid again
        with np.load(path) as f:
            assert len(f["keypoints"]) == len(f["descriptors"]) > 0 and np.isfinite(f["keypoints"]).all()


def _damage_store(db: Path, how: str) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, so damage to it matters
    conn.close()
    data = db.read_bytes()
    assert len(data) > 4 * 4096
    if how == "garbage":
        db.write_bytes(os.urandom(len(data)))
    elif how == "truncated":
        db.write_bytes(data[: len(data) // 2])
    elif how == "zeroed-middle":
        db.write_bytes(data[:4096] + b"\0" * (len(data) - 8192) + data[-4096:])
    elif how == "garbled-cells":  # the b-tree pages stand (counting them works), the records in them do not
        damaged = bytearray(data)
        for page in range(1, len(data) // 4096):
            start = page * 4096
            if damaged[start] == 0x0A:  # a leaf page of the (WITHOUT ROWID) table
                damaged[start + 2600 : start + 3900] = b"\xff" * 1300
        db.write_bytes(bytes(damaged))
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["garbage", "garbled-cells"])
def test_corrupt_pair_store_is_moved_aside_and_rebuilt(ref, tmp_path, how):
    """Garbage is found on opening; garbled records only once the store is read, in the middle of the run."""
    cache, out = tmp_path / "cache", tmp_path / "submission.csv"
    shutil.copytree(ref.cache, cache)
    _damage_store(cache / "pairs.sqlite", how)
    res = run(ref.data, out, cache)
    assert res.returncode == 0, res.stderr
    assert re.search(r"pair cache \S*pairs.sqlite is unreadable .*moving it to \S*pairs.sqlite.corrupt and "
                     r"starting afresh", res.stderr), res.stderr
    assert (cache / "pairs.sqlite.corrupt").exists()
    extracted, pairs, verified = work_done(res.stderr)
    assert extracted == 0 and verified == pairs == ref.pairs
    assert out.read_bytes() == ref.bytes
    assert stored_verdicts(cache) == ref.pairs
    if how == "garbage":
        again = run(ref.data, out, cache)  # and the rebuilt store serves the next run
        assert work_done(again.stderr) == (0, ref.pairs, 0) and out.read_bytes() == ref.bytes


@pytest.mark.parametrize("first", ["count", "get_many"])
@pytest.mark.parametrize("how", ["garbage", "truncated", "zeroed-middle", "garbled-cells"])
def test_damaged_pair_store_is_detected_in_use(tmp_path, caplog, how, first):
    """Damage found when opening, or only when reading, is reported; the store starts afresh and works."""
    from matcher.pairs.store import VerdictStore

    db = tmp_path / "pairs.sqlite"
    verdict = {"n_matches": 9, "n_inliers": 7, "strength": 7.5, "score": 0.27, "model": [1.0, 0, 0, 0, 1.0, 0],
               "evidence": {"n_inliers": 7.0, "hull_area_min": 0.125, "residual_mean": 0.5}}
    pairs = [(f"{i:064x}", f"{i + 1:064x}") for i in range(2000)]
    store = VerdictStore(db, "s")
    store.put_many({p: verdict for p in pairs})
    store.close()
    _damage_store(db, how)
    store = VerdictStore(db, "s")
    if how == "garbled-cells":  # nothing wrong is seen on opening: it is found in use
        assert store.on_disk and "is unreadable" not in caplog.text
    if first == "count":
        assert store.count() == 0
    found = store.get_many(pairs)
    assert "is unreadable" in caplog.text and "starting afresh" in caplog.text
    assert found == {}  # never a partial or garbled answer
    assert (tmp_path / "pairs.sqlite.corrupt").exists()
    store.put_many({pairs[0]: verdict})
    assert store.get_many([pairs[0]]) == {pairs[0]: verdict} and store.count() == 1 and store.on_disk


def test_foreign_files_in_the_cache_are_ignored(ref, tmp_path):
    """Temporary files of killed runs, and stray files, are never read as entries."""
    cache, out = tmp_path / "cache", tmp_path / "submission.csv"
    shutil.copytree(ref.cache, cache)
    entry = feature_files(cache)[0]
    (entry.parent / f".{entry.name}.abc123.npz.tmp").write_bytes(b"half a file")
    with zipfile.ZipFile(entry.parent / "notes.zip", "w") as z:
        z.writestr("x.txt", "not an entry")
    res = run(ref.data, out, cache)
    assert res.returncode == 0 and "corrupt" not in res.stderr
    assert work_done(res.stderr) == (0, ref.pairs, 0) and out.read_bytes() == ref.bytes
