"""Local feature extractors: thin wrappers around kornia DISK / ALIKED and OpenCV SIFT.

Each wrapper turns RGB uint8 arrays into plain dicts of numpy arrays::

    keypoints   (N, 2) float32, x y in the ORIGINAL image's pixels
    descriptors (N, D) float16, L2-normalised
    scores      (N,)   float32, detection confidence
    size        (2,)   int32, original width and height

Images are resized to a working size that depends on the image alone (see
:func:`matcher.io.images.working_size`). DISK can also detect at ``extra_scales``
(fractions of the working size's side, each with its own keypoint count); an
image's features are then the keypoints of every scale in one set, working
size first, so a photo that frames the whale tighter than another (a zoomed
crop of half the body against a whole body) still finds its scale. Only images
of equal size share a batch, so a feature never depends on its batch-mates'
content. With ``white_fill`` set, keypoints on the organisers' white fill (and near it) are
dropped (:mod:`matcher.features.white_fill`). On CUDA the batch size follows from the GPU memory
cap (:mod:`matcher.io.device`) and the working area; a batch that still runs out of memory is split (and
later batches of that size kept smaller), and a single image that does not
fit falls back to the CPU. On the CPU, DISK batches hold up to 4 images (its
results are bit-identical to one image at a time); ALIKED runs one image at a
time there, because its float rounding changes with the batch size.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from .. import presets
from ..io import device as devices
from ..io import weights
from ..io.images import working_size
from . import white_fill

log = logging.getLogger(__name__)
MAX_GPU_BATCH = 64
EXTRACTION_SHARE = 0.6  # of the GPU memory cap: the rest is left to the CUDA context, cuDNN workspaces, other stages


def empty_features(width: int, height: int, dim: int) -> dict:
    return {
        "keypoints": np.zeros((0, 2), np.float32),
        "descriptors": np.zeros((0, dim), np.float16),
        "scores": np.zeros((0,), np.float32),
        "size": np.array([width, height], np.int32),
    }


class Extractor:
    """Base class: resizing, batching by working size, OOM fallback."""

    dim = 128
    # Peak memory of one image's forward pass per working-size pixel (float32, inference mode), with a margin.
    # Measured on the CPU (growth of the peak resident size with the batch size); a GPU adds cuDNN workspaces,
    # covered by EXTRACTION_SHARE.
    bytes_per_pixel = 0
    cpu_batch = 1  # images per batch on the CPU (only where batching leaves every bit unchanged)
    multi_scale = False  # whether ``extra_scales`` can be honoured (the keypoint count is chosen per call)

    def __init__(self, conf: dict, device: str = "cpu", batch_size: int | None = None):
        if conf.get("extra_scales") and not self.multi_scale:
            raise ValueError(f"extractor {conf.get('name', conf['model'])!r}: extra_scales is supported for DISK only")
        self.conf = conf
        self.device = device
        self.fixed_batch = batch_size
        self.memory_budget = None
        self._oom_batch: dict[tuple[int, int], int] = {}
        if devices.is_cuda(device):
            cap = devices.apply_memory_cap(device)
            self.memory_budget = int(cap * EXTRACTION_SHARE) if cap else None
        # the batch for a typical working size, for callers that size their own chunks (FeatureStage)
        self.batch_size = batch_size or (self.batch_for((640, 224)) if devices.is_cuda(device) else self.cpu_batch)

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        return self.scale_size(width, height, 1.0)

    def batch_for(self, size: tuple[int, int]) -> int:
        """Images of this working size per batch: fixed if asked, else from the memory budget (GPU) or ``cpu_batch``."""
        if self.fixed_batch:
            n = self.fixed_batch
        elif devices.is_cuda(self.device) and self.memory_budget and self.bytes_per_pixel:
            n = int(self.memory_budget // (self.bytes_per_pixel * size[0] * size[1]))
            n = max(1, min(MAX_GPU_BATCH, n))
        elif devices.is_cuda(self.device):
            n = 8
        else:
            n = self.cpu_batch
        return min(n, self._oom_batch.get(size, n))

    def scales(self) -> list[tuple[float, int]]:
        """``(fraction of the working size's side, keypoints kept)`` per detection scale, the working size first."""
        return [(1.0, int(self.conf["max_keypoints"]))] + [
            (float(extra["scale"]), int(extra["max_keypoints"])) for extra in self.conf.get("extra_scales", [])]

    def scale_size(self, width: int, height: int, scale: float) -> tuple[int, int]:
        """The working size of one detection scale (the working size itself at scale 1)."""
        c = self.conf
        return working_size(width, height, c["target_area"] * scale * scale, c["max_upscale"] * scale, c["multiple"])

    def extract(self, images: list[np.ndarray]) -> list[dict]:
        """Features of each image, in input order: the keypoints of every detection scale, working size first."""
        scales = self.scales()
        parts: list[list[dict | None]] = [[None] * len(scales) for _ in images]
        groups: dict[tuple[tuple[int, int], int], list[tuple[int, int]]] = defaultdict(list)
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            for si, (scale, n) in enumerate(scales):
                groups[(self.scale_size(w, h, scale), n)].append((i, si))
        for (size, n), jobs in groups.items():
            start = 0
            while start < len(jobs):
                chunk = jobs[start : start + self.batch_for(size)]
                resized = [cv2.resize(images[i], size, interpolation=cv2.INTER_AREA) for i, _ in chunk]
                for (i, si), feats in zip(chunk, self._run_safely(resized, self.device, size, n)):
                    parts[i][si] = self._to_original(feats, images[i].shape, size)
                start += len(chunk)
        out = [_concatenate(p) for p in parts]  # type: ignore[arg-type]
        if self.conf.get("white_fill"):
            out = [_select(f, white_fill.keep_mask(img, f["keypoints"], self.conf["white_fill"]))
                   for f, img in zip(out, images)]
        return out

    def _run_safely(self, batch: list[np.ndarray], device: str, size: tuple[int, int] | None = None,
                    n: int | None = None) -> list[dict]:
        try:
            return self._run(batch, device, n)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not devices.is_out_of_memory(exc) or not devices.is_cuda(device):
                raise
            import torch

            torch.cuda.empty_cache()
            if len(batch) > 1:
                half = len(batch) // 2
                if size is not None:
                    self._oom_batch[size] = max(1, half)
                log.warning("GPU out of memory on a batch of %d; splitting it", len(batch))
                return (self._run_safely(batch[:half], device, size, n)
                        + self._run_safely(batch[half:], device, size, n))
            log.warning("GPU out of memory on one %dx%d image; extracting it on the CPU", *batch[0].shape[1::-1])
            return self._run(batch, "cpu", n)

    def _to_original(self, feats: dict, shape: tuple, size: tuple[int, int]) -> dict:
        h, w = shape[:2]
        scale = np.array([w / size[0], h / size[1]], np.float32)
        kp = (feats["keypoints"].astype(np.float32) + 0.5) * scale - 0.5
        desc = feats["descriptors"].astype(np.float32)
        norms = np.linalg.norm(desc, axis=1, keepdims=True)
        desc = desc / np.maximum(norms, 1e-12)
        return {
            "keypoints": kp.astype(np.float32),
            "descriptors": desc.astype(np.float16),
            "scores": feats["scores"].astype(np.float32),
            "size": np.array([w, h], np.int32),
        }

    def _run(self, batch: list[np.ndarray], device: str, n: int | None = None) -> list[dict]:
        """Features of a batch of equal-size images at their size; ``n``: keypoints kept (None: ``max_keypoints``)."""
        raise NotImplementedError


def _select(feats: dict, keep: np.ndarray) -> dict:
    """The features of the keypoints ``keep`` marks."""
    if keep.all():
        return feats
    return {**{k: feats[k][keep] for k in ("keypoints", "descriptors", "scores")}, "size": feats["size"]}


def _concatenate(parts: list[dict]) -> dict:
    """One image's features from several detection scales, in scale order."""
    if len(parts) == 1:
        return parts[0]
    out = {k: np.concatenate([p[k] for p in parts]) for k in ("keypoints", "descriptors", "scores")}
    out["size"] = parts[0]["size"]
    return out


class TorchExtractor(Extractor):
    """Shared code of the kornia networks: one model per device, inference mode."""

    def __init__(self, conf: dict, device: str = "cpu", batch_size: int | None = None):
        super().__init__(conf, device, batch_size)
        self._models: dict[str, object] = {}

    def model(self, device: str):
        if device not in self._models:
            self._models[device] = self._build().to(device).eval()
        return self._models[device]

    def _tensor(self, batch: list[np.ndarray], device: str):
        """(B, 3, H, W) float32 in [0, 1]. The bytes travel as uint8 (a quarter of the float32 transfer) and are
        scaled where they land; IEEE division is correctly rounded, so the values equal the CPU's."""
        import torch

        x = torch.from_numpy(np.stack(batch))
        if devices.is_cuda(device):
            x = x.pin_memory().to(device, non_blocking=True)
        return (x.permute(0, 3, 1, 2).float() / 255.0).contiguous()

    def _run(self, batch: list[np.ndarray], device: str, n: int | None = None) -> list[dict]:
        import torch

        with torch.inference_mode():
            results = self._forward(self.model(device), self._tensor(batch, device), n or self.conf["max_keypoints"])
            if devices.is_cuda(device):  # one transfer per field for the whole batch, not one per image
                return [{k: v.float().cpu().numpy() for k, v in r.items()} for r in results]
        return [{k: v.float().numpy() for k, v in r.items()} for r in results]

    def _build(self):
        raise NotImplementedError

    def _forward(self, model, x, n: int) -> list[dict]:
        raise NotImplementedError


class DiskExtractor(TorchExtractor):
    """DISK (kornia); with ``conf["runtime"]`` other than ``torch`` its U-Net runs in that runtime (ONNX Runtime,
    OpenVINO) on the CPU and the rest (detection, descriptors) stays kornia's (:mod:`matcher.features.runtimes`)."""

    dim = 128
    multi_scale = True
    bytes_per_pixel = 3000  # about 2,300 measured at 640 x 224 (330 MB per image)
    cpu_batch = 4

    parallel_images = 4  # ONNX Runtime: at most this many images at once, one network instance each

    def __init__(self, conf: dict, device: str = "cpu", batch_size: int | None = None, export_dir=None):
        super().__init__(conf, device, batch_size)
        self.runtime = conf.get("runtime", "torch")
        self.export_dir = export_dir
        self._networks: dict[int, queue.SimpleQueue] = defaultdict(queue.SimpleQueue)  # free instances, by threads
        self._made = 0
        self._local = threading.local()  # the threads a network called from this thread runs on
        self._export_lock = threading.Lock()
        self.cores = devices.cpu_workers()
        # ONNX Runtime: one session of fewer threads per image at once; OpenVINO: one instance on every core (its
        # single-threaded instances side by side were slower, measured); a lone image: every core
        self.parallel = max(1, min(self.cores, self.parallel_images)) if self.runtime == "onnxruntime" else 1
        self.network_threads = max(1, self.cores // self.parallel)
        if self.runtime != "torch" and not batch_size:
            self.batch_size = 1  # one image a call: ONNX Runtime's rounding may change with the batch

    def batch_for(self, size: tuple[int, int]) -> int:
        return 1 if self.runtime != "torch" and not self.fixed_batch else super().batch_for(size)

    def extract(self, images: list[np.ndarray]) -> list[dict]:
        """As :meth:`Extractor.extract`; ONNX Runtime on the CPU takes several images at once, each on its own
        session with fewer threads (the same outputs, checked: its threads split the work, not the sums; 1.13x
        the network's images/s of one two-threaded session on two cores)."""
        if self.runtime == "torch" or devices.is_cuda(self.device) or self.parallel < 2 or len(images) < 2:
            return super().extract(images)
        self.model(self.device)  # built once, before the threads share it

        def one(img):
            self._local.threads = self.network_threads
            return super(DiskExtractor, self).extract([img])[0]

        with ThreadPoolExecutor(min(self.parallel, len(images))) as pool:
            return list(pool.map(one, images))

    def weights_file(self) -> str:
        return presets.weights_file(self.conf)

    def _build(self):
        from kornia.feature import DISK

        model = DISK()
        weights.load_weights_into(model, weights.load(self.weights_file())["extractor"], "DISK")
        return model

    def _forward(self, model, x, n):
        if self.runtime == "torch" or devices.is_cuda(x.device.type):
            feats = model(x, n=n, pad_if_not_divisible=True)
            return [{"keypoints": f.keypoints, "descriptors": f.descriptors, "scores": f.detection_scores}
                    for f in feats]
        return self._forward_onnx(model, x, n)

    def _network(self, model, threads: int):
        """An instance of the exported network on ``threads`` threads not in use by another thread (made when none
        is free: at most :attr:`parallel` of them and one on every core, kept for the extractor's life)."""
        from . import runtimes

        try:
            return self._networks[threads].get_nowait()
        except queue.Empty:
            pass
        with self._export_lock:  # the export is made once, by the first caller
            sha = weights.recorded_sums().get(self.weights_file(), "unrecorded")
            self._made += 1
            return runtimes.network(self.runtime, model.unet, sha, self.export_dir, threads)

    def _forward_onnx(self, model, x, n):
        import torch
        import torch.nn.functional as F

        from . import runtimes

        threads = getattr(self._local, "threads", self.cores)  # a pool thread of extract() or every core
        network = self._network(model, threads)
        try:
            h, w = x.shape[2:]
            padded = F.pad(x, (0, -w % 16, 0, -h % 16), value=0.0)
            dense = torch.from_numpy(network(padded.numpy()))[..., :h, :w]
        finally:
            self._networks[threads].put(network)
        return runtimes.dense_to_features(padded, dense, n, model.desc_dim)


class AlikedExtractor(TorchExtractor):
    dim = 128
    bytes_per_pixel = 2500  # about 1,700 measured at 640 x 224 (250 MB per image)

    def _build(self):
        from kornia.feature import ALIKED

        model = ALIKED(
            model_name=self.conf["weights"],
            max_num_keypoints=self.conf["max_keypoints"],
            detection_threshold=self.conf["detection_threshold"],
        )
        weights.load_weights_into(model, weights.load(presets.weights_file(self.conf)), "ALIKED")
        return model

    def _forward(self, model, x, n):  # the keypoint count is the model's own (extra scales are refused)
        feats = model(x)
        return [{"keypoints": f.keypoints, "descriptors": f.descriptors, "scores": f.keypoint_scores} for f in feats]


class SiftExtractor(Extractor):
    """OpenCV SIFT with RootSIFT descriptors (Arandjelovic & Zisserman 2012); needs no weights.

    Images are extracted on a few threads at once (OpenCV releases the GIL; each thread has its own
    detector), which nearly doubles the rate on two cores; every image's features are those it gets alone.
    """

    dim = 128

    def __init__(self, conf: dict, device: str = "cpu", batch_size: int | None = None):
        super().__init__(conf, "cpu", 1)
        self.threads = devices.cpu_workers()
        self._local = threading.local()

    @property
    def sift(self):
        if not hasattr(self._local, "sift"):
            self._local.sift = cv2.SIFT_create(nfeatures=self.conf["max_keypoints"])
        return self._local.sift

    def extract(self, images: list[np.ndarray]) -> list[dict]:
        if len(images) < 2 or self.threads < 2:
            return super().extract(images)
        with ThreadPoolExecutor(min(self.threads, len(images))) as pool:
            return list(pool.map(lambda img: super(SiftExtractor, self).extract([img])[0], images))

    def _run(self, batch: list[np.ndarray], device: str, n: int | None = None) -> list[dict]:
        out = []
        n = n or self.conf["max_keypoints"]
        for img in batch:
            gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            kps, desc = self.sift.detectAndCompute(gray, None)
            if desc is None or not kps:
                out.append({"keypoints": np.zeros((0, 2)), "descriptors": np.zeros((0, 128)), "scores": np.zeros(0)})
                continue
            kps, desc = kps[:n], desc[:n]
            if self.conf.get("rootsift", True):
                desc = np.sqrt(desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-12))
            out.append(
                {
                    "keypoints": np.array([k.pt for k in kps], np.float32),
                    "descriptors": desc.astype(np.float32),
                    "scores": np.array([k.response for k in kps], np.float32),
                }
            )
        return out


EXTRACTOR_CLASSES = {"disk": DiskExtractor, "aliked": AlikedExtractor, "sift": SiftExtractor}


def build(conf: dict, device: str = "cpu", batch_size: int | None = None, export_dir=None) -> Extractor:
    """The extractor of ``conf``; ``export_dir``: where an exported network is kept (DISK on ONNX Runtime)."""
    if conf.get("runtime", "torch") != "torch":
        return EXTRACTOR_CLASSES[conf["model"]](conf, device, batch_size, export_dir)
    return EXTRACTOR_CLASSES[conf["model"]](conf, device, batch_size)
