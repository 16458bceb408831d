// The secure-routes audit dashboard: reads /_secure-routes/api/* and fills the page.
//
// Security rule for this file: every value that comes from the audit log or a ban (a user
// agent, a route, a subject, a reason...) is attacker-controlled text. It is inserted ONLY with
// textContent or setAttribute, never innerHTML / insertAdjacentHTML / document.write. The page's
// CSP (script-src 'self') is the second line of defence, not the first.
'use strict';

(function () {
  const BASE = '/_secure-routes/';
  // Every audit action (secure_routes::audit::AuditAction::ALL; a Rust test keeps them in step).
  const ACTIONS = [
    'unauthorized_access', 'authz_fail', 'rate_limit_exceeded', 'csrf_validation_failed',
    'invalid_input', 'security_event', 'store_failure', 'authenticator_failure',
    'internal_error', 'upstream_failure', 'alert_triggered', 'ip_banned', 'ban_lifted',
  ];
  const PAGE = 50;
  const TAIL_MAX = 100;
  const SVG = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);
  const meta = document.querySelector('meta[name=csrf-token]');
  const csrf = meta ? meta.getAttribute('content') : '';
  let cursor = null;

  function status(msg) {
    $('status').textContent = msg || '';
  }

  async function api(path, opts) {
    opts = opts || {};
    const method = opts.method || 'GET';
    const headers = { Accept: 'application/json' };
    if (method !== 'GET') headers['X-CSRF-Token'] = csrf;
    const res = await fetch(BASE + path, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
    });
    if (res.status === 401) {
      window.location.assign(BASE + 'login');
      throw new Error('the session ended');
    }
    if (!res.ok && !(opts.ok || []).includes(res.status)) {
      let detail = res.status + ' ' + res.statusText;
      try {
        const p = await res.json();
        if (p && p.detail) detail = res.status + ': ' + p.detail;
      } catch (_) { /* not JSON */ }
      throw new Error(path.split('?')[0] + ': ' + detail);
    }
    if (res.status === 204 || !res.ok) return { status: res.status };
    return res.json();
  }

  function report(err) {
    status(String(err && err.message ? err.message : err));
  }

  function text(v) {
    return v === null || v === undefined ? '' : String(v);
  }

  function cell(tr, cls, value) {
    const td = document.createElement('td');
    td.className = cls;
    td.textContent = text(value);
    tr.appendChild(td);
    return td;
  }

  function when(ts) {
    const d = new Date(ts);
    return isNaN(d) ? text(ts) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  }

  function filterParams() {
    const p = new URLSearchParams();
    const add = (name, id) => {
      const v = $(id).value.trim();
      if (v) p.set(name, v);
    };
    add('action', 'f-action');
    add('outcome', 'f-outcome');
    add('ip', 'f-ip');
    add('subject', 'f-subject');
    add('route', 'f-route');
    add('fingerprint', 'f-fingerprint');
    for (const [name, id] of [['since', 'f-since'], ['until', 'f-until']]) {
      const v = $(id).value;
      if (v) {
        const d = new Date(v); // datetime-local: the browser's local time
        if (!isNaN(d)) p.set(name, d.toISOString());
      }
    }
    return p;
  }

  // ---- events ----
  function eventRow(e) {
    const tr = document.createElement('tr');
    tr.setAttribute('data-id', text(e.id));
    cell(tr, 'time', when(e.timestamp));
    cell(tr, 'action', e.action);
    cell(tr, 'outcome', e.outcome);
    cell(tr, 'ip', e.client_ip);
    cell(tr, 'subject', e.subject);
    cell(tr, 'route', e.route);
    cell(tr, 'status', e.status);
    cell(tr, 'reason', e.reason);
    cell(tr, 'fingerprint', e.fingerprint);
    cell(tr, 'count', e.count);
    cell(tr, 'ua', e.user_agent);
    return tr;
  }

  async function loadEvents(more) {
    const p = filterParams();
    p.set('limit', String(PAGE));
    if (more && cursor) p.set('before', cursor);
    const body = await api('api/events?' + p.toString());
    const tbody = $('events').tBodies[0];
    if (!more) tbody.replaceChildren();
    for (const e of body.events) tbody.appendChild(eventRow(e));
    cursor = body.next || null;
    $('next-page').disabled = !cursor;
    $('events-empty').hidden = tbody.rows.length > 0;
  }

  // ---- chart ----
  function chartRange(p) {
    const until = p.get('until') ? new Date(p.get('until')) : new Date();
    const since = p.get('since') ? new Date(p.get('since')) : new Date(until.getTime() - 3600e3);
    return { since, until };
  }

  async function loadChart() {
    const p = filterParams();
    const { since, until } = chartRange(p);
    const span = Math.max(1, Math.ceil((until - since) / 1000));
    let bucket = Math.max(1, Math.ceil(span / 60));
    if (bucket > 60) bucket = Math.ceil(bucket / 60) * 60;
    p.set('since', since.toISOString());
    p.set('bucket', String(bucket));
    const body = await api('api/counts?' + p.toString());
    drawChart(body.counts || [], since, until, bucket);
  }

  // Bars sit at their bucket's place in [since, until], so quiet stretches show as gaps.
  function drawChart(counts, since, until, bucket) {
    const svg = $('chart');
    const legend = $('chart-legend');
    svg.replaceChildren();
    legend.replaceChildren();
    const W = 800, H = 200, PAD = 20;
    const buckets = [...new Set(counts.map((c) => c.bucket_start))].sort();
    const actions = [...new Set(counts.map((c) => c.action))].sort();
    if (buckets.length === 0) {
      const t = document.createElementNS(SVG, 'text');
      t.setAttribute('x', '20');
      t.setAttribute('y', '100');
      t.textContent = 'No events in this range.';
      svg.appendChild(t);
      return;
    }
    const totals = new Map();
    for (const c of counts) totals.set(c.bucket_start, (totals.get(c.bucket_start) || 0) + c.count);
    const max = Math.max(...totals.values(), 1);
    const start = Math.floor(since.getTime() / 1000 / bucket) * bucket;
    const slots = Math.max(1, Math.ceil((until.getTime() / 1000 - start) / bucket));
    const slot = (b) => Math.min(slots - 1, Math.max(0, Math.floor((new Date(b).getTime() / 1000 - start) / bucket)));
    const bw = (W - 2 * PAD) / slots;
    for (const [x, label, anchor] of [[PAD, when(new Date(start * 1000)), 'start'], [W - PAD, when(until), 'end']]) {
      const t = document.createElementNS(SVG, 'text');
      t.setAttribute('x', String(x));
      t.setAttribute('y', String(H - 4));
      t.setAttribute('font-size', '10');
      t.setAttribute('text-anchor', anchor);
      t.textContent = label;
      svg.appendChild(t);
    }
    const base = new Map(buckets.map((b) => [b, 0]));
    actions.forEach((action, i) => {
      const g = document.createElementNS(SVG, 'g');
      g.setAttribute('data-action', action);
      g.setAttribute('class', 'c' + (ACTIONS.indexOf(action) >= 0 ? ACTIONS.indexOf(action) : i % 13));
      buckets.forEach((b) => {
        const found = counts.find((c) => c.bucket_start === b && c.action === action);
        const n = found ? found.count : 0;
        const h = (n / max) * (H - 2 * PAD);
        const below = base.get(b);
        base.set(b, below + h);
        const r = document.createElementNS(SVG, 'rect');
        r.setAttribute('x', String(PAD + slot(b) * bw + 1));
        r.setAttribute('width', String(Math.max(1, bw - 2)));
        r.setAttribute('y', String(H - PAD - below - h));
        r.setAttribute('height', String(h));
        r.setAttribute('data-bucket', text(b));
        r.setAttribute('data-count', String(n));
        const title = document.createElementNS(SVG, 'title');
        title.textContent = action + ' ' + when(b) + ': ' + n;
        r.appendChild(title);
        g.appendChild(r);
      });
      svg.appendChild(g);
      const li = document.createElement('li');
      const sw = document.createElement('span');
      sw.className = 'swatch ' + g.getAttribute('class');
      li.appendChild(sw);
      li.appendChild(document.createTextNode(action));
      legend.appendChild(li);
    });
  }

  // ---- top offenders ----
  async function loadTop(by, id) {
    const p = filterParams();
    p.set('by', by);
    p.set('n', '10');
    const body = await api('api/top?' + p.toString());
    const ol = $(id);
    ol.replaceChildren();
    for (const t of body.top) {
      const li = document.createElement('li');
      const k = document.createElement('span');
      k.className = 'key';
      k.textContent = text(t.key);
      const c = document.createElement('span');
      c.className = 'count';
      c.textContent = text(t.count);
      li.append(k, ' ', c);
      ol.appendChild(li);
    }
  }

  // ---- bans ----
  function banPath(key) {
    // The gateway refuses an encoded '/' in a path, so an address key's prefix ('/64') goes
    // raw (the server's route takes the rest of the path). Only for 'ip:' keys, whose text is
    // an address and a prefix length: a subject is attacker-chosen, and a raw '/' in one
    // ('sub:x/../../bans/ip:...') would let dot segments point the DELETE at another ban.
    const path = encodeURIComponent(key);
    return 'api/bans/' + (key.startsWith('ip:') ? path.replace(/%2F/gi, '/') : path);
  }

  function bansEmpty() {
    $('bans-empty').hidden = $('bans').tBodies[0].rows.length > 0;
  }

  async function loadBans() {
    const body = await api('api/bans');
    const tbody = $('bans').tBodies[0];
    tbody.replaceChildren();
    for (const b of body.bans) {
      const tr = document.createElement('tr');
      tr.setAttribute('data-key', text(b.key));
      cell(tr, 'key', b.key);
      cell(tr, 'until', when(b.until));
      cell(tr, 'strikes', b.strikes);
      cell(tr, 'reason', b.reason);
      const td = document.createElement('td');
      const btn = document.createElement('button');
      btn.type = 'button';
      btn.className = 'lift';
      btn.textContent = 'Lift';
      btn.addEventListener('click', () => lift(b.key, tr, btn));
      td.appendChild(btn);
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    bansEmpty();
  }

  async function lift(key, tr, btn) {
    btn.disabled = true;
    try {
      // 404: already lifted (by someone else, or it expired): the row goes either way.
      await api(banPath(key), { method: 'DELETE', ok: [404] });
      tr.remove();
      bansEmpty();
      status('');
    } catch (err) {
      btn.disabled = false;
      report(err);
    }
  }

  // ---- alerts ----
  async function loadAlerts() {
    const body = await api('api/events?action=alert_triggered&limit=50');
    const tbody = $('alerts').tBodies[0];
    tbody.replaceChildren();
    for (const e of body.events) {
      const m = e.metadata && typeof e.metadata === 'object' ? e.metadata : {};
      const tr = document.createElement('tr');
      tr.setAttribute('data-id', text(e.id));
      cell(tr, 'time', when(e.timestamp));
      cell(tr, 'rule', m.rule || e.reason);
      cell(tr, 'key', m.key);
      cell(tr, 'count', m.count);
      tbody.appendChild(tr);
    }
  }

  // ---- live tail ----
  function startTail() {
    if (typeof EventSource === 'undefined') return;
    const source = new EventSource(BASE + 'api/tail');
    source.addEventListener('audit', (msg) => {
      let e;
      try {
        e = JSON.parse(msg.data);
      } catch (_) {
        return;
      }
      const li = document.createElement('li');
      li.setAttribute('data-id', text(e.id));
      li.textContent = [when(e.timestamp), e.action, e.outcome, text(e.client_ip),
        text(e.subject), e.route, e.status, e.reason, text(e.user_agent)].join(' ');
      const ol = $('tail');
      ol.insertBefore(li, ol.firstChild);
      while (ol.children.length > TAIL_MAX) ol.removeChild(ol.lastChild);
    });
    source.addEventListener('gap', () => {
      // More events arrived within one poll than the tail reads: the older ones are not
      // shown here (the events table has them all).
      const li = document.createElement('li');
      li.className = 'gap';
      li.textContent = '… more events than the live tail shows: see the events table';
      const ol = $('tail');
      ol.insertBefore(li, ol.firstChild);
      while (ol.children.length > TAIL_MAX) ol.removeChild(ol.lastChild);
    });
    source.addEventListener('error', () => {
      status(source.readyState === EventSource.CLOSED ? 'live tail closed' : 'live tail: reconnecting');
    });
    source.addEventListener('open', () => {
      if ($('status').textContent.startsWith('live tail')) status('');
    });
  }

  async function refresh() {
    const results = await Promise.allSettled([
      loadEvents(false), loadChart(), loadTop('ip', 'top-ips'),
      loadTop('subject', 'top-subjects'), loadBans(), loadAlerts(),
    ]);
    const failed = results.find((r) => r.status === 'rejected');
    status(failed ? String(failed.reason && failed.reason.message) : '');
  }

  function init() {
    const select = $('f-action');
    for (const a of ACTIONS) {
      const o = document.createElement('option');
      o.value = a;
      o.textContent = a;
      select.appendChild(o);
    }
    $('filters').addEventListener('submit', (ev) => {
      ev.preventDefault();
      refresh();
    });
    $('next-page').addEventListener('click', () => loadEvents(true).catch(report));
    $('logout').addEventListener('click', async () => {
      try {
        await api('logout', { method: 'POST' });
      } catch (err) {
        report(err);
        return;
      }
      window.location.assign(BASE + 'login');
    });
    refresh();
    startTail();
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', init);
  } else {
    init();
  }
})();
