"""Local feature extractors: thin wrappers around kornia DISK / ALIKED and OpenCV SIFT.

Each wrapper turns RGB uint8 arrays into plain dicts of numpy arrays::

    keypoints   (N, 2) float32, x y in the ORIGINAL image's pixels
    descriptors (N, D) float16, L2-normalised
    scores      (N,)   float32, detection confidence
    size        (2,)   int32, original width and height

Images are resized to a working size that depends on the image alone (see
:func:`matcher.images.working_size`), and only images of equal working size
share a batch, so a feature never depends on its batch-mates. On CUDA, a batch
that runs out of memory is split, and a single image that still does not fit
falls back to the CPU.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import cv2
import numpy as np

from . import weights
from .images import working_size

log = logging.getLogger(__name__)


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

    def __init__(self, conf: dict, device: str = "cpu", batch_size: int | None = None):
        self.conf = conf
        self.device = device
        self.batch_size = batch_size or (8 if device.startswith("cuda") else 1)

    def _size(self, image: np.ndarray) -> tuple[int, int]:
        h, w = image.shape[:2]
        c = self.conf
        return working_size(w, h, c["target_area"], c["max_upscale"], c["multiple"])

    def extract(self, images: list[np.ndarray]) -> list[dict]:
        """Features of each image, in input order."""
        out: list[dict | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, img in enumerate(images):
            groups[self._size(img)].append(i)
        for size, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                resized = [cv2.resize(images[i], size, interpolation=cv2.INTER_AREA) for i in chunk]
                for i, feats in zip(chunk, self._run_safely(resized, self.device)):
                    out[i] = self._to_original(feats, images[i].shape, size)
        return out  # type: ignore[return-value]

    def _run_safely(self, batch: list[np.ndarray], device: str) -> list[dict]:
        try:
            return self._run(batch, device)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if "out of memory" not in str(exc).lower() or not device.startswith("cuda"):
                raise
            import torch

            torch.cuda.empty_cache()
            if len(batch) > 1:
                half = len(batch) // 2
                log.warning("GPU out of memory on a batch of %d; splitting it", len(batch))
                return self._run_safely(batch[:half], device) + self._run_safely(batch[half:], device)
            log.warning("GPU out of memory on one %dx%d image; extracting it on the CPU", *batch[0].shape[1::-1])
            return self._run(batch, "cpu")

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

    def _run(self, batch: list[np.ndarray], device: str) -> list[dict]:
        raise NotImplementedError


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
        import torch

        arr = np.stack(batch).astype(np.float32) / 255.0
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(device)

    def _run(self, batch: list[np.ndarray], device: str) -> list[dict]:
        import torch

        with torch.inference_mode():
            results = self._forward(self.model(device), self._tensor(batch, device))
        return [{k: v.float().cpu().numpy() for k, v in r.items()} for r in results]

    def _build(self):
        raise NotImplementedError

    def _forward(self, model, x) -> list[dict]:
        raise NotImplementedError


class DiskExtractor(TorchExtractor):
    dim = 128

    def _build(self):
        from kornia.feature import DISK

        model = DISK()
        model.load_state_dict(weights.load(f"disk-{self.conf['weights']}-save.pth")["extractor"])
        return model

    def _forward(self, model, x):
        feats = model(x, n=self.conf["max_keypoints"], pad_if_not_divisible=True)
        return [{"keypoints": f.keypoints, "descriptors": f.descriptors, "scores": f.detection_scores} for f in feats]


class AlikedExtractor(TorchExtractor):
    dim = 128

    def _build(self):
        from kornia.feature import ALIKED

        model = ALIKED(
            model_name=self.conf["weights"],
            max_num_keypoints=self.conf["max_keypoints"],
            detection_threshold=self.conf["detection_threshold"],
        )
        model.load_state_dict(weights.load(f"{self.conf['weights']}.pth"))
        return model

    def _forward(self, model, x):
        feats = model(x)
        return [{"keypoints": f.keypoints, "descriptors": f.descriptors, "scores": f.keypoint_scores} for f in feats]


class SiftExtractor(Extractor):
    """OpenCV SIFT with RootSIFT descriptors (Arandjelovic & Zisserman 2012); needs no weights."""

    dim = 128

    def __init__(self, conf: dict, device: str = "cpu", batch_size: int | None = None):
        super().__init__(conf, "cpu", 1)
        self.sift = cv2.SIFT_create(nfeatures=conf["max_keypoints"])

    def _run(self, batch: list[np.ndarray], device: str) -> list[dict]:
        out = []
        for img in batch:
            gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            kps, desc = self.sift.detectAndCompute(gray, None)
            if desc is None or not kps:
                out.append({"keypoints": np.zeros((0, 2)), "descriptors": np.zeros((0, 128)), "scores": np.zeros(0)})
                continue
            kps, desc = kps[: self.conf["max_keypoints"]], desc[: self.conf["max_keypoints"]]
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


def build(conf: dict, device: str = "cpu", batch_size: int | None = None) -> Extractor:
    return EXTRACTOR_CLASSES[conf["model"]](conf, device, batch_size)
