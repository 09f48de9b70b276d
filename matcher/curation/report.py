"""Static HTML review page: one file plus its images folder, tables sortable by any column.

The page needs no server and no network: open ``report.html`` in a browser. Each
table row holds a candidate pair with its match picture (click it for the full
size); clicking a column header sorts the rows by it (numbers largest first on
the first click, then the other way). A table with a :class:`~.review_page.Review`
gets decision controls on each row (see :mod:`.review_page`). Also here: what every
command's pages and tables share (:data:`PAIR_COLUMNS`, :func:`pictures_relative`,
:func:`write_csv`).
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from ..io.atomic import atomic_path
from . import review_page
from .review_page import Review, asset


@dataclass
class Column:
    key: str
    label: str
    kind: str = "text"  # text | num | int | prob | picture
    title: str = ""  # tooltip explaining the column


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[dict]
    note: str = ""
    table_id: str = ""
    empty: str = "nothing to show"
    review: Review | None = None  # decision controls on each row, for the pair this names


@dataclass
class Report:
    title: str
    summary: list[str] = field(default_factory=list)  # lines of plain text
    tables: list[Table] = field(default_factory=list)
    lead_picture: str = ""  # e.g. the search's new photo (path relative to the page)
    lead_caption: str = ""
    run_id: str = ""  # keys the decisions the page stores in the browser; "": a new one at each rendering

    @property
    def reviewable(self) -> bool:
        return any(t.review is not None and t.rows for t in self.tables)


CSS = asset("report.css")

SCRIPT = asset("report.js")


def _esc(v) -> str:
    return html.escape(str(v), quote=True)


def _is_blank(v) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def _cell(col: Column, v) -> str:
    if col.kind == "picture":
        if _is_blank(v):
            return '<td class="picture none">no picture</td>'
        src = _esc(v)
        return (f'<td class="picture"><a href="{src}" target="_blank">'
                f'<img src="{src}" alt="match picture" loading="lazy"></a></td>')
    if col.kind in ("num", "int", "prob"):
        if _is_blank(v):
            return '<td class="num none" data-value="">&ndash;</td>'
        f = float(v)
        text = f"{int(round(f))}" if col.kind == "int" else (f"{f:.2f}" if col.kind == "prob" else f"{f:.3f}")
        cls = "num"
        if col.kind == "prob":
            cls += " hi" if f >= 0.9 else " mid" if f >= 0.5 else " lo"
        return f'<td class="{cls}" data-value="{f!r}">{text}</td>'
    text = "" if _is_blank(v) else str(v)
    return f'<td class="{"long" if len(text) > 24 else "text"}">{_esc(text)}</td>'


def _table(t: Table, n: int) -> str:
    tid = t.table_id or f"table{n}"
    out = [f'<section id="{_esc(tid)}-section"><h2>{_esc(t.title)}</h2>']
    if t.note:
        out.append(f'<p class="note">{_esc(t.note)}</p>')
    if not t.rows:
        out.append(f'<p class="note"><em>{_esc(t.empty)}</em></p></section>')
        return "\n".join(out)
    # columns blank in every row (no notes, no errors) are left out
    columns = [c for c in t.columns if c.kind == "picture" or any(not _is_blank(r.get(c.key)) for r in t.rows)]
    # the decision controls come right after the (first) picture, else last
    at = next((i + 1 for i, c in enumerate(columns) if c.kind == "picture"), len(columns)) if t.review else -1
    out.append(f'<div class="scroll"><table class="sortable" id="{_esc(tid)}"><thead><tr>')
    for i, c in enumerate(columns):
        dtype = "num" if c.kind in ("num", "int", "prob") else "text"
        if c.kind == "picture":
            out.append(f'<th data-key="{_esc(c.key)}" title="{_esc(c.title)}">{_esc(c.label)}</th>')
        else:
            out.append(f'<th class="sortable" data-type="{dtype}" data-key="{_esc(c.key)}" '
                       f'title="{_esc(c.title or "click to sort")}">{_esc(c.label)}</th>')
        if i + 1 == at:
            out.append(review_page.HEADER)
    out.append("</tr></thead><tbody>")
    for row in t.rows:
        cells = [_cell(c, row.get(c.key)) for c in columns]
        if t.review:
            cells.insert(at, t.review.cell)
            out.append(f'<tr class="review" {t.review.attributes(row)}>' + "".join(cells) + "</tr>")
        else:
            out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div></section>")
    return "\n".join(out)


def render(report: Report) -> str:
    review = report.reviewable
    run = report.run_id or review_page.new_run_id()
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="whalematch-run" content="{_esc(run)}">',
        f"<title>{_esc(report.title)}</title><style>{CSS}{review_page.CSS if review else ''}</style></head>",
        f'<body data-run="{_esc(run)}"' + (' class="wm-review">' if review else ">"),
        f"<h1>{_esc(report.title)}</h1>",
    ]
    if report.summary:
        parts.append('<ul class="summary">' + "".join(f"<li>{_esc(s)}</li>" for s in report.summary) + "</ul>")
    if report.lead_picture:
        parts.append(f'<figure class="lead"><img src="{_esc(report.lead_picture)}" alt="{_esc(report.lead_caption)}">'
                     f"<figcaption>{_esc(report.lead_caption)}</figcaption></figure>")
    for n, t in enumerate(report.tables, 1):
        parts.append(_table(t, n))
    if review:
        parts.append(review_page.toolbar())
    parts.append(f"<script>{SCRIPT}</script>" + (f"<script>{review_page.SCRIPT}</script>" if review else ""))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def relative(path: Path, page: Path) -> str:
    """``path`` as a URL relative to the page's folder (forward slashes)."""
    rel = Path(os.path.relpath(Path(path).resolve(), Path(page).resolve().parent)).as_posix()
    return quote(rel, safe="/")


def write(report: Report, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".html") as tmp:
        tmp.write_text(render(report), encoding="utf-8")
    return path


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write a results table atomically (a reader never sees half a file)."""
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    return path


def pictures_relative(rows: list[dict], page: Path, key: str = "picture") -> list[dict]:
    """Copies of the rows with their picture paths made relative to the page."""
    out = []
    for r in rows:
        r = dict(r)
        if r.get(key):
            r[key] = relative(Path(r[key]), page)
        out.append(r)
    return out


PAIR_COLUMNS = [
    Column("rank", "#", "int", "rank by P(same whale), else by score"),
    Column("image_a", "image A"),
    Column("image_b", "image B"),
    Column("picture", "match picture (click for full size)", "picture"),
    Column("n_inliers", "inliers", "int", "matches consistent with one affine map"),
    Column("score", "score", "num", "engine score: s / (s + score_scale), s = inliers + mean inlier similarity"),
    Column("probability", "P(same)", "prob", "calibrated probability of the same whale, at the prior stated above"),
    Column("verdict", "verdict"),
    Column("note", "note"),
]


def fmt(v, spec=".3f") -> str:
    """A number for printing; ``n/a`` when blank."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return "n/a"
    return format(v, spec)
