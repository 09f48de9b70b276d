(function () {
  'use strict';
  var COLUMNS = ['query_image', 'candidate_image', 'candidate_whale', 'decision', 'comment', 'reviewer', 'time',
                 'sighting'];
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
  function photosOf(tr) {
    try { return JSON.parse(tr.getAttribute('data-photos') || '[]'); } catch (e) { return []; }
  }
  function record(tr, change) {
    var k = keyOf(tr);
    var d = decisions[k] || {query_image: tr.getAttribute('data-q'), candidate_image: tr.getAttribute('data-c'),
                             candidate_whale: tr.getAttribute('data-w') || '', decision: '', comment: '',
                             sighting: tr.getAttribute('data-s') || '', photos: photosOf(tr)};
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
      // a row that stands for every photo of a sighting is exported once per photo
      var queries = d.photos && d.photos.length ? d.photos : [d.query_image];
      queries.forEach(function (q) {
        var one = Object.assign({}, row, {query_image: q});
        lines.push(COLUMNS.map(function (c) { return field(one[c]); }).join(','));
      });
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
      var value = key === 'x' ? '' : KEYS[key];
      if (value === 'same' && current.getAttribute('data-new') === '1') { value = 'new whale'; }
      record(current, {decision: value});
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
