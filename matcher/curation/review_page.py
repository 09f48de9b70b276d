"""Decisions on the review page: Same / Different / Not sure and a comment for each candidate row.

Still a static page (no server, opens from disk). A table given a :class:`Review` marks each row with
its pair (``data-q``: the query image, ``data-c``: the candidate image, ``data-w``: the candidate's
whale) and gives it the decision controls. The script keeps the decisions in the browser's
``localStorage`` under ``whalematch-decisions:<the page's path>:<run id>`` (the run id is written into
the page when it is made, so a new run's page starts afresh and two runs never share decisions), so
they survive a reload; rows of two tables showing the same pair share one decision. "Export decisions"
downloads them as a CSV (:data:`EXPORT_COLUMNS`) for ``whalematch apply-decisions``; a row that stands for
every photo of a sighting (``data-photos``) is exported once per photo. A new-whale row (``data-new``) has no
candidate: its decisions are New whale / Not new / Not sure.

Keys (outside the comment box): ``j``/``k`` next/previous row, ``n`` next undecided row, ``s`` same,
``d`` different, ``u`` not sure (each then moves to the next row; with no row selected the first key
selects the first row), ``x`` clear, ``c`` comment (Enter or Esc leaves it). The bar at the foot of the
window lists them.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import secrets
from dataclasses import dataclass
from importlib import resources

EXPORT_COLUMNS = ("query_image", "candidate_image", "candidate_whale", "decision", "comment", "reviewer", "time",
                  "sighting")
DECISIONS = ("same", "different", "not sure", "new whale")
SHORTCUTS = ("j / k next / previous · n next undecided · s same (on a new-whale row: new whale) · d different · "
             "u not sure · x clear · c comment (Enter leaves it)")


@dataclass(frozen=True)
class Review:
    """Which fields of a table's rows name the pair a decision is about."""

    candidate: str  # row key of the candidate image
    whale: str = ""  # row key of the candidate's whale id
    query: str = ""  # row key of the query image ...
    query_value: str = ""  # ... or one query image for every row (a search's new photo)
    sighting: str = ""  # row key of the sighting the query photo belongs to ("": none)
    photos: str = ""  # row key of a list of photos the row stands for (a sighting's): exported once for each
    new_whale: bool = False  # the rows ask "is the query photo a new whale?" (no candidate: New whale / No / ?)

    def attributes(self, row: dict) -> str:
        q = self.query_value if not self.query else row.get(self.query, "")
        values = {"data-q": q, "data-c": "" if self.new_whale else row.get(self.candidate, ""),
                  "data-w": row.get(self.whale, "") if self.whale and not self.new_whale else "",
                  "data-s": row.get(self.sighting, "") if self.sighting else ""}
        extra = ' data-new="1"' if self.new_whale else ""
        if self.photos and row.get(self.photos):
            extra += f' data-photos="{_esc(json.dumps(list(row[self.photos])))}"'
        return " ".join(f'{k}="{_esc("" if v is None else v)}"' for k, v in values.items()) + extra

    @property
    def cell(self) -> str:
        return NEW_WHALE_CELL if self.new_whale else CELL


def _esc(v) -> str:
    return html.escape(str(v), quote=True)


def new_run_id() -> str:
    """A page's run id: when it was written, and a random part."""
    return f"{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


HEADER = '<th class="wm-decide" data-key="decision" title="your decision on this pair (keys s, d, u)">decision</th>'

CELL = ('<td class="wm-decide"><div class="wm-buttons" role="group" aria-label="decision">'
        '<button type="button" data-decision="same" aria-pressed="false" title="same whale (s)">Same</button>'
        '<button type="button" data-decision="different" aria-pressed="false" title="different whales (d)">'
        'Different</button>'
        '<button type="button" data-decision="not sure" aria-pressed="false" title="not sure (u)">Not sure</button>'
        '</div><input type="text" class="wm-comment" placeholder="comment" aria-label="comment"></td>')

NEW_WHALE_CELL = ('<td class="wm-decide"><div class="wm-buttons" role="group" aria-label="decision">'
                  '<button type="button" data-decision="new whale" aria-pressed="false" '
                  'title="none of the catalogue\'s whales: a new whale (s)">New whale</button>'
                  '<button type="button" data-decision="different" aria-pressed="false" '
                  'title="not a new whale: decide its match in the tables below (d)">Not new</button>'
                  '<button type="button" data-decision="not sure" aria-pressed="false" title="not sure (u)">'
                  'Not sure</button>'
                  '</div><input type="text" class="wm-comment" placeholder="comment" aria-label="comment"></td>')


def toolbar() -> str:
    """The bar fixed at the foot of the window: reviewer, progress, export, keys."""
    return ('<div class="wm-bar" id="wm-bar">'
            '<label>reviewer <input type="text" id="wm-reviewer" size="14" placeholder="your name"></label>'
            '<span id="wm-status" class="wm-status">decisions: loading</span>'
            '<button type="button" id="wm-export" title="download the decisions as a CSV for '
            'whalematch apply-decisions">Export decisions (CSV)</button>'
            f'<span class="wm-keys" id="wm-keys" title="keyboard shortcuts">keys: {_esc(SHORTCUTS)}</span>'
            '</div>')


def asset(name: str) -> str:
    """One of the pages' assets: their CSS and JavaScript, files of the package (matcher/curation/assets/)."""
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


CSS = asset("review.css")

SCRIPT = asset("review.js")
