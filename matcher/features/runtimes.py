"""Where a feature network runs: PyTorch (the reference), ONNX Runtime or OpenVINO on the CPU (``--runtime``).

On a CPU, DISK's U-Net is most of every job's time. ONNX Runtime and OpenVINO run the same network, exported
here from the same pretrained weights; detection and descriptor sampling stay PyTorch's own code
(:func:`dense_to_features`), so only the network's arithmetic differs. Measured side by side by ``make bench``
(benchmarks/RESULTS.md, 2 cores): extraction 1.7x PyTorch's rate with ONNX Runtime, 1.8x with OpenVINO in
float32, 3.0x with OpenVINO in bf16 (``openvino-bf16``, where the CPU has bf16 instructions).

``auto`` (the default) takes ONNX Runtime for DISK on the CPU when it is installed (``pip install
'whalematch[fast]'``; ``make install`` does), PyTorch on CUDA and for the other extractors: of the runtimes
that pass the agreement checks against PyTorch (keypoints, descriptors, verdicts on 2,000 pairs, the quick
set's mAP@20), it is the one closest to PyTorch (inliers within 2 on 95% of the pairs, OpenVINO's float32 90%)
at the same speed. ``openvino-bf16`` fails them (a keypoint in ten moves, inliers within 2 on half of the
pairs, the default ranking 0.05 lower): it is there for whoever asks for it by name, with a warning, since
the shipped ranker, pair model and calibration were fitted on float32 features.

The export is made once, offline, from the weights the preset loads, and kept in the cache
(``ROOT/exports/<key>.onnx``, shared by both runtimes) under a key of the weights' SHA-256, the exporter's
(torch) and the runtime's versions and the export settings; its own SHA-256 is kept beside it, and a file that
does not match, or that the runtime cannot load, is exported again with a warning. A runtime other than
PyTorch, with its precision, is part of the feature cache's key (:func:`provenance`): features of different
runtimes never mix.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..io import device as devices
from ..io.atomic import atomic_path

log = logging.getLogger(__name__)
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino", "openvino-bf16")
PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx"),
            "openvino-bf16": ("openvino", "onnx")}  # what each runtime needs installed (the export needs onnx)
INSTALL = "pip install 'whalematch[fast]'  (or: pip install onnxruntime openvino onnx)"
EXPORTABLE = ("disk",)  # extractors whose network can run elsewhere than PyTorch
OPSET = 17
EXPORT_SIZE = (224, 640)  # the shape traced at export (height and width stay dynamic)


def parse(text: str) -> str:
    """A runtime name as written (ValueError listing the choices otherwise)."""
    name = str(text).strip().lower()
    if name not in RUNTIMES:
        raise ValueError(f"choose one of {', '.join(RUNTIMES)}")
    return name


def installed(name: str) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in PACKAGES.get(name, ()))


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def resolve(requested: str | None, device: str, model: str) -> str:
    """The runtime a run uses (one of :data:`RUNTIMES` but ``auto``). ``auto``: ONNX Runtime for an exportable
    network (:data:`EXPORTABLE`) on the CPU when installed (else PyTorch, said in one line), PyTorch on CUDA. A
    runtime asked for by name that cannot run here is a :class:`ConfigError` saying why (and how to install it);
    one that failed the agreement checks (bf16) runs with a warning."""
    name = parse(requested or "auto")
    cuda = devices.is_cuda(device)
    if name == "torch":
        return name
    if name == "auto":
        if cuda or model not in EXPORTABLE:
            return "torch"
        if not installed("onnxruntime"):
            log.info("runtime: torch (ONNX Runtime is not installed: %s)", INSTALL)
            return "torch"
        return "onnxruntime"
    if cuda:
        raise ConfigError(f"--runtime {name} runs on the CPU; on CUDA the network runs in PyTorch (--runtime torch "
                          "or auto), or give --device cpu")
    if model not in EXPORTABLE:
        raise ConfigError(f"--runtime {name}: only {', '.join(EXPORTABLE)} has an exported network; the {model} "
                          "extractor runs in PyTorch (--runtime torch or auto)")
    if not installed(name):
        raise ConfigError(f"--runtime {name} asked for, but it is not installed: {INSTALL}")
    if precision(name) != "fp32":
        log.warning("runtime %s: its features differ from PyTorch's more than the agreement checks allow (a keypoint "
                    "in ten moves; benchmarks/RESULTS.md); the shipped ranker, pair model and calibration were "
                    "fitted on float32 features", name)
    return name


def package(runtime: str) -> str:
    """The package a runtime is (``openvino-bf16`` is OpenVINO at another precision)."""
    return runtime.split("-")[0]


def precision(runtime: str) -> str:
    """The arithmetic a runtime's network runs in: ``bf16`` for ``openvino-bf16``, else ``fp32``."""
    return "bf16" if runtime.endswith("-bf16") else "fp32"


def provenance(runtime: str) -> dict:
    """What a runtime adds to a feature cache key (nothing for PyTorch, the reference, so its keys stay)."""
    if runtime == "torch":
        return {}
    return {"runtime": {"name": runtime, "version": version(package(runtime)), "precision": precision(runtime),
                        "opset": OPSET}}


def export_key(weights_sha: str) -> str:
    """The key of an export: the weights' SHA-256, the exporter's and the runtime's versions, the settings."""
    text = json.dumps({"weights": weights_sha, "torch": version("torch"), "onnx": version("onnx"),
                       "onnxruntime": version("onnxruntime"), "opset": OPSET, "size": EXPORT_SIZE}, sort_keys=True)
    return "disk-unet-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_unet(unet, path: Path) -> None:
    """DISK's U-Net (a torch module in eval mode) to an ONNX file (batch, height and width dynamic)."""
    import warnings

    import torch

    x = torch.zeros(1, 3, *EXPORT_SIZE)
    with atomic_path(Path(path), suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape checks that hold for every padded input
        torch.onnx.export(unet, (x,), str(tmp), input_names=["images"], output_names=["dense"],
                          dynamic_axes={"images": {0: "b", 2: "h", 3: "w"}, "dense": {0: "b", 2: "h", 3: "w"}},
                          opset_version=OPSET, dynamo=False)
    with atomic_path(Path(path).with_suffix(".json"), suffix=".json") as tmp:
        tmp.write_text(json.dumps({"onnx_sha256": _sha256(path), "key": Path(path).stem}) + "\n")


class ExportedUnet:
    """DISK's U-Net exported to ONNX and run by another runtime: ``(B, 3, H, W)`` float32 in, ``(B, 129, H, W)``
    out (as PyTorch's). The export is made once and checked on every load (:meth:`_load`)."""

    def __init__(self, unet, weights_sha: str, folder: Path | None, threads: int | None = None):
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="whalematch-export-"))
        self.path = self.folder / f"{export_key(weights_sha)}.onnx"
        self.threads = threads or devices.cpu_workers()
        self._load(unet)

    def _open(self) -> None:
        """Load :attr:`path` into the runtime (any error: the export is made again)."""
        raise NotImplementedError

    def _load(self, unet) -> None:
        why = None
        if self.path.is_file():
            try:
                kept = json.loads(self.path.with_suffix(".json").read_text())
                if kept.get("onnx_sha256") != _sha256(self.path):
                    why = "its SHA-256 does not match the one recorded when it was made"
                else:
                    return self._open()
            except Exception as exc:  # noqa: BLE001 - a broken export (any error of the runtime) is made again
                why = f"{type(exc).__name__}: {exc}"
            log.warning("exported network %s unusable (%s); exporting it again", self.path, why)
        else:
            log.info("exporting DISK's U-Net to %s (once)", self.path)
        export_unet(unet, self.path)
        self._open()

    def __call__(self, x) -> np.ndarray:
        raise NotImplementedError


class OnnxUnet(ExportedUnet):
    """The U-Net in ONNX Runtime (its CPU provider, float32)."""

    def _open(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x) -> np.ndarray:
        return self.session.run(None, {"images": np.ascontiguousarray(x, np.float32)})[0]


class OpenVinoUnet(ExportedUnet):
    """The U-Net in OpenVINO on the CPU, at ``precision`` (``fp32``, or ``bf16`` where the CPU computes it: on
    one without, OpenVINO runs float32 and the features are float32's)."""

    def __init__(self, unet, weights_sha: str, folder: Path | None, threads: int | None = None,
                 precision: str = "fp32"):
        self.precision = precision
        super().__init__(unet, weights_sha, folder, threads)

    def _open(self) -> None:
        import openvino as ov

        hint = {"fp32": "f32", "bf16": "bf16"}[self.precision]
        core = ov.Core()
        settings = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1}
        compiled = core.compile_model(core.read_model(str(self.path)), "CPU", settings)
        self.request = compiled.create_infer_request()

    def __call__(self, x) -> np.ndarray:
        return self.request.infer({0: np.ascontiguousarray(x, np.float32)})[0].copy()


def network(runtime: str, unet, weights_sha: str, folder: Path | None, threads: int | None = None) -> ExportedUnet:
    """DISK's U-Net under ``runtime`` (not ``torch``: PyTorch runs the module itself)."""
    if package(runtime) == "openvino":
        return OpenVinoUnet(unet, weights_sha, folder, threads, precision(runtime))
    if runtime == "onnxruntime":
        return OnnxUnet(unet, weights_sha, folder, threads)
    raise ValueError(f"no exported network for runtime {runtime!r}")


def dense_to_features(images, dense, n: int, desc_dim: int = 128) -> list[dict]:
    """Keypoints (the heatmap's strict local maxima, at most ``n``), their descriptors and detection scores from a
    U-Net's output, as kornia's ``DISK.forward`` computes them (``images``: the padded batch it ran on, only
    its shape is read; ``dense``: the torch tensor of the U-Net's output, cropped to the images' size)."""
    from kornia.feature.disk.detector import heatmap_to_keypoints

    descriptors, heatmaps = dense[:, :desc_dim], dense[:, desc_dim:]
    keypoints = heatmap_to_keypoints(heatmaps, n=n, window_size=5, score_threshold=0.0)
    feats = [kp.merge_with_descriptors(descriptors[i]) for i, kp in enumerate(keypoints)]
    return [{"keypoints": f.keypoints, "descriptors": f.descriptors, "scores": f.detection_scores} for f in feats]
