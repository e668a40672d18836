// The Switchboard operator console: a client of the operator API under /api.
// With an admin token configured every request carries `Authorization: Bearer`;
// the token lives in this tab's sessionStorage, never in a URL. The event
// stream is read with fetch() and a streaming body reader (EventSource cannot
// send headers). Text from clients is rendered with textContent only.

import { h, clear, clock, timeEl, age, noticeArea } from './common.js';

const TOKEN_KEY = 'switchboard.adminToken';
const REFRESH_MS = 2000;
const MAX_EVENTS = 500;

const $ = (id) => document.getElementById(id);
const ui = {
  streamStatus: $('stream-status'),
  logout: $('logout'),
  loginView: $('login-view'),
  loginForm: $('login-form'),
  token: $('token'),
  loginError: $('login-error'),
  consoleView: $('console-view'),
  figConnections: $('fig-connections'),
  figRate: $('fig-rate'),
  figRooms: $('fig-rooms'),
  figEvents: $('fig-events'),
  clientsBody: $('clients-body'),
  clientsUpdated: $('clients-updated'),
  events: $('events'),
  clearEvents: $('clear-events'),
  broadcastForm: $('broadcast-form'),
  broadcastText: $('broadcast-text'),
  clientForm: $('client-form'),
  clientText: $('client-text'),
  clientSend: $('client-send'),
  selectedName: $('selected-name'),
  disconnectForm: $('disconnect-form'),
  disconnectReason: $('disconnect-reason'),
  disconnectSend: $('disconnect-send'),
  roomForm: $('room-form'),
  roomName: $('room-name'),
  roomText: $('room-text'),
  roomOptions: $('room-options'),
};
const notices = noticeArea($('notices'));

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  running: false,
  selected: null,
  clients: [],
  pollTimer: null,
  refreshSoon: null,
  stream: null,
  streamAttempt: 0,
  streamTimer: null,
  eventsSeen: 0,
  /** What the clients table shows, to skip identical redraws. */
  signature: null,
  /** Last sample for the message rate: time and messages_in per session. */
  sample: null,
};

class AuthError extends Error {}
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  return state.token ? { ...extra, Authorization: `Bearer ${state.token}` } : extra;
}

async function api(path, { method = 'GET', body } = {}) {
  const init = { method, cache: 'no-store', headers: headers() };
  if (body !== undefined) {
    init.body = body;
    init.headers = headers({ 'Content-Type': 'text/plain; charset=utf-8' });
  }
  const response = await fetch(`/api${path}`, init);
  if (response.status === 401) throw new AuthError('unauthorized');
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error ?? message;
    } catch {
      // Not JSON: keep the status line.
    }
    throw new ApiError(response.status, message);
  }
  return response.json();
}

function setStreamStatus(text, stateName) {
  ui.streamStatus.textContent = text;
  ui.streamStatus.dataset.state = stateName;
}

// ---------------------------------------------------------------- sign-in

function showLogin(message) {
  stop();
  ui.consoleView.hidden = true;
  ui.loginView.hidden = false;
  ui.logout.hidden = true;
  ui.loginError.hidden = !message;
  ui.loginError.textContent = message ?? '';
  setStreamStatus('Sign-in required', 'idle');
  ui.token.focus();
}

function authFailed() {
  const hadToken = Boolean(state.token);
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin(hadToken ? 'That admin token was not accepted. Check it and sign in again.' : null);
}

async function boot() {
  try {
    const clients = await api('/clients');
    start(clients);
  } catch (error) {
    if (error instanceof AuthError) authFailed();
    else if (error instanceof ApiError && error.status === 403) {
      setStreamStatus('Not allowed', 'disconnected');
      notices.show(`The operator API refused this browser: ${error.message}`, 'error');
    } else {
      setStreamStatus('Server unreachable — retrying', 'reconnecting');
      setTimeout(boot, 2000);
    }
  }
}

ui.loginForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const token = ui.token.value.trim();
  if (!token) return;
  state.token = token;
  try {
    const clients = await api('/clients');
    sessionStorage.setItem(TOKEN_KEY, token);
    ui.token.value = '';
    start(clients);
  } catch (error) {
    if (error instanceof AuthError) authFailed();
    else showLogin(`Could not check the token: ${error.message}`);
  }
});

ui.logout.addEventListener('click', () => {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin('Signed out.');
});

function start(clients) {
  state.running = true;
  ui.loginView.hidden = true;
  ui.consoleView.hidden = false;
  ui.logout.hidden = !state.token;
  state.signature = null;
  renderClients(clients);
  refreshRooms();
  clearInterval(state.pollTimer);
  state.pollTimer = setInterval(refresh, REFRESH_MS);
  openStream();
}

function stop() {
  state.running = false;
  clearInterval(state.pollTimer);
  clearTimeout(state.streamTimer);
  state.stream?.abort();
  state.stream = null;
}

// ---------------------------------------------------------------- clients and figures

async function refresh() {
  if (!state.running) return;
  try {
    const clients = await api('/clients');
    renderClients(clients);
    await refreshRooms();
  } catch (error) {
    if (error instanceof AuthError) authFailed();
    else ui.clientsUpdated.textContent = `Refresh failed: ${error.message}`;
  }
}

/** Refresh soon after an event, at most once per burst of events. */
function refreshSoon() {
  if (state.refreshSoon) return;
  state.refreshSoon = setTimeout(() => {
    state.refreshSoon = null;
    refresh();
  }, 150);
}

async function refreshRooms() {
  const rooms = await api('/rooms');
  ui.figRooms.textContent = rooms.length;
  clear(ui.roomOptions);
  for (const room of rooms) {
    ui.roomOptions.append(h('option', { value: room.name, text: `${room.members.length} members` }));
  }
}

function updateRate(clients) {
  const now = performance.now();
  const counts = new Map(clients.map((c) => [c.session, c.messages_in]));
  const previous = state.sample;
  if (previous && now - previous.at < 1000) return;
  if (previous) {
    let delta = 0;
    for (const client of clients) {
      const before = previous.counts.get(client.session)
        ?? (client.connected_since_ms >= previous.wall ? 0 : client.messages_in);
      delta += Math.max(0, client.messages_in - before);
    }
    const rate = delta / ((now - previous.at) / 1000);
    ui.figRate.textContent = rate < 10 ? rate.toFixed(1) : Math.round(rate).toString();
  } else {
    ui.figRate.textContent = '0.0';
  }
  state.sample = { at: now, wall: Date.now(), counts };
}

/** The most rows the table shows; the figures always count every client. */
const MAX_ROWS = 500;

function renderClients(clients) {
  state.clients = clients;
  ui.figConnections.textContent = clients.length;
  updateRate(clients);
  if (state.selected && !clients.some((c) => c.name === state.selected)) select(null);
  const now = Date.now();
  ui.clientsUpdated.textContent = `updated ${clock(now)}`;

  // Rebuild the rows only when something changed, so a periodic refresh
  // never swallows a click or moves the keyboard focus.
  const signature = JSON.stringify(clients.map((c) => [c.session, c.name, c.rooms, c.messages_in, c.messages_out, c.inbox_depth]));
  if (signature === state.signature) return;
  state.signature = signature;

  const focused = document.activeElement?.name === 'client' ? document.activeElement.value : null;
  clear(ui.clientsBody);
  if (clients.length === 0) {
    ui.clientsBody.append(h('tr', {}, h('td', { colspan: '8', class: 'empty', text: 'No clients connected' })));
  }
  const sorted = [...clients].sort((a, b) => a.name.localeCompare(b.name));
  for (const client of sorted.slice(0, MAX_ROWS)) {
    const selected = client.name === state.selected;
    const radio = h('input', {
      type: 'radio',
      name: 'client',
      value: client.name,
      checked: selected,
      onchange: () => select(client.name),
    });
    const row = h('tr', { 'aria-selected': selected ? 'true' : 'false', dataset: { name: client.name } },
      h('td', {}, h('label', { class: 'client-pick' }, radio, h('span', { text: client.name }))),
      h('td', { class: 'addr', text: client.addr }),
      h('td', { text: client.protocol }),
      h('td', {},
        h('time', {
          datetime: client.connected_since,
          title: `${client.connected_since} (${age(client.connected_since_ms, now)} ago)`,
          text: clock(client.connected_since_ms),
        })),
      h('td', { text: client.rooms.length ? client.rooms.map((r) => `#${r}`).join(' ') : '—' }),
      h('td', { class: 'num', text: client.messages_in }),
      h('td', { class: 'num', text: client.messages_out }),
      // Issue 7: stored messages the client has not acknowledged yet.
      h('td', { class: 'num', text: client.inbox_depth ?? 0 }));
    row.addEventListener('click', (event) => {
      if (event.target !== radio) {
        radio.checked = true;
        select(client.name);
      }
    });
    ui.clientsBody.append(row);
    if (focused === client.name) radio.focus();
  }
  if (sorted.length > MAX_ROWS) {
    ui.clientsBody.append(h('tr', {}, h('td', {
      colspan: '8',
      class: 'empty',
      text: `… and ${sorted.length - MAX_ROWS} more (the first ${MAX_ROWS} by name are shown)`,
    })));
  }
}

function select(name) {
  state.selected = name;
  ui.selectedName.textContent = name ?? 'none selected';
  ui.clientSend.disabled = !name;
  ui.disconnectSend.disabled = !name;
  for (const row of ui.clientsBody.querySelectorAll('tr[data-name]')) {
    row.setAttribute('aria-selected', row.dataset.name === name ? 'true' : 'false');
  }
}

// ---------------------------------------------------------------- event stream

function describe(event) {
  switch (event.type) {
    case 'join':
      return `${event.name} connected from ${event.addr} (${event.protocol})`;
    case 'leave':
      return `${event.name} disconnected — ${event.code ? `code ${event.code}` : 'no close code'}${event.reason ? `: ${event.reason}` : ''}`;
    case 'message':
      return `${event.from} → server: ${event.text}`;
    case 'room_join':
      return `${event.name} joined #${event.room}`;
    case 'room_leave':
      return `${event.name} left #${event.room}`;
    case 'error':
      return `${event.name ? `${event.name}: ` : ''}${event.message}`;
    case 'lagged':
      return `the event stream fell behind: ${event.missed} events missed`;
    default:
      return JSON.stringify(event);
  }
}

function addEvent(event) {
  state.eventsSeen += 1;
  ui.figEvents.textContent = state.eventsSeen;
  const item = h('li', { dataset: { type: event.type } },
    timeEl(event.at ?? Date.now()),
    h('span', { class: `kind kind-${event.type}`, text: event.type.replace('_', ' ') }),
    h('span', { class: 'detail', text: describe(event) }));
  ui.events.prepend(item);
  while (ui.events.children.length > MAX_EVENTS) ui.events.lastElementChild.remove();
  if (event.type !== 'error') refreshSoon();
}

/** Parses one SSE block ("event: x\ndata: {...}"). */
function dispatchBlock(block) {
  let data = '';
  let hasData = false;
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') {
      data += (hasData ? '\n' : '') + value;
      hasData = true;
    }
  }
  if (!hasData) return;
  try {
    addEvent(JSON.parse(data));
  } catch {
    addEvent({ type: 'error', message: `unreadable event: ${data}` });
  }
}

async function openStream() {
  clearTimeout(state.streamTimer);
  state.stream?.abort();
  const controller = new AbortController();
  state.stream = controller;
  setStreamStatus(state.streamAttempt ? 'Events: reconnecting…' : 'Events: connecting…', 'connecting');
  try {
    const response = await fetch('/api/events', {
      headers: headers({ Accept: 'text/event-stream' }),
      cache: 'no-store',
      signal: controller.signal,
    });
    if (response.status === 401) {
      authFailed();
      return;
    }
    if (!response.ok || !response.body) throw new Error(`${response.status} ${response.statusText}`);
    setStreamStatus('Events: live', 'live');
    if (state.streamAttempt > 0) {
      notices.show('Event stream reconnected.', 'ok');
      refresh();
    }
    state.streamAttempt = 0;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        dispatchBlock(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch {
    // A network error, or the server went away: retry below unless aborted.
  }
  if (controller.signal.aborted || !state.running) return;
  state.streamAttempt += 1;
  const delay = Math.min(15_000, 500 * 2 ** (state.streamAttempt - 1));
  setStreamStatus(`Events: disconnected, retrying in ${Math.ceil(delay / 1000)} s`, 'reconnecting');
  state.streamTimer = setTimeout(openStream, delay);
}

ui.clearEvents.addEventListener('click', () => clear(ui.events));

// ---------------------------------------------------------------- actions

async function act(description, call, onDone) {
  try {
    const result = await call();
    notices.show(description(result), 'ok');
    onDone?.();
    refreshSoon();
  } catch (error) {
    if (error instanceof AuthError) authFailed();
    else notices.show(error.message, 'error');
  }
}

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

ui.broadcastForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = ui.broadcastText.value;
  if (!text.trim()) return;
  act((r) => `Sent to all: delivered to ${plural(r.delivered, 'client')}.`,
    () => api('/broadcast', { method: 'POST', body: text }),
    () => { ui.broadcastText.value = ''; });
});

ui.clientForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const name = state.selected;
  const text = ui.clientText.value;
  if (!name || !text.trim()) return;
  act(() => `Sent to ${name}.`,
    () => api(`/clients/${encodeURIComponent(name)}/messages`, { method: 'POST', body: text }),
    () => { ui.clientText.value = ''; });
});

ui.disconnectForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const name = state.selected;
  if (!name) return;
  const reason = ui.disconnectReason.value.trim();
  act(() => `Disconnected ${name}${reason ? ` (${reason})` : ''}.`,
    () => api(`/clients/${encodeURIComponent(name)}/disconnect`, { method: 'POST', body: reason }),
    () => { ui.disconnectReason.value = ''; });
});

ui.roomForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const room = ui.roomName.value.trim().replace(/^#/, '');
  const text = ui.roomText.value;
  if (!room || !text.trim()) return;
  act((r) => `Sent to #${room}: delivered to ${plural(r.delivered, 'member')}.`,
    () => api(`/rooms/${encodeURIComponent(room)}/messages`, { method: 'POST', body: text }),
    () => { ui.roomText.value = ''; });
});

boot();
