// The Baton console: plain JavaScript, no build step, no framework. Every
// figure comes from this gateway's JSON API; the page keeps only where the
// operator is (the address after '#') and the token they typed (this tab's
// sessionStorage). Live: /api/v1/console/events says when to read again.
'use strict';

// Errors a test (or a curious operator) can read back.
window.__batonErrors = [];
// capture: a resource that fails to load reports here too
window.addEventListener('error', (e) => window.__batonErrors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || e)), true);
window.addEventListener('unhandledrejection', (e) => window.__batonErrors.push(String(e.reason)));
document.addEventListener('securitypolicyviolation', (e) => window.__batonErrors.push('refused by the content policy: ' + e.violatedDirective + ' ' + e.blockedURI));

const STATES = ['active', 'degraded', 'clock_skewed', 'suspect', 'offline', 'quarantined'];
const VERBS = ['observe', 'orient', 'decide', 'act', 'record', 'sync', 'freeze', 'thaw'];
const $ = (id) => document.getElementById(id);

// ---- DOM: every text goes in as text, never as markup ----------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const badge = (state) => h('span', { class: 'badge ' + (state || 'unknown') }, state || 'unknown');
const num = (x, unit) => (x === null || x === undefined ? '—' : (Math.round(x * 10) / 10) + (unit || ''));
const ago = (ms) => {
  if (!ms) return '—';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return s + ' s ago';
  if (s < 5400) return Math.round(s / 60) + ' min ago';
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + 'Z';
};
const link = (href, text) => h('a', { href }, text);

// ---- the API --------------------------------------------------------------

function headers(extra) {
  const t = sessionStorage.getItem('baton-token');
  const hs = Object.assign({}, extra || {});
  if (t) hs.Authorization = 'Bearer ' + t;
  return hs;
}

async function api(path, opts) {
  const r = await fetch(path, Object.assign({}, opts || {}, { headers: headers((opts || {}).headers) }));
  const text = await r.text();
  let body = null;
  const isJson = (r.headers.get('content-type') || '').startsWith('application/json');
  try { body = text && isJson ? JSON.parse(text) : text; } catch (_) { body = text; }
  if (!r.ok) {
    const why = body && body.error ? body.error : r.status + ' ' + r.statusText;
    throw new Error(why);
  }
  return body;
}

function problem(msg) {
  const p = $('problem');
  p.hidden = !msg;
  p.textContent = msg || '';
}

// ---- routing: #/, #/cluster/C, #/agents?…, #/agent/A, #/commands, #/command/K

function route() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query || '') };
}

const views = {
  '': fleetView,
  cluster: clusterView,
  agents: agentsView,
  agent: agentView,
  commands: commandsView,
  command: commandView,
  lessons: lessonsView,
};

let rendering = null;
let again = false;
let fresh = false;

// Parts of a view that live redraws reuse as they are (the forms an
// operator types in): the same elements, so neither what is typed nor
// the focus is lost. A new address builds them anew.
const kept = new Map();
function keep(key, build) {
  if (!kept.has(key)) kept.set(key, build());
  return kept.get(key);
}

// Draws the current view; a call while one is drawing draws once more
// after. `newPlace`: the address changed (kept parts are built anew).
async function render(newPlace) {
  fresh = fresh || newPlace === true;
  if (rendering) { again = true; return rendering; }
  rendering = (async () => {
    do {
      again = false;
      if (fresh) { kept.clear(); fresh = false; }
      const { parts, params } = route();
      const view = views[parts[0] || ''] || notFound;
      try {
        const node = await view(parts.slice(1), params);
        if (node) {
          const main = $('view');
          const focused = main.contains(document.activeElement) ? document.activeElement : null;
          main.replaceChildren(node);
          if (focused && node.contains(focused)) focused.focus();
        }
        problem(null);
      } catch (e) {
        problem(e.message);
      }
    } while (again);
    rendering = null;
  })();
  return rendering;
}

function notFound() {
  return h('p', {}, 'No such page. ', link('#/', 'Back to the fleet'));
}

// ---- fleet ---------------------------------------------------------------

function tile(n, k, href) {
  const inner = [h('div', { class: 'n' }, n), h('div', { class: 'k' }, k)];
  return href ? h('a', { class: 'tile', href }, inner) : h('div', { class: 'tile' }, inner);
}

function stateTiles(summary, cluster) {
  const base = '#/agents?' + (cluster ? 'cluster=' + encodeURIComponent(cluster) + '&' : '');
  const by = (summary && summary.by_state) || {};
  return STATES.map((s) => tile(by[s] || 0, s.replace('_', ' '), base + 'state=' + s));
}

async function fleetView() {
  const [fleet, status] = await Promise.all([api('/api/v1/fleet'), api('/api/v1/status')]);
  $('who').textContent = fleet.gateway + ' · cluster ' + fleet.cluster;
  const s = fleet.summary || {};
  const breakers = status.breakers_not_closed || [];
  return h('div', {},
    h('h1', {}, 'Fleet ', h('span', { class: 'badge mode' }, s.mode || '—')),
    h('div', { class: 'tiles', id: 'fleet-tiles' },
      tile(s.agents || 0, 'agents', '#/agents'),
      ...stateTiles(s, null),
      tile(s.clusters || 1, 'clusters'),
      tile(num(s.impedance_mean_ms, ' ms'), 'impedance mean'),
      tile(num(s.impedance_p95_ms, ' ms'), 'impedance p95'),
      tile(breakers.length, 'breakers not closed'),
      tile(status.commands_in_hand, 'commands in hand', '#/commands'),
      tile(status.conflicts_recent, 'conflicts (recent)', '#/commands'),
      tile(status.frozen ? 'frozen' : 'no', 'freeze'),
    ),
    h('h2', {}, 'Clusters'),
    clusterTable(fleet, null),
    breakers.length ? h('div', {}, h('h2', {}, 'Breakers not closed'),
      h('ul', {}, breakers.map((b) => h('li', {}, b.child + ': ' + b.position)))) : null,
    h('h2', {}, 'Recent alerts'),
    fleet.alerts.length
      ? h('table', {}, h('tr', {}, h('th', {}, 'seq'), h('th', {}, 'at'), h('th', {}, 'kind'), h('th', {}, 'agent'), h('th', {}, 'detail')),
        fleet.alerts.map((a) => h('tr', {},
          h('td', { class: 'num' }, a.seq), h('td', {}, a.ts),
          h('td', {}, (a.data || {}).kind || ''),
          h('td', {}, (a.data || {}).agent ? link('#/agent/' + encodeURIComponent(a.data.agent), a.data.agent) : ''),
          h('td', {}, (a.data || {}).detail || ''))))
      : h('p', { class: 'muted' }, 'None in the gateway\'s recent chain.'),
  );
}

// The clusters under `root` (all, from the top, when null), as a tree.
function clusterTable(fleet, root) {
  const kids = {};
  for (const c of fleet.clusters) (kids[c.parent || ''] = kids[c.parent || ''] || []).push(c);
  const rows = [];
  const walk = (parent, depth) => {
    for (const c of kids[parent] || []) {
      rows.push([c, depth]);
      if (depth < 6) walk(c.cluster, depth + 1);
    }
  };
  if (root === null) {
    const known = new Set(fleet.clusters.map((c) => c.cluster));
    for (const c of fleet.clusters) if (!c.parent || !known.has(c.parent)) { rows.push([c, 0]); walk(c.cluster, 1); }
  } else {
    walk(root, 0);
  }
  if (!rows.length) return h('p', { class: 'muted' }, 'No clusters below this one.');
  return h('table', { class: 'clusters' },
    h('tr', {}, h('th', {}, 'cluster'), h('th', {}, 'gateway'), h('th', {}, 'mode'), h('th', { class: 'num' }, 'agents'),
      h('th', { class: 'num' }, 'active'), h('th', {}, 'not active'), h('th', { class: 'num' }, 'impedance mean'),
      h('th', { class: 'num' }, 'p95'), h('th', {}, 'summary')),
    rows.map(([c, depth]) => {
      const s = c.summary || {};
      const by = s.by_state || {};
      const notActive = STATES.filter((st) => st !== 'active' && by[st]).map((st) => h('span', {}, badge(st), ' ' + by[st] + ' '));
      return h('tr', {},
        h('td', { class: 'indent' + Math.min(depth, 3) }, link('#/cluster/' + encodeURIComponent(c.cluster), c.cluster),
          s.clusters ? h('span', { class: 'muted' }, ' (' + s.clusters + ' rolled up)') : null),
        h('td', {}, link('#/agent/' + encodeURIComponent(c.gateway), c.gateway)),
        h('td', {}, s.mode ? h('span', { class: 'badge mode' }, s.mode) : '—'),
        h('td', { class: 'num' }, s.agents === undefined ? c.agents_known : s.agents),
        h('td', { class: 'num' }, s.active === undefined ? '—' : s.active),
        h('td', {}, notActive.length ? notActive : '—'),
        h('td', { class: 'num' }, num(s.impedance_mean_ms, ' ms')),
        h('td', { class: 'num' }, num(s.impedance_p95_ms, ' ms')),
        h('td', { class: 'muted' }, s.at_ms ? ago(s.at_ms) : 'none yet'));
    }));
}

// ---- a cluster: its figures, the clusters below it, its agents ---------------

async function clusterView(parts, params) {
  const name = parts[0];
  const fleet = await api('/api/v1/fleet');
  const c = fleet.clusters.find((x) => x.cluster === name);
  if (!c) throw new Error('no cluster ' + name + ' known here');
  params.set('cluster', name);
  const s = c.summary || {};
  return h('div', {},
    h('p', {}, link('#/', 'Fleet'), c.parent ? [' › ', link('#/cluster/' + encodeURIComponent(c.parent), c.parent)] : null, ' › ', name),
    h('h1', {}, 'Cluster ' + name + ' ', s.mode ? h('span', { class: 'badge mode' }, s.mode) : null),
    h('p', { class: 'muted' }, 'Gateway ', link('#/agent/' + encodeURIComponent(c.gateway), c.gateway),
      s.at_ms ? ' · summary ' + ago(s.at_ms) : ' · no summary yet'),
    h('div', { class: 'tiles' }, tile(s.agents || 0, 'agents'), ...stateTiles(s, name),
      tile(num(s.impedance_mean_ms, ' ms'), 'impedance mean'), tile(num(s.impedance_p95_ms, ' ms'), 'impedance p95')),
    h('h2', {}, 'Clusters below'),
    clusterTable(fleet, name),
    h('h2', {}, 'Agents'),
    await agentList(params, '#/cluster/' + encodeURIComponent(name)),
  );
}

// ---- agents: searched, filtered, sorted and paged by the gateway ------------

async function agentsView(_parts, params) {
  return h('div', {}, h('h1', {}, 'Agents'), await agentList(params, '#/agents'));
}

const SORTS = ['id', 'cluster', 'state', 'impedance', 'last_seen', 'backlog', 'clock_offset'];

async function agentList(params, base) {
  const q = new URLSearchParams();
  for (const k of ['cluster', 'q', 'state', 'sort', 'order', 'page']) if (params.get(k)) q.set(k, params.get(k));
  q.set('per', '50');
  const page = await api('/api/v1/fleet/agents?' + q.toString());
  const go = (changes) => {
    const p = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) { if (v) p.set(k, v); else p.delete(k); }
    if (base.startsWith('#/cluster/')) p.delete('cluster');
    location.hash = base + '?' + p.toString();
  };
  const pages = Math.max(1, Math.ceil(page.total / page.per));
  const sortBy = params.get('sort') || 'id';
  const order = params.get('order') || 'asc';
  const header = (label, key, cls) => h('th', { class: cls || null },
    key ? h('a', { href: '#', onclick: (e) => { e.preventDefault(); go({ sort: key, order: sortBy === key && order === 'asc' ? 'desc' : 'asc', page: null }); } },
      label + (sortBy === key ? (order === 'asc' ? ' ▲' : ' ▼') : '')) : label);
  const controls = keep('agent-controls', () => h('form', { class: 'controls', onsubmit: (e) => { e.preventDefault(); go({ q: $('agent-search').value.trim(), page: null }); } },
    h('input', { id: 'agent-search', type: 'search', placeholder: 'search agent ids', value: params.get('q') || '' }),
    h('select', { id: 'agent-state', onchange: (e) => go({ state: e.target.value, page: null }) },
      h('option', { value: '' }, 'any state'),
      STATES.map((s) => h('option', { value: s, selected: params.get('state') === s }, s))),
    h('button', { type: 'submit' }, 'Search')));
  return h('div', {},
    controls,
    h('div', { class: 'controls' },
      h('span', { class: 'muted', id: 'agent-total' }, page.total + (page.total === 1 ? ' agent' : ' agents') + ' · page ' + page.page + ' of ' + pages),
      page.page > 1 ? h('a', { href: '#', id: 'prev-page', onclick: (e) => { e.preventDefault(); go({ page: String(page.page - 1) }); } }, '‹ previous') : null,
      page.page < pages ? h('a', { href: '#', id: 'next-page', onclick: (e) => { e.preventDefault(); go({ page: String(page.page + 1) }); } }, 'next ›') : null),
    h('table', { class: 'agents' },
      h('tr', {}, header('agent', 'id'), header('cluster', 'cluster'), header('state', 'state'), h('th', {}, 'reason'),
        header('impedance', 'impedance', 'num'), header('backlog', 'backlog', 'num'), header('clock offset', 'clock_offset', 'num'),
        h('th', { class: 'num' }, 'temp'), header('last heartbeat', 'last_seen')),
      page.rows.map((r) => h('tr', {},
        h('td', {}, link('#/agent/' + encodeURIComponent(r.id), r.id)),
        h('td', {}, link('#/cluster/' + encodeURIComponent(r.cluster), r.cluster)),
        h('td', {}, badge(r.state)),
        h('td', { class: 'muted' }, r.state_reason || ''),
        h('td', { class: 'num' }, num(r.impedance_ms, ' ms')),
        h('td', { class: 'num' }, r.backlog === undefined || r.backlog === null ? '—' : r.backlog),
        h('td', { class: 'num' }, num(r.clock_offset_ms, ' ms')),
        h('td', { class: 'num' }, num(r.temp_c, ' °C')),
        h('td', {}, r.last_seen_ms ? ago(r.last_seen_ms) : (r.state_since_ms ? 'state since ' + ago(r.state_since_ms) : '—'))))),
  );
}

// ---- one agent -----------------------------------------------------------

function chart(points) {
  if (!points || points.length < 2) return h('p', { class: 'muted' }, 'Not enough heartbeats heard here for a chart (this gateway keeps the last minutes of the agents it hears itself).');
  const W = 600, H = 130, P = 28;
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const zs = points.map((p) => p[1]);
  const lo = Math.min(...zs), hi = Math.max(...zs);
  const x = (t) => P + ((t - t0) / Math.max(1, t1 - t0)) * (W - 2 * P);
  const y = (z) => H - 12 - ((z - lo) / Math.max(0.001, hi - lo)) * (H - 30);
  return svg('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': 'impedance over time' },
    svg('title', {}, 'impedance, ms, over the last ' + Math.round((t1 - t0) / 1000) + ' s'),
    svg('polyline', { points: points.map((p) => x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1)).join(' ') }),
    svg('text', { x: 2, y: 12 }, num(hi, ' ms')),
    svg('text', { x: 2, y: H - 2 }, num(lo, ' ms')),
    svg('text', { x: W - 80, y: H - 2 }, 'now'));
}

async function agentView(parts, params) {
  const id = parts[0];
  const enc = encodeURIComponent(id);
  const a = await api('/api/v1/agents/' + enc + '/detail');
  // point in time: the chain as it was when entry `at` was its head
  const at = Math.min(parseInt(params.get('at') || '0', 10) || 0, a.head_seq || 0);
  const head = at || a.head_seq || 0;
  const from = Math.max(1, head - 19);
  const text = head ? await api('/api/v1/agents/' + enc + '/entries?from=' + from + '&limit=20') : '';
  const entries = String(text).split('\n').filter(Boolean).map((l) => { try { return JSON.parse(l); } catch (_) { return null; } }).filter(Boolean).reverse();
  const ch = a.chain || {};
  const field = (k, v) => [h('dt', {}, k), h('dd', {}, v)];
  const verifyOut = h('span', { id: 'verify-result' });
  return h('div', {},
    h('p', {}, link('#/', 'Fleet'), a.cluster ? [' › ', link('#/cluster/' + encodeURIComponent(a.cluster), a.cluster)] : null, ' › ', id),
    h('h1', {}, 'Agent ' + id + ' ', badge(a.state)),
    h('p', {},
      h('a', { id: 'report-link', href: '/api/v1/agents/' + enc + '/report?format=html' + (at ? '&at=' + at : ''), target: '_blank', rel: 'noopener' }, 'Session report'),
      ' · ',
      keep('at-form', () => h('form', { class: 'inline', id: 'at-form', onsubmit: (e) => { e.preventDefault(); const v = $('at').value.trim(); location.hash = '#/agent/' + enc + (v ? '?at=' + encodeURIComponent(v) : ''); } },
        h('label', { for: 'at' }, 'as of seq '), h('input', { id: 'at', size: 8, value: at || '' }), ' ', h('button', { type: 'submit' }, 'Show'))),
      at ? h('span', { class: 'bad', id: 'at-note' }, ' Point in time: the chain as it was at seq ' + at + ' (head ' + a.head_seq + ').') : null),
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h2', {}, 'State'), h('dl', {},
        field('state', badge(a.state)),
        field('reason', a.state_reason || '—'),
        field('since', a.state_since_ms ? ago(a.state_since_ms) : '—'),
        field('last heartbeat', a.last_seen_ms ? ago(a.last_seen_ms) : 'not heard by this gateway'),
        field('phi', a.phi === undefined ? '—' : a.phi),
        field('clock offset', num(a.clock_offset_ms, ' ms') + (a.clock_skewed ? ' (skewed)' : '')),
        field('temperature', num(a.temp_c, ' °C')),
        field('throttled', a.throttled || '—'),
        field('class / model', [a.class, a.model].filter(Boolean).join(' / ') || '—'),
        field('enrolled by', a.enrolled_by))),
      h('div', { class: 'card' }, h('h2', {}, 'Impedance'), h('dl', {},
        field('impedance', num(a.impedance_ms, ' ms') + (a.impedance_baseline_ms ? ' (baseline ' + num(a.impedance_baseline_ms, ' ms') + ')' : '')),
        field('rtt p50', num(a.rtt_ms, ' ms')),
        field('processing p50', num(a.processing_ms, ' ms')),
        field('reliability', a.reliability === undefined ? '—' : a.reliability),
        field('backlog', a.backlog === undefined || a.backlog === null ? '—' : a.backlog + ' entries')),
        chart(a.impedance_history)),
      h('div', { class: 'card' }, h('h2', {}, 'Chain'), h('dl', {},
        field('head', head + (a.head_hash ? ' · ' + a.head_hash.slice(0, 16) + '…' : '')),
        field('verified', ch.set_aside ? h('span', { class: 'bad' }, 'set aside at start: rebuilding from resends')
          : h('span', { class: 'ok' }, 'every stored entry, on ingest (through seq ' + (ch.verified_through || 0) + ')')),
        field('halted', a.halted_at ? h('span', { class: 'bad' }, 'fork at seq ' + a.halted_at) : 'no'),
        field('gaps', (ch.gaps || []).length ? ch.gaps.map((g) => g[0] + '–' + g[1]).join(', ') : 'none')),
        h('p', {}, h('button', { id: 'verify', onclick: async (e) => {
          e.target.disabled = true;
          try {
            const r = await api('/api/v1/agents/' + enc + '/verify');
            verifyOut.textContent = r.ok ? ' verified through seq ' + r.head : ' damaged at seq ' + r.at + ': ' + r.problem;
            verifyOut.className = r.ok ? 'ok' : 'bad';
          } catch (err) { verifyOut.textContent = ' ' + err.message; verifyOut.className = 'bad'; }
          e.target.disabled = false;
        } }, 'Verify now'), verifyOut)),
    ),
    h('h2', {}, at ? 'Entries up to seq ' + at : 'Recent entries'),
    entries.length ? h('table', { class: 'entries', id: 'entries' },
      h('tr', {}, h('th', { class: 'num' }, 'seq'), h('th', {}, 'ts'), h('th', {}, 'event'), h('th', {}, 'data'), h('th', {}, 'context')),
      entries.map((e) => h('tr', {},
        h('td', { class: 'num' }, e.seq), h('td', {}, e.ts), h('td', {}, e.event),
        h('td', {}, h('pre', {}, JSON.stringify(e.data))), h('td', {}, e.context || ''))))
      : h('p', { class: 'muted' }, 'No entries stored here.'),
  );
}

// ---- commands ------------------------------------------------------------

async function lessonsView(_parts, params) {
  const q = params.get('cluster') ? '?cluster=' + encodeURIComponent(params.get('cluster')) : '';
  const md = await api('/api/v1/lessons' + q);
  return h('div', {},
    h('h1', {}, 'Lessons'),
    h('p', {}, h('a', { href: '/api/v1/lessons?format=html' + (q ? '&' + q.slice(1) : ''), target: '_blank', rel: 'noopener' }, 'As a page'),
      h('span', { class: 'muted' }, ' · every lesson entry (trauma, root cause, correction, lesson) of the agents this gateway knows, grouped by what was learned')),
    h('pre', { id: 'lessons', class: 'card' }, md));
}

async function commandsView() {
  const list = await api('/api/v1/commands');
  const form = keep('issue-form', issueForm);
  return h('div', {},
    h('h1', {}, 'Commands'),
    h('div', { class: 'card' }, h('h2', {}, 'Issue a command'),
      sessionStorage.getItem('baton-token') ? null : h('p', { class: 'muted' }, 'Enter the operator token (top right) to issue.'),
      form),
    h('h2', {}, 'In hand and recently finished'),
    list.length ? h('table', { id: 'commands' },
      h('tr', {}, h('th', {}, 'id'), h('th', {}, 'verb'), h('th', {}, 'stage'), h('th', {}, 'decision'), h('th', { class: 'num' }, 'selected'),
        h('th', { class: 'num' }, 'ready'), h('th', { class: 'num' }, 'on time'), h('th', { class: 'num' }, 'conflict'),
        h('th', { class: 'num' }, 'transit'), h('th', { class: 'num' }, 'unanswered')),
      list.map((c) => h('tr', {},
        h('td', {}, link('#/command/' + c.hash, c.id)), h('td', {}, c.verb), h('td', {}, c.stage), h('td', {}, c.decision),
        h('td', { class: 'num' }, c.selected), h('td', { class: 'num' }, c.ready), h('td', { class: 'num' }, c.on_time),
        h('td', { class: 'num' }, c.conflict), h('td', { class: 'num' }, c.transit), h('td', { class: 'num' }, c.unanswered))))
      : h('p', { class: 'muted' }, 'None.'),
  );
}

function issueForm() {
  const out = h('span', { id: 'issue-result', class: 'muted' });
  return h('form', { class: 'order', id: 'issue-form', onsubmit: async (e) => {
    e.preventDefault();
    const order = { verb: $('verb').value };
    const sel = $('select').value.trim();
    const payload = $('payload').value.trim();
    try {
      if (sel) order.select = JSON.parse(sel);
      if (payload) order.payload = JSON.parse(payload);
    } catch (err) { out.textContent = 'not JSON: ' + err.message; out.className = 'bad'; return; }
    if ($('in').value.trim()) order.in = $('in').value.trim();
    if ($('window').value.trim()) order.window = $('window').value.trim();
    try {
      const r = await api('/api/v1/command', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(order) });
      location.hash = '#/command/' + r.hash;
    } catch (err) { out.textContent = err.message; out.className = 'bad'; }
  } },
  h('label', { for: 'verb' }, 'verb'), h('select', { id: 'verb' }, VERBS.map((v) => h('option', { value: v }, v))),
  h('label', { for: 'select' }, 'select'), h('textarea', { id: 'select', placeholder: '{"agents": ["pi-1"]} or {"capabilities": ["camera"]}; empty: all' }),
  h('label', { for: 'payload' }, 'payload'), h('textarea', { id: 'payload', placeholder: 'any JSON; empty: null' }),
  h('label', { for: 'in' }, 'T in'), h('input', { id: 'in', value: '2s' }),
  h('label', { for: 'window' }, 'window'), h('input', { id: 'window', value: '500ms' }),
  h('span', {}), h('span', {}, h('button', { type: 'submit', id: 'issue' }, 'Issue'), ' ', out));
}

async function commandView(parts) {
  const key = parts[0];
  const c = await api('/api/v1/commands/' + encodeURIComponent(key));
  const out = h('span', { id: 'rerun-result', class: 'muted' });
  const failed = (c.conflict || 0) + (c.transit || 0) + (c.unanswered || 0) + Object.values(c.skipped || {}).reduce((a, b) => a + b, 0);
  return h('div', {},
    h('p', {}, link('#/commands', 'Commands'), ' › ', c.id),
    h('h1', {}, 'Command ' + c.id + ' ', h('span', { class: 'badge mode' }, c.verb), ' ', h('span', { class: 'badge decision ' + c.decision, id: 'decision' }, c.decision)),
    h('p', { class: 'muted' }, 'issued by ' + c.issuer + ' · stage ' + c.stage + ' · phase ' + c.phase + ' · hash ' + c.hash.slice(0, 16) + '…'),
    h('div', { class: 'tiles', id: 'tally' },
      tile(c.selected, 'selected'), tile(c.sent, 'sent'), tile(c.ready, 'ready'), tile(c.on_time, 'on time'),
      tile(c.conflict, 'conflict'), tile(c.transit, 'transit'), tile(c.unanswered, 'unanswered')),
    Object.keys(c.skipped || {}).length ? h('p', {}, 'Skipped: ' + Object.entries(c.skipped).map(([k, v]) => k + ' ' + v).join(', ')) : null,
    (c.conflicts || []).length ? h('div', {}, h('h2', {}, 'Conflicts (' + c.conflicts_total + ')'),
      h('ul', { id: 'conflicts' }, c.conflicts.map((x) => h('li', {}, link('#/agent/' + encodeURIComponent(x.agent), x.agent), ': ' + x.kind)))) : null,
    c.stage === 'final' && failed > 0 ? h('p', {}, h('button', { id: 'rerun', onclick: async () => {
      try {
        const r = await api('/api/v1/commands/' + encodeURIComponent(c.hash) + '/rerun', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
        location.hash = '#/command/' + r.hash;
      } catch (err) { out.textContent = err.message; out.className = 'bad'; }
    } }, 'Re-run for the ' + failed + ' not ready'), ' ', out) : null,
    h('h2', {}, 'Answers'),
    h('table', { id: 'answers' },
      h('tr', {}, h('th', {}, 'agent'), h('th', {}, 'outcome'), h('th', { class: 'num' }, 'lead'), h('th', { class: 'num' }, 'prediction error'),
        h('th', {}, 'on time'), h('th', {}, 'conflict'), h('th', {}, 'result')),
      (c.agents || []).map((r) => h('tr', {},
        h('td', {}, link('#/agent/' + encodeURIComponent(r.agent), r.agent)),
        h('td', {}, r.skipped ? 'skipped: ' + r.skipped : r.state === undefined ? 'unanswered' : ({ 1: 'ready', 0: 'transit', '-1': 'conflict' })[r.state]),
        h('td', { class: 'num' }, num(r.lead_ms, ' ms')),
        h('td', { class: 'num' }, num(r.prediction_error_ms, ' ms')),
        h('td', {}, r.on_time === undefined ? '—' : r.on_time ? 'yes' : 'no'),
        h('td', {}, r.conflict ? r.conflict + ': ' + (r.detail || '') : ''),
        h('td', {}, r.result === undefined || r.result === null ? '' : h('pre', {}, JSON.stringify(r.result)))))),
  );
}

// ---- live updates: server-sent events read with fetch (so the token goes too)

async function live() {
  for (;;) {
    try {
      const r = await fetch('/api/v1/console/events', { headers: headers() });
      if (!r.ok || !r.body) throw new Error('events: ' + r.status);
      $('live').className = 'live on';
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (/^event: changed$/m.test(block)) render(false);
        }
      }
    } catch (_) { /* the gateway restarted or went away: try again */ }
    $('live').className = 'live off';
    await new Promise((res) => setTimeout(res, 3000));
  }
}

function start() {
  const token = $('token');
  token.value = sessionStorage.getItem('baton-token') || '';
  token.addEventListener('change', () => {
    if (token.value) sessionStorage.setItem('baton-token', token.value);
    else sessionStorage.removeItem('baton-token');
    render(false);
  });
  $('token-form').addEventListener('submit', (e) => e.preventDefault());
  window.addEventListener('hashchange', () => render(true));
  render(true);
  api('/api/v1/fleet').then((f) => { $('who').textContent = f.gateway + ' · cluster ' + f.cluster; }, () => {});
  live();
}

start();
