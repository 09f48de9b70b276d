"""The one reader of photo catalogues: a metadata CSV (``image_id,path`` and optionally ``viewpoint``,
``whale_id``, ``date``, ``encounter_id``, ``height``, ``width``; paths relative to the CSV's folder), a folder
holding ``metadata.csv``, or a plain folder of image files.

The challenge's data layout, the development-scenario builder, the curation tool and the benchmarks
all read catalogues here. :func:`read_metadata` is tolerant (problems confined to one image are
recorded for that image); :func:`read_photos` refuses any such problem.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import DataError
from .paths import checked, safe_join
from .tables import read_csv

log = logging.getLogger(__name__)

METADATA_COLUMNS = ("image_id", "path")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
LATERAL = ("left", "right")


@dataclass(frozen=True)
class Photo:
    id: str
    path: Path
    viewpoint: str = ""
    whale_id: str = ""
    date: str = ""
    encounter_id: str = ""


def read_metadata(path: Path, required: tuple[str, ...] = METADATA_COLUMNS) -> tuple[pd.DataFrame, dict[str, str]]:
    """A metadata CSV indexed by image_id, and the image ids whose rows cannot be used (with the reason).

    Tolerant: a row with an empty image_id is ignored, repeated rows are dropped, and an image id listed
    with two different paths, or with an empty path, is recorded as a problem of that image alone.
    """
    path = Path(path)
    meta = read_csv(path, tuple(dict.fromkeys((*METADATA_COLUMNS, *required))), nonblank=())
    problems: dict[str, str] = {}
    blank_id = meta["image_id"] == ""
    if blank_id.any():
        log.warning("%s: %d row(s) with an empty image_id ignored (line(s) %s)", path, int(blank_id.sum()),
                    ", ".join(str(i + 2) for i in meta.index[blank_id][:5]))
        meta = meta[~blank_id]
    dup = meta["image_id"].duplicated()
    if dup.any():
        exact = meta.duplicated(["image_id", "path"])
        if exact.any():
            log.warning("%s: %d repeated row(s) ignored", path, int(exact.sum()))
        distinct = meta[~exact]
        clash = distinct["image_id"][distinct["image_id"].duplicated()].unique()
        for image_id in clash:
            paths = distinct.loc[distinct["image_id"] == image_id, "path"].tolist()
            problems[image_id] = (f"{path}: image_id {image_id!r} is listed twice with different paths "
                                  f"({', '.join(map(repr, paths[:3]))}); refused as ambiguous")
            log.warning("%s", problems[image_id])
        meta = meta[~dup]
    for image_id, p in zip(meta["image_id"], meta["path"]):
        if image_id not in problems and p == "":
            problems[image_id] = f"{path}: image {image_id!r} has an empty path"
    return meta.set_index("image_id", drop=False), problems


def metadata_file(source: Path) -> Path:
    """``source`` if it is a CSV file, else ``source/metadata.csv``; :class:`DataError` when neither exists."""
    source = checked(source, "catalogue")
    if source.is_file():
        return source
    if not source.is_dir():
        raise DataError(f"{source}: catalogue folder not found")
    if not (source / "metadata.csv").is_file():
        raise DataError(f"{source / 'metadata.csv'}: metadata file not found")
    return source / "metadata.csv"


def read_photos(csv_path: Path) -> dict[str, Photo]:
    """Photos of a metadata CSV by image id (paths made safe and absolute); any unusable row is an error."""
    csv_path = Path(csv_path)
    meta, problems = read_metadata(csv_path)
    if problems:
        raise DataError(next(iter(problems.values())))
    out = {}
    for row in meta.to_dict("records"):
        out[row["image_id"]] = Photo(
            id=row["image_id"],
            path=safe_join(csv_path.parent, row["path"], csv_path),
            viewpoint=str(row.get("viewpoint", "")).strip().lower(),
            whale_id=str(row.get("whale_id", "")).strip(),
            date=str(row.get("date", "")).strip(),
            encounter_id=str(row.get("encounter_id", "")).strip(),
        )
    return out


def load_catalogue(source: Path) -> list[Photo]:
    """A catalogue from a metadata CSV, a folder holding ``metadata.csv``, or a folder of image files."""
    source = checked(source, "catalogue")
    if source.is_file() or (source / "metadata.csv").is_file():
        return list(read_photos(metadata_file(source)).values())
    if not source.is_dir():
        raise DataError(f"{source}: catalogue not found (give a folder of images or a metadata CSV)")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{source}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    return [Photo(id=p.relative_to(source).as_posix(), path=p) for p in files]


def view_group(viewpoint: str) -> str:
    """``top``, ``lateral`` or ``""`` (unknown): photos are comparable within a group."""
    v = (viewpoint or "").strip().lower()
    return "lateral" if v in LATERAL else v


def comparable(a: Photo, b: Photo) -> bool:
    """Whether two photos can show the same marks: same view group, or a view unknown."""
    ga, gb = view_group(a.viewpoint), view_group(b.viewpoint)
    return not ga or not gb or ga == gb


def resolve_photo(value: str, meta: dict[str, Photo] | None, base: Path | None = None) -> Photo:
    """An image id of the metadata, else a path (relative to the working folder, then to ``base``)."""
    if meta is not None and value in meta:
        return meta[value]
    path = checked(Path(value).expanduser(), "image")
    if not path.is_absolute() and not path.exists() and base is not None and (base / path).exists():
        path = base / path
    if meta is not None and not path.exists():
        raise DataError(f"{value!r} is neither an image id of the metadata nor an image file")
    return Photo(id=value, path=path)


def apply_subset(photos: list[Photo], subset: Path | None) -> list[Photo]:
    """Only the photos whose image id a CSV (column image_id) lists, when one is given."""
    if subset is None:
        return photos
    keep = set(read_csv(subset, ("image_id",))["image_id"])
    out = [p for p in photos if p.id in keep]
    if not out:
        raise DataError(f"{subset}: none of its image ids is in the catalogue")
    return out
