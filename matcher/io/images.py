"""Decode an image file into a normalised RGB array, and hash its content.

Pillow decodes every format a catalogue is likely to hold (JPEG, PNG, TIFF,
grayscale, palette, CMYK, 16-bit) and reports truncated files; everything is
turned into 8-bit RGB here so that the extractors see one kind of input.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from .paths import shorten

log = logging.getLogger(__name__)
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Refused beyond this (read from the header, before decoding): above every camera in use for photo-identification
# (61 MP at most), 13 times the largest photo of the development catalogue (4.8 MP); a decoded 8-bit RGB image of
# this size holds 192 MB.
MAX_PIXELS = 64_000_000
MIN_SIDE = 16  # pixels; smaller images hold no usable marks
MAX_FILE_BYTES = 1 << 30  # an image file over 1 GiB is refused before it is read
# Images whose longer side exceeds this decode at a reduced scale whose longer side stays at least this: a JPEG at
# 1/2, 1/4 or 1/8 scale while decoding (``draft``), any other format box-reduced by a whole factor right after.
# Three times the longest side of any extractor's working size (about 143,000 pixels, so at most ~850 on the long
# side of a 5:1 flank): nothing finer survives the resize to the working size.
DECODE_MAX_SIDE = 2560
# A file that declares this few bytes per pixel is not a photograph (real JPEGs of the development catalogue hold
# 0.2 to 0.55): a patched header or a blank picture; it is decoded, with a warning.
MIN_BYTES_PER_PIXEL = 0.005
SPARSE_MIN_PIXELS = 1_000_000  # the bytes-per-pixel warning is for large declared sizes only
DECODER = {"max_pixels": MAX_PIXELS, "decode_max_side": DECODE_MAX_SIDE, "version": 2}  # in every feature key
EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class Blob:
    """An image file's bytes and its name: what a worker on another machine is given instead of a path it may
    not be able to open (:func:`load` and :func:`header_size` take either; messages name the file)."""

    name: str
    data: bytes = b""

    def __str__(self) -> str:
        return self.name


def content_hash(data: bytes) -> str:
    """SHA-256 of the file's bytes: the identity of an image in every cache."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: Path) -> bytes:
    """The file's bytes; :class:`ImageError` naming it if it is absent, not a regular file or too large."""
    path = Path(path)
    name = shorten(path)
    try:
        # O_NONBLOCK: opening a FIFO planted in the data folder must not hang the run.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ImageError(f"{name}: not a regular file (a device, pipe or socket); refused")
            if st.st_size > MAX_FILE_BYTES:
                raise ImageError(f"{name}: {st.st_size:,} bytes is too large for an image file "
                                 f"(at most {MAX_FILE_BYTES:,})")
            return fh.read()
    except FileNotFoundError:
        raise ImageError(f"{name}: image file not found") from None
    except OSError as exc:
        raise ImageError(f"{name}: cannot read image file ({exc.strerror or exc})") from None
    except ValueError as exc:  # e.g. an embedded NUL byte in the name
        raise ImageError(f"{name}: cannot read image file ({exc})") from None


def _to_uint8(img: Image.Image) -> np.ndarray:
    """8-bit RGB array from any Pillow mode."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
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


def _shrink(img: Image.Image, max_side: int | None) -> Image.Image:
    """Box-reduce by an integer factor so the longer side stays at least ``max_side`` (a no-op below 2x that).

    JPEGs are already reduced while decoding (``draft``); this bounds the memory a
    large PNG or TIFF holds once decoded. The result depends on the image alone.
    """
    if not max_side or max(img.size) <= 2 * max_side:
        return img
    if img.mode.startswith("I;16"):
        img = img.convert("I")
    elif img.mode in ("1", "P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    return img.reduce(max(img.size) // max_side)


def decode(data: bytes, name: str | Path, max_side: int | None = None) -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 RGB array.

    ``max_side`` lets decoding skip resolution that will be thrown away: a JPEG
    over that decodes at the smallest of 1/2, 1/4, 1/8 scale that keeps it (an 8,000-pixel
    photo in a fraction of the time), any other format over twice that is box-reduced
    right after decoding. An image of more than :data:`MAX_PIXELS` is refused from its
    header; one that declares a large size in very few bytes is decoded with a warning.
    Raises :class:`ImageError` naming ``name`` for anything unusable.
    """
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only; Pillow itself refuses over 2 x MAX_PIXELS
        # Checked here, not through a warnings filter: decoding runs in threads, and warning filters are global.
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise Image.DecompressionBombError(f"{w}x{h}")
        if w * h >= SPARSE_MIN_PIXELS and len(data) < MIN_BYTES_PER_PIXEL * w * h:
            log.warning("%s: declares %dx%d pixels in %s bytes (%.4f bytes per pixel; photographs hold 0.1 or more): "
                        "a patched header or a blank picture; decoding it%s", name, w, h, f"{len(data):,}",
                        len(data) / (w * h), " at reduced scale" if max_side and max(w, h) > max_side else "")
        if max_side and img.format == "JPEG" and max(w, h) > max_side:
            scale = max_side / max(w, h)  # draft picks the smallest 1/2^k scale that stays at least this size
            img.draft("RGB", (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of a large image without rotation
        img = _shrink(img, max_side)
        arr = _to_uint8(img)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        declared = str(exc) if str(exc).count("x") == 1 and len(str(exc)) < 24 else "its header's size"
        raise ImageError(f"{name}: image too large to decode safely ({declared} declared, over {MAX_PIXELS:,} "
                         f"pixels; reduce it to at most {MAX_PIXELS // 1_000_000} megapixels)") from None
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode this image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a malformed file can make any decoder step fail
        raise ImageError(f"{name}: corrupt or unsupported image ({type(exc).__name__}: {exc})") from None
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{name}: image too small ({w}x{h} pixels; at least {MIN_SIDE} on each side needed)")
    return arr


def load(path: Path | Blob, max_side: int | None = DECODE_MAX_SIDE) -> np.ndarray:
    """Read and decode one file (or the bytes of one, :class:`Blob`) as every stage sees it (large images
    reduced to ``max_side``)."""
    if isinstance(path, Blob):
        return decode(path.data, path.name, max_side)
    return decode(read_bytes(path), path, max_side)


def header_size(path: Path | Blob) -> tuple[int, int] | None:
    """(width, height) as decoded (EXIF rotation applied), from the file header; ``None`` if unreadable."""
    try:
        with Image.open(io.BytesIO(path.data) if isinstance(path, Blob) else path) as img:
            w, h = img.size
            if img.getexif().get(EXIF_ORIENTATION) in TRANSPOSED_ORIENTATIONS:
                w, h = h, w
            return w, h
    except Exception:  # noqa: BLE001 - decoding reports the real error later
        return None


def working_size(width: int, height: int, target_area: int, max_upscale: float, multiple: int) -> tuple[int, int]:
    """The size an extractor sees: about ``target_area`` pixels, sides a multiple of ``multiple``."""
    scale = min((target_area / float(width * height)) ** 0.5, max_upscale)
    m = max(1, multiple)
    w = max(m, int(round(width * scale / m)) * m)
    h = max(m, int(round(height * scale / m)) * m)
    return w, h
