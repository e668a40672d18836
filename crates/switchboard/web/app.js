// The Switchboard chat client: protocol v1 over a WebSocket to this page's origin.
// docs/protocol.md describes every envelope used here. Message text is only
// ever rendered with textContent (via h()), never parsed as HTML.

import { h, clear, timeEl, noticeArea } from './common.js';

const SUBPROTOCOL = 'switchboard.v1';
const KICKED = 4000;
const SERVER = 'server';

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'),
  me: $('me'),
  retry: $('retry'),
  disconnect: $('disconnect'),
  loginView: $('login-view'),
  loginForm: $('login-form'),
  name: $('name'),
  connect: $('connect'),
  serverUrl: $('server-url'),
  chatView: $('chat-view'),
  toggleSidebar: $('toggle-sidebar'),
  totalUnread: $('total-unread'),
  sidebar: $('sidebar'),
  serverList: $('server-list'),
  roomList: $('room-list'),
  joinForm: $('join-form'),
  joinRoom: $('join-room'),
  peopleList: $('people-list'),
  onlineCount: $('online-count'),
  convTitle: $('conv-title'),
  convSubtitle: $('conv-subtitle'),
  leaveRoom: $('leave-room'),
  log: $('log'),
  composer: $('composer'),
  text: $('composer-text'),
};
const notices = noticeArea($('notices'));

/** Everything the page knows; reset when the user disconnects. */
const state = {
  name: null,
  ws: null,
  /** The user wants to be connected (false after "Disconnect"). */
  wanted: false,
  /** A welcome arrived at least once for this name: later closes reconnect. */
  everConnected: false,
  connected: false,
  attempt: 0,
  retryTimer: null,
  countdownTimer: null,
  limits: null,
  online: new Set(),
  /** Joined rooms: name -> { members: Set }. Re-joined after a reconnect. */
  rooms: new Map(),
  /** Conversations: key ("server", "dm:NAME", "room:NAME") -> conversation. */
  convs: new Map(),
  active: SERVER,
  /** The "disconnected, reconnecting" notice, removed once reconnected. */
  lostNotice: null,
  /** Requests awaiting an ack or error, by id. */
  pending: new Map(),
  nextId: 1,
};

const wsUrl = () => `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/`;

// ---------------------------------------------------------------- conversations

function conversation(key) {
  let conv = state.convs.get(key);
  if (!conv) {
    const [kind, ...rest] = key.split(':');
    const name = kind === SERVER ? 'Server' : rest.join(':');
    conv = { key, kind, name, messages: [], unread: 0 };
    state.convs.set(key, conv);
  }
  return conv;
}

const dmKey = (name) => `dm:${name}`;
const roomKey = (room) => `room:${room}`;

/** Renders one message as a list item; the text goes in as a text node. */
function messageItem(msg) {
  if (msg.system) {
    return h('li', { class: `system system-${msg.kind ?? 'info'}` }, timeEl(msg.ts), ' ', msg.text);
  }
  const mark = msg.mine ? h('span', { class: 'mark' }) : null;
  const li = h(
    'li',
    { class: msg.mine ? 'msg mine' : 'msg', dataset: msg.id ? { id: msg.id } : {} },
    h('div', { class: 'meta' },
      h('span', { class: 'from', text: msg.mine ? `${msg.from} (you)` : msg.from }),
      msg.note ? h('span', { class: 'note', text: msg.note }) : null,
      timeEl(msg.ts),
      mark),
    h('p', { class: 'text', text: msg.text }),
  );
  msg.el = li;
  msg.markEl = mark;
  if (msg.mine) setDelivery(msg, msg.state);
  return li;
}

const MARKS = {
  pending: ['…', 'sending'],
  acked: ['✓', 'acknowledged by the hub'],
  stored: ['✓', 'stored by the hub: delivered when the recipient reconnects'],
  failed: ['✗', 'not delivered'],
  sent: ['', ''],
};

function setDelivery(msg, delivery) {
  msg.state = delivery;
  if (!msg.el) return;
  msg.el.dataset.state = delivery;
  const [symbol, label] = MARKS[delivery] ?? MARKS.sent;
  msg.markEl.textContent = symbol;
  msg.markEl.title = label;
  msg.markEl.setAttribute('aria-label', label);
}

function addMessage(key, msg) {
  const conv = conversation(key);
  conv.messages.push(msg);
  if (conv.messages.length > 1000) conv.messages.shift().el?.remove();
  const item = messageItem(msg);
  if (state.active === key) {
    ui.log.append(item);
    if (stickToBottom || msg.mine) scrollToBottom();
  } else if (!msg.system && !msg.mine) {
    conv.unread += 1;
    renderSidebar();
  }
  return msg;
}

// The log follows new messages unless the reader scrolled up; it also stays
// at the bottom when notices appear above it and it gets shorter.
let stickToBottom = true;

function scrollToBottom() {
  ui.log.scrollTop = ui.log.scrollHeight;
  stickToBottom = true;
}

ui.log.addEventListener('scroll', () => {
  stickToBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 60;
});
new ResizeObserver(() => {
  if (stickToBottom) ui.log.scrollTop = ui.log.scrollHeight;
}).observe(ui.log);

function systemLine(key, text, kind = 'info') {
  addMessage(key, { system: true, text, kind, ts: Date.now() });
}

function setActive(key) {
  state.active = key;
  const conv = conversation(key);
  conv.unread = 0;
  clear(ui.log);
  for (const msg of conv.messages) ui.log.append(msg.el ?? messageItem(msg));
  scrollToBottom();
  renderHeader();
  renderSidebar();
}

function renderHeader() {
  const conv = conversation(state.active);
  ui.leaveRoom.hidden = conv.kind !== 'room' || !state.rooms.has(conv.name);
  if (conv.kind === SERVER) {
    ui.convTitle.textContent = 'Server';
    ui.convSubtitle.textContent = 'Messages to the operator, and announcements from the server';
  } else if (conv.kind === 'dm') {
    ui.convTitle.textContent = conv.name;
    const online = state.online.has(conv.name);
    ui.convSubtitle.textContent = !state.connected
      ? 'Private conversation · you are not connected'
      : `Private conversation · ${online ? 'online' : 'offline'}`;
  } else {
    ui.convTitle.textContent = `#${conv.name}`;
    const room = state.rooms.get(conv.name);
    ui.convSubtitle.textContent = room && !state.connected
      ? 'Room · you are not connected'
      : room
      ? `Room · ${room.members.size} member${room.members.size === 1 ? '' : 's'}: ${[...room.members].sort().join(', ')}`
      : 'Room · you left this room';
  }
  ui.text.placeholder = conv.kind === SERVER
    ? 'Write to the operator (Enter sends)'
    : `Message ${ui.convTitle.textContent} (Enter sends)`;
}

function convButton(key, label, { extra = null, title = null } = {}) {
  const conv = conversation(key);
  const active = state.active === key;
  return h('li', {},
    h('button', {
      type: 'button',
      class: 'conv',
      dataset: { conv: key },
      'aria-current': active ? 'true' : null,
      title,
      onclick: () => {
        setActive(key);
        closeSidebar();
        ui.text.focus();
      },
    },
    h('span', { class: 'conv-label', text: label }),
    extra,
    conv.unread > 0
      ? h('span', { class: 'badge', 'aria-label': `${conv.unread} unread`, text: conv.unread })
      : null));
}

function renderSidebar() {
  const focusedKey = document.activeElement?.dataset?.conv;

  clear(ui.serverList);
  ui.serverList.append(convButton(SERVER, 'server', { title: 'Write to the operator' }));

  clear(ui.roomList);
  for (const room of [...state.rooms.keys()].sort()) {
    ui.roomList.append(convButton(roomKey(room), `#${room}`));
  }
  if (state.rooms.size === 0) ui.roomList.append(h('li', { class: 'empty', text: 'No rooms joined yet' }));

  clear(ui.peopleList);
  const people = new Set(state.online);
  // Keep conversations with people who went offline reachable.
  for (const conv of state.convs.values()) if (conv.kind === 'dm') people.add(conv.name);
  for (const name of [...people].sort((a, b) => a.localeCompare(b))) {
    const online = state.online.has(name);
    if (name === state.name) {
      ui.peopleList.append(h('li', { class: 'self' },
        h('span', { class: 'dot online', 'aria-hidden': 'true' }), h('span', { text: `${name} (you)` })));
      continue;
    }
    ui.peopleList.append(convButton(dmKey(name), name, {
      extra: h('span', { class: online ? 'presence online' : 'presence offline', text: online ? '' : 'offline' }),
      title: online ? `Talk privately with ${name}` : `${name} is offline`,
    }));
  }
  ui.onlineCount.textContent = state.connected ? `(${state.online.size})` : '(unknown while disconnected)';

  const total = [...state.convs.values()].reduce((sum, c) => sum + c.unread, 0);
  ui.totalUnread.hidden = total === 0;
  ui.totalUnread.textContent = total;
  document.title = total > 0 ? `(${total}) Switchboard chat` : 'Switchboard chat';

  if (focusedKey) ui.sidebar.querySelector(`[data-conv="${CSS.escape(focusedKey)}"]`)?.focus();
}

function closeSidebar() {
  ui.sidebar.classList.remove('open');
  ui.toggleSidebar.setAttribute('aria-expanded', 'false');
}

// ---------------------------------------------------------------- connection

function setStatus(text, stateName) {
  ui.status.textContent = text;
  ui.status.dataset.state = stateName;
}

function send(request) {
  if (!state.connected || !state.ws) return false;
  state.ws.send(JSON.stringify(request));
  return true;
}

function request(kind, body, context = {}) {
  const id = `c${state.nextId++}`;
  state.pending.set(id, { kind, ...context });
  if (!send({ ...body, id })) {
    state.pending.delete(id);
    return null;
  }
  return id;
}

function connect() {
  clearTimeout(state.retryTimer);
  clearInterval(state.countdownTimer);
  ui.retry.hidden = true;
  const url = `${wsUrl()}?name=${encodeURIComponent(state.name)}`;
  setStatus(state.everConnected ? `Reconnecting as ${state.name}…` : `Connecting as ${state.name}…`,
    state.everConnected ? 'reconnecting' : 'connecting');
  let ws;
  try {
    ws = new WebSocket(url, SUBPROTOCOL);
  } catch (error) {
    notices.show(`Could not connect: ${error.message}`, 'error');
    return;
  }
  ws.binaryType = 'arraybuffer';
  state.ws = ws;
  let opened = false;
  ws.addEventListener('open', () => {
    opened = true;
  });
  ws.addEventListener('message', (event) => {
    if (ws !== state.ws) return;
    if (typeof event.data === 'string') {
      let envelope;
      try {
        envelope = JSON.parse(event.data);
      } catch {
        notices.show('The server sent something that is not JSON', 'warn');
        return;
      }
      handle(envelope);
    } else {
      handleBinary(event.data);
    }
  });
  ws.addEventListener('close', (event) => {
    if (ws !== state.ws) return;
    state.ws = null;
    closed(event, opened);
  });
}

function closed(event, opened) {
  const wasConnected = state.connected;
  state.connected = false;
  // Presence is unknown until the next welcome; rooms are kept to re-join.
  state.online = new Set();
  for (const room of state.rooms.values()) room.members = new Set();
  failPending();
  const detail = `code ${event.code}${event.reason ? `: ${event.reason}` : ''}`;
  if (!state.wanted) {
    setStatus('Disconnected', 'idle');
    return;
  }
  if (!opened && !state.everConnected) {
    // The handshake failed: a browser cannot see the HTTP status (409 for a
    // taken name), so say what it most likely was.
    state.wanted = false;
    setStatus('Not connected', 'idle');
    notices.show(`Could not connect as “${state.name}” (name taken or server down).`, 'error');
    showLogin();
    return;
  }
  renderSidebar();
  renderHeader();
  if (event.code === KICKED) {
    setStatus('Disconnected by the operator', 'disconnected');
    notices.show(`Disconnected by the operator (${detail}).`, 'error');
    systemLine(state.active, `Disconnected (${detail})`, 'error');
    ui.retry.hidden = false;
    ui.retry.textContent = 'Reconnect';
    return;
  }
  if (wasConnected) {
    state.lostNotice?.remove();
    state.lostNotice = notices.show(`Disconnected (${detail}). Reconnecting automatically…`, 'warn');
    systemLine(state.active, `Disconnected (${detail})`, 'warn');
  }
  scheduleReconnect();
}

function scheduleReconnect() {
  state.attempt += 1;
  const base = Math.min(30_000, 500 * 2 ** (state.attempt - 1));
  const delay = Math.round(base * (0.75 + Math.random() * 0.5));
  const due = Date.now() + delay;
  const tick = () => {
    const seconds = Math.max(0, Math.ceil((due - Date.now()) / 1000));
    setStatus(`Reconnecting in ${seconds} s (attempt ${state.attempt})…`, 'reconnecting');
  };
  tick();
  clearInterval(state.countdownTimer);
  state.countdownTimer = setInterval(tick, 1000);
  state.retryTimer = setTimeout(() => {
    clearInterval(state.countdownTimer);
    connect();
  }, delay);
  ui.retry.hidden = false;
  ui.retry.textContent = 'Reconnect now';
}

/** Requests still unanswered when the connection closes will never be answered. */
function failPending() {
  for (const [id, pending] of state.pending) {
    if (pending.kind === 'msg' && pending.msg.state === 'pending') setDelivery(pending.msg, 'failed');
    state.pending.delete(id);
  }
}

function welcomed(welcome) {
  const reconnected = state.everConnected;
  state.connected = true;
  state.everConnected = true;
  state.attempt = 0;
  state.limits = welcome.limits;
  state.name = welcome.name;
  ui.retry.hidden = true;
  ui.me.hidden = false;
  ui.me.textContent = '';
  ui.me.append('Signed in as ', h('strong', { text: welcome.name }));
  setStatus(reconnected ? `Reconnected as ${welcome.name}` : `Connected as ${welcome.name}`, 'connected');
  request('subscribe', { type: 'subscribe' });
  for (const room of state.rooms.keys()) joinRoom(room, { rejoin: true });
  if (reconnected) {
    state.lostNotice?.remove();
    state.lostNotice = null;
    const rooms = state.rooms.size;
    notices.show(`Reconnected${rooms ? `; rejoined ${rooms} room${rooms === 1 ? '' : 's'}` : ''}.`, 'ok');
    systemLine(state.active, 'Reconnected', 'ok');
  } else {
    showChat();
  }
  renderSidebar();
  renderHeader();
}

function joinRoom(room, { rejoin = false } = {}) {
  const id = request('join', { type: 'join', room }, { room, rejoin });
  if (id) request('subscribe-room', { type: 'subscribe', room }, { room });
  return id;
}

// ---------------------------------------------------------------- incoming

const ERRORS = {
  recipient_offline: (p) => `${p?.to ?? 'The recipient'} is offline — message not delivered.`,
  unknown_recipient: (p) => `${p?.to ?? 'The recipient'} has never connected — message not delivered.`,
  inbox_full: (p, m) => `${p?.to ?? 'The recipient'}'s inbox is full — message not delivered (${m}).`,
  unavailable: (p, m) => `The server cannot take messages right now — not delivered (${m}).`,
  rate_limited: () => 'You are sending too fast (rate limited) — message not sent.',
  too_large: () => 'That message is too large — not sent.',
  not_member: (p) => `You are not a member of ${p?.room ? `#${p.room}` : 'that room'}.`,
  invalid_name: (p, m) => `Invalid name: ${m}`,
  limit_reached: (p, m) => `Limit reached: ${m}`,
};

function describeError(envelope, pending) {
  const readable = ERRORS[envelope.code];
  return readable
    ? readable(pending, envelope.message)
    : `The server refused a request (${envelope.code}): ${envelope.message}`;
}

function handle(envelope) {
  switch (envelope.type) {
    case 'welcome':
      welcomed(envelope);
      break;
    case 'ack': {
      const pending = state.pending.get(envelope.id);
      state.pending.delete(envelope.id);
      if (pending?.kind === 'msg' && envelope.status === 'stored') {
        // Durable hub (issue 7): the recipient is offline; the hub keeps it.
        setDelivery(pending.msg, 'stored');
        systemLine(pending.key, `${pending.to ?? 'The recipient'} is offline — stored, delivered when they reconnect.`);
      } else if (pending?.kind === 'msg') setDelivery(pending.msg, 'acked');
      else if (pending?.kind === 'join') {
        if (!state.rooms.has(pending.room)) state.rooms.set(pending.room, { members: new Set() });
        if (!pending.rejoin) {
          systemLine(roomKey(pending.room), `You joined #${pending.room}`, 'ok');
          setActive(roomKey(pending.room));
        }
        renderSidebar();
      }
      break;
    }
    case 'error': {
      const pending = envelope.id ? state.pending.get(envelope.id) : undefined;
      if (envelope.id) state.pending.delete(envelope.id);
      const text = describeError(envelope, pending);
      notices.show(text, 'error');
      if (pending?.kind === 'msg') {
        setDelivery(pending.msg, 'failed');
        // A burst of refusals is shown by the ✗ marks and one notice.
        if (envelope.code !== 'rate_limited') systemLine(pending.key, text, 'error');
      } else if (pending?.kind === 'join') {
        state.rooms.delete(pending.room);
        renderSidebar();
      }
      break;
    }
    case 'members': {
      const pending = envelope.id ? state.pending.get(envelope.id) : undefined;
      if (envelope.id) state.pending.delete(envelope.id);
      if (envelope.room) {
        const room = state.rooms.get(envelope.room) ?? (pending?.kind === 'subscribe-room'
          ? state.rooms.set(envelope.room, { members: new Set() }).get(envelope.room)
          : null);
        if (room) room.members = new Set(envelope.members);
      } else {
        state.online = new Set(envelope.members);
      }
      renderSidebar();
      renderHeader();
      break;
    }
    case 'presence':
      presence(envelope);
      break;
    case 'dm': {
      const peer = envelope.from === state.name ? envelope.to : envelope.from;
      addMessage(dmKey(peer), { from: envelope.from, text: envelope.text, ts: envelope.ts, seq: envelope.seq });
      renderSidebar();
      break;
    }
    case 'room':
      addMessage(roomKey(envelope.room), {
        from: envelope.from ?? 'operator',
        note: envelope.from ? null : 'server',
        text: envelope.text,
        ts: envelope.ts,
        seq: envelope.seq,
      });
      break;
    case 'server':
      addMessage(SERVER, {
        from: 'operator',
        note: envelope.broadcast ? 'to everyone' : 'to you',
        text: envelope.text,
        ts: envelope.ts,
        seq: envelope.seq,
      });
      break;
    case 'clients':
    case 'pong':
      break;
    default:
      // Newer servers may add types; ignore what this page does not know.
      break;
  }
}

function presence(envelope) {
  const joined = envelope.event === 'join';
  if (envelope.room) {
    const room = state.rooms.get(envelope.room);
    if (!room) return;
    if (joined) room.members.add(envelope.name);
    else room.members.delete(envelope.name);
    if (envelope.name !== state.name) {
      systemLine(roomKey(envelope.room),
        `${envelope.name} ${joined ? 'joined' : 'left'} #${envelope.room}`);
    }
  } else {
    if (joined) state.online.add(envelope.name);
    else state.online.delete(envelope.name);
    if (state.convs.has(dmKey(envelope.name))) {
      systemLine(dmKey(envelope.name), `${envelope.name} is ${joined ? 'online' : 'offline'}`);
    }
  }
  renderSidebar();
  renderHeader();
}

/** Binary frames: kind | seq u64 | ts u64 | from_len | from | [room_len | room] | payload. */
function handleBinary(buffer) {
  const bytes = new Uint8Array(buffer);
  const decoder = new TextDecoder();
  try {
    const kind = bytes[0];
    let at = 17; // kind, seq and ts
    const fromLen = bytes[at++];
    const from = decoder.decode(bytes.subarray(at, at + fromLen));
    at += fromLen;
    let key = dmKey(from);
    if (kind === 2) {
      const roomLen = bytes[at++];
      key = roomKey(decoder.decode(bytes.subarray(at, at + roomLen)));
      at += roomLen;
    }
    if (at > bytes.length) throw new RangeError('truncated header');
    systemLine(key, `${from} sent binary data (${bytes.length - at} bytes); this page does not display files.`);
  } catch {
    notices.show('Received a binary frame this page cannot read.', 'warn');
  }
}

// ---------------------------------------------------------------- views and forms

function showChat() {
  ui.loginView.hidden = true;
  ui.chatView.hidden = false;
  ui.disconnect.hidden = false;
  setActive(state.active);
  ui.text.focus();
}

function showLogin() {
  ui.chatView.hidden = true;
  ui.loginView.hidden = false;
  ui.disconnect.hidden = true;
  ui.retry.hidden = true;
  ui.me.hidden = true;
  ui.connect.disabled = false;
  ui.name.focus();
  ui.name.select();
}

function resetSession() {
  clearTimeout(state.retryTimer);
  clearInterval(state.countdownTimer);
  Object.assign(state, {
    everConnected: false,
    connected: false,
    attempt: 0,
    online: new Set(),
    rooms: new Map(),
    convs: new Map(),
    active: SERVER,
    pending: new Map(),
  });
  clear(ui.log);
}

ui.serverUrl.textContent = wsUrl();
ui.name.value = sessionStorage.getItem('switchboard.name') ?? '';

ui.loginForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const name = ui.name.value.trim();
  if (!name) return;
  sessionStorage.setItem('switchboard.name', name);
  resetSession();
  notices.clear();
  state.name = name;
  state.wanted = true;
  ui.connect.disabled = true;
  connect();
});

ui.disconnect.addEventListener('click', () => {
  state.wanted = false;
  const ws = state.ws;
  state.ws = null;
  state.connected = false;
  ws?.close(1000, 'user disconnected');
  resetSession();
  setStatus('Disconnected', 'idle');
  showLogin();
});

ui.retry.addEventListener('click', () => {
  state.wanted = true;
  connect();
});

ui.joinForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const room = ui.joinRoom.value.trim().replace(/^#/, '');
  if (!room) return;
  if (state.rooms.has(room)) {
    setActive(roomKey(room));
  } else if (!joinRoom(room)) {
    notices.show('Not connected — cannot join a room right now.', 'warn');
    return;
  }
  ui.joinRoom.value = '';
});

ui.leaveRoom.addEventListener('click', () => {
  const conv = conversation(state.active);
  if (conv.kind !== 'room') return;
  request('leave', { type: 'leave', room: conv.name }, { room: conv.name });
  send({ type: 'unsubscribe', room: conv.name });
  state.rooms.delete(conv.name);
  systemLine(conv.key, `You left #${conv.name}`);
  setActive(SERVER);
});

ui.toggleSidebar.addEventListener('click', () => {
  const open = ui.sidebar.classList.toggle('open');
  ui.toggleSidebar.setAttribute('aria-expanded', String(open));
});

function submitMessage() {
  const text = ui.text.value;
  if (!text.trim()) return;
  const conv = conversation(state.active);
  if (!state.connected) {
    notices.show('Not connected — the message was not sent. It stays in the box; send it again once reconnected.', 'warn');
    return;
  }
  const limit = state.limits?.max_message_bytes;
  if (limit && new TextEncoder().encode(text).length + 200 > limit) {
    notices.show(`That message is too large (the server accepts up to ${limit} bytes).`, 'error');
    return;
  }
  if (conv.kind === 'room' && !state.rooms.has(conv.name)) {
    notices.show(`You are not in #${conv.name} any more; join it again to write there.`, 'warn');
    return;
  }
  const msg = { from: state.name, text, ts: Date.now(), mine: true, state: 'pending' };
  const body = conv.kind === SERVER
    ? { type: 'server', text }
    : conv.kind === 'dm'
      ? { type: 'dm', to: conv.name, text }
      : { type: 'publish', room: conv.name, text };
  const id = request('msg', body, { msg, key: conv.key, to: conv.kind === 'dm' ? conv.name : null, room: conv.kind === 'room' ? conv.name : null });
  msg.id = id;
  addMessage(conv.key, msg);
  ui.text.value = '';
}

ui.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  submitMessage();
});

ui.text.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submitMessage();
  }
});

document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape') closeSidebar();
});

// A page that is closed says goodbye instead of leaving the hub to time out.
window.addEventListener('pagehide', () => state.ws?.close(1000, 'page closed'));
