"""Shared fixtures: generated textured images, the real catalogue location, small scenario folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from matcher.synthetic import textured_image, warp_affine  # noqa: F401  (the tests' generated images)

REPO = Path(__file__).resolve().parents[1]


def run_main(data_dir: Path, output: Path, cache: Path, *extra: str, preset: str = "sift-mnn",
             env: dict | None = None) -> subprocess.CompletedProcess:
    """main.py in a subprocess on ``data_dir`` (``sift-mnn`` by default: no weights, fast), quiet."""
    cmd = [sys.executable, str(REPO / "main.py"), "--data-dir", str(data_dir), "--output", str(output),
           "--cache-dir", str(cache), "--preset", preset, "--quiet", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def load_main():
    """``main.py`` as a module, to call ``main.main(argv)`` in this process (torch imported once, no new
    interpreter)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("whalematch_main", REPO / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restore_logging():
    """The root logger's handlers and level as they were (``main.main`` and ``whalematch`` set up logging)."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def belugas_dir() -> Path:
    """The real development catalogue: ``$WHALEMATCH_BELUGAS`` or ``../shared/belugas`` beside the checkout."""
    return Path(os.environ.get("WHALEMATCH_BELUGAS", REPO.parent / "shared" / "belugas"))


@pytest.fixture
def belugas() -> Path:
    path = belugas_dir()
    if not (path / "metadata.csv").is_file():
        pytest.skip(f"real beluga photos not found at {path} (set WHALEMATCH_BELUGAS)")
    return path
