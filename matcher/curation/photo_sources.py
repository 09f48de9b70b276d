"""Where the photos named in a decisions file come from: catalogue photos by image id, new photos by file, and
which files may become catalogue photos (``whalematch apply-decisions``, :mod:`.decisions`).

A new photo is taken only from the places a review could have shown it: inside the catalogue's folder or a
folder named with ``--new-photos`` (after following links), and only if it decodes as an image; a decisions
file that names any other file (``/etc/passwd``, a dotfile, a text file) is refused by the caller, row named.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError
from ..io import images
from ..io.catalogue import IMAGE_SUFFIXES, Photo
from ..io.paths import shorten, too_long


@dataclass(frozen=True)
class Ref:
    """One side of a decision: a catalogue photo (``image_id``) or a new photo (its file)."""

    image_id: str = ""
    file: Path | None = None

    @property
    def new(self) -> bool:
        return not self.image_id

    def name(self) -> str:
        return self.image_id or str(self.file)


class Resolver:
    """Names in a decisions file to catalogue photos (``photos``, by image id, of the catalogue in ``folder``) or
    new photo files; :meth:`refusal` says why a new photo's file cannot be taken (outside ``folder`` and
    ``sources``, the folders new photos may come from, or not an image)."""

    def __init__(self, photos: dict[str, Photo], folder: Path, bases: list[Path], sources: list[Path] = ()):
        self.photos = photos
        self.bases = bases
        self.sources = list(dict.fromkeys(os.path.realpath(f) for f in [folder, *sources]))
        self._refusals: dict[Path, str | None] = {}
        self.by_path = {}
        for i, p in photos.items():  # by the path as written and by the file it leads to (links followed)
            for key in (os.path.abspath(p.path), os.path.realpath(p.path)):
                self.by_path.setdefault(os.path.normcase(key), i)

    def file(self, value: str) -> Path | None:
        """The file a name leads to (absolute, links kept: a photo linked into the catalogue's folder stays there)."""
        if too_long(value) or "\x00" in value:
            return None
        p = Path(value).expanduser()
        for c in [p] if p.is_absolute() else [b / p for b in self.bases]:
            if c.is_file():
                return Path(os.path.abspath(c))
        return None

    def __call__(self, value: str) -> Ref | None:
        if value in self.photos:
            return Ref(image_id=value)
        f = self.file(value)
        if f is None:
            return None
        known = self.by_path.get(os.path.normcase(str(f))) or self.by_path.get(os.path.normcase(os.path.realpath(f)))
        if known:
            return Ref(image_id=known)
        same_name = self.photos.get(f.stem)  # added by an earlier apply-decisions (a copy of this file)
        if same_name is not None and same_name.path.is_file() and same_bytes(same_name.path, f):
            return Ref(image_id=same_name.id)
        return Ref(file=f)

    def refusal(self, file: Path) -> str | None:
        """Why a new photo's file is not taken into the catalogue, or ``None``: it must lie (links followed) in the
        catalogue's folder or a ``--new-photos`` folder, have an image file's suffix and decode as an image."""
        if file not in self._refusals:
            self._refusals[file] = self._why_not(file)
        return self._refusals[file]

    def _why_not(self, file: Path) -> str | None:
        real = os.path.realpath(file)
        if not any(inside(real, folder) is not None for folder in self.sources):
            return (f"{shorten(file)} is outside the folders new photos may come from ({', '.join(self.sources)}"
                    f"{'' if real == os.path.abspath(file) else f'; it links to {shorten(real)}'}): name its folder "
                    "with --new-photos DIR")
        if Path(real).suffix.lower() not in IMAGE_SUFFIXES:
            return f"{shorten(file)} is not an image file (its name ends {Path(real).suffix or 'without a suffix'!r})"
        try:
            images.load(Path(real))
        except ImageError as exc:
            return f"not taken as a new photo: {exc}"
        return None


def same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def inside(path: Path, folder: Path) -> str | None:
    """``path`` relative to ``folder`` (POSIX) when inside it, else None."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    return None if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel) else Path(rel).as_posix()
