// wbc-counter review page: keyboard-first gallery. Plain JS, no libraries, nothing from elsewhere.
// Keys: arrows move, 1-6 reclassify (edge_app.labels.CLASSES order), x "not a leukocyte",
// enter confirms the page (every cell on it, as it now is) and opens the next class,
// s goes to the sign button, r to the re-open reason, a shows the attention map.
(function () {
  'use strict';
  var root = document.getElementById('review');
  if (!root) return;
  var sid = root.dataset.session;
  var csrf = document.querySelector('meta[name="csrf"]').content;
  var editable = root.dataset.editable === 'true';
  var cells = Array.prototype.slice.call(document.querySelectorAll('#cells .cell'));
  var keys = {};
  document.querySelectorAll('.actions .set').forEach(function (b) {
    keys[b.querySelector('kbd').textContent] = b.dataset.label;
  });
  var sel = cells.length ? 0 : -1;
  var showAttention = false;

  function say(text) {
    var m = document.getElementById('message');
    m.textContent = text;
    m.hidden = !text;
  }

  function select(i) {
    if (!cells.length) return;
    sel = Math.max(0, Math.min(cells.length - 1, i));
    cells.forEach(function (c, j) { c.classList.toggle('selected', j === sel); });
    cells[sel].focus({ preventScroll: false });
    if (showAttention) attention();
  }

  // Up/down: the cell in the next row (by position on screen) nearest in x.
  function vertical(dir) {
    var cur = cells[sel].getBoundingClientRect();
    var best = -1, bestScore = Infinity;
    cells.forEach(function (c, j) {
      var r = c.getBoundingClientRect();
      var dy = (r.top - cur.top) * dir;
      if (dy < 5) return;
      var score = dy * 10 + Math.abs(r.left - cur.left);
      if (score < bestScore) { bestScore = score; best = j; }
    });
    if (best >= 0) select(best);
  }

  function post(path, body) {
    return fetch('/api/review/' + sid + '/' + path, {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().then(function (j) {
        if (!r.ok) throw new Error(j.error || ('HTTP ' + r.status));
        return j;
      });
    });
  }

  function update(s) {
    Object.keys(s.differential).forEach(function (k) {
      var row = document.getElementById('diff-' + k), d = s.differential[k];
      row.querySelector('.n').textContent = d.count;
      row.querySelector('.pct').textContent = d.percent.toFixed(1);
      row.querySelector('.ci').textContent = d.ci95[0].toFixed(1) + '\u2013' + d.ci95[1].toFixed(1);
    });
    Object.keys(s.counts).forEach(function (g) {
      var n = document.getElementById('n-' + g);
      if (n) n.textContent = s.counts[g];
    });
    document.getElementById('total').textContent = s.total;
    document.getElementById('other').textContent = s.counts.other;
    document.getElementById('xcount').textContent = s.counts.x;
    document.getElementById('reviewed').textContent = s.reviewed;
  }

  function frozen() {
    say('This result is signed and frozen: re-open it with a reason (r) to amend it.');
  }

  // Changes are sent one after the other, in key order, and the selection moves on at once:
  // a reviewer typing ahead of the server changes exactly the cells the keys were meant for.
  var queue = Promise.resolve();
  function later(fn) {
    queue = queue.then(fn, fn);
    return queue;
  }

  function setLabel(label) {
    if (sel < 0) return;
    if (!editable) return frozen();
    var cell = cells[sel];
    if (sel < cells.length - 1) select(sel + 1);
    later(function () { return post('label', { cell_id: Number(cell.dataset.id), label: label }); }).then(function (s) {
      cell.className = cell.className.replace(/\bc-\S+/, 'c-' + s.cell.label);
      if (s.cell.from !== s.cell.label) cell.classList.add('changed');
      cell.classList.add('reviewed');
      cell.dataset.label = s.cell.label;
      var title = document.querySelector('.actions .set[data-label="' + s.cell.label + '"]');
      cell.querySelector('.lab').textContent = title ? title.textContent.replace(/^\s*\S+\s*/, '') : s.cell.label;
      update(s);
      say('cell ' + s.cell.id + ': ' + s.cell.from + ' \u2192 ' + s.cell.label);
    }).catch(function (e) { say(e.message); });
  }

  function confirmPage() {
    if (!editable) return frozen();
    var ids = cells.map(function (c) { return Number(c.dataset.id); });
    later(function () { return post('confirm', { cell_ids: ids }); }).then(function (s) {
      update(s);
      var next = root.dataset.next;
      window.location.href = '/review/' + sid + (next ? '?group=' + next : '?group=' + root.dataset.group) +
        '&msg=' + encodeURIComponent(ids.length + ' cells confirmed' + (next ? '' : ': all classes seen, sign when ready (s)'));
    }).catch(function (e) { say(e.message); });
  }

  function attention() {
    var fig = document.getElementById('attention');
    if (!fig || sel < 0) return;
    fig.hidden = !showAttention;
    if (showAttention) {
      document.getElementById('attention-img').src = '/attention/' + sid + '/' + cells[sel].dataset.id + '.png';
    }
  }

  function focusField(id) {
    var el = document.getElementById(id);
    if (el) { el.focus(); if (el.select) el.select(); }
    return !!el;
  }

  document.addEventListener('keydown', function (e) {
    if (e.ctrlKey || e.altKey || e.metaKey) return;
    var t = e.target;
    var inForm = t && t.closest && t.closest('form');
    if (inForm) {
      if (e.key === 'Escape') { t.blur(); select(sel); e.preventDefault(); }
      return;  // typing a reason, or enter on a form's button: the browser does it
    }
    var k = e.key;
    if (k === 'ArrowRight') select(sel + 1);
    else if (k === 'ArrowLeft') select(sel - 1);
    else if (k === 'ArrowDown') vertical(1);
    else if (k === 'ArrowUp') vertical(-1);
    else if (k === 'Enter') confirmPage();
    else if (keys[k.toLowerCase()]) setLabel(keys[k.toLowerCase()]);
    else if (k === 's') { if (!focusField('sign-reason') && !focusField('sign')) frozen(); }
    else if (k === 'r') { if (!focusField('reopen-reason')) say('The result is not signed: no re-open needed.'); }
    else if (k === 'a') { showAttention = !showAttention; attention(); }
    else return;
    e.preventDefault();
  });

  cells.forEach(function (c, j) {
    c.addEventListener('click', function () { select(j); });
  });
  document.querySelectorAll('.actions .set').forEach(function (b) {
    b.addEventListener('click', function () { setLabel(b.dataset.label); });
  });
  var cb = document.getElementById('confirm');
  if (cb) cb.addEventListener('click', confirmPage);
  var ab = document.getElementById('toggle-attention');
  if (ab) ab.addEventListener('click', function () { showAttention = !showAttention; attention(); });
  if (sel >= 0) select(0);
})();
