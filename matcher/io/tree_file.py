"""LightGBM models kept in JSON files (the pair model, the ranker): written and read safely, no pickle.

A file holds its format name and version, the feature names, the settings key of the verdicts it was
trained for, what it was trained on and its figures (``info``), the trees in LightGBM's own text format
(``lightgbm_model``) and the SHA-256 of all of that (``sha256``). :func:`read` refuses, naming the file, a
file of another format or version, one whose content does not match its own checksum, and one whose trees
are malformed (:mod:`.lightgbm_text`: LightGBM's parser trusts its input and can crash the process);
:func:`write` writes atomically and, for a file of the project's ``weights/`` folder, records its sum in
``weights/SHA256SUMS``. A file read before and unchanged since is not read again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from ..errors import WeightsError
from . import lightgbm_text, weights
from .atomic import atomic_path


def content_sha256(doc: dict) -> str:
    """SHA-256 of a model file's content (every field but ``sha256`` itself, as canonical JSON)."""
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write(path: Path, doc: dict) -> None:
    """``doc`` with its checksum, as indented JSON, atomically; its sum recorded when ``path`` is a shipped file."""
    doc = {k: v for k, v in doc.items() if k != "sha256"}
    with atomic_path(Path(path), suffix=".json") as tmp:
        tmp.write_text(json.dumps({**doc, "sha256": content_sha256(doc)}, indent=1) + "\n")
    weights.record_sum(Path(path))


def read(path: Path, fmt: str, version: int, what: str, objectives: tuple[str, ...] = ("binary",),
         validate: Callable[[dict], None] | None = None) -> dict:
    """The checked content of a model file (see the module docstring); ``validate(doc)`` raises ``ValueError``
    for what else the caller cannot use (run before the checksum, so it names the real problem of a file of
    another version). :class:`WeightsError` naming the file and ``what`` it should have been otherwise."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot load the {what} ({exc.strerror or exc})") from None
    return _read(os.path.abspath(path), st.st_size, st.st_mtime_ns, fmt, version, what, objectives, validate)


@lru_cache(maxsize=8)
def _read(path: str, size: int, mtime_ns: int, fmt: str, version: int, what: str, objectives: tuple[str, ...],
          validate) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
        if not isinstance(doc, dict) or doc.get("format") != fmt or doc.get("version") != version:
            raise ValueError(f"not a {fmt} file of version {version}")
        if not isinstance(doc.get("features"), list) or not all(isinstance(f, str) for f in doc["features"]):
            raise ValueError("no list of feature names")
        if validate is not None:
            validate(doc)
        if "sha256" not in doc:
            raise ValueError("it carries no checksum of its content (made by an older version: rebuild it)")
        if content_sha256(doc) != doc["sha256"]:
            raise ValueError("its content does not match its own SHA-256: changed or damaged since it was written")
        lightgbm_text.check(doc["lightgbm_model"], len(doc["features"]), objectives)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"{path}: cannot load the {what} ({exc})") from None
    return doc
