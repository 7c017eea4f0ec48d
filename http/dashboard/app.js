// Skald's dashboard: plain JavaScript over the API it is served beside.
// No build step, no third-party code: it works offline.
'use strict';

const $ = (id) => document.getElementById(id);
const state = {
  me: null, csrf: '', filter: {}, next: null, saga: null, view: null,
  events: [], eventsNext: null, tab: 'timeline', travel: null,
  counts: [], ended: [], tick: { events: 0, ended: 0 }, refreshTimer: null,
};
const ENDS = new Set(['Completed', 'Compensated', 'Failed']);

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && state.csrf) headers['X-CSRF-Token'] = state.csrf;
  const response = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!response.ok) {
    const error = new Error(data && data.error ? data.error.message : response.statusText);
    error.status = response.status;
    error.code = data && data.error ? data.error.code : '';
    throw error;
  }
  return data;
}

function say(text, isError) {
  const message = $('message');
  message.textContent = text;
  message.className = isError ? 'message error' : 'message';
  message.hidden = !text;
}

function time(ms) { return ms ? new Date(ms).toISOString().replace('T', ' ').replace('Z', '') : ''; }
function can(permission) { return state.me && state.me.permissions.includes(permission); }
function cell(row, text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
}

// --- session ---------------------------------------------------------------

async function init() {
  try {
    signedIn(await api('GET', '/api/session'));
  } catch (error) {
    if (error.status === 401) { showLogin(); } else { say(error.message, true); }
  }
}

function showLogin() {
  for (const id of ['overview', 'sagas', 'detail']) $(id).hidden = true;
  $('login').hidden = false;
  $('logout').hidden = true;
  $('who').textContent = '';
}

function signedIn(me) {
  state.me = me;
  state.csrf = me.csrf || '';
  $('login').hidden = true;
  $('logout').hidden = !state.csrf;
  $('who').textContent = `${me.principal} (${me.role})`;
  listen();
  route();
}

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    signedIn(await api('POST', '/api/session', { key: $('login-key').value }));
    $('login-key').value = '';
    $('login-error').textContent = '';
  } catch (error) {
    $('login-error').textContent = error.message;
  }
});

$('logout').addEventListener('click', async () => {
  await api('DELETE', '/api/session').catch(() => {});
  state.me = null; state.csrf = '';
  if (state.source) state.source.close();
  showLogin();
});

// --- live events -----------------------------------------------------------

function listen() {
  if (state.source) state.source.close();
  const source = new EventSource('/api/events/stream');
  source.addEventListener('saga', (message) => {
    const event = JSON.parse(message.data);
    state.tick.events += 1;
    if (ENDS.has(event.type)) state.tick.ended += 1;
    if (!$('sagas').hidden && $('live').checked) refreshSoon(loadList);
    if (!$('detail').hidden && state.saga === event.saga && !state.travel) refreshSoon(() => openSaga(state.saga));
  });
  state.source = source;
}

function refreshSoon(load) {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => { state.refreshTimer = null; load(); }, 500);
}

setInterval(() => {
  state.counts.push(state.tick.events); state.ended.push(state.tick.ended);
  state.tick = { events: 0, ended: 0 };
  for (const series of [state.counts, state.ended]) if (series.length > 60) series.shift();
  if (!$('overview').hidden) {
    $('rate').textContent = state.counts[state.counts.length - 1];
    $('ended-rate').textContent = state.ended[state.ended.length - 1];
    spark($('rate-chart'), state.counts);
    spark($('ended-chart'), state.ended);
  }
}, 1000);

function spark(canvas, series) {
  const context = canvas.getContext('2d');
  context.clearRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(1, ...series);
  context.strokeStyle = '#1a56c4';
  context.beginPath();
  series.forEach((value, i) => {
    const x = (i / 59) * canvas.width;
    const y = canvas.height - (value / top) * (canvas.height - 4) - 2;
    if (i === 0) context.moveTo(x, y); else context.lineTo(x, y);
  });
  context.stroke();
}

// --- routing ---------------------------------------------------------------

function route() {
  if (!state.me) return;
  const hash = location.hash || '#/';
  for (const id of ['overview', 'sagas', 'detail']) $(id).hidden = true;
  $('nav-overview').className = hash === '#/' ? 'on' : '';
  $('nav-sagas').className = hash.startsWith('#/sagas') ? 'on' : '';
  say('');
  const saga = hash.match(/^#\/saga\/(\d+)$/);
  if (saga) { openSaga(Number(saga[1])); return; }
  if (hash.startsWith('#/sagas')) { $('sagas').hidden = false; loadList(); return; }
  $('overview').hidden = false;
  loadOverview();
}
window.addEventListener('hashchange', route);

$('search').addEventListener('submit', async (event) => {
  event.preventDefault();
  const text = $('search-text').value.trim();
  const id = text.match(/^(?:saga-)?(\d+)$/);
  try {
    const view = id ? await api('GET', `/api/sagas/${id[1]}`)
      : await api('GET', `/api/sagas/by-key/${encodeURIComponent(text)}`);
    location.hash = `#/saga/${view.id}`;
  } catch (error) { say(error.message, true); }
});

// --- overview --------------------------------------------------------------

function samples(text, name) {
  const found = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{')) continue;
    const labels = {};
    const inner = line.slice(name.length + 1, line.lastIndexOf('}'));
    for (const pair of inner.match(/\w+="[^"]*"/g) || []) {
      const [key, value] = pair.split('=');
      labels[key] = value.slice(1, -1);
    }
    found.push({ labels, value: Number(line.slice(line.lastIndexOf(' ') + 1)) });
  }
  return found;
}

function fill(table, rows) {
  table.replaceChildren();
  if (!rows.length) { const row = table.insertRow(); cell(row, 'none yet'); return; }
  for (const values of rows) { const row = table.insertRow(); for (const v of values) cell(row, String(v)); }
}

function breakerText(breaker) {
  if (typeof breaker === 'string') return breaker;
  const [name, fields] = Object.entries(breaker)[0];
  const details = Object.entries(fields || {})
    .map(([key, value]) => (key.endsWith('until') || key.endsWith('_at') ? `${key} ${time(value)}` : `${key} ${value}`));
  return details.length ? `${name} (${details.join(', ')})` : name;
}

function percentile(buckets, p) {
  const total = buckets.length ? buckets[buckets.length - 1].value : 0;
  if (!total) return null;
  const hit = buckets.find((b) => b.value >= p * total);
  return hit ? hit.labels.le : null;
}

async function loadOverview() {
  try {
    const summary = await api('GET', '/api/metrics');
    $('health').textContent = summary.health.ready ? 'ready' : 'NOT READY';
    $('health').className = summary.health.ready ? 'status-Completed' : 'status-Failed';
    $('partitions').textContent = summary.partitions;
    fill($('breakers'), summary.breakers.map((b) => [b.service, breakerText(b.state)]));
    const alerts = await api('GET', '/api/alerts');
    fill($('alerts'), alerts.alerts.map((a) => [a.name, a.status.toUpperCase(), a.summary, `since ${time(a.since)}`]));
    let text = '';
    try { text = await api('GET', '/metrics'); } catch (error) {
      if (error.code !== 'no_metrics') throw error;
      for (const id of ['outcomes', 'failures', 'in-flight', 'latency']) fill($(id), [['no metrics registry on this server']]);
      return;
    }
    const nonZero = (s) => s.value > 0;
    fill($('outcomes'), samples(text, 'skald_sagas_ended_total').filter(nonZero)
      .map((s) => [s.labels.definition, s.labels.outcome, s.value]));
    fill($('failures'), samples(text, 'skald_saga_failures_total').filter(nonZero)
      .map((s) => [s.labels.definition, s.labels.reason, s.value]));
    fill($('in-flight'), samples(text, 'skald_sagas_in_flight').filter(nonZero)
      .map((s) => [s.labels.definition, s.labels.status, s.value]));
    const buckets = samples(text, 'skald_saga_duration_seconds_bucket');
    const groups = {};
    for (const b of buckets) (groups[`${b.labels.definition} ${b.labels.outcome}`] ||= []).push(b);
    fill($('latency'), Object.entries(groups).filter(([, list]) => list[list.length - 1].value > 0)
      .map(([name, list]) => [name, `p50 ≤ ${percentile(list, 0.5)} s`, `p99 ≤ ${percentile(list, 0.99)} s`]));
  } catch (error) { say(error.message, true); }
  if (!$('overview').hidden) setTimeout(() => { if (!$('overview').hidden) loadOverview(); }, 2000);
}

// --- saga list -------------------------------------------------------------

$('filters').addEventListener('submit', (event) => {
  event.preventDefault();
  state.filter = { definition: $('filter-definition').value.trim(), status: $('filter-status').value };
  loadList();
});

function listQuery(after) {
  const query = new URLSearchParams({ limit: '50' });
  if (state.filter.definition) query.set('definition', state.filter.definition);
  if (state.filter.status) query.set('status', state.filter.status);
  if (after !== undefined && after !== null) query.set('after', after);
  return query.toString();
}

async function loadList(append) {
  try {
    const page = await api('GET', `/api/sagas?${listQuery(append ? state.next : undefined)}`);
    const body = $('saga-rows');
    if (!append) body.replaceChildren();
    for (const saga of page.sagas) {
      const row = body.insertRow();
      row.dataset.id = saga.id;
      cell(row, `saga-${saga.id}`);
      cell(row, saga.definition);
      cell(row, saga.version === null ? '' : saga.version);
      cell(row, saga.status, `status-${saga.status}`);
      cell(row, time(saga.started_at));
      cell(row, time(saga.updated_at));
      row.addEventListener('click', () => { location.hash = `#/saga/${saga.id}`; });
    }
    state.next = page.next_after;
    $('more').hidden = page.next_after === null;
  } catch (error) { say(error.message, true); }
}
$('more').addEventListener('click', () => loadList(true));

function bulkBody(dryRun) {
  const body = { action: $('bulk-action').value, reason: $('bulk-reason').value.trim(), dry_run: dryRun };
  if (state.filter.definition) body.definition = state.filter.definition;
  if (state.filter.status) body.status = state.filter.status;
  return body;
}

$('bulk').addEventListener('submit', async (event) => {
  event.preventDefault();
  $('bulk-apply').hidden = true;
  if (!can('bulk')) { say(`your role (${state.me.role}) may not act in bulk`, true); return; }
  try {
    const counted = await api('POST', '/api/sagas/bulk', bulkBody(true));
    say(`${counted.matching} saga(s) match the filter`);
    $('bulk-apply').textContent = `Apply to ${counted.matching} saga(s)`;
    $('bulk-apply').hidden = counted.matching === 0;
  } catch (error) { say(`${error.code || 'error'}: ${error.message}`, true); }
});

$('bulk-apply').addEventListener('click', async () => {
  const body = bulkBody(false);
  if (!body.reason) { say('a reason is required', true); return; }
  if (!window.confirm(`${body.action} every matching saga?`)) return;
  try {
    const done = await api('POST', '/api/sagas/bulk', body);
    say(`${done.done} of ${done.matching} done; ${done.refused.length} refused`);
    $('bulk-apply').hidden = true;
    loadList();
  } catch (error) { say(`${error.code || 'error'}: ${error.message}`, true); }
});

// --- saga detail -----------------------------------------------------------

function phaseClass(phase, step) {
  const name = typeof phase === 'string' ? phase : Object.keys(phase)[0];
  const doubt = step.in_doubt && step.in_doubt.length > 0;
  switch (name) {
    case 'Succeeded': return 'done';
    case 'Running': case 'WaitingRetry': return doubt ? 'doubt' : 'running';
    case 'Failed': return doubt ? 'doubt' : 'failed';
    case 'Compensating': case 'WaitingCompensationRetry': return 'compensating';
    case 'CompensationFailed': return 'failed';
    case 'Compensated': return 'compensated';
    default: return '';
  }
}

function renderFlow(steps) {
  const flow = $('flow');
  flow.replaceChildren();
  steps.forEach((step, i) => {
    if (i > 0) { const arrow = document.createElement('span'); arrow.className = 'arrow'; arrow.textContent = '→'; flow.appendChild(arrow); }
    const box = document.createElement('div');
    const phase = typeof step.phase === 'string' ? step.phase : Object.keys(step.phase)[0];
    box.className = `step ${phaseClass(step.phase, step)} ${step.kind === 'Pivot' ? 'pivot' : ''}`;
    box.dataset.step = i;
    box.innerHTML = '<div class="name"></div><div class="kind"></div><div class="phase"></div>';
    box.querySelector('.name').textContent = step.id;
    box.querySelector('.kind').textContent = `${step.kind || ''}${step.kind === 'Pivot' ? ' ◆ point of no return' : ''}`;
    const attempts = step.compensation_attempts ? `, ${step.compensation_attempts} compensation` : '';
    box.querySelector('.phase').textContent = `${phase} · ${step.attempts} attempt(s)${attempts}`;
    if (step.last_error) box.title = step.last_error;
    flow.appendChild(box);
  });
}

async function openSaga(id) {
  $('detail').hidden = false;
  try {
    const view = await api('GET', `/api/sagas/${id}`);
    const fresh = state.saga !== id;
    state.saga = id; state.view = view;
    $('detail-title').textContent = `saga-${id} · ${view.definition} v${view.version ?? '?'}`;
    $('detail-status').textContent = `${view.status}${view.failure ? ' — ' + view.failure : ''}`;
    $('detail-status').className = `status-${view.status}`;
    if (!state.travel) renderFlow(view.steps);
    updateActions(view);
    if (fresh) { state.events = []; state.eventsNext = null; state.travel = null; await loadEvents(); }
    else await loadEvents(true);
  } catch (error) { say(error.message, true); }
}

function updateActions(view) {
  const readOnlyReason = (permission) => (can(permission) ? '' : `your role (${state.me.role}) may not ${permission}`);
  for (const button of $('actions').querySelectorAll('button')) {
    const action = button.dataset.action;
    const permission = action === 'cancel' ? 'cancel' : 'act';
    const fits = action === 'cancel'
      ? !['Completed', 'Compensated', 'Failed', 'Resolved'].includes(view.status)
      : view.status === 'Failed';
    const denied = readOnlyReason(permission);
    button.disabled = !fits || Boolean(denied);
    button.title = denied || (fits ? '' : `not possible while ${view.status}`);
  }
}

async function loadEvents(refresh) {
  const after = refresh ? (state.events.length ? state.events[state.events.length - 1].lsn : null) : state.eventsNext;
  const query = new URLSearchParams({ limit: '200' });
  if (after !== null && after !== undefined) query.set('after', after);
  const page = await api('GET', `/api/sagas/${state.saga}/events?${query}`);
  state.events.push(...page.events);
  if (!refresh) state.eventsNext = page.next_after;
  $('timeline-more').hidden = state.eventsNext === null;
  renderTab();
}
$('timeline-more').addEventListener('click', () => loadEvents(false));

function summary(event) {
  const body = event.event[event.type] || event.event[Object.keys(event.event || {})[0]] || {};
  if (typeof body !== 'object') return '';
  return Object.entries(body)
    .filter(([key]) => !['input', 'output', 'steps'].includes(key))
    .map(([key, value]) => `${key}=${typeof value === 'object' ? JSON.stringify(value) : value}`).join(' ');
}

function renderTab() {
  $('timeline').hidden = state.tab === 'json';
  $('raw').hidden = state.tab !== 'json';
  for (const name of ['timeline', 'compact', 'json']) $(`tab-${name}`).className = state.tab === name ? 'on' : '';
  if (state.tab === 'json') { $('raw').textContent = JSON.stringify(state.view, null, 2); return; }
  const list = $('timeline');
  list.replaceChildren();
  const entries = state.tab === 'compact' ? compact(state.events) : state.events.map((e) => ({ lsn: e.lsn, text: `${time(e.at)}  ${e.type}  ${summary(e)}` }));
  for (const entry of entries) {
    const item = document.createElement('li');
    item.innerHTML = '<span class="lsn"></span><span class="text"></span>';
    item.querySelector('.lsn').textContent = entry.lsn;
    item.querySelector('.text').textContent = entry.text;
    if (state.travel === entry.lsn) item.className = 'at';
    item.addEventListener('click', () => travel(entry.lsn));
    list.appendChild(item);
  }
}

function compact(events) {
  const steps = new Map();
  const rows = [];
  for (const event of events) {
    const body = event.event[Object.keys(event.event || {})[0]];
    const step = body && typeof body === 'object' && 'step' in body ? body.step : null;
    if (step === null) { rows.push({ lsn: event.lsn, text: `${time(event.at)}  ${event.type}` }); continue; }
    if (!steps.has(step)) { const row = { lsn: event.lsn, step, kinds: [] }; steps.set(step, row); rows.push(row); }
    steps.get(step).kinds.push(event.type);
  }
  return rows.map((row) => (row.kinds ? { lsn: row.lsn, text: `step ${row.step}: ${row.kinds.join(' → ')}` } : row));
}

for (const name of ['timeline', 'compact', 'json']) {
  $(`tab-${name}`).addEventListener('click', () => { state.tab = name; renderTab(); });
}

async function travel(lsn) {
  if (state.travel === lsn) { state.travel = null; $('travel-note').hidden = true; renderFlow(state.view.steps); renderTab(); return; }
  try {
    const then = await api('GET', `/api/sagas/${state.saga}/at/${lsn}`);
    state.travel = lsn;
    const steps = then.state.steps.map((step, i) => ({ ...state.view.steps[i], ...step, id: state.view.steps[i].id, kind: state.view.steps[i].kind }));
    renderFlow(steps);
    $('travel-note').hidden = false;
    $('travel-note').textContent = `As of LSN ${lsn}: ${then.state.status}. Click the event again to return to now.`;
    renderTab();
  } catch (error) { say(error.message, true); }
}

// --- actions ---------------------------------------------------------------

for (const button of $('actions').querySelectorAll('button')) {
  button.addEventListener('click', () => ask(button.dataset.action));
}

function ask(action) {
  const dialog = $('confirm');
  $('confirm-title').textContent = `${action.replace('_', ' ')} saga-${state.saga}?`;
  const needsStep = action === 'resume_step' || action === 'turn_back';
  $('confirm-step-label').hidden = !needsStep;
  $('confirm-step').replaceChildren(...state.view.steps.map((step, i) => new Option(step.id, i)));
  $('confirm-reason').value = '';
  dialog.dataset.action = action;
  dialog.showModal();
}

$('confirm').addEventListener('close', async () => {
  const dialog = $('confirm');
  if (dialog.returnValue !== 'ok') return;
  const action = dialog.dataset.action;
  const reason = $('confirm-reason').value.trim();
  try {
    if (action === 'cancel') {
      const answer = await api('POST', `/api/sagas/${state.saga}/cancel`, { reason });
      say(`cancel: ${answer.outcome}`);
    } else {
      const body = { action, reason };
      if (action === 'resume_step' || action === 'turn_back') body.step = Number($('confirm-step').value);
      const answer = await api('POST', `/api/sagas/${state.saga}/actions`, body);
      say(`${action.replace('_', ' ')}: now ${answer.status}`);
    }
    await openSaga(state.saga);
  } catch (error) { say(`${error.code || 'error'}: ${error.message}`, true); }
});

init();
