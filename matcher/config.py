"""Run configuration shared by the entrypoints: defaults, environment variables and logging.

Every option of ``main.py`` and ``whalematch`` can also be set by an environment variable
``WHALEMATCH_<NAME>``. A value that cannot be read (``WHALEMATCH_WORKERS=abc``) raises
:class:`~matcher.errors.ConfigError` naming the variable, and the entrypoints stop with exit
code 2. (Stage settings are not configuration: they are named presets, :mod:`matcher.presets`.)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .errors import ConfigError

DEFAULT_DATA_DIR = "/code_execution/data"
DEFAULT_OUTPUT = "/code_execution/submission/submission.csv"
PREFIX = "WHALEMATCH_"

T = TypeVar("T")


def default_cache_dir() -> Path:
    """``$WHALEMATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/whalematch``, else ``~/.cache/whalematch``."""
    if os.environ.get("WHALEMATCH_CACHE_DIR"):
        return Path(os.environ["WHALEMATCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "whalematch"


def env(name: str, default: str | None = None) -> str | None:
    """The raw value of ``$WHALEMATCH_<name>``, else ``default``."""
    return os.environ.get(PREFIX + name, default)


def env_value(name: str, parse: Callable[[str], T], default: T) -> T:
    """``$WHALEMATCH_<name>`` read by ``parse`` (``default`` when unset or empty); :class:`ConfigError` naming
    the variable when ``parse`` refuses it."""
    raw = os.environ.get(PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{PREFIX}{name}={raw!r}: {exc}") from None


def positive_int(text: str) -> int:
    """A whole number of at least 1 (``0`` or ``auto`` are read by the caller as "choose for me")."""
    value = int(str(text).strip())
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def workers(text: str) -> int | None:
    """CPU workers: a whole number of at least 1, or ``0`` / ``auto`` (None: the cores available, at most 8)."""
    return None if str(text).strip().lower() in ("0", "auto") else positive_int(text)


def arg_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse type: its ValueError becomes argparse's own message (exit code 2)."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    convert.__name__ = parse.__name__
    return convert


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
