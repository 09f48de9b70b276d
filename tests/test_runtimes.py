"""Where the feature network runs (``--runtime``): which runtime a run takes, that ONNX Runtime's DISK agrees with
PyTorch's on generated images, that their features never share a cache entry, and that a broken export is
made again."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from matcher import cache, presets
from matcher.errors import ConfigError
from matcher.features import runtimes

ort = pytest.importorskip("onnxruntime")


def test_which_runtime_a_run_takes(monkeypatch, caplog):
    assert runtimes.resolve("auto", "cpu", "disk") == "onnxruntime"
    assert runtimes.resolve("auto", "cpu", "sift") == "torch" and runtimes.resolve("auto", "cpu", "aliked") == "torch"
    assert runtimes.resolve("auto", "cuda", "disk") == "torch"  # the GPU path is unchanged
    assert runtimes.resolve("torch", "cpu", "disk") == "torch"
    if runtimes.installed("openvino"):
        with caplog.at_level(logging.WARNING, logger="matcher.features.runtimes"):
            assert runtimes.resolve("openvino", "cpu", "disk") == "openvino" and not caplog.records
            assert runtimes.resolve("openvino-bf16", "cpu", "disk") == "openvino-bf16"
        assert any("agreement checks" in r.getMessage() for r in caplog.records)  # bf16 is asked for knowingly
        caplog.clear()
    with pytest.raises(ConfigError, match="runs on the CPU"):
        runtimes.resolve("onnxruntime", "cuda:0", "disk")
    with pytest.raises(ConfigError, match="only disk has an exported network"):
        runtimes.resolve("onnxruntime", "cpu", "aliked")
    monkeypatch.setattr(runtimes, "installed", lambda name: False)
    with pytest.raises(ConfigError, match=r"not installed: pip install 'whalematch\[fast\]'"):
        runtimes.resolve("onnxruntime", "cpu", "disk")
    with caplog.at_level(logging.INFO, logger="matcher.features.runtimes"):
        assert runtimes.resolve("auto", "cpu", "disk") == "torch"  # falls back, in one line
    assert [r.getMessage() for r in caplog.records if "ONNX Runtime is not installed" in r.getMessage()]
    with pytest.raises(ValueError, match="choose one of auto, torch, onnxruntime, openvino, openvino-bf16"):
        runtimes.parse("openvino-int8")
    assert runtimes.parse(" OpenVINO-bf16 ") == "openvino-bf16"
    with pytest.raises(ConfigError, match="runs on the CPU"):
        runtimes.resolve("openvino-bf16", "cuda", "disk")


def test_runtimes_never_share_a_cache_entry():
    conf = presets.resolve("disk-mnn")
    assert cache.feature_key(conf) == cache.feature_key(conf, "torch")  # PyTorch's keys stay what they were
    assert cache.feature_key(conf, "onnxruntime") != cache.feature_key(conf)
    assert cache.verdict_key(conf, "onnxruntime") != cache.verdict_key(conf)
    keys = {r: cache.feature_key(conf, r) for r in runtimes.RUNTIMES if r != "auto"}
    assert len(set(keys.values())) == len(keys)  # each runtime and precision its own entry
    assert cache.provenance(conf, "openvino-bf16")["runtime"]["precision"] == "bf16"
    assert cache.provenance(conf, "openvino")["runtime"]["precision"] == "fp32"
    # the models fitted on the settings stay valid
    assert presets.verdict_settings_key(conf) == presets.verdict_settings_key(presets.resolve("disk-mnn"))


@pytest.fixture(scope="module")
def disk_pair():
    """DISK under both runtimes (skipped without its weights) and generated images."""
    from conftest import textured_image, warp_affine

    from matcher.errors import WeightsError
    from matcher.features import extractors
    from matcher.io import weights

    conf = presets.resolve("disk-mnn")["extractor"]
    try:
        weights.find(f"disk-{conf['weights']}-save.pth")
    except WeightsError as exc:
        pytest.skip(f"DISK weights not installed ({exc})")
    imgs = [textured_image(70 + k, (320, 128)) for k in range(3)] + [warp_affine(textured_image(70), 6, 0.9)[0]]
    return extractors.build(conf, "cpu"), conf, imgs


def test_onnx_runtime_disk_agrees_with_pytorch(disk_pair, tmp_path):
    from matcher.features import extractors

    torch_ex, conf, imgs = disk_pair
    onnx_ex = extractors.build({**conf, "runtime": "onnxruntime"}, "cpu", export_dir=tmp_path)
    assert onnx_ex.batch_size == 1
    for img in imgs:
        a, b = torch_ex.extract([img])[0], onnx_ex.extract([img])[0]
        ka = {tuple(k) for k in np.round(a["keypoints"], 3)}
        kb = {tuple(k) for k in np.round(b["keypoints"], 3)}
        assert len(ka & kb) >= 0.98 * len(ka) and abs(len(ka) - len(kb)) <= 0.02 * len(ka)
        both = {tuple(k): i for i, k in enumerate(np.round(b["keypoints"], 3))}
        pairs = [(i, both[tuple(k)]) for i, k in enumerate(np.round(a["keypoints"], 3)) if tuple(k) in both]
        da = a["descriptors"][[i for i, _ in pairs]].astype(np.float32)
        db = b["descriptors"][[j for _, j in pairs]].astype(np.float32)
        assert np.min(np.sum(da * db, axis=1)) > 0.999  # the same descriptors, up to float16 rounding
        sa, sb = a["scores"][[i for i, _ in pairs]], b["scores"][[j for _, j in pairs]]
        assert np.abs(sa - sb).max() < 0.002 * np.abs(sa).max() + 0.02  # detection scores (about 0 to 60)
    exports = list(tmp_path.glob("*.onnx"))
    assert len(exports) == 1 and exports[0].with_suffix(".json").is_file()  # exported once, kept


def test_onnx_runtime_takes_several_images_at_once_with_the_same_features(disk_pair, tmp_path, monkeypatch):
    """Several images at once, each on its own single-threaded session, give the features of one image a call
    on a two-threaded session (the cache key does not change with it); sessions are kept, not made per call."""
    from matcher.features import extractors
    from matcher.io import device as devices

    _, conf, imgs = disk_pair
    monkeypatch.setattr(devices, "cpu_workers", lambda requested=None: 2)
    ex = extractors.build({**conf, "runtime": "onnxruntime"}, "cpu", export_dir=tmp_path)
    assert (ex.parallel, ex.network_threads) == (2, 1)
    together = ex.extract(imgs) + ex.extract(imgs)
    assert ex._made <= 2  # one session per image at once, kept between calls
    alone = [ex.extract([img])[0] for img in imgs]  # a lone image: one session on both cores
    assert ex._made <= 3
    for a, b in zip(alone + alone, together):
        for key in ("keypoints", "descriptors", "scores"):
            np.testing.assert_array_equal(a[key], b[key])


def _agreement(a: dict, b: dict) -> tuple[float, float, float]:
    """Share of ``a``'s keypoints that ``b`` has at the same place (to 1e-3 px), the least cosine of their
    descriptors there, and the share ``b`` has within 1 px."""
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(b["keypoints"]).query(a["keypoints"])
    exact = dist <= 1e-3
    da, db = a["descriptors"][exact].astype(np.float32), b["descriptors"][idx[exact]].astype(np.float32)
    return float(exact.mean()), float(np.sum(da * db, axis=1).min()), float((dist <= 1.0).mean())


def test_openvino_disk_agrees_with_pytorch(disk_pair, tmp_path):
    """OpenVINO in float32: PyTorch's keypoints and descriptors; in bf16 (where the CPU computes it) most keypoints
    found again within a pixel, not all at the same place: what ``make bench`` measures on real photos (and why
    bf16 is not the default). Both precisions share one export, never their features."""
    ov = pytest.importorskip("openvino")
    from matcher.features import extractors

    torch_ex, conf, imgs = disk_pair
    fp32 = extractors.build({**conf, "runtime": "openvino"}, "cpu", export_dir=tmp_path)
    bf16 = extractors.build({**conf, "runtime": "openvino-bf16"}, "cpu", export_dir=tmp_path)
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    for img in imgs:
        a, b, c = torch_ex.extract([img])[0], fp32.extract([img])[0], bf16.extract([img])[0]
        same_place, least, _ = _agreement(a, b)
        assert same_place >= 0.98 and least > 0.999 and abs(len(a["keypoints"]) - len(b["keypoints"])) <= 5
        same_place, _, within_1px = _agreement(a, c)
        assert within_1px >= 0.8 and abs(len(c["keypoints"]) - len(a["keypoints"])) <= 0.05 * len(a["keypoints"])
        if has_bf16:
            assert same_place < 0.99  # bf16's own features, not float32's
    assert len(list(tmp_path.glob("*.onnx"))) == 1  # one export for both precisions


def test_a_broken_export_is_made_again(disk_pair, tmp_path, caplog):
    from matcher.features import extractors

    _, conf, imgs = disk_pair
    first = extractors.build({**conf, "runtime": "onnxruntime"}, "cpu", export_dir=tmp_path).extract(imgs[:1])[0]
    (export,) = tmp_path.glob("*.onnx")
    export.write_bytes(export.read_bytes()[:1000])  # cut short
    with caplog.at_level(logging.WARNING, logger="matcher.features.runtimes"):
        again = extractors.build({**conf, "runtime": "onnxruntime"}, "cpu", export_dir=tmp_path).extract(imgs[:1])[0]
    assert any("unusable" in r.getMessage() and "exporting it again" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(first["keypoints"], again["keypoints"])
