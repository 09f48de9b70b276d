"""Experiment: CLAHE on the luminance before DISK extraction, scored by benchmarks/eval.py.

    python benchmarks/clahe_experiment.py --preset disk-clahe-mnn --cache-dir DIR [eval.py options]

The extractors (matcher/features/extractors.py) have no contrast-normalisation setting, so this
script registers, in this process only, an extractor ``disk-clahe`` (the ``disk``
settings plus ``clahe_clip`` 2.0 and ``clahe_tiles`` 8, so its cache key differs from
DISK's) and a pipeline preset ``disk-clahe-mnn``, applies OpenCV CLAHE to the L channel
(CIE Lab) of each decoded image before the usual resizing, and runs eval.py. Use a cache
folder of its own: nothing in the package knows these settings. Result in
benchmarks/RESULTS.md (not kept: it lowered overall mAP@20).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import cv2  # noqa: E402

from matcher import presets  # noqa: E402
from matcher.features import extractors as features  # noqa: E402

presets.EXTRACTORS["disk-clahe"] = {**presets.EXTRACTORS["disk"], "clahe_clip": 2.0, "clahe_tiles": 8}
presets.PIPELINES["disk-clahe-mnn"] = {"extractor": "disk-clahe", "matcher": "mnn", "verifier": "affine"}


def clahe(rgb, clip: float, tiles: int):
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


_extract = features.Extractor.extract


def extract(self, images):
    if self.conf.get("clahe_clip"):
        images = [clahe(im, self.conf["clahe_clip"], self.conf["clahe_tiles"]) for im in images]
    return _extract(self, images)


features.Extractor.extract = extract

if __name__ == "__main__":
    import eval as benchmark

    sys.exit(benchmark.main())
