(function () {
  function value(row, index, numeric) {
    var cell = row.cells[index];
    var v = cell ? cell.getAttribute('data-value') : null;
    if (v === null) { v = cell ? cell.textContent.trim() : ''; }
    if (!numeric) { return v.toLowerCase(); }
    var f = parseFloat(v);
    return isNaN(f) ? null : f;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var headers = table.querySelectorAll('th.sortable');
    headers.forEach(function (th) {
      th.addEventListener('click', function () {
        var numeric = th.getAttribute('data-type') === 'num';
        var current = th.getAttribute('aria-sort');
        var dir = current ? (current === 'descending' ? 'ascending' : 'descending')
                          : (numeric ? 'descending' : 'ascending');
        var sign = dir === 'ascending' ? 1 : -1;
        var index = th.cellIndex;
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = value(a, index, numeric), y = value(b, index, numeric);
          if (x === y) { return 0; }
          if (x === null) { return 1; }   // blanks last either way
          if (y === null) { return -1; }
          return x < y ? -sign : sign;
        });
        rows.forEach(function (r) { body.appendChild(r); });
        headers.forEach(function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', dir);
      });
    });
  });
})();
