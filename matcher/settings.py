"""Run settings shared by the entrypoints: defaults, environment variables, logging."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

DEFAULT_DATA_DIR = "/code_execution/data"
DEFAULT_OUTPUT = "/code_execution/submission/submission.csv"


def default_cache_dir() -> Path:
    """``$WHALEMATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/whalematch``, else ``~/.cache/whalematch``."""
    if os.environ.get("WHALEMATCH_CACHE_DIR"):
        return Path(os.environ["WHALEMATCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "whalematch"


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"WHALEMATCH_{name}", default)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
