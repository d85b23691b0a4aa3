// The fleet page. Every text that comes from the database (keys, notes, who, why) is put in
// the page with textContent or as an attribute's value, never parsed as HTML.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';
  const HELD_MS = 9 * 365 * 86400000;
  const LANES = 40;

  const rows = new Map(); // key -> {data, tr, cells}
  const lanes = new Map(); // key -> [{at_ms, from, to}] within the timeline's window
  let windowHours = 1;
  let writes = false;
  let selected = null;
  let redrawQueued = false;
  let firstRender = true;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function duration(ms) {
    if (ms <= 0) return 'due';
    let s = Math.ceil(ms / 1000);
    const parts = [];
    for (const [unit, n] of [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]]) {
      if (s >= n) { parts.push(Math.floor(s / n) + unit); s %= n; }
    }
    return parts.slice(0, 2).join(' ');
  }

  function clock(ms) {
    if (!ms) return '-';
    const d = new Date(ms);
    const today = new Date().toDateString() === d.toDateString();
    return today ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function lastText(last) {
    if (!last) return '';
    let t = clock(last.at_ms) + ' ' + (last.from || '(new)') + ' → ' + (last.to || 'config') + ' by ' + last.who;
    if (last.why) t += '; ' + last.why;
    return t;
  }

  // --- the table ---------------------------------------------------------------------------

  function makeRow(key) {
    const tr = el('tr');
    tr.dataset.key = key;
    const cells = {
      key: el('td', 'key', key),
      state: el('td', 'state'),
      since: el('td', 'since'),
      left: el('td', 'left'),
      config: el('td', 'config'),
      last: el('td', 'last'),
    };
    const badge = el('span', 'st');
    cells.state.appendChild(badge);
    cells.badge = badge;
    for (const c of [cells.key, cells.state, cells.since, cells.left, cells.config, cells.last]) tr.appendChild(c);
    const r = { data: { key, state: 'CLOSED' }, tr, cells };
    rows.set(key, r);
    return r;
  }

  function fill(r) {
    const d = r.data;
    r.tr.dataset.state = d.state;
    r.cells.badge.textContent = d.state;
    r.cells.badge.className = 'st st-' + d.state;
    r.cells.since.textContent = clock(d.since_ms);
    r.cells.since.title = d.since_ms ? new Date(d.since_ms).toISOString() : '';
    r.cells.config.textContent = d.config || ('mode ' + (d.mode || 'normal') + ', the code\'s values');
    r.cells.last.textContent = lastText(d.last);
    left(r);
    filterRow(r);
  }

  function left(r) {
    const d = r.data;
    let t = '-';
    if (d.state === 'OPEN' && d.held) t = 'until closed';
    else if (d.state === 'OPEN' && d.half_open_at) t = duration(d.half_open_at - Date.now());
    if (r.cells.left.textContent !== t) r.cells.left.textContent = t;
  }

  function accept(r, row) {
    const keep = r.data.last;
    r.data = Object.assign({}, row);
    if (!row.last) r.data.last = keep;
    r.data.half_open_at = row.half_open_in_ms == null ? null : Date.now() + row.half_open_in_ms;
  }

  function filterRow(r) {
    const want = $('f-state').value;
    const part = $('f-key').value;
    const s = r.data.state;
    const ok = (want === '' || (want === 'not-closed' ? s !== 'CLOSED' : s === want)) &&
      (part === '' || r.data.key.includes(part));
    r.tr.hidden = !ok;
  }

  function counts() {
    const n = { OPEN: 0, HALF_OPEN: 0, CLOSED: 0 };
    for (const r of rows.values()) n[r.data.state] = (n[r.data.state] || 0) + 1;
    $('counts').textContent = rows.size + ' keys: ' + n.OPEN + ' OPEN, ' + n.HALF_OPEN + ' HALF_OPEN, ' + n.CLOSED + ' CLOSED';
  }

  function insertSorted(r) {
    const body = $('rows');
    for (const tr of body.children) {
      if (tr.dataset.key > r.data.key) { body.insertBefore(r.tr, tr); return; }
    }
    body.appendChild(r.tr);
  }

  async function load() {
    const res = await fetch('api/state', { cache: 'no-store' });
    if (!res.ok) { $('counts').textContent = 'cannot read the breakers: ' + await errorOf(res); return; }
    const s = await res.json();
    $('ns').textContent = s.namespace;
    writes = s.writes;
    drawGroups(s.groups);
    const seen = new Set();
    const body = $('rows');
    const fresh = document.createDocumentFragment();
    for (const row of s.rows) {
      seen.add(row.key);
      let r = rows.get(row.key);
      if (!r) { r = makeRow(row.key); fresh.appendChild(r.tr); }
      accept(r, row);
      fill(r);
    }
    for (const [key, r] of rows) {
      // A key whose row was deleted is CLOSED for every instance.
      if (!seen.has(key)) { r.data = { key, state: 'CLOSED', mode: 'normal', last: r.data.last }; fill(r); }
    }
    if (firstRender) {
      body.appendChild(fresh);
      firstRender = false;
      document.body.dataset.renderedAt = String(performance.now());
    } else {
      for (const tr of fresh.children) insertSorted(rows.get(tr.dataset.key));
      for (const r of rows.values()) if (!r.tr.parentNode) insertSorted(r);
    }
    document.body.dataset.loaded = String(rows.size);
    counts();
    await loadTimeline();
  }

  async function errorOf(res) {
    try { const j = await res.json(); return j.error || res.statusText; } catch (_) { return res.status + ' ' + res.statusText; }
  }

  // --- the timeline ------------------------------------------------------------------------

  async function loadTimeline() {
    const res = await fetch('api/timeline?hours=' + windowHours, { cache: 'no-store' });
    if (!res.ok) { $('t-note').textContent = 'cannot read the change log: ' + await errorOf(res); return; }
    const t = await res.json();
    lanes.clear();
    for (const lane of t.keys) {
      lanes.set(lane.key, lane.changes.filter((c) => c.to).map((c) => ({ at_ms: c.at_ms, from: c.from, to: c.to })));
      const r = rows.get(lane.key);
      const last = lane.changes[lane.changes.length - 1];
      if (r && last && !r.data.last) { r.data.last = last; r.cells.last.textContent = lastText(last); }
    }
    $('t-note').textContent = t.truncated ? '(the most recently changed keys only)' : '';
    draw();
  }

  function queueDraw() {
    if (redrawQueued) return;
    redrawQueued = true;
    setTimeout(() => { redrawQueued = false; draw(); }, 300);
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }

  // Stretches of OPEN and HALF_OPEN per key, from the change log and the live changes since.
  function draw() {
    const now = Date.now();
    const start = now - windowHours * 3600000;
    const keys = new Set(lanes.keys());
    for (const r of rows.values()) {
      if (r.data.state !== 'CLOSED') keys.add(r.data.key);
    }
    const list = [...keys].map((key) => {
      const changes = (lanes.get(key) || []).filter((c) => c.at_ms >= start);
      return { key, changes };
    }).filter((l) => l.changes.length > 0 || (rows.get(l.key) && rows.get(l.key).data.state !== 'CLOSED'));
    list.sort((a, b) => b.changes.length - a.changes.length || (a.key < b.key ? -1 : 1));
    const shown = list.slice(0, LANES);
    const box = $('timeline');
    const width = Math.max(600, box.clientWidth || 1000);
    const labelW = 220;
    const laneH = 16;
    const height = 22 + shown.length * laneH;
    const root = svg('svg', { viewBox: '0 0 ' + width + ' ' + height, height: String(height), role: 'img' });
    const x = (t) => labelW + (width - labelW - 8) * (t - start) / (now - start);
    for (let i = 0; i <= 6; i++) {
      const t = start + (now - start) * i / 6;
      root.appendChild(svg('line', { class: 'tick', x1: x(t), x2: x(t), y1: 12, y2: height }));
      const label = svg('text', { class: 'axis', x: x(t), y: 10, 'text-anchor': i === 6 ? 'end' : 'middle' });
      label.textContent = i === 6 ? 'now' : new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      root.appendChild(label);
    }
    shown.forEach((l, i) => {
      const y = 16 + i * laneH;
      const g = svg('g', { class: 'lane-g' });
      g.dataset.key = l.key;
      g.dataset.transitions = String(l.changes.length);
      const title = svg('title', {});
      title.textContent = l.key + ': ' + l.changes.length + ' transitions';
      g.appendChild(title);
      g.appendChild(svg('rect', { class: 'lane', x: labelW, y, width: width - labelW - 8, height: laneH - 3 }));
      const name = svg('text', { class: 'lane-label', x: 2, y: y + laneH - 6 });
      name.textContent = l.key.length > 30 ? l.key.slice(0, 29) + '…' : l.key;
      g.appendChild(name);
      const r = rows.get(l.key);
      let state = l.changes.length ? (l.changes[0].from || 'CLOSED') : (r ? r.data.state : 'CLOSED');
      let from = start;
      const stretch = (s, a, b) => {
        if (s === 'CLOSED' || b <= a) return;
        g.appendChild(svg('rect', { class: s === 'OPEN' ? 'open' : 'half', x: x(a), y, width: Math.max(2, x(b) - x(a)), height: laneH - 3 }));
      };
      for (const c of l.changes) {
        stretch(state, from, c.at_ms);
        state = c.to;
        from = c.at_ms;
      }
      stretch(state, from, now);
      root.appendChild(g);
    });
    box.replaceChildren(root);
    if (list.length > shown.length) {
      $('t-note').textContent = '(' + (list.length - shown.length) + ' more keys changed: filter to see them in the table)';
    }
  }

  // --- a key's history and the writes ------------------------------------------------------

  async function select(key) {
    if (selected && rows.get(selected)) rows.get(selected).tr.classList.remove('selected');
    selected = key;
    const r = rows.get(key);
    if (r) r.tr.classList.add('selected');
    $('detail').hidden = false;
    $('d-key').textContent = key;
    $('writes').hidden = !writes;
    $('write-result').textContent = '';
    await history();
  }

  async function history() {
    if (selected === null) return;
    const key = selected;
    const res = await fetch('api/history?key=' + encodeURIComponent(key), { cache: 'no-store' });
    const list = $('history');
    if (!res.ok) { list.replaceChildren(el('li', null, 'cannot read the history: ' + await errorOf(res))); return; }
    const h = await res.json();
    if (key !== selected) return;
    const items = h.changes.slice().reverse().map((c) => {
      let t = new Date(c.at_ms).toISOString() + '  ' + (c.from || '(new)') + ' → ' + (c.to || 'config') + '  v' + c.version + '  by ' + c.who;
      if (c.why) t += '; ' + c.why;
      return el('li', null, t);
    });
    if (items.length === 0) items.push(el('li', null, 'no recorded changes (the log keeps an hour by default)'));
    list.replaceChildren(...items);
  }

  async function write(action, extra) {
    const out = $('write-result');
    out.dataset.ok = '';
    out.textContent = 'sending…';
    const token = $('w-token').value.trim();
    const headers = { 'Content-Type': 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    const body = Object.assign({ key: selected, note: $('w-note').value }, extra);
    try {
      const res = await fetch('api/' + action, { method: 'POST', headers, body: JSON.stringify(body), cache: 'no-store' });
      const j = await res.json().catch(() => ({}));
      out.dataset.ok = res.ok ? 'yes' : 'no';
      out.textContent = res.ok ? action + ': ' + j.message : 'refused (' + res.status + '): ' + (j.error || res.statusText);
    } catch (e) {
      out.dataset.ok = 'no';
      out.textContent = 'refused: ' + e;
    }
    history();
  }

  // --- groups --------------------------------------------------------------------------------

  // One line per group: its name, a meter of its open members, the counts, cap and threshold,
  // and its own state. Names are text, like keys.
  function drawGroups(list) {
    const box = $('groups-box');
    const ul = $('groups');
    ul.replaceChildren();
    box.hidden = !list || list.length === 0;
    if (box.hidden) return;
    for (const g of list) {
      const li = el('li');
      li.dataset.group = g.name;
      li.dataset.open = String(g.open);
      li.dataset.members = String(g.members);
      li.appendChild(el('code', 'g-name', g.name));
      const meter = el('meter');
      meter.min = 0;
      meter.max = Math.max(g.members, 1);
      meter.value = g.open;
      if (g.open_at) {
        const [k, n] = g.open_at.split('/').map(Number);
        if (n > 0) meter.high = (g.members * k) / n;
      }
      li.appendChild(meter);
      const at = g.open_at ? 'opens at ' + g.open_at : 'never opens as a whole';
      li.appendChild(el('span', 'g-counts',
        g.open + ' of ' + g.members + ' members open · at most ' + g.max_open + ' · ' + at));
      li.appendChild(el('span', 'st st-' + g.state, g.state));
      ul.appendChild(li);
    }
  }

  // --- live changes ------------------------------------------------------------------------

  function live() {
    const es = new EventSource('events');
    let opened = false;
    es.addEventListener('hello', (e) => {
      const h = JSON.parse(e.data);
      setConn(h.degraded);
      // After a reconnect, what was missed meanwhile is read again.
      if (opened) load();
      opened = true;
    });
    es.addEventListener('health', (e) => setConn(JSON.parse(e.data).degraded));
    es.addEventListener('change', (e) => {
      const c = JSON.parse(e.data);
      let r = rows.get(c.key);
      const isNew = !r;
      if (isNew) r = makeRow(c.key);
      r.data.state = c.to;
      r.data.since_ms = c.at_ms;
      if (c.to !== 'OPEN') { r.data.half_open_at = null; r.data.held = false; }
      fill(r);
      if (isNew) insertSorted(r);
      if (!lanes.has(c.key)) lanes.set(c.key, []);
      lanes.get(c.key).push({ at_ms: c.at_ms, from: c.from, to: c.to });
      counts();
      queueDraw();
      if (c.key === selected) history();
    });
    es.addEventListener('row', (e) => {
      const row = JSON.parse(e.data);
      let r = rows.get(row.key);
      const isNew = !r;
      if (isNew) r = makeRow(row.key);
      accept(r, row);
      fill(r);
      if (isNew) insertSorted(r);
      counts();
    });
    es.addEventListener('groups', (e) => drawGroups(JSON.parse(e.data)));
    es.addEventListener('reload', () => load());
    es.onerror = () => { $('conn').dataset.live = 'no'; $('conn').textContent = 'reconnecting…'; };
  }

  function setConn(degraded) {
    $('conn').dataset.live = degraded ? 'degraded' : 'yes';
    $('conn').textContent = degraded ? 'live, but the server lost the database' : 'live';
  }

  // --- wiring ------------------------------------------------------------------------------

  function refilter() { for (const r of rows.values()) filterRow(r); }

  document.addEventListener('DOMContentLoaded', () => {
    $('f-state').addEventListener('change', refilter);
    $('f-key').addEventListener('input', refilter);
    $('t-window').addEventListener('change', () => { windowHours = Number($('t-window').value) || 1; loadTimeline(); });
    $('rows').addEventListener('click', (e) => {
      const tr = e.target.closest('tr');
      if (tr && tr.dataset.key !== undefined) select(tr.dataset.key);
    });
    $('d-hide').addEventListener('click', () => { $('detail').hidden = true; selected = null; });
    $('w-open').addEventListener('click', () => {
      const hold = $('w-hold').value;
      write('open', hold ? { hold_s: Number(hold) } : {});
    });
    $('w-close').addEventListener('click', () => write('close', {}));
    $('w-config').addEventListener('click', () => {
      const extra = {};
      if ($('w-mode').value) extra.mode = $('w-mode').value;
      if ($('w-cooldown').value) extra.cooldown_s = Number($('w-cooldown').value);
      write('config', extra);
    });
    setInterval(() => { for (const r of rows.values()) if (r.data.state === 'OPEN') left(r); }, 1000);
    setInterval(queueDraw, 30000);
    live();
    load();
  });
})();
