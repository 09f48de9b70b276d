"""Choose the torch device: CUDA when present, else CPU (``WHALEMATCH_DEVICE`` overrides)."""

from __future__ import annotations

import os


def pick(requested: str | None = None) -> str:
    import torch

    name = requested or os.environ.get("WHALEMATCH_DEVICE") or "auto"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but no CUDA GPU is available")
    return name
