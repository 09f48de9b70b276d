"""Generated challenge-layout data folders, clean or full of bad input, for the fault-injection tests.

``clean_folder`` writes a small valid folder: a few "whales" (random textures), each seen
twice under a known warp, in two scenarios. ``bad_folder`` writes the same whales plus one
of every kind of bad input the engine must survive (see :data:`BAD_IMAGES`), in CSVs that are
Latin-1 encoded, fully quoted, with CRLF line ends and repeated rows.
"""

from __future__ import annotations

import csv
import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from conftest import textured_image, warp_affine
from PIL import Image

FIELDS = ["image_id", "path", "height", "width", "viewpoint", "date"]


def encode(rgb: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **kw) -> bytes:
    img = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
    elif mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}), **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels and holds no pixel data (a decompression bomb's shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def huge_jpeg(side: int = 7_000, seed: int = 7) -> bytes:
    """A ``side x side`` JPEG (49 megapixels by default, under the decoder's cap), textured in a grid of tiles (cheap
    to encode, costly to decode naively)."""
    big = Image.new("RGB", (side, side), (90, 90, 90))
    tile = Image.fromarray(textured_image(seed, (1000, 1000)))
    for x in range(0, side, 2500):
        for y in range(0, side, 2500):
            big.paste(tile, (x, y))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=70)
    return buf.getvalue()


def patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0/SOF2) claims ``width x height``: what a decompression bomb made from a small
    file looks like."""
    i = 2
    while i < len(data) - 9:
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC2):
            return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]
        i += 2 + length
    raise ValueError("no frame header")


def whale_views(n_whales: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``w{k}a`` and ``w{k}b``: two views (a known affine warp apart) of each of ``n_whales`` textures."""
    rng = np.random.default_rng(seed)
    out = {}
    for w in range(n_whales):
        base = textured_image(500 + seed * 50 + w, size=(240, 96))
        out[f"w{w}a"] = base
        out[f"w{w}b"], _ = warp_affine(base, angle=float(rng.uniform(-6, 6)), scale=float(rng.uniform(0.9, 1.1)),
                                       shift=(float(rng.uniform(-5, 5)), float(rng.uniform(-5, 5))))
    return out


def write_csv(path: Path, header: list[str], rows: list[list], encoding: str = "utf-8", quote_all: bool = False,
              crlf: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL,
                        lineterminator="\r\n" if crlf else "\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))


def meta_row(image_id: str, path: str, shape=(0, 0), viewpoint: str = "top") -> list:
    return [image_id, path, shape[0], shape[1], viewpoint, "2018-08-01"]


def write_scenarios(root: Path, scenarios: dict[str, tuple[list[tuple[str, str]], list[str]]], **csv_kw) -> None:
    """``scenarios``: id -> ([(query_id, query_image_id)], [database_image_id]); plus query_scenarios.csv."""
    index = []
    for sid, (queries, database) in scenarios.items():
        write_csv(root / "queries" / f"{sid}.csv", ["query_id", "query_image_id"], [list(q) for q in queries], **csv_kw)
        write_csv(root / "databases" / f"{sid}.csv", ["database_image_id"], [[d] for d in database], **csv_kw)
        index.append([sid, f"queries/{sid}.csv", f"databases/{sid}.csv"])
    write_csv(root / "query_scenarios.csv", ["scenario_id", "queries_path", "database_path"], index, **csv_kw)


@dataclass
class Folder:
    root: Path
    expected_queries: dict[str, tuple[str, list[str]]]  # query_id -> (query image id, database ids)
    unusable: dict[str, str] = field(default_factory=dict)  # image id -> fragment of its log message
    usable_odd: list[str] = field(default_factory=list)  # odd but decodable images (must be ranked with features)


def clean_folder(root: Path, n_whales: int = 4) -> Folder:
    """A valid folder: each ``w{k}a`` a query against all images (scenario ``all``), two against the ``b`` views
    (``half``)."""
    views = whale_views(n_whales)
    rows = []
    for image_id, rgb in views.items():
        rel = f"images/{image_id}.jpg"
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(encode(rgb))
        rows.append(meta_row(image_id, rel, rgb.shape))
    write_csv(root / "metadata.csv", FIELDS, rows)
    ids = list(views)
    a_ids = [i for i in ids if i.endswith("a")]
    b_ids = [i for i in ids if i.endswith("b")]
    scenarios = {
        "all": ([(f"all-{q}", q) for q in a_ids], ids),
        "half": ([(f"half-{q}", q) for q in a_ids[:2]], b_ids),
    }
    write_scenarios(root, scenarios)
    expected = {qid: (q, db) for qs, db in scenarios.values() for qid, q in qs}
    return Folder(root, expected)


# image id -> (how the file is made, fragment the log must show for it); None: decodable, must be used.
BAD_IMAGES = {
    "missing": ("no file at all", "image file not found"),
    "truncated": ("first half of a JPEG", "truncated"),
    "corrupt": ("JPEG header followed by noise", "corrupt"),
    "notimage": ("an HTML page named .jpg", "not an image file"),
    "empty": ("a zero-byte file", "not an image file"),
    "tiny": ("a 6x6 JPEG", "too small"),
    "bomb": ("PNG header claiming 30000x30000 pixels", "too large"),
    "outside": ("metadata path ../../etc/passwd", "outside the data folder"),
    "absolute": ("metadata path /etc/passwd", "absolute"),
    "folder": ("metadata path naming a folder", "cannot read image file"),
    "ambiguous": ("listed twice with different paths", "listed twice with different paths"),
    "ghost": ("in a query and a database, not in the metadata", "not listed"),
}
ODD_IMAGES = ["png", "gray", "cmyk", "png16", "huge", "flat"]


def bad_folder(root: Path, huge: bool = True) -> Folder:
    """Whales ``w0..w3`` (two views each), odd-but-usable images, every bad image, and CSV faults.

    * metadata.csv: Latin-1 (a viewpoint ``côté``), every field quoted, CRLF, a repeated row;
    * scenario ``main``: queries are ``w*a``, the odd images and several bad ones, plus a
      repeated query row; database is every image, some listed twice;
    * scenario ``nodb``: a database file with the header only;
    * the odd images are whale views in another format (``png`` = w0b as PNG, ``gray`` = w1b
      grayscale, ``cmyk`` = w2b CMYK JPEG, ``png16`` = w3b 16-bit PNG), a 10,000 x 10,000
      JPEG (``huge``; 7,000 x 7,000) and a flat-colour image with no keypoints (``flat``).
    """
    views = whale_views(4)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []

    def put(image_id: str, data: bytes, ext: str = "jpg", shape=(0, 0), viewpoint="top") -> None:
        rel = f"images/{image_id}.{ext}"
        (root / rel).write_bytes(data)
        rows.append(meta_row(image_id, rel, shape, viewpoint))

    for image_id, rgb in views.items():
        put(image_id, encode(rgb), shape=rgb.shape, viewpoint="côté" if image_id == "w0a" else "top")
    put("png", encode(views["w0b"], "PNG"), "png")
    put("gray", encode(views["w1b"], mode="L"))
    put("cmyk", encode(views["w2b"], mode="CMYK"))
    put("png16", encode(views["w3b"], "PNG", mode="I;16"), "png")
    if huge:
        put("huge", huge_jpeg())
    put("flat", encode(np.full((200, 300, 3), 128, np.uint8)))

    jpeg = encode(views["w1a"])
    rows.append(meta_row("missing", "images/missing.jpg"))
    put("truncated", jpeg[: len(jpeg) // 2])
    noise = np.random.default_rng(3).integers(0, 256, len(jpeg), dtype=np.uint8).tobytes()
    put("corrupt", jpeg[:20] + noise)
    put("notimage", b"<html><body>404 Not Found</body></html>\n")
    put("empty", b"")
    put("tiny", encode(views["w2a"][:6, :6]))
    put("bomb", png_header_only(30_000, 30_000), "png")
    rows.append(meta_row("outside", "../../etc/passwd"))
    rows.append(meta_row("absolute", "/etc/passwd"))
    rows.append(meta_row("folder", "images"))
    rows.append(meta_row("ambiguous", "images/w0a.jpg"))
    rows.append(meta_row("ambiguous", "images/w1a.jpg"))
    rows.append(list(rows[0]))  # an exact repeat of the first row
    write_csv(root / "metadata.csv", FIELDS, rows, encoding="latin-1", quote_all=True, crlf=True)

    usable = list(views) + ODD_IMAGES if huge else list(views) + [o for o in ODD_IMAGES if o != "huge"]
    bad = list(BAD_IMAGES)
    database = usable + bad
    query_images = [i for i in views if i.endswith("a")] + ["png", "gray", "flat", "truncated", "outside", "ghost"]
    queries = [(f"q-{i}", i) for i in query_images]
    scenarios = {
        "main": (queries + [queries[0]], database + database[:3]),
        "nodb": ([("nodb-w0a", "w0a"), ("nodb-ghost", "ghost")], []),
    }
    write_scenarios(root, scenarios, quote_all=True)
    expected = {qid: (q, list(dict.fromkeys(db))) for qs, db in scenarios.values() for qid, q in qs}
    unusable = {k: msg for k, (_, msg) in BAD_IMAGES.items()}
    return Folder(root, expected, unusable, [o for o in ODD_IMAGES if o in usable])


# ---------------------------------------------------------------------------------------------
# Fault-injecting runner: ``python tests/faultdata.py SPEC -- main.py's arguments`` runs main.py
# in this process with one fault armed. SPEC is ``point:N``; the process SIGKILLs itself
#   feature-put:N      right after the N-th feature file is stored (renamed into place)
#   feature-write:N    halfway through writing the N-th feature file (its temporary file)
#   pair-commit:N      right after the N-th transaction of verdicts is committed
#   pair-midtx:N       inside the N-th transaction of verdicts, its rows written, before COMMIT
#   submission-write:1 halfway through writing the submission (its temporary file)
#   submission-rename:1 with the submission written in full to its temporary file, before the rename


def _die() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _arm(spec: str) -> None:
    import contextlib
    import threading

    from matcher.challenge import submission
    from matcher.io import array_store
    from matcher.pairs import store as pair_store

    point, n = spec.rsplit(":", 1)
    n = int(n)
    calls = {"n": 0}
    lock = threading.Lock()

    def nth() -> bool:  # feature files are written from a thread pool
        with lock:
            calls["n"] += 1
            return calls["n"] == n

    if point == "feature-put":
        real_put = array_store.ArrayStore.put

        def put(self, sha, feats):
            real_put(self, sha, feats)
            if nth():
                _die()

        array_store.ArrayStore.put = put
    elif point == "feature-write":
        real_savez = np.savez

        def savez(fh, **arrays):
            if not nth():
                return real_savez(fh, **arrays)
            buf = io.BytesIO()
            real_savez(buf, **arrays)
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            fh.flush()
            _die()

        np.savez = savez  # only the feature cache calls it in this process
    elif point in ("pair-commit", "pair-midtx"):
        real_put_many = pair_store.VerdictStore.put_many

        def put_many(self, verdicts):
            if point == "pair-midtx" and nth():
                self.conn.execute("BEGIN")
                self.conn.executemany(pair_store.INSERT, self.rows(verdicts))
                _die()
            real_put_many(self, verdicts)
            if point == "pair-commit" and nth():
                _die()

        pair_store.VerdictStore.put_many = put_many
    elif point in ("submission-write", "submission-rename"):
        real_atomic = submission.atomic_path

        @contextlib.contextmanager
        def atomic_path(path, suffix=""):
            with real_atomic(path, suffix) as tmp:
                yield tmp
                if point == "submission-write":
                    data = Path(tmp).read_bytes()
                    Path(tmp).write_bytes(data[: len(data) // 2])
                _die()

        submission.atomic_path = atomic_path
    else:
        raise SystemExit(f"unknown fault point {point!r}")


if __name__ == "__main__":
    import sys

    repo = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(repo), str(Path(__file__).resolve().parent)]
    spec, sep, *main_args = sys.argv[1:]
    assert sep == "--", "usage: faultdata.py SPEC -- main.py arguments"
    _arm(spec)
    import main as entry

    sys.exit(entry.main(main_args))
