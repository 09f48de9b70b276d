"""Decode an image file into a normalised RGB array, and hash its content.

Pillow decodes every format a catalogue is likely to hold (JPEG, PNG, TIFF,
grayscale, palette, CMYK, 16-bit) and reports truncated files; everything is
turned into 8-bit RGB here so that the extractors see one kind of input.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False
MAX_PIXELS = 20_000 * 20_000  # refuse decompression bombs beyond this
MIN_SIDE = 16  # pixels; smaller images hold no usable marks
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def content_hash(data: bytes) -> str:
    """SHA-256 of the file's bytes: the identity of an image in every cache."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image file ({exc.strerror or exc})") from None


def _to_uint8(img: Image.Image) -> np.ndarray:
    """8-bit RGB array from any Pillow mode."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = np.percentile(arr, [0.5, 99.5]) if arr.size else (0.0, 1.0)
        arr = np.clip((arr - lo) / max(hi - lo, 1e-9), 0, 1) * 255
        arr = arr.astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, img)
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def decode(data: bytes, name: str | Path, max_side: int | None = None) -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 RGB array.

    ``max_side`` lets JPEG decoding skip resolution that will be thrown away
    (a 10,000-pixel photo decodes at 1/8 scale in a fraction of the time).
    Raises :class:`ImageError` naming ``name`` for anything unusable.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if max_side and img.format == "JPEG" and max(img.size) > 2 * max_side:
                scale = max_side / max(img.size)
                img.draft("RGB", (max(1, int(img.size[0] * scale)), max(1, int(img.size[1] * scale))))
            img.load()
            img = ImageOps.exif_transpose(img)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: image too large to decode safely (over {MAX_PIXELS:,} pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None
    arr = _to_uint8(img)
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{name}: image too small ({w}x{h} pixels; at least {MIN_SIDE} on each side needed)")
    return arr


def load(path: Path, max_side: int | None = None) -> tuple[np.ndarray, str]:
    """Read, hash and decode one file: ``(rgb array, sha256)``."""
    data = read_bytes(path)
    return decode(data, path, max_side), content_hash(data)


def working_size(width: int, height: int, target_area: int, max_upscale: float, multiple: int) -> tuple[int, int]:
    """The size an extractor sees: about ``target_area`` pixels, sides a multiple of ``multiple``."""
    scale = min((target_area / float(width * height)) ** 0.5, max_upscale)
    m = max(1, multiple)
    w = max(m, int(round(width * scale / m)) * m)
    h = max(m, int(round(height * scale / m)) * m)
    return w, h
