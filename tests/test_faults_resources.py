"""Issue 6, item 3: resource faults. A CUDA out-of-memory error splits the batch, then falls back
to the CPU for one image; no GPU at all works; a cache that cannot be written (disk full,
read-only, a path through a file) is reported and the run goes on without caching, with the
same submission; an output that cannot be written is reported and leaves the old file."""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import load_main, run_main
from faultdata import clean_folder

from matcher import presets
from matcher.challenge import layout, submission
from matcher.challenge.run import rank_scenarios
from matcher.engine import Engine
from matcher.features import extractors as features
from matcher.io import array_store, atomic, device

PRESET = "sift-mnn"
ENV = {**os.environ, "WHALEMATCH_TIME_BUDGET": "none", "WHALEMATCH_STAGE2": "none"}


# ---------------------------------------------------------------- CUDA out of memory


class FakeGpuExtractor(features.Extractor):
    """Runs "on CUDA" only batches of one image narrower than ``fits``; a bigger request raises
    the error torch raises. Each image's feature is its mean colour, so the order can be checked."""

    def __init__(self, fits: int = 10_000, error=RuntimeError):
        # built for the CPU (no CUDA here to size batches from), then told it runs on "cuda"
        super().__init__({"target_area": 64 * 64, "max_upscale": 1.0, "multiple": 1, "max_keypoints": 1}, "cpu",
                         batch_size=8)
        self.device = "cuda"
        self.fits = fits
        self.error = error
        self.calls: list[tuple[str, int]] = []

    def _run(self, batch, device, n=None):
        self.calls.append((device, len(batch)))
        if device.startswith("cuda") and (len(batch) > 1 or batch[0].shape[1] > self.fits):
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity)")
        return [{"keypoints": np.array([[float(img.mean()), 0.0]], np.float32),
                 "descriptors": np.ones((1, 128), np.float32), "scores": np.ones(1, np.float32)} for img in batch]


def _batch(n: int, widths=None) -> list[np.ndarray]:
    widths = widths or [32] * n
    return [np.full((32, w, 3), 10 * (i + 1), np.uint8) for i, w in enumerate(widths)]


@pytest.mark.parametrize("error", [RuntimeError, "torch.OutOfMemoryError"])
def test_oom_splits_the_batch_until_it_fits(caplog, error):
    if error == "torch.OutOfMemoryError":
        import torch

        error = torch.OutOfMemoryError
    ex = FakeGpuExtractor(error=error)
    batch = _batch(5)
    with caplog.at_level(logging.WARNING):
        out = ex._run_safely(batch, "cuda")
    assert [f["keypoints"][0, 0] for f in out] == [10.0, 20.0, 30.0, 40.0, 50.0]  # every image, in order
    assert ex.calls == [("cuda", 5), ("cuda", 2), ("cuda", 1), ("cuda", 1), ("cuda", 3), ("cuda", 1), ("cuda", 2),
                        ("cuda", 1), ("cuda", 1)]
    assert "GPU out of memory on a batch of 5; splitting it" in caplog.text
    assert all(dev == "cuda" for dev, _ in ex.calls)  # nothing went to the CPU: every single image fitted


def test_oom_on_a_single_image_falls_back_to_the_cpu_for_that_image(caplog):
    ex = FakeGpuExtractor(fits=40)
    batch = _batch(3, widths=[32, 64, 32])
    with caplog.at_level(logging.WARNING):
        out = ex._run_safely(batch, "cuda")
    assert [f["keypoints"][0, 0] for f in out] == [10.0, 20.0, 30.0]
    assert [c for c in ex.calls if c[0] == "cpu"] == [("cpu", 1)]  # only the image that did not fit
    assert "GPU out of memory on one 64x32 image; extracting it on the CPU" in caplog.text


def test_oom_through_extract_keeps_every_image_and_its_order():
    ex = FakeGpuExtractor(fits=40)
    imgs = _batch(6, widths=[32, 64, 32, 32, 64, 32])
    out = ex.extract(imgs)
    assert [float(f["keypoints"][0, 0]) for f in out] == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert [f["size"].tolist() for f in out] == [[w, 32] for w in [32, 64, 32, 32, 64, 32]]
    assert sum(1 for dev, _ in ex.calls if dev == "cpu") == 2


def test_other_errors_are_not_mistaken_for_oom():
    ex = FakeGpuExtractor()

    def boom(batch, device, n=None):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")

    ex._run = boom
    with pytest.raises(RuntimeError, match="CUDNN_STATUS_INTERNAL_ERROR"):
        ex._run_safely(_batch(2), "cuda")
    cpu = FakeGpuExtractor()
    cpu._run = lambda batch, device, n=None: (_ for _ in ()).throw(RuntimeError("out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):  # on the CPU there is nowhere to fall back to
        cpu._run_safely(_batch(2), "cpu")


# ---------------------------------------------------------------- no GPU


def test_no_gpu_at_all_picks_the_cpu(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("WHALEMATCH_DEVICE", raising=False)
    assert device.pick(None) == "cpu" and device.pick("auto") == "cpu"
    folder = clean_folder(tmp_path / "data", n_whales=2)
    engine = Engine(PRESET, tmp_path / "cache", None, progress=False)
    assert engine.device == "cpu"
    sub, expected = rank_scenarios(layout.load(folder.root), engine)
    submission.validate(sub, expected)
    assert sub.groupby("query_id").first().loc["all-w0a", "database_image_id"] == "w0b"
    for name in ("current_device", "get_device_properties", "set_per_process_memory_fraction", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: pytest.fail("CUDA touched on a CPU-only run"))
    for preset in ("disk-mnn", "aliked-mnn", PRESET):
        ex = features.build(presets.resolve(preset)["extractor"], engine.device)
        assert ex.device == "cpu" and ex.batch_size >= 1


def test_cuda_requested_without_a_gpu_is_a_clear_error(monkeypatch, tmp_path, capsys, restore_logging):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1", "tpu"):
        with pytest.raises(device.DeviceError, match=re.escape(repr(name))):
            device.pick(name)
    folder = clean_folder(tmp_path / "data", n_whales=2)
    rc = load_main().main(["--data-dir", str(folder.root), "--output", str(tmp_path / "s.csv"), "--no-cache",
                            "--preset", PRESET, "--device", "cuda", "--quiet"])
    assert rc == 2
    assert "device 'cuda' requested but this machine has no usable CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_an_image_the_extractor_fails_on_is_ranked_around(monkeypatch, tmp_path, caplog):
    """A network error on one image (not out of memory) costs that image only: its batch is retried image by
    image, it is reported with its file name, and every other image is extracted and ranked."""
    from matcher.io import images

    folder = clean_folder(tmp_path / "data", n_whales=4)
    poisoned = folder.root / "images" / "w1b.jpg"
    real_load = images.load
    marker = np.zeros((37, 41, 3), np.uint8)  # what the poisoned file "decodes" to
    monkeypatch.setattr(images, "load", lambda path, *a: marker if Path(path) == poisoned else real_load(path, *a))
    engine = Engine(PRESET, tmp_path / "cache", "cpu", progress=False)
    extractor = features.EXTRACTOR_CLASSES[engine.conf["extractor"]["model"]]
    real_extract = extractor.extract
    batches = []

    def extract(self, batch):
        batches.append(len(batch))
        if any(img is marker for img in batch):
            raise ValueError("a layer failed on this input")
        return real_extract(self, batch)

    monkeypatch.setattr(extractor, "extract", extract)
    with caplog.at_level(logging.WARNING):
        sub, expected = rank_scenarios(layout.load(folder.root), engine)
    submission.validate(sub, expected)
    assert max(batches) > 1 and batches.count(1) >= 2  # the failing batch was retried one image at a time
    assert engine.stats.features_extracted == len(list((folder.root / "images").glob("*.jpg"))) - 1
    assert (sub.loc[sub["database_image_id"] == "w1b", "score"] == 0).all()  # ranked around, after the evidence
    assert re.search(r"w1b\.jpg: feature extraction failed \(ValueError: a layer failed on this input\)", caplog.text)
    assert sub.groupby("query_id").first().loc["all-w0a", "database_image_id"] == "w0b"


# ---------------------------------------------------------------- caches that cannot be written


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A clean folder and its submission from a run without any cache (the reference)."""
    root = tmp_path_factory.mktemp("res")
    folder = clean_folder(root / "data", n_whales=4)
    sub, expected = rank_scenarios(layout.load(folder.root), Engine(PRESET, None, "cpu", progress=False))
    return folder.root, sub, expected


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _erofs(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


@pytest.mark.parametrize("fault", ["savez ENOSPC", "rename EROFS", "mkstemp EDQUOT"])
def test_feature_cache_full_or_read_only_is_reported_and_the_run_goes_on(small, tmp_path, monkeypatch, caplog, fault):
    root, ref, _ = small
    if fault == "savez ENOSPC":
        monkeypatch.setattr(array_store.np, "savez", _enospc)
        reason = "No space left on device"
    elif fault == "rename EROFS":
        real_replace = os.replace

        def replace(src, dst):  # only feature files fail to land; the verdict store is not affected
            if str(dst).endswith(".npz"):
                _erofs()
            return real_replace(src, dst)

        monkeypatch.setattr(atomic.os, "replace", replace)
        reason = "Read-only file system"
    else:
        def mkstemp(*args, **kwargs):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

        monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
        reason = "Disk quota exceeded"
    cache = tmp_path / "cache"
    engine = Engine(PRESET, cache, "cpu", progress=False)
    with caplog.at_level(logging.WARNING):
        sub, expected = rank_scenarios(layout.load(root), engine)
    warnings = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()]
    assert len(warnings) == 1, warnings  # reported once, not once per image
    assert re.search(rf"feature cache at \S+ is not writable \(.*{reason}.*\); continuing without caching features",
                     warnings[0]), warnings[0]
    assert sub.equals(ref)
    assert engine.stats.features_extracted == 8
    assert not list(cache.rglob("*.npz")) and not list(cache.rglob("*.tmp"))  # nothing half-written left behind
    submission.validate(sub, expected)


def test_verdict_store_full_is_reported_and_the_run_goes_on(small, tmp_path, caplog):
    """A real SQLITE_FULL: the store may not grow past its current size (PRAGMA max_page_count)."""
    root, ref, _ = small
    engine = Engine(PRESET, tmp_path / "cache", "cpu", progress=False)
    conn = engine.verifier().store.conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with caplog.at_level(logging.WARNING):
        sub, _ = rank_scenarios(layout.load(root), engine)
    assert re.search(r"cannot write to pair cache \S+pairs\.sqlite \(database or disk is full\); "
                     r"continuing without caching verdicts", caplog.text), caplog.text
    assert caplog.text.count("cannot write to pair cache") == 1
    assert sub.equals(ref)
    assert engine.stats.pairs_verified == engine.stats.pairs > 0


def test_feature_entries_still_read_when_the_cache_cannot_be_written(small, tmp_path, monkeypatch, caplog):
    root, ref, _ = small
    cache = tmp_path / "cache"
    rank_scenarios(layout.load(root), Engine(PRESET, cache, "cpu", progress=False))
    monkeypatch.setattr(array_store.np, "savez", _enospc)
    engine = Engine(PRESET, cache, "cpu", progress=False)
    sub, _ = rank_scenarios(layout.load(root), engine)
    assert engine.stats.features_extracted == 0 and engine.stats.pairs_verified == 0 and sub.equals(ref)


def test_cache_path_through_a_regular_file(small, tmp_path):
    """Works as root too (unlike chmod): nothing can be created under a file."""
    root, ref, expected = small
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    out = tmp_path / "submission.csv"
    res = run_main(root, out, blocker / "cache", "--rerank", "none", preset=PRESET, env=ENV)  # as the reference
    assert res.returncode == 0, res.stderr
    assert re.search(r"feature cache at \S+ is not writable \(.*Not a directory.*\); continuing without caching",
                     res.stderr), res.stderr
    assert re.search(r"pair cache \S+pairs\.sqlite cannot be opened \(.*Not a directory.*\); keeping verdicts in "
                     r"memory only", res.stderr), res.stderr
    assert "Traceback" not in res.stderr
    m = re.search(r"(\d+) extracted\), (\d+) pairs \((\d+) verified now\)", res.stderr)
    assert m and int(m.group(1)) == 8 and int(m.group(2)) == int(m.group(3)) > 0
    import pandas as pd

    sub = pd.read_csv(out, dtype={"query_id": str, "database_image_id": str})
    submission.validate(sub, expected)
    assert sub[["query_id", "database_image_id"]].equals(ref[["query_id", "database_image_id"]].reset_index(drop=True))
    assert np.allclose(sub["score"], ref["score"].astype(float), atol=1e-6)
    assert blocker.read_text() == "a file where the cache folder should be"


# ---------------------------------------------------------------- the output cannot be written


def test_output_disk_full_is_reported_and_the_old_file_kept(small, tmp_path, monkeypatch, capsys, restore_logging):
    root, _, _ = small
    out = tmp_path / "out" / "submission.csv"
    out.parent.mkdir()
    out.write_text("query_id,database_image_id,score\nold,old,0.5\n")
    monkeypatch.setenv("WHALEMATCH_TIME_BUDGET", "none")
    import pandas as pd

    real_to_csv = pd.DataFrame.to_csv

    def to_csv(self, path, *args, **kwargs):  # half the file reaches the disk, then it is full
        real_to_csv(self, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:40])
        _enospc()

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    main = load_main()
    rc = main.main(["--data-dir", str(root), "--output", str(out), "--no-cache", "--preset", PRESET, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert re.search(r"\S+submission\.csv: cannot write the submission \(No space left on device\); any previous "
                     r"file there is unchanged", err), err
    assert out.read_text() == "query_id,database_image_id,score\nold,old,0.5\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["submission.csv"]  # no temporary file left


def test_output_folder_that_is_a_file_is_reported(small, tmp_path, capsys, restore_logging, monkeypatch):
    root, _, _ = small
    (tmp_path / "out").write_text("x")
    monkeypatch.setenv("WHALEMATCH_TIME_BUDGET", "none")
    main = load_main()
    rc = main.main(["--data-dir", str(root), "--output", str(tmp_path / "out" / "s.csv"), "--no-cache", "--preset",
                    PRESET, "--quiet"])
    assert rc == 2
    assert re.search(r"out/s\.csv: cannot write the submission \(.*\)", capsys.readouterr().err)
