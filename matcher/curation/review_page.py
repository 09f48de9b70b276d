"""Decisions on the review page: Same / Different / Not sure and a comment for each candidate row.

Still a static page (no server, opens from disk). A table given a :class:`Review` marks each row with
its pair (``data-q``: the query image, ``data-c``: the candidate image, ``data-w``: the candidate's
whale) and gives it the decision controls. The script keeps the decisions in the browser's
``localStorage`` under ``whalematch-decisions:<the page's path>:<run id>`` (the run id is written into
the page when it is made, so a new run's page starts afresh and two runs never share decisions), so
they survive a reload; rows of two tables showing the same pair share one decision. "Export decisions"
downloads them as a CSV (:data:`EXPORT_COLUMNS`) for ``whalematch apply-decisions``.

Keys (outside the comment box): ``j``/``k`` next/previous row, ``n`` next undecided row, ``s`` same,
``d`` different, ``u`` not sure (each then moves to the next row; with no row selected the first key
selects the first row), ``x`` clear, ``c`` comment (Enter or Esc leaves it). The bar at the foot of the
window lists them.
"""

from __future__ import annotations

import datetime as dt
import html
import secrets
from dataclasses import dataclass

EXPORT_COLUMNS = ("query_image", "candidate_image", "candidate_whale", "decision", "comment", "reviewer", "time")
DECISIONS = ("same", "different", "not sure")
SHORTCUTS = ("j / k next / previous · n next undecided · s same · d different · u not sure · x clear · "
             "c comment (Enter leaves it)")


@dataclass(frozen=True)
class Review:
    """Which fields of a table's rows name the pair a decision is about."""

    candidate: str  # row key of the candidate image
    whale: str = ""  # row key of the candidate's whale id
    query: str = ""  # row key of the query image ...
    query_value: str = ""  # ... or one query image for every row (a search's new photo)

    def attributes(self, row: dict) -> str:
        q = self.query_value if not self.query else row.get(self.query, "")
        values = {"data-q": q, "data-c": row.get(self.candidate, ""), "data-w": row.get(self.whale, "") if self.whale
                  else ""}
        return " ".join(f'{k}="{_esc("" if v is None else v)}"' for k, v in values.items())


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


def toolbar() -> str:
    """The bar fixed at the foot of the window: reviewer, progress, export, keys."""
    return ('<div class="wm-bar" id="wm-bar">'
            '<label>reviewer <input type="text" id="wm-reviewer" size="14" placeholder="your name"></label>'
            '<span id="wm-status" class="wm-status">decisions: loading</span>'
            '<button type="button" id="wm-export" title="download the decisions as a CSV for '
            'whalematch apply-decisions">Export decisions (CSV)</button>'
            f'<span class="wm-keys" id="wm-keys" title="keyboard shortcuts">keys: {_esc(SHORTCUTS)}</span>'
            '</div>')


CSS = """
html { scroll-padding-bottom: 5rem; scroll-padding-top: 3rem; }
body.wm-review { padding-bottom: 4.5rem; }
.wm-bar { position: fixed; left: 0; right: 0; bottom: 0; z-index: 5; display: flex; flex-wrap: wrap; gap: .4rem 1rem;
          align-items: center; padding: .45rem 1.2rem; background: #1d232a; color: #f2f4f6; font-size: 14px; }
.wm-bar input { font: inherit; padding: .1rem .3rem; }
.wm-bar button { font: inherit; padding: .2rem .7rem; cursor: pointer; }
.wm-keys { color: #b8c2cc; }
.wm-status.wm-warn { color: #ffcf70; font-weight: 600; }
td.wm-decide { white-space: nowrap; min-width: 15.5em; }
.wm-buttons { display: flex; gap: .25rem; margin-bottom: .25rem; }
.wm-buttons button { font: 13px system-ui, sans-serif; padding: .2rem .45rem; border: 1px solid #b5bcc4;
                     border-radius: 3px; background: #fff; cursor: pointer; }
.wm-buttons button[aria-pressed="true"] { color: #fff; }
.wm-buttons button[aria-pressed="true"][data-decision="same"] { background: #1f7a3a; border-color: #1f7a3a; }
.wm-buttons button[aria-pressed="true"][data-decision="different"] { background: #a12626; border-color: #a12626; }
.wm-buttons button[aria-pressed="true"][data-decision="not sure"] { background: #9a6a00; border-color: #9a6a00; }
input.wm-comment { width: 100%; box-sizing: border-box; font: 13px system-ui, sans-serif; padding: .15rem .3rem; }
tr.review[data-decision="same"] td { background: #e9f6ed; }
tr.review[data-decision="different"] td { background: #fbeced; }
tr.review[data-decision="not sure"] td { background: #fff6e0; }
tr.review.wm-current td { box-shadow: inset 0 2px 0 #2b6cb0, inset 0 -2px 0 #2b6cb0; }
tr.review.wm-current td:first-child { box-shadow: inset 4px 0 0 #2b6cb0, inset 0 2px 0 #2b6cb0,
                                                  inset 0 -2px 0 #2b6cb0; }
"""

SCRIPT = r"""
(function () {
  'use strict';
  var COLUMNS = ['query_image', 'candidate_image', 'candidate_whale', 'decision', 'comment', 'reviewer', 'time'];
  var KEYS = {s: 'same', d: 'different', u: 'not sure'};
  var run = document.body.getAttribute('data-run') || '';
  var storeKey = 'whalematch-decisions:' + location.pathname + ':' + run;
  var status = document.getElementById('wm-status');
  var reviewer = document.getElementById('wm-reviewer');
  var store = null;
  try {
    store = window.localStorage;
    store.setItem('whalematch-probe', '1');
    store.removeItem('whalematch-probe');
  } catch (e) { store = null; }
  var decisions = {};
  if (store) {
    try { decisions = (JSON.parse(store.getItem(storeKey) || '{}').decisions) || {}; } catch (e) { decisions = {}; }
    reviewer.value = store.getItem('whalematch-reviewer') || '';
  }
  var rows = Array.prototype.slice.call(document.querySelectorAll('tr.review'));
  var byKey = {}, order = [];
  function keyOf(tr) { return tr.getAttribute('data-q') + '\u001f' + tr.getAttribute('data-c'); }
  rows.forEach(function (tr) {
    var k = keyOf(tr);
    if (!byKey[k]) { byKey[k] = []; order.push(k); }
    byKey[k].push(tr);
  });
  var current = null;

  function paint(tr) {
    var d = decisions[keyOf(tr)] || {};
    tr.setAttribute('data-decision', d.decision || '');
    var buttons = tr.querySelectorAll('button[data-decision]');
    for (var i = 0; i < buttons.length; i++) {
      var on = buttons[i].getAttribute('data-decision') === d.decision;
      buttons[i].setAttribute('aria-pressed', on ? 'true' : 'false');
    }
    var box = tr.querySelector('input.wm-comment');
    if (box && document.activeElement !== box) { box.value = d.comment || ''; }
  }
  function count() {
    var n = 0;
    for (var k in decisions) { if (decisions[k].decision) { n++; } }
    status.textContent = n + ' of ' + order.length + ' decided' +
      (store ? ' (kept in this browser)' : ' - this browser does not keep them: export before closing');
    status.classList.toggle('wm-warn', !store);
  }
  function save() {
    if (!store) { return; }
    try {
      store.setItem(storeKey, JSON.stringify({version: 1, page: location.pathname, run: run, decisions: decisions}));
    } catch (e) { status.textContent = 'decisions could not be stored (' + e.message + '): export them now'; }
  }
  function record(tr, change) {
    var k = keyOf(tr);
    var d = decisions[k] || {query_image: tr.getAttribute('data-q'), candidate_image: tr.getAttribute('data-c'),
                             candidate_whale: tr.getAttribute('data-w') || '', decision: '', comment: ''};
    for (var f in change) { d[f] = change[f]; }
    d.reviewer = reviewer.value.trim();
    d.time = new Date().toISOString();
    if (!d.decision && !d.comment) { delete decisions[k]; } else { decisions[k] = d; }
    byKey[k].forEach(paint);
    count();
    save();
  }
  function setCurrent(tr, scroll) {
    if (current) { current.classList.remove('wm-current'); }
    current = tr;
    if (tr) {
      tr.classList.add('wm-current');
      if (scroll) { tr.scrollIntoView({block: 'center'}); }
    }
  }
  function listed() { return Array.prototype.slice.call(document.querySelectorAll('tr.review')); }
  function move(step) {
    var list = listed();
    if (!list.length) { return; }
    var i = current ? list.indexOf(current) : -1;
    var j = i < 0 ? (step > 0 ? 0 : list.length - 1) : Math.min(list.length - 1, Math.max(0, i + step));
    setCurrent(list[j], true);
  }
  function nextUndecided() {
    var list = listed();
    var i = current ? list.indexOf(current) : -1;
    for (var n = 1; n <= list.length; n++) {
      var tr = list[(i + n) % list.length];
      var d = decisions[keyOf(tr)];
      if (!d || !d.decision) { setCurrent(tr, true); return; }
    }
  }
  function field(v) {
    v = v === undefined || v === null ? '' : String(v);
    return /[",\r\n]|^\s|\s$/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
  }
  function csv() {
    var lines = [COLUMNS.join(',')];
    var keys = order.concat(Object.keys(decisions).filter(function (k) { return !byKey[k]; }));
    keys.forEach(function (k) {
      var d = decisions[k];
      if (!d) { return; }
      var row = Object.assign({}, d, {reviewer: d.reviewer || reviewer.value.trim()});
      lines.push(COLUMNS.map(function (c) { return field(row[c]); }).join(','));
    });
    return lines.join('\r\n') + '\r\n';
  }
  function download() {
    var blob = new Blob([csv()], {type: 'text/csv;charset=utf-8'});
    var a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'whalematch-decisions-' + run + '.csv';
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 2000);
  }

  document.addEventListener('click', function (e) {
    var tr = e.target.closest ? e.target.closest('tr.review') : null;
    if (!tr) { return; }
    var button = e.target.closest('button[data-decision]');
    if (button) {
      var value = button.getAttribute('data-decision');
      var d = decisions[keyOf(tr)];
      record(tr, {decision: d && d.decision === value ? '' : value});
    }
    setCurrent(tr, false);
  });
  document.addEventListener('input', function (e) {
    if (e.target.classList && e.target.classList.contains('wm-comment')) {
      var tr = e.target.closest('tr.review');
      setCurrent(tr, false);
      record(tr, {comment: e.target.value});
    }
  });
  reviewer.addEventListener('input', function () {
    if (!store) { return; }
    try { store.setItem('whalematch-reviewer', reviewer.value.trim()); } catch (e) { /* kept in the page only */ }
  });
  document.getElementById('wm-export').addEventListener('click', download);
  document.addEventListener('keydown', function (e) {
    var t = e.target;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) {
      if ((e.key === 'Enter' || e.key === 'Escape') && t.classList.contains('wm-comment')) {
        t.blur();
        e.preventDefault();
      }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) { return; }
    var key = e.key;
    if (key === 'j') { move(1); }
    else if (key === 'k') { move(-1); }
    else if (key === 'n') { nextUndecided(); }
    else if (KEYS[key] || key === 'x') {
      if (!current) { move(1); return; }
      record(current, {decision: key === 'x' ? '' : KEYS[key]});
      if (key !== 'x') { move(1); }
    } else if (key === 'c') {
      if (!current) { move(1); }
      if (current) { current.querySelector('input.wm-comment').focus(); }
    } else { return; }
    e.preventDefault();
  });

  rows.forEach(function (tr) { if (decisions[keyOf(tr)]) { paint(tr); } });
  count();
  window.whalematchReview = {ready: performance.now(), storeKey: storeKey, csv: csv,
                             decisions: function () { return decisions; }};
  document.body.setAttribute('data-review-ready', '1');
})();
"""
