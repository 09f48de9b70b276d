"""Paths given by users or read from their tables: checked before any file system call, and shown shortened.

A path is refused (:class:`~matcher.errors.DataError`, naming where it came from) when a component is longer
than the file system allows (:data:`NAME_MAX` bytes) or the whole is longer than :data:`PATH_MAX`: the
operating system would answer such a name with ``ENAMETOOLONG`` from any call, ``Path.is_file`` included.
A path read from a table is never opened unless it stays inside the folder it is relative to
(:func:`safe_join`). Values echoed in messages are shortened (:func:`shorten`): a 20 MB field is not
printed whole.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import DataError

NAME_MAX = 255  # bytes of one path component (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units)
PATH_MAX = 4096  # bytes of a whole path (Linux)
SHOWN = 240  # characters of a value a message shows


def shorten(value, limit: int = SHOWN) -> str:
    """``value`` as text, cut in the middle to about ``limit`` characters (the length said) when longer."""
    text = str(value)
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 4
    return f"{text[:head]}...{text[-tail:]} ({len(text):,} characters)"


def os_error(exc: OSError) -> str:
    """An operating system error as one line naming the file (shortened), for an entrypoint's last resort."""
    names = [shorten(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(names) or 'a file'}: {exc.strerror or exc}"


def too_long(path) -> str | None:
    """Why the file system would refuse ``path`` for its length, or ``None``."""
    text = os.fsencode(str(path))
    if len(text) > PATH_MAX:
        return f"{len(text):,} bytes long; at most {PATH_MAX:,}"
    longest = max((len(part) for part in text.split(b"/")), default=0)
    if longest > NAME_MAX:
        return f"a name of {longest:,} bytes in it; at most {NAME_MAX} per folder or file name"
    return None


def checked(path, what: str = "path") -> Path:
    """``path`` as a :class:`Path` if its length is one the file system takes; :class:`DataError` naming ``what``
    and the shortened path otherwise."""
    why = too_long(path)
    if why:
        raise DataError(f"{what} {shorten(path)!r}: too long for a file name ({why})")
    return Path(path)


def safe_join(root: Path, relative: str, source: Path) -> Path:
    """``root / relative`` if it stays inside ``root``; :class:`DataError` naming ``source`` otherwise (never read).

    The check is on the path as written (``..`` resolved lexically, no file system
    access), so a refused path is never opened, not even to look at it. Links inside
    ``root`` are followed when the file is read: whoever can place a link in the data
    folder could place the file itself.
    """
    rel = str(relative).strip()
    if "\x00" in rel or any(ord(ch) < 32 for ch in rel):
        raise DataError(f"{source}: path {shorten(relative)!r} holds control characters; refused")
    if not rel or PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        raise DataError(f"{source}: path {shorten(relative)!r} is absolute or empty; refused (paths must stay in "
                        f"{root})")
    root_abs = Path(os.path.abspath(root))
    target = Path(os.path.abspath(root_abs / rel))
    if target == root_abs or os.path.commonpath([root_abs, target]) != str(root_abs):
        raise DataError(f"{source}: path {shorten(relative)!r} points outside the data folder {root}; refused")
    why = too_long(target)
    if why:
        raise DataError(f"{source}: path {shorten(relative)!r} is too long for a file name ({why}); refused")
    return target
