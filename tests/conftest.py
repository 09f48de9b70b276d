"""Shared fixtures: generated textured images, the real catalogue location, small scenario folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def run_main(data_dir: Path, output: Path, cache: Path, *extra: str, preset: str = "sift-mnn",
             env: dict | None = None) -> subprocess.CompletedProcess:
    """main.py in a subprocess on ``data_dir`` (``sift-mnn`` by default: no weights, fast), quiet."""
    cmd = [sys.executable, str(REPO / "main.py"), "--data-dir", str(data_dir), "--output", str(output),
           "--cache-dir", str(cache), "--preset", preset, "--quiet", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def belugas_dir() -> Path:
    """The real development catalogue: ``$WHALEMATCH_BELUGAS`` or ``../shared/belugas`` beside the checkout."""
    return Path(os.environ.get("WHALEMATCH_BELUGAS", REPO.parent / "shared" / "belugas"))


@pytest.fixture
def belugas() -> Path:
    path = belugas_dir()
    if not (path / "metadata.csv").is_file():
        pytest.skip(f"real beluga photos not found at {path} (set WHALEMATCH_BELUGAS)")
    return path


def textured_image(seed: int, size: tuple[int, int] = (480, 200)) -> np.ndarray:
    """An RGB image (height, width) full of random blobs and strokes: plenty of distinctive corners."""
    h, w = size
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 90, np.uint8)
    for _ in range(220):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if kind == 0:
            cv2.circle(img, (x, y), int(rng.integers(2, 12)), colour, -1)
        elif kind == 1:
            cv2.line(img, (x, y), (x + int(rng.integers(-30, 30)), y + int(rng.integers(-30, 30))), colour, 2)
        else:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(3, 15)), y + int(rng.integers(3, 15))), colour, -1)
    return cv2.GaussianBlur(img, (3, 3), 0)


def warp_affine(img: np.ndarray, angle: float = 8.0, scale: float = 0.9, shift=(12.0, -8.0)) -> tuple[np.ndarray, np.ndarray]:
    """The image warped by a known affine map (about its centre), and the 2x3 map."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += shift
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT), m
