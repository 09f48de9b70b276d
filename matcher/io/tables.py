"""Read CSV tables the way users write them, and resolve the paths they hold safely.

A file that cannot be read as the CSV it should be (missing, malformed, a required
column absent) raises :class:`~matcher.errors.DataError` naming the file and what is
wrong. Encodings: UTF-8 (with or without BOM), UTF-16 with a BOM, else Windows-1252 /
Latin-1 with a warning; ``,``, ``;``, tab or ``|`` separated, quoted or not. Column names
are matched ignoring case, spaces and ``-``/``_``. A row with more fields than the header
is an error naming its line. Paths read from a table are made safe by
:func:`matcher.io.paths.safe_join`.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
import re
from pathlib import Path

import pandas as pd

from ..errors import DataError
from .paths import checked, shorten

log = logging.getLogger(__name__)

MAX_CSV_BYTES = 512 * 1024 * 1024  # a CSV this large is not a table of this project


def _decode_text(path: Path, raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not valid UTF-16 text despite its byte-order mark ({exc})") from None
    if b"\x00" in raw:
        raise DataError(f"{path}: holds NUL bytes; not a text CSV file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        where = raw[: exc.start].count(b"\n") + 1
        for encoding in ("cp1252", "latin-1"):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                continue
            log.warning("%s is not UTF-8 (byte 0x%02x on line %d); reading it as %s",
                        path, raw[exc.start], where, "Windows-1252" if encoding == "cp1252" else "Latin-1")
            return text
    raise AssertionError("latin-1 decodes every byte string")  # pragma: no cover


def _separator(text: str) -> str:
    header = next((line for line in text.splitlines() if line.strip()), "")
    counts = {sep: header.count(sep) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=lambda s: (counts[s], s == ","))
    return best if counts[best] else ","


def _norm(name: str) -> str:
    return re.sub(r"[\s\-_]+", "_", str(name).strip().strip('"').strip()).lower()


def _parse(path: Path, text: str, sep: str, required: tuple[str, ...]) -> pd.DataFrame:
    """The table of strings, the first line its header. A row with more fields than the header is an error naming
    its line: left to pandas, the extra leading fields of such rows would become an index and every column would
    shift (``q001,train0114,x,y`` read as query ``x``). Missing trailing fields are read as blanks."""
    try:
        # header=None: pandas then takes the field count from the header line and refuses any longer row
        raw = pd.read_csv(io.StringIO(text), sep=sep, header=None, dtype=str, keep_default_na=False,
                          skipinitialspace=True, skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (expected columns {', '.join(required)})") from None
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if m:
            raise DataError(f"{path}: line {m.group(2)} has {m.group(3)} fields but the header has {m.group(1)} (a "
                            f"separator {sep!r} inside an unquoted value, or a column without a name?)") from None
        raise DataError(f"{path}: malformed CSV ({shorten(str(exc).strip())})") from None
    names = [str(c).strip() for c in raw.iloc[0]]
    for name in dict.fromkeys(names):
        if names.count(name) > 1 and (name in required or _norm(name) in {_norm(r) for r in required}):
            raise DataError(f"{path}: column {shorten(name)!r} appears {names.count(name)} times in the header")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):  # other repeated names get suffixes, as pandas gives them
        k = seen.get(name, 0)
        seen[name] = k + 1
        if k:
            names[i] = f"{name}.{k}"
    df = raw.iloc[1:].reset_index(drop=True)
    df.columns = names
    return df


def read_csv(path: Path, required: tuple[str, ...], nonblank: tuple[str, ...] | None = None,
             empty_ok: bool = False) -> pd.DataFrame:
    """A CSV of strings with the required columns (names matched ignoring case and spacing).

    ``nonblank`` (default: all required) are columns where an empty value is an error;
    ``empty_ok``: a file with no bytes at all is read as no rows.
    """
    path = checked(path, "CSV file")
    if not path.is_file():
        raise DataError(f"{path}: file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise DataError(f"{path}: {size:,} bytes is too large for a CSV file of this layout")
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    text = _decode_text(path, raw)
    if not text.strip():
        if empty_ok:
            log.warning("%s is empty (no header); read as no rows", path)
            return pd.DataFrame({c: pd.Series(dtype=str) for c in required})
        raise DataError(f"{path}: file is empty (expected columns {', '.join(required)})")
    sep = _separator(text)
    if sep != ",":
        log.warning("%s is separated by %r, not commas; reading it so", path, sep)
    df = _parse(path, text, sep, required)
    if any(c not in df.columns for c in required):
        by_norm = {}
        for c in df.columns:
            by_norm.setdefault(_norm(c), c)
        renames = {by_norm[_norm(r)]: r for r in required if r not in df.columns and _norm(r) in by_norm}
        if renames:
            log.warning("%s: reading column(s) %s", path, ", ".join(f"{a!r} as {b!r}" for a, b in renames.items()))
            df = df.rename(columns=renames)
    missing = [c for c in required if c not in df.columns]
    if missing:
        hints = []
        for c in missing:
            close = difflib.get_close_matches(c, [str(x) for x in df.columns], n=1, cutoff=0.5)
            if close:
                hints.append(f"{close[0]!r} for {c!r}?")
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns)) or 'none'}"
            + (f" (renamed? {' '.join(hints)})" if hints else "")
        )
    for col in required:
        df[col] = df[col].astype(str).str.strip()
    for col in required if nonblank is None else nonblank:
        blank = df[col] == ""
        if blank.any():
            raise DataError(f"{path}: empty {col} on line(s) {', '.join(str(i + 2) for i in df.index[blank][:5])}")
    return df
