// switchboard console: a small single-page app over the admin API (/console/api/* is
// /admin/* for a signed-in browser). No dependencies, no build step.
//
// Safety rules of this file:
// - every element is built with h() and text goes in as text nodes: no HTML parsing, no
//   HTML strings, so event bodies (which come from outside) always show as text;
// - the admin token is sent once, to sign in; the session lives in an HttpOnly cookie and
//   every state-changing request carries the session's CSRF token in X-CSRF-Token.
'use strict';

(() => {
  let csrf = null;
  const $ = (id) => document.getElementById(id);
  const view = () => $('view');

  // ---- DOM helpers -------------------------------------------------------------------

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else if (k === 'value') el.value = v;
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }

  const badge = (s) => h('span', { class: 'badge s-' + String(s) }, String(s));
  const when = (iso) => iso ? h('time', { datetime: iso, title: iso }, new Date(iso).toLocaleString()) : '';
  const json = (v) => h('pre', { class: 'json' }, JSON.stringify(v, null, 2));
  const link = (href, text) => h('a', { href }, text);
  const eventLink = (id) => link('#/event/' + encodeURIComponent(id), id);
  const deliveryLink = (id) => link('#/delivery/' + encodeURIComponent(id), id);

  function table(headers, rows, caption) {
    return h('table', {},
      caption ? h('caption', { class: 'muted' }, caption) : null,
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col', class: /^(Last hour|Last day|Runs|Attempts)$/.test(x) ? 'num' : null }, x)))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: headers.length, class: 'muted' }, 'Nothing here.'))));
  }

  function fields(pairs) {
    return h('dl', { class: 'fields' }, pairs.filter((p) => p[1] !== undefined && p[1] !== null && p[1] !== '')
      .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  }

  function say(text, isError) {
    const s = $('status');
    s.className = isError ? 'error' : '';
    s.textContent = text || '';
  }

  function render(title, ...content) {
    const v = view();
    v.replaceChildren(h('h1', { tabindex: '-1', id: 'view-title' }, title), ...content);
    $('view-title').focus();
    document.title = title + ' · switchboard console';
  }

  // ---- the admin API through the console ----------------------------------------------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (method !== 'GET') headers['X-CSRF-Token'] = csrf || '';
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const r = await fetch('/console/api/' + path, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (r.status === 401) { signedOut(); throw new ApiError(401, 'Signed out: sign in again.'); }
    if (!r.ok) throw new ApiError(r.status, (data && data.message) || ('HTTP ' + r.status));
    return data;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
    const s = q.toString();
    return s ? '?' + s : '';
  }

  // ---- confirmation ------------------------------------------------------------------

  function confirmDialog(title, text, okText) {
    const d = $('confirm');
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = okText || 'Replay';
    return new Promise((resolve) => {
      const done = (v) => { cleanup(); if (d.open) d.close(); resolve(v); };
      const ok = () => done(true);
      const cancel = () => done(false);
      const onClose = () => done(false);
      function cleanup() {
        $('confirm-ok').removeEventListener('click', ok);
        $('confirm-cancel').removeEventListener('click', cancel);
        d.removeEventListener('close', onClose);
      }
      $('confirm-ok').addEventListener('click', ok);
      $('confirm-cancel').addEventListener('click', cancel);
      d.addEventListener('close', onClose);
      d.showModal();
      $('confirm-cancel').focus();
    });
  }

  // Bulk replay: count first (dry run), confirm with the count, then replay.
  async function bulkReplay(selector, noun) {
    try {
      const dry = await api('POST', 'replay', Object.assign({ dryRun: true }, selector));
      const n = noun === 'event' ? dry.events : dry.deliveries;
      const extra = dry.stillUnparseable ? ` (${dry.stillUnparseable} quarantined body(ies) still do not parse and would stay)` : '';
      if (!n) { say(`No ${noun} matches: nothing to replay${extra}.`); return; }
      const ok = await confirmDialog(`Replay ${n} ${noun}(s)?`,
        `${n} ${noun}(s) match this filter and will be ${noun === 'event' ? 'routed' : 'sent'} again${extra}.`,
        `Replay ${n}`);
      if (!ok) { say('Nothing replayed.'); return; }
      const done = await api('POST', 'replay', selector);
      say(`Replayed: ${done.events} event(s), ${done.deliveries} delivery(ies)` +
        (done.stillUnparseable ? `, ${done.stillUnparseable} still unparseable` : '') + '.');
      route();
    } catch (e) { say(e.message, true); }
  }

  async function replayOne(kind, id) {
    const noun = kind === 'events' ? 'event' : 'delivery';
    const ok = await confirmDialog(`Replay 1 ${noun}?`,
      kind === 'events' ? `Event ${id} goes back to the inbox and its route runs again.` : `Delivery ${id} is attempted again now.`,
      'Replay 1');
    if (!ok) { say('Nothing replayed.'); return; }
    try {
      await api('POST', `${kind}/${encodeURIComponent(id)}/replay`);
      say(`Replayed ${noun} ${id}.`);
      route();
    } catch (e) { say(e.message, true); }
  }

  // ---- views -------------------------------------------------------------------------

  const hourAgo = () => new Date(Date.now() - 3600e3).toISOString();
  const dayAgo = () => new Date(Date.now() - 86400e3).toISOString();

  function card(label, n, cls, href) {
    return h('div', { class: 'card ' + (n ? cls : '') },
      h('div', { class: 'muted' }, label),
      h('div', { class: 'big' }, href ? link(href, String(n)) : String(n)));
  }

  async function overview() {
    const [stats, routes, retrying, dead] = await Promise.all([
      api('GET', 'stats'), api('GET', 'routes'),
      api('GET', 'deliveries?status=retrying&limit=5'), api('GET', 'deliveries?status=dead&limit=5'),
    ]);
    const sum = (list, pred, k) => list.filter(pred).reduce((a, x) => a + x[k], 0);
    const failedDay = sum(stats.events, (x) => x.status === 'failed', 'lastDay');
    const quarantinedDay = sum(stats.events, (x) => x.status === 'quarantined', 'lastDay');
    const broken = routes.errors.length;
    const evRows = stats.events.map((x) => h('tr', {},
      h('td', {}, x.provider), h('td', {}, badge(x.status)),
      h('td', { class: 'num' }, link('#/events' + query({ provider: x.provider, status: x.status, since: hourAgo() }), String(x.lastHour))),
      h('td', { class: 'num' }, link('#/events' + query({ provider: x.provider, status: x.status, since: dayAgo() }), String(x.lastDay)))));
    const dvRows = stats.deliveries.map((x) => h('tr', {},
      h('td', {}, x.channel), h('td', {}, badge(x.status)),
      h('td', { class: 'num' }, String(x.lastHour)),
      h('td', { class: 'num' }, link('#/deliveries' + query({ channel: x.channel, status: x.status }), String(x.lastDay)))));
    const deliveryRows = (page) => page.items.map((a) => h('tr', {},
      h('td', {}, deliveryLink(a.id)), h('td', {}, a.channel), h('td', {}, badge(a.status)),
      h('td', { class: 'num' }, String(a.attempts.length)),
      h('td', {}, lastError(a))));
    render('Overview',
      h('div', { class: 'cards' },
        card('Failed events, last 24 h', failedDay, 'bad', '#/events?status=failed'),
        card('Quarantined, last 24 h', quarantinedDay, 'warn', '#/quarantine'),
        card('Failing deliveries (retrying)', retrying.items.length + (retrying.next ? '+' : ''), 'warn', '#/deliveries?status=retrying'),
        card('Dead deliveries', dead.items.length + (dead.next ? '+' : ''), 'bad', '#/deliveries?status=dead'),
        card('Route scripts broken', broken, 'bad', '#/routes')),
      h('h2', {}, 'Events by provider and status'),
      table(['Provider', 'Status', 'Last hour', 'Last day'], evRows),
      h('h2', {}, 'Deliveries by channel and status'),
      table(['Channel', 'Status', 'Last hour', 'Last day'], dvRows),
      h('h2', {}, 'Failing deliveries'),
      table(['Delivery', 'Channel', 'Status', 'Attempts', 'Last error'], deliveryRows(retrying)),
      h('h2', {}, 'Dead deliveries'),
      table(['Delivery', 'Channel', 'Status', 'Attempts', 'Last error'], deliveryRows(dead)),
      h('h2', {}, 'Route scripts'),
      h('p', {}, `${routes.scripts.length} script(s) running from ${routes.source}; `,
        broken ? h('span', { class: 'error' }, `${broken} do(es) not compile`) : 'all compile', '. ',
        link('#/routes', 'Details')),
      h('p', { class: 'muted' }, 'Counted at ', when(stats.at), '.'));
  }

  function lastError(a) {
    const last = a.attempts.length ? a.attempts[a.attempts.length - 1] : null;
    return last && last.error ? last.error : '';
  }

  // datetime-local <-> RFC 3339 (UTC)
  const toLocalInput = (iso) => {
    if (!iso) return '';
    const d = new Date(iso);
    if (isNaN(d)) return '';
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
  };
  const fromLocalInput = (v) => v ? new Date(v).toISOString() : '';

  function filterForm(id, controls, onApply) {
    const form = h('form', { class: 'filters', id, 'aria-label': 'Filters' }, controls,
      h('div', {}, h('button', { type: 'submit', class: 'primary' }, 'Apply')));
    form.addEventListener('submit', (ev) => { ev.preventDefault(); onApply(new FormData(form)); });
    return form;
  }

  const field = (label, control) => h('div', { class: 'field' }, h('label', { for: control.id }, label), control);
  function select(id, name, options, current) {
    return h('select', { id, name }, options.map(([v, t]) => h('option', { value: v, selected: v === (current || '') }, t)));
  }
  const input = (id, name, current, extra) => h('input', Object.assign({ id, name, value: current || '' }, extra || {}));

  function pager(params, next, base) {
    const older = next ? h('button', { type: 'button', id: 'older', onclick: () => go(base, Object.assign({}, params, { before: next, _from: params.before || 'first' })) }, 'Older →') : null;
    const first = params.before ? h('button', { type: 'button', id: 'newest', onclick: () => go(base, Object.assign({}, params, { before: '', _from: '' })) }, '← Newest') : null;
    return h('div', { class: 'pager' }, first, older);
  }

  function go(base, params) {
    const clean = {};
    for (const [k, v] of Object.entries(params)) if (v && !k.startsWith('_')) clean[k] = v;
    location.hash = base + query(clean);
  }

  async function events(params) {
    const q = { provider: params.provider, type: params.type, status: params.status, since: params.since, until: params.until, before: params.before, limit: 25 };
    const page = await api('GET', 'events' + query(q));
    const rows = page.items.map((e) => h('tr', {},
      h('td', {}, when(e.receivedAt)), h('td', {}, e.provider), h('td', {}, e.type), h('td', {}, badge(e.status)),
      h('td', {}, (e.route && e.route.error) || e.quarantineReason || ''),
      h('td', { class: 'mono' }, eventLink(e.id))));
    const bulk = (params.status === 'failed' || params.status === 'quarantined')
      ? h('button', { type: 'button', id: 'replay-matching', class: 'danger', onclick: () => bulkReplay({ events: { status: params.status, provider: params.provider || undefined, type: params.type || undefined } }, 'event') }, 'Replay all matching…')
      : h('p', { class: 'muted' }, 'To replay in bulk, filter by status failed or quarantined.');
    render('Events',
      filterForm('event-filters', [
        field('Provider', input('f-provider', 'provider', params.provider, { list: 'providers', size: 12 })),
        h('datalist', { id: 'providers' }, ['pomelo', 'verestro', 'verifyvasp'].map((p) => h('option', { value: p }))),
        field('Type', input('f-type', 'type', params.type, { size: 18 })),
        field('Status', select('f-status', 'status', [['', 'any'], ['received', 'received'], ['routed', 'routed'], ['failed', 'failed'], ['quarantined', 'quarantined']], params.status)),
        field('Received from', input('f-since', 'since', toLocalInput(params.since), { type: 'datetime-local' })),
        field('Received until', input('f-until', 'until', toLocalInput(params.until), { type: 'datetime-local' })),
      ], (fd) => go('#/events', {
        provider: fd.get('provider'), type: fd.get('type'), status: fd.get('status'),
        since: fromLocalInput(fd.get('since')), until: fromLocalInput(fd.get('until')),
      })),
      h('div', { class: 'buttons' }, bulk),
      table(['Received', 'Provider', 'Type', 'Status', 'Error or reason', 'Event'], rows),
      pager(params, page.next, '#/events'));
  }

  function attemptsTable(a) {
    return table(['Started', 'Finished', 'Outcome', 'Error', 'Answer'], a.attempts.map((t) => h('tr', {},
      h('td', {}, when(t.startedAt)), h('td', {}, when(t.finishedAt)), h('td', {}, badge(t.outcome)),
      h('td', { class: 'error' }, t.error || ''), h('td', {}, t.detail || ''))), 'Every attempt, oldest first');
  }

  async function eventDetail(id) {
    const e = await api('GET', 'events/' + encodeURIComponent(id));
    const meta = Object.entries(e.meta || {});
    const known = { client_subject: 'Client certificate subject', client_sha256: 'Client certificate SHA-256', jwe_alg: 'JWE algorithm', jwe_kid: 'JWE key id', api_key: 'API key' };
    const r = e.route;
    render('Event ' + e.id,
      h('div', { class: 'buttons' },
        h('button', { type: 'button', id: 'replay-event', class: 'primary', onclick: () => replayOne('events', e.id) }, 'Replay this event'),
        link('#/try' + query({ event: e.id }), 'Try a script against it')),
      fields([
        ['Status', badge(e.status)], ['Provider', e.provider], ['Type', e.type], ['Endpoint', e.endpoint],
        ['Received', when(e.receivedAt)], ['Idempotency key', e.idempotencyKey], ['Fingerprint', h('span', { class: 'mono' }, e.fingerprint)],
        ['Conflicts with', e.conflictOf ? eventLink(e.conflictOf) : null],
        ['Quarantined because', e.quarantineReason ? h('span', { class: 'error' }, e.quarantineReason) : null],
      ]),
      h('h2', {}, 'Meta'),
      table(['Fact', 'Value'], meta.map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, known[k] || k), h('td', { class: 'mono' }, v)))),
      h('h2', {}, 'Flags'),
      (e.flags && e.flags.length) ? h('ul', { id: 'flags' }, e.flags.map((f) => h('li', {}, f))) : h('p', { class: 'muted' }, 'None.'),
      h('h2', {}, 'Route'),
      r ? fields([['Script', r.script || '(none matched)'], ['Ran', when(r.at)], ['Runs', String(r.runs)],
        ['Error', r.error ? h('span', { class: 'error', id: 'route-error' }, r.error) : null]])
        : h('p', { class: 'muted' }, 'Not routed yet.'),
      h('h2', {}, 'Body (as received; secrets masked)'),
      h('pre', { id: 'event-body' }, typeof e.body === 'string' ? e.body : JSON.stringify(e.body, null, 2)),
      h('h2', {}, 'Actions'),
      (e.actions || []).length ? (e.actions || []).map((a) => h('section', { class: 'action' },
        h('h3', {}, deliveryLink(a.id), ' ', a.channel, ' ', badge(a.status)),
        json(a.payload), attemptsTable(a))) : h('p', { class: 'muted' }, 'No actions.'));
  }

  async function deliveries(params) {
    const q = { status: params.status, channel: params.channel, provider: params.provider, before: params.before, limit: 25 };
    const page = await api('GET', 'deliveries' + query(q));
    const rows = page.items.map((a) => h('tr', {},
      h('td', {}, when(a.createdAt)), h('td', {}, a.channel), h('td', {}, a.provider), h('td', {}, badge(a.status)),
      h('td', { class: 'num' }, String(a.attempts.length)), h('td', { class: 'error' }, lastError(a)),
      h('td', { class: 'mono' }, deliveryLink(a.id))));
    const bulkable = ['dead', 'retrying', 'pending'].includes(params.status);
    render('Deliveries',
      filterForm('delivery-filters', [
        field('Status', select('f-status', 'status', [['', 'any'], ['pending', 'pending'], ['sending', 'sending'], ['retrying', 'retrying'], ['sent', 'sent'], ['dead', 'dead'], ['expired', 'expired']], params.status)),
        field('Channel', select('f-channel', 'channel', [['', 'any'], ['email', 'email'], ['sms', 'sms'], ['http', 'http'], ['log', 'log']], params.channel)),
        field('Provider', input('f-provider', 'provider', params.provider, { size: 12 })),
      ], (fd) => go('#/deliveries', { status: fd.get('status'), channel: fd.get('channel'), provider: fd.get('provider') })),
      h('div', { class: 'buttons' }, bulkable
        ? h('button', { type: 'button', id: 'replay-matching', class: 'danger', onclick: () => bulkReplay({ deliveries: { status: params.status, channel: params.channel || undefined, provider: params.provider || undefined } }, 'delivery') }, 'Replay all matching…')
        : h('p', { class: 'muted' }, 'To replay in bulk, filter by status dead, retrying or pending.')),
      table(['Queued', 'Channel', 'Provider', 'Status', 'Attempts', 'Last error', 'Delivery'], rows),
      pager(params, page.next, '#/deliveries'));
  }

  async function deliveryDetail(id) {
    const a = await api('GET', 'deliveries/' + encodeURIComponent(id));
    render('Delivery ' + a.id,
      h('div', { class: 'buttons' },
        h('button', { type: 'button', id: 'replay-delivery', class: 'primary', onclick: () => replayOne('deliveries', a.id) }, 'Replay this delivery')),
      fields([['Status', badge(a.status)], ['Channel', a.channel], ['Event', eventLink(a.eventId)], ['Provider', a.provider],
        ['Type', a.eventType], ['Queued', when(a.createdAt)], ['Next attempt', when(a.dueAt)]]),
      h('h2', {}, 'Attempts'), h('div', { id: 'attempts' }, attemptsTable(a)),
      h('h2', {}, 'Payload (secrets masked)'), json(a.payload));
  }

  async function quarantine(params) {
    const page = await api('GET', 'quarantine' + query({ provider: params.provider, before: params.before, limit: 25 }));
    const rows = page.items.map((e) => h('tr', {},
      h('td', {}, when(e.receivedAt)), h('td', {}, e.provider), h('td', {}, e.endpoint),
      h('td', { class: 'error' }, e.quarantineReason || ''), h('td', { class: 'mono' }, eventLink(e.id))));
    render('Quarantine',
      h('p', {}, 'Authenticated bodies that did not match their provider\'s schema, kept as they arrived. Replay parses them again (after a fix or a key change).'),
      filterForm('quarantine-filters', [field('Provider', input('f-provider', 'provider', params.provider, { size: 12 }))],
        (fd) => go('#/quarantine', { provider: fd.get('provider') })),
      h('div', { class: 'buttons' }, h('button', { type: 'button', id: 'replay-matching', class: 'danger', onclick: () => bulkReplay({ events: { status: 'quarantined', provider: params.provider || undefined } }, 'event') }, 'Replay all matching…')),
      table(['Received', 'Provider', 'Endpoint', 'Why it was kept', 'Event'], rows),
      pager(params, page.next, '#/quarantine'));
  }

  async function routes() {
    const r = await api('GET', 'routes');
    const errors = new Map(r.errors.map((e) => [e.file, e]));
    const names = Array.from(new Set([...r.scripts, ...r.errors.map((e) => e.file)])).sort();
    const rows = names.map((n) => {
      const e = errors.get(n);
      const state = !e ? 'ok' : (e.running ? 'stale' : 'broken');
      const text = !e ? 'running' : (e.running ? 'does not compile; its last good version runs' : 'does not compile; its events fail');
      return h('tr', {}, h('td', { class: 'mono' }, n), h('td', {}, h('span', { class: 'badge s-' + state }, text)),
        h('td', { class: 'mono' }, e ? `${e.file}:${e.line || '?'}:${e.column || '?'}` : ''),
        h('td', { class: 'error' }, e ? e.message : ''));
    });
    render('Routes', h('p', {}, 'Scripts from ', h('code', {}, r.source), '.'),
      table(['Script', 'State', 'Where', 'Compile error'], rows));
  }

  // ---- try a script --------------------------------------------------------------------

  function answerRow(a) {
    const n = answerRow.n = (answerRow.n || 0) + 1;
    const row = h('div', { class: 'row' },
      field('Service', input('a-service-' + n, 'service', a.service)),
      field('Method', select('a-method-' + n, 'method', [['GET', 'GET'], ['POST', 'POST']], a.method || 'GET')),
      field('Path', input('a-path-' + n, 'path', a.path)),
      field('Answer (JSON)', h('textarea', { id: 'a-answer-' + n, name: 'answer', rows: 2 }, a.answer ? JSON.stringify(a.answer) : '')),
      h('div', {}, h('button', { type: 'button', 'aria-label': 'Remove this answer', onclick: () => row.remove() }, 'Remove')));
    return row;
  }

  async function tryView(params) {
    const routesInfo = await api('GET', 'routes');
    const answers = h('div', { class: 'answers', id: 'answers' });
    const editor = h('textarea', { id: 'script-text', class: 'code', name: 'script', spellcheck: 'false', placeholder: '// Leave empty to run the event\'s current script.\n// Or write or paste a script here: event.data, http::get, email::send, sms::send, log::info, print(...)' });
    const pick = select('load-script', 'load', [['', 'choose a script…'], ...routesInfo.scripts.map((s) => [s, s])], '');
    const out = h('div', { id: 'try-result', 'aria-live': 'polite' });
    const form = h('form', { id: 'try-form' },
      field('Event id', input('try-event', 'event', params.event, { size: 40, required: true, class: 'mono' })),
      h('p', { class: 'muted' }, 'Pick one in ', link('#/events', 'Events'), ' (its page has a "Try a script" link).'),
      h('h2', {}, 'Script'),
      h('div', { class: 'buttons' }, field('Load a script into the editor', pick),
        h('button', { type: 'button', id: 'load-button', onclick: async () => {
          if (!pick.value) return;
          try { editor.value = (await api('GET', 'routes/source' + query({ file: pick.value }))).text; say('Loaded ' + pick.value + '.'); }
          catch (e) { say(e.message, true); }
        } }, 'Load')),
      field('Script text (empty: the event\'s current script)', editor),
      h('h2', {}, 'Lookups'),
      h('div', { class: 'field' }, h('input', { type: 'checkbox', id: 'try-live', name: 'live' }), ' ',
        h('label', { for: 'try-live' }, 'Answer lookups live (calls the configured services)')),
      h('p', { class: 'muted' }, 'Typed-in answers are used first:'),
      answers,
      h('div', { class: 'buttons' },
        h('button', { type: 'button', id: 'add-answer', onclick: () => answers.append(answerRow({})) }, 'Add an answer'),
        h('button', { type: 'submit', id: 'run-try', class: 'primary' }, 'Run (queues nothing)')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const req = { eventId: $('try-event').value.trim(), live: $('try-live').checked, answers: [] };
      if (editor.value.trim()) req.script = editor.value;
      for (const row of answers.querySelectorAll('.row')) {
        const get = (name) => row.querySelector(`[name="${name}"]`).value;
        const a = { service: get('service').trim(), method: get('method'), path: get('path').trim() };
        const text = get('answer').trim();
        try { a.answer = text ? JSON.parse(text) : null; } catch (_) { say(`The answer for ${a.service}${a.path} is not JSON.`, true); return; }
        if (a.service) req.answers.push(a);
      }
      out.replaceChildren(h('p', { class: 'muted' }, 'Running…'));
      try { showTry(out, await api('POST', 'routes/try', req), answers); say(''); }
      catch (e) { out.replaceChildren(); say(e.message, true); }
    });
    render('Try a script',
      h('p', {}, 'Runs a route script against a stored event in the same sandbox and with the same limits as a real run. Nothing is queued or sent.'),
      form, h('h2', {}, 'Result'), out);
  }

  function showTry(out, r, answers) {
    const outcome = { ok: 'finished', failed: 'failed', compile_error: 'does not compile', no_script: 'no script for this event' }[r.outcome] || r.outcome;
    const where = r.line ? ` (line ${r.line}, column ${r.column || '?'})` : '';
    out.replaceChildren(
      fields([['Script', r.script || '(none)'], ['Outcome', h('span', { class: 'badge s-' + (r.outcome === 'ok' ? 'ok' : 'failed'), id: 'try-outcome' }, outcome)],
        ['Error', r.error ? h('span', { class: 'error', id: 'try-error' }, r.error + where) : null], ['Took', r.tookMs + ' ms']]),
      h('h3', {}, 'Actions it would queue'),
      table(['Channel', 'Payload'], r.actions.map((a) => h('tr', { class: 'try-action' }, h('td', {}, a.channel), h('td', {}, json(a.payload))))),
      h('h3', {}, 'Log output'),
      r.log.length ? h('pre', { id: 'try-log' }, r.log.join('\n')) : h('p', { class: 'muted' }, 'Nothing printed.'),
      h('h3', {}, 'Lookups it made'),
      table(['Call', 'Answered by', 'Result', ''], r.lookups.map((l) => h('tr', {},
        h('td', { class: 'mono' }, `${l.method} ${l.service}${l.path}`), h('td', {}, l.answeredBy),
        h('td', {}, l.ok ? json(l.answer) : h('span', { class: 'error' }, l.error || '')),
        h('td', {}, l.answeredBy === 'none' ? h('button', { type: 'button', onclick: () => answers.append(answerRow({ service: l.service, method: l.method, path: l.path })) }, 'Type an answer') : '')))));
  }

  // ---- routing and sign-in --------------------------------------------------------------

  const pages = {
    overview: () => overview(),
    events: (p) => events(p),
    event: (p, arg) => eventDetail(arg),
    deliveries: (p) => deliveries(p),
    delivery: (p, arg) => deliveryDetail(arg),
    quarantine: (p) => quarantine(p),
    routes: () => routes(),
    try: (p) => tryView(p),
  };

  async function route() {
    if (!csrf) return;
    const hash = location.hash.replace(/^#\/?/, '') || 'overview';
    const [path, qs] = hash.split('?');
    const [name, ...rest] = path.split('/');
    const params = Object.fromEntries(new URLSearchParams(qs || ''));
    const page = pages[name] || pages.overview;
    for (const a of document.querySelectorAll('#nav a')) {
      const target = a.getAttribute('href').slice(2);
      if (target === name || (target === 'events' && name === 'event') || (target === 'deliveries' && name === 'delivery')) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    try { await page(params, decodeURIComponent(rest.join('/'))); }
    catch (e) { if (e.status !== 401) render('Could not load this page', h('p', { class: 'error' }, e.message)); }
  }

  function signedIn(token) {
    csrf = token;
    $('signin').hidden = true;
    $('nav').hidden = false;
    $('logout').hidden = false;
    route();
  }

  function signedOut() {
    csrf = null;
    view().replaceChildren();
    $('nav').hidden = true;
    $('logout').hidden = true;
    $('signin').hidden = false;
    document.title = 'Sign in · switchboard console';
    $('token').focus();
  }

  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('signin-error').textContent = '';
    const r = await fetch('/console/session', {
      method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token: $('token').value }),
    });
    const data = await r.json().catch(() => ({}));
    $('token').value = '';
    if (r.ok && data.csrf) { say('Signed in.'); signedIn(data.csrf); }
    else $('signin-error').textContent = data.message || 'Sign-in failed.';
  });

  $('logout').addEventListener('click', async () => {
    await fetch('/console/session', { method: 'DELETE', credentials: 'same-origin', headers: { 'X-CSRF-Token': csrf || '' } });
    say('Signed out.');
    signedOut();
  });

  window.addEventListener('hashchange', () => { say(''); route(); });

  (async () => {
    const r = await fetch('/console/session', { credentials: 'same-origin' });
    const data = r.ok ? await r.json().catch(() => null) : null;
    if (data && data.csrf) signedIn(data.csrf); else signedOut();
  })();
})();
