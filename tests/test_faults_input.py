"""Issue 6, item 1: bad input. Each problem gets a message naming the file and the problem, and
the run goes on wherever it can; a path leaving the data folder is refused and never opened."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import conftest
import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import textured_image
from faultdata import (
    FIELDS,
    bad_folder,
    clean_folder,
    encode,
    huge_jpeg,
    meta_row,
    patch_jpeg_size,
    png_header_only,
    whale_views,
    write_csv,
    write_scenarios,
)
from PIL import Image

from matcher import presets
from matcher.challenge import layout, submission
from matcher.challenge.run import rank_scenarios
from matcher.engine import Engine
from matcher.errors import DataError, ImageError
from matcher.features import extractors as features
from matcher.features.store import feature_store
from matcher.io import images, paths
from matcher.pairs.store import VerdictStore
from matcher.pairs.verifier import PairVerifier

PRESET = "sift-mnn"
ENV = {**os.environ, "WHALEMATCH_TIME_BUDGET": "none", "WHALEMATCH_STAGE2": "none"}


def run_main(data_dir: Path, out: Path, cache: Path) -> subprocess.CompletedProcess:
    return conftest.run_main(data_dir, out, cache, preset=PRESET, env=ENV)


def read_submission(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"query_id": str, "database_image_id": str}, keep_default_na=False)


# ---------------------------------------------------------------- the whole folder of bad input


def test_a_folder_of_every_bad_input_gives_a_complete_valid_submission(tmp_path):
    folder = bad_folder(tmp_path / "data")
    out = tmp_path / "out" / "submission.csv"
    res = run_main(folder.root, out, tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    log = res.stderr
    assert "Traceback" not in log

    # every unusable image is named, with its file and its problem
    for image_id, fragment in folder.unusable.items():
        line = next((ln for ln in log.splitlines() if f"unusable image {image_id}:" in ln), None)
        assert line is not None, f"{image_id} not reported:\n{log}"
        assert fragment in line, line
    assert re.search(r"unusable image missing: \S*images/missing\.jpg: image file not found", log)
    assert re.search(r"unusable image truncated: \S*images/truncated\.jpg: corrupt or truncated image", log)
    assert re.search(r"unusable image outside: \S*metadata\.csv: path '\.\./\.\./etc/passwd' points outside", log)
    assert re.search(r"unusable image absolute: \S*metadata\.csv: path '/etc/passwd' is absolute", log)
    assert re.search(r"unusable image ghost: \S*metadata\.csv: image 'ghost' is not listed", log)
    assert re.search(r"metadata\.csv is not UTF-8 \(byte 0xf4 on line 2\)", log)
    assert "metadata.csv: 1 repeated row(s) ignored" in log
    assert "queries/main.csv: 1 repeated query row(s) ignored" in log
    assert "databases/main.csv: 3 repeated database row(s) ignored" in log
    assert "database of scenario nodb is empty" in log
    for odd in folder.usable_odd:  # decodable oddities are used, not reported
        assert f"unusable image {odd}:" not in log
    m = re.search(r"(\d+) images \((\d+) unusable, (\d+) extracted\)", log)
    assert m and int(m.group(2)) == len(folder.unusable)

    # the submission: valid, every query with a database answered in full, best first
    sub = read_submission(out)
    expected = {q: (img, set(db)) for q, (img, db) in folder.expected_queries.items()}
    submission.validate(sub, expected)
    counts = sub.groupby("query_id").size()
    for qid, (qimg, db) in folder.expected_queries.items():
        want = min(20, len(set(db) - {qimg}))
        assert counts.get(qid, 0) == want, qid  # the empty database's queries: no rows, and valid
    assert "nodb-w0a" not in counts and "nodb-ghost" not in counts
    top = sub.groupby("query_id").first()["database_image_id"]
    # other views of a whale, in other formats, are found: PNG, grayscale, CMYK, 16-bit
    assert top["q-w0a"] in {"w0b", "png"} and top["q-w1a"] in {"w1b", "gray"}
    assert top["q-w2a"] in {"w2b", "cmyk"} and top["q-w3a"] in {"w3b", "png16"}
    scores = sub.set_index(["query_id", "database_image_id"])["score"]
    for qid, other in [("q-w0a", "png"), ("q-w1a", "gray"), ("q-w2a", "cmyk"), ("q-w3a", "png16"), ("q-png", "w0a"),
                       ("q-gray", "w1a")]:
        assert scores[(qid, other)] > 0.5, (qid, other)
    for bad in folder.unusable:  # ranked around, with score 0
        assert (sub.loc[sub["database_image_id"] == bad, "score"] == 0).all()
    for qid in ("q-truncated", "q-outside", "q-ghost", "q-flat"):  # a query that cannot be matched: score 0 answers
        rows = sub[sub["query_id"] == qid]
        assert len(rows) == 20 and (rows["score"] == 0).all()
    assert (sub.loc[sub["database_image_id"] == "flat", "score"] == 0).all()


# ---------------------------------------------------------------- paths that leave the data folder


def test_paths_outside_the_data_folder_are_refused_and_never_opened(tmp_path, monkeypatch):
    """The refused files are valid copies of a whale's photo: had one been read, it would have matched."""
    views = whale_views(1)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "inside.jpg").write_bytes(encode(views["w0a"]))
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    secret = secret_dir / "w0b.jpg"
    secret.write_bytes(encode(views["w0b"]))
    escapes = {
        "dotdot": "../secret/w0b.jpg",
        "dotdot2": "images/../../secret/w0b.jpg",
        "absolute": str(secret),
        "passwd": "../../../../../../etc/passwd",
        "etc": "/etc/passwd",
        "windows": "C:\\secret\\w0b.jpg",
        "unc": "\\\\server\\share\\w0b.jpg",
        "root": ".",
    }
    rows = [meta_row("inside", "images/inside.jpg")] + [meta_row(k, v) for k, v in escapes.items()]
    write_csv(root / "metadata.csv", FIELDS, rows)
    write_scenarios(root, {"s": ([("q", "inside")], list(escapes))})

    opened: list[str] = []
    watching = {"on": False}

    def audit(event, args):
        if watching["on"] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(audit)
    challenge = layout.load(root)
    watching["on"] = True
    try:
        sub, expected = rank_scenarios(challenge, Engine(PRESET, None, "cpu", progress=False))
    finally:
        watching["on"] = False
    assert not [p for p in opened if "secret" in p or "passwd" in p], opened
    assert any(p.endswith("inside.jpg") for p in opened)  # the hook does see the files that are read
    submission.validate(sub, expected)
    assert len(sub) == len(escapes) and (sub["score"] == 0).all()
    for image_id, _path in escapes.items():
        with pytest.raises(DataError, match=r"metadata\.csv: path .* (points outside|is absolute)"):
            challenge.image_path(image_id)
    assert challenge.image_path("inside") == (root / "images" / "inside.jpg").absolute()


@pytest.mark.parametrize("rel", ["images/a\x00.jpg", "images/\nname.jpg", "", "   "])
def test_control_characters_and_empty_paths_are_refused(tmp_path, rel):
    with pytest.raises(DataError, match=r"meta\.csv: path .* (control characters|absolute or empty)"):
        paths.safe_join(tmp_path, rel, tmp_path / "meta.csv")


def test_scenario_files_outside_the_folder_are_refused(tmp_path):
    folder = clean_folder(tmp_path / "data", n_whales=2)
    (tmp_path / "evil.csv").write_text("query_id,query_image_id\nq,w0a\n")
    write_csv(folder.root / "query_scenarios.csv", ["scenario_id", "queries_path", "database_path"],
              [["s", "../evil.csv", "databases/all.csv"]])
    with pytest.raises(DataError, match=r"query_scenarios\.csv: path '\.\./evil\.csv' points outside the data folder"):
        layout.load(folder.root)


# ---------------------------------------------------------------- images


def _png16(gray: np.ndarray) -> bytes:
    return encode(np.repeat(gray[..., None], 3, 2), "PNG", mode="I;16")


def _cv2(ext: str, arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


def _pil(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


RGB = textured_image(5, (120, 90))
GRAY = np.asarray(Image.fromarray(RGB).convert("L"))
FORMATS = {  # name -> (bytes, the gray picture it must decode to, least correlation with it)
    "png": lambda: (encode(RGB, "PNG"), 0.99),
    "gray-jpeg": lambda: (encode(RGB, mode="L"), 0.97),
    "cmyk-jpeg": lambda: (encode(RGB, mode="CMYK"), 0.97),
    "png-16bit-gray": lambda: (_png16(GRAY), 0.97),
    "png-48bit-rgb": lambda: (_cv2(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257), 0.99),
    "tiff-16bit-rgb": lambda: (_cv2(".tiff", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257), 0.99),
    "palette-transparent": lambda: (_pil(Image.fromarray(RGB).convert("P"), "PNG", transparency=0), 0.9),
    "rgba": lambda: (encode(RGB, "PNG", mode="RGBA"), 0.99),
    "la": lambda: (encode(RGB, "PNG", mode="LA"), 0.99),
    "bilevel": lambda: (encode(RGB, "PNG", mode="1"), 0.3),  # dithered: only roughly the same picture
    "float-tiff": lambda: (_pil(Image.fromarray(GRAY.astype(np.float32)), "TIFF"), 0.97),
    "webp": lambda: (encode(RGB, "WEBP", lossless=True), 0.99),
    "bmp": lambda: (encode(RGB, "BMP"), 0.99),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_decodes_to_8bit_rgb(fmt):
    data_bytes, least = FORMATS[fmt]()
    arr = images.decode(data_bytes, f"x.{fmt}")
    assert arr.dtype == np.uint8 and arr.shape == (*RGB.shape[:2], 3)
    got = np.asarray(Image.fromarray(arr).convert("L")).astype(float)
    assert np.corrcoef(GRAY.astype(float).ravel(), got.ravel())[0, 1] > least, fmt  # the same picture


def test_flat_16bit_image_does_not_divide_by_zero():
    arr = images.decode(_png16(np.full((40, 40), 77, np.uint8)), "flat16.png")
    assert arr.shape == (40, 40, 3) and arr.dtype == np.uint8 and len(np.unique(arr)) == 1


def _jpeg() -> bytes:
    return encode(RGB)


BROKEN = {
    "truncated-jpeg": (lambda: _jpeg()[: len(_jpeg()) // 2], "corrupt or truncated image"),
    "header-then-noise": (lambda: _jpeg()[:20] + np.random.default_rng(1).bytes(3000), "not an image file|corrupt"),
    "zero-bytes": (lambda: b"", "not an image file"),
    "html": (lambda: b"<html>404</html>", "not an image file"),
    "truncated-png": (lambda: encode(RGB, "PNG")[:300], "corrupt or truncated image"),
    "tiny-8x8": (lambda: encode(RGB[:8, :8], "PNG"), r"image too small \(8x8 pixels"),
    "one-row": (lambda: encode(RGB[:1, :], "PNG"), r"image too small \(90x1 pixels"),
    "bomb-header": (lambda: png_header_only(30_000, 30_000), "too large to decode safely"),
    "just-over-the-limit": (lambda: png_header_only(8_001, 8_000), r"too large to decode safely \(8001x8000 declared"),
    "patched-jpeg-header": (lambda: patch_jpeg_size(_jpeg(), 19_000, 19_000), "too large to decode safely"),
    "lab-tiff": (lambda: _pil(Image.fromarray(RGB).convert("LAB"), "TIFF"), None),
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, before our refusal
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_unusable_bytes_raise_an_image_error_naming_the_file(kind):
    make, pattern = BROKEN[kind]
    try:
        arr = images.decode(make(), "images/broken.jpg")
    except ImageError as exc:
        assert str(exc).startswith("images/broken.jpg: ")
        assert pattern and re.search(pattern, str(exc)), str(exc)
    else:
        assert pattern is None, f"{kind} decoded"  # an odd colour space may decode; then it is proper RGB
        assert arr.dtype == np.uint8 and arr.shape == (*RGB.shape[:2], 3)


def test_read_bytes_refuses_what_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")  # opening a FIFO for reading would block forever
    with pytest.raises(ImageError, match=r"pipe\.jpg: not a regular file"):
        images.read_bytes(tmp_path / "pipe.jpg")
    with pytest.raises(ImageError, match=r"dir: cannot read image file"):
        (tmp_path / "dir").mkdir()
        images.read_bytes(tmp_path / "dir")
    with pytest.raises(ImageError, match=r"nope\.jpg: image file not found"):
        images.read_bytes(tmp_path / "nope.jpg")


def test_7000_pixel_jpeg_decodes_reduced():
    data = huge_jpeg()
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (7_000, 7_000)
    arr = images.load(images.Blob("huge.jpg", data))
    side = images.DECODE_MAX_SIDE
    assert max(arr.shape[:2]) == 3500 and arr.shape[0] == arr.shape[1]  # decoded at 1/2 scale, the least above 2560
    assert side <= 3500 < 2 * side


def test_a_photo_up_to_twice_the_decode_side_decodes_in_full():
    """No photo of the development catalogue (at most 4,561 pixels wide) is reduced: its features stay those of
    the full decode."""
    rgb = cv2.resize(RGB, (4561, 947))
    arr = images.load(images.Blob("wide.jpg", encode(rgb)))
    assert arr.shape == (947, 4561, 3)


def test_7000_pixel_png_is_reduced_right_after_decoding():
    img = Image.new("L", (7_000, 7_000), 60)
    img.paste(Image.fromarray(RGB[..., 0]).resize((2000, 2000)), (2500, 2500))
    data = _pil(img, "PNG", compress_level=1)
    del img
    arr = images.load(images.Blob("huge.png", data))
    assert arr.dtype == np.uint8 and arr.shape == (3500, 3500, 3)  # 147 MB as full-size RGB; 37 MB kept
    assert arr[1750, 1750, 0] != 60 and arr[100, 100, 0] == 60  # the picture survived the reduction


def test_a_small_file_that_declares_a_large_image_decodes_with_a_warning(caplog):
    """A 45 KB JPEG patched to claim 19,000 x 19,000 pixels is refused from its header (above); under the cap it
    decodes (at reduced scale) but is named as implausible: it is no photograph."""
    small = encode(RGB)
    with caplog.at_level(logging.WARNING, logger="matcher.io.images"):
        arr = images.load(images.Blob("patched.jpg", patch_jpeg_size(small, 6000, 6000)))
    assert max(arr.shape[:2]) <= 3000
    assert any("patched.jpg: declares 6000x6000 pixels in" in r.getMessage() and "patched header" in r.getMessage()
               for r in caplog.records), caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="matcher.io.images"):
        images.load(images.Blob("real.jpg", huge_jpeg(3000)))
    assert not caplog.records  # a real large photo holds far more bytes per pixel


def test_a_16bit_png_over_the_limit_is_reduced_before_normalising():
    arr16 = (np.indices((9000, 100)).sum(0) % 4096).astype(np.uint16) * 16
    data = _pil(Image.fromarray(arr16), "PNG", compress_level=1)
    arr = images.decode(data, "tall16.png", max_side=4096)
    assert arr.shape == (4500, 50, 3) and arr.dtype == np.uint8


# ---------------------------------------------------------------- an image without keypoints


def test_flat_image_has_no_keypoints_and_scores_zero_through_matching_and_ransac(tmp_path):
    conf = presets.resolve(PRESET)
    ex = features.build(conf["extractor"], "cpu")
    flat = np.full((200, 300, 3), 128, np.uint8)
    f_flat, f_tex = ex.extract([flat, textured_image(4)])
    assert len(f_flat["keypoints"]) == 0 and f_flat["descriptors"].shape == (0, 128)
    assert len(f_tex["keypoints"]) > 100
    verifier = PairVerifier(conf, "cpu", VerdictStore(tmp_path / "pairs.sqlite", presets.verdict_settings_key(conf)))
    for a, b in ((f_flat, f_tex), (f_tex, f_flat), (f_flat, f_flat)):
        v = verifier.verify_pair(a, b)
        assert v["n_matches"] == 0 and v["n_inliers"] == 0 and v["score"] == 0.0 and v["model"] is None
    cache = feature_store(tmp_path / "features", conf["extractor"])  # an empty entry is stored and read back
    cache.put("ab" * 32, f_flat)
    back = cache.get("ab" * 32)
    assert back is not None and back["keypoints"].shape == (0, 2) and back["descriptors"].shape == (0, 128)


# ---------------------------------------------------------------- CSV files


def _folder(tmp_path: Path) -> Path:
    return clean_folder(tmp_path / "data", n_whales=2).root


def test_non_utf8_metadata_is_read_with_a_warning(tmp_path, caplog):
    root = _folder(tmp_path)
    rows = pd.read_csv(root / "metadata.csv", dtype=str).values.tolist()
    rows[1][4] = "côté gauche"  # cp1252 / Latin-1
    write_csv(root / "metadata.csv", FIELDS, rows, encoding="cp1252")
    with caplog.at_level(logging.WARNING):
        ch = layout.load(root)
    assert re.search(r"metadata\.csv is not UTF-8 \(byte 0xf4 on line 3\); reading it as Windows-1252", caplog.text)
    assert ch.metadata.loc[rows[1][0], "viewpoint"] == "côté gauche"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_unicode_with_byte_order_mark_is_read(tmp_path, caplog, encoding):
    root = _folder(tmp_path)
    rows = pd.read_csv(root / "metadata.csv", dtype=str).values.tolist()
    write_csv(root / "metadata.csv", FIELDS, rows, encoding=encoding)
    ch = layout.load(root)
    assert list(ch.metadata.index) == [r[0] for r in rows] and "not UTF-8" not in caplog.text


def test_quoted_fields_with_commas_crlf_and_semicolons(tmp_path, caplog):
    root = _folder(tmp_path)
    os.rename(root / "images" / "w0a.jpg", root / "images" / "w0a, left side.jpg")
    rows = pd.read_csv(root / "metadata.csv", dtype=str).values.tolist()
    rows[0][1] = "images/w0a, left side.jpg"
    write_csv(root / "metadata.csv", FIELDS, rows, quote_all=True, crlf=True)
    text = (root / "queries" / "all.csv").read_text().replace(",", ";")
    (root / "queries" / "all.csv").write_text(text)
    with caplog.at_level(logging.WARNING):
        ch = layout.load(root)
    assert ch.image_path("w0a").name == "w0a, left side.jpg" and ch.image_path("w0a").is_file()
    assert re.search(r"queries/all\.csv is separated by ';', not commas", caplog.text)
    assert list(ch.scenarios[0].queries["query_image_id"]) == ["w0a", "w1a"]


def test_renamed_column_names_the_file_and_suggests_the_column(tmp_path):
    root = _folder(tmp_path)
    text = (root / "metadata.csv").read_text().replace("image_id", "imageid", 1)
    (root / "metadata.csv").write_text(text)
    with pytest.raises(DataError) as exc:
        layout.load(root)
    msg = str(exc.value)
    assert re.search(r"metadata\.csv: missing column\(s\) image_id; found imageid, path", msg), msg
    assert "'imageid' for 'image_id'?" in msg


def test_missing_column_names_the_file(tmp_path):
    root = _folder(tmp_path)
    (root / "databases" / "all.csv").write_text("w0a\nw0b\n")  # no header at all
    with pytest.raises(DataError, match=r"databases/all\.csv: missing column\(s\) database_image_id; found w0a"):
        layout.load(root)


def test_column_names_differing_in_case_or_spacing_are_accepted(tmp_path, caplog):
    root = _folder(tmp_path)
    text = (root / "queries" / "all.csv").read_text().replace("query_id,query_image_id", " Query ID , Query-Image-ID ")
    (root / "queries" / "all.csv").write_text(text)
    with caplog.at_level(logging.WARNING):
        ch = layout.load(root)
    assert "reading column(s) 'Query ID' as 'query_id'" in caplog.text
    assert list(ch.scenarios[0].queries["query_id"]) == ["all-w0a", "all-w1a"]


@pytest.mark.parametrize("name, content, pattern", [
    ("query_scenarios.csv", b"", r"query_scenarios\.csv: file is empty"),
    ("query_scenarios.csv", None, r"query_scenarios\.csv: file not found"),
    ("metadata.csv", b"image_id,path\n\"w0a,images/w0a.jpg\n", r"metadata\.csv: malformed CSV"),
    ("metadata.csv", b"image_id,path\x00\n", r"metadata\.csv: holds NUL bytes"),
    ("queries/all.csv", b"query_id,query_image_id\nq1,w0a\nq1,w1a\n", r"all\.csv: query_id 'q1' is given two"),
    ("queries/all.csv", b"query_id,query_image_id\nq1,\n", r"all\.csv: empty query_image_id on line\(s\) 2"),
])
def test_unreadable_csv_stops_the_run_with_the_file_and_the_problem(tmp_path, name, content, pattern):
    root = _folder(tmp_path)
    if content is None:
        (root / name).unlink()
    else:
        (root / name).write_bytes(content)
    with pytest.raises(DataError, match=pattern):
        layout.load(root)


def test_row_level_metadata_problems_affect_only_their_image(tmp_path, caplog):
    root = _folder(tmp_path)
    rows = pd.read_csv(root / "metadata.csv", dtype=str).values.tolist()
    rows.append(list(rows[0]))  # an exact repeat
    rows.append([rows[1][0], "images/w1a.jpg", "", "", "", ""])  # w0b listed again, another path
    rows.append(["nopath", "", "", "", "", ""])
    rows.append(["", "images/w1a.jpg", "", "", "", ""])  # no image_id
    write_csv(root / "metadata.csv", FIELDS, rows)
    with caplog.at_level(logging.WARNING):
        ch = layout.load(root)
    assert "metadata.csv: 1 repeated row(s) ignored" in caplog.text
    assert "metadata.csv: 1 row(s) with an empty image_id ignored (line(s) 9)" in caplog.text
    with pytest.raises(DataError, match=r"image_id 'w0b' is listed twice with different paths"):
        ch.image_path("w0b")
    with pytest.raises(DataError, match=r"image 'nopath' has an empty path"):
        ch.image_path("nopath")
    assert ch.image_path("w0a").is_file() and ch.image_path("w1b").is_file()


def test_empty_database_file_and_header_only_database(tmp_path, caplog):
    root = _folder(tmp_path)
    (root / "databases" / "all.csv").write_bytes(b"")
    (root / "databases" / "half.csv").write_text("database_image_id\n")
    with caplog.at_level(logging.WARNING):
        ch = layout.load(root)
    assert [s.database for s in ch.scenarios] == [[], []]
    assert "databases/all.csv is empty (no header); read as no rows" in caplog.text
    assert "database of scenario half is empty" in caplog.text
    sub, expected = rank_scenarios(ch, Engine(PRESET, None, "cpu", progress=False))
    assert len(sub) == 0 and len(expected) == 4
    submission.validate(sub, expected)
    submission.write(sub, tmp_path / "sub.csv", expected)
    assert (tmp_path / "sub.csv").read_text().strip() == "query_id,database_image_id,score"


def test_query_image_missing_from_metadata_is_answered_with_score_zero(tmp_path, caplog):
    root = _folder(tmp_path)
    write_scenarios(root, {"s": ([("q-ghost", "ghost"), ("q-w0a", "w0a")], ["w0a", "w0b", "w1a", "w1b"])})
    ch = layout.load(root)
    with caplog.at_level(logging.WARNING):
        sub, expected = rank_scenarios(ch, Engine(PRESET, None, "cpu", progress=False))
    assert re.search(r"unusable image ghost: \S*metadata\.csv: image 'ghost' is not listed", caplog.text)
    submission.validate(sub, expected)
    ghost = sub[sub["query_id"] == "q-ghost"]
    assert list(ghost["database_image_id"]) == ["w0a", "w0b", "w1a", "w1b"] and (ghost["score"] == 0).all()
    assert sub[sub["query_id"] == "q-w0a"]["database_image_id"].iloc[0] == "w0b"
