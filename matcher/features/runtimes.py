"""Where a feature network runs: PyTorch (the reference), or ONNX Runtime on the CPU (``--runtime``).

On a CPU, DISK's U-Net is most of every job's time. ONNX Runtime runs the same network, exported here from
the same pretrained weights: extraction about 1.5 times as fast on two cores (``make bench``), the network's
outputs within 0.002 of PyTorch's (on a scale of about 400); detection and descriptor sampling stay PyTorch's own code
(:func:`dense_to_features`), so only the network's floating-point rounding differs. ``auto`` (the default)
takes ONNX Runtime for DISK on the CPU when it is installed (``pip install 'whalematch[fast]'``; ``make
install`` does), PyTorch on CUDA and for the other extractors. The agreement of the two (keypoints,
descriptors, verdicts, rankings) is measured by ``make bench``; lower precision (OpenVINO's bf16) was
measured and not taken (benchmarks/RESULTS.md).

The export is made once, offline, from the weights the preset loads, and kept in the cache
(``ROOT/exports/<key>.onnx``) under a key of the weights' SHA-256, the exporter's (torch) and the runtime's
versions and the export settings; its own SHA-256 is kept beside it, and a file that does not match, or
that the runtime cannot load, is exported again with a warning. A runtime other than PyTorch is part of
the feature cache's key (:func:`provenance`): features of different runtimes never mix.
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
RUNTIMES = ("auto", "torch", "onnxruntime")
PACKAGES = {"onnxruntime": ("onnxruntime", "onnx")}  # what each runtime needs installed
INSTALL = "pip install 'whalematch[fast]'  (or: pip install onnxruntime onnx)"
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
    """The runtime a run uses: ``torch`` or ``onnxruntime``. ``auto``: ONNX Runtime for an exportable network
    (:data:`EXPORTABLE`) on the CPU when installed (else PyTorch, said in one line), PyTorch on CUDA. A runtime
    asked for by name that cannot run here is a :class:`ConfigError` saying why (and how to install it)."""
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
    return name


def provenance(runtime: str) -> dict:
    """What a runtime adds to a feature cache key (nothing for PyTorch, the reference, so its keys stay)."""
    if runtime == "torch":
        return {}
    return {"runtime": {"name": runtime, "version": version(runtime), "precision": "fp32", "opset": OPSET}}


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


class OnnxUnet:
    """DISK's U-Net in ONNX Runtime: ``(B, 3, H, W)`` float32 in, ``(B, 129, H, W)`` out (as PyTorch's)."""

    def __init__(self, unet, weights_sha: str, folder: Path | None, threads: int | None = None):
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="whalematch-export-"))
        self.path = self.folder / f"{export_key(weights_sha)}.onnx"
        self.threads = threads or devices.cpu_workers()
        self.session = self._load(unet)

    def _session(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def _load(self, unet):
        why = None
        if self.path.is_file():
            try:
                kept = json.loads(self.path.with_suffix(".json").read_text())
                if kept.get("onnx_sha256") != _sha256(self.path):
                    why = "its SHA-256 does not match the one recorded when it was made"
                else:
                    return self._session()
            except Exception as exc:  # noqa: BLE001 - a broken export (any error of the runtime) is made again
                why = f"{type(exc).__name__}: {exc}"
            log.warning("exported network %s unusable (%s); exporting it again", self.path, why)
        else:
            log.info("exporting DISK's U-Net for ONNX Runtime to %s (once)", self.path)
        export_unet(unet, self.path)
        return self._session()

    def __call__(self, x) -> np.ndarray:
        return self.session.run(None, {"images": np.ascontiguousarray(x, np.float32)})[0]


def dense_to_features(images, dense, n: int, desc_dim: int = 128) -> list[dict]:
    """Keypoints (the heatmap's strict local maxima, at most ``n``), their descriptors and detection scores from a
    U-Net's output, as kornia's ``DISK.forward`` computes them (``images``: the padded batch it ran on, only
    its shape is read; ``dense``: the torch tensor of the U-Net's output, cropped to the images' size)."""
    from kornia.feature.disk.detector import heatmap_to_keypoints

    descriptors, heatmaps = dense[:, :desc_dim], dense[:, desc_dim:]
    keypoints = heatmap_to_keypoints(heatmaps, n=n, window_size=5, score_threshold=0.0)
    feats = [kp.merge_with_descriptors(descriptors[i]) for i, kp in enumerate(keypoints)]
    return [{"keypoints": f.keypoints, "descriptors": f.descriptors, "scores": f.detection_scores} for f in feats]
