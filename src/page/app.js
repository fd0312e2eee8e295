// The page's glue: settings, token, the join form, compose and room list, and what each server
// event does to the rooms (rooms.js) and the screen (view.js) over the connection (connection.js).

import { Connection } from './connection.js';
import { Room, validRoomId } from './rooms.js';
import * as view from './view.js';

const $ = (id) => document.getElementById(id);
const settings = {
  dev: document.body.dataset.dev === 'true',
  heartbeatMs: Number(document.body.dataset.heartbeatMs) || 30_000,
};
/** An unacked message is sent again after this long (the server drops a repeated cid). */
const RESEND_MS = 5_000;
const MAX_TEXT = 4096;

/** Where the page is: `token` as given, `me` as the server confirmed it. */
const state = { name: '', token: null, me: null, rooms: new Map(), active: null, devFailures: 0, leaving: new Set() };

// A token in the URL (`#token=...`) is taken and removed from the address bar and history.
{
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    state.token = decodeURIComponent(m[1]);
    history.replaceState(null, '', location.pathname + location.search);
  } else {
    state.token = sessionStorage.getItem('natter.token');
  }
}

async function getToken() {
  if (state.token) return state.token;
  if (!settings.dev) return null;
  const q = new URLSearchParams({ uid: state.name, name: state.name });
  const r = await fetch(`/dev/token?${q}`, { cache: 'no-store' });
  if (!r.ok) throw new Error(await r.text());
  state.token = (await r.json()).token;
  return state.token;
}

const conn = new Connection({
  heartbeatMs: settings.heartbeatMs,
  getToken,
  onStatus: view.showStatus,
  onAuth(info) {
    state.devFailures = 0;
    scheduleDevRefresh(info.exp);
  },
  onReady(info) {
    state.me = info.uid;
    // A leave asked for while disconnected: the server only takes it from a connection in the room.
    for (const id of state.leaving) {
      conn.send({ event: 'login', name: state.name, roomid: id });
      conn.send({ event: 'leave', roomid: id });
    }
    state.leaving.clear();
    if (state.token && !settings.dev) sessionStorage.setItem('natter.token', state.token);
    for (const room of state.rooms.values()) conn.send(room.loginEvent(state.name));
  },
  onDown() {
    for (const room of state.rooms.values()) room.disconnected();
  },
  onNoauth(reason) {
    // Refused or expired: the token is of no more use. What the user typed stays where it is.
    state.token = null;
    sessionStorage.removeItem('natter.token');
    if (settings.dev && state.devFailures < 2) {
      state.devFailures += 1;
      getToken().then((t) => conn.useToken(t), () => conn.needToken('could not get a token'));
      return;
    }
    askForToken(reason);
  },
  onEvent: handle,
});

/** In dev mode the page fetches a fresh token a minute before this one expires. */
let refreshTimer = null;
function scheduleDevRefresh(exp) {
  clearTimeout(refreshTimer);
  if (!settings.dev || typeof exp !== 'number') return;
  const wait = Math.max(1000, exp * 1000 - Date.now() - 60_000);
  refreshTimer = setTimeout(() => {
    state.token = null;
    getToken().then((t) => conn.useToken(t), () => {});
  }, Math.min(wait, 2 ** 31 - 1));
}

function askForToken(reason) {
  conn.needToken('sign-in needed');
  $('token-reason').textContent = `The server refused the token: ${reason}. Paste a new one to go on.`;
  $('token-form').hidden = false;
  $('token-input').focus();
}

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const t = $('token-input').value.trim();
  if (!t) return;
  state.token = t;
  $('token-input').value = '';
  $('token-form').hidden = true;
  conn.useToken(t);
  $('compose-text').focus();
});

function handle(ev) {
  const room = state.rooms.get(ev.roomid);
  switch (ev.event) {
    case 'login':
      if (!room) return;
      room.num = ev.num;
      room.total = ev.total;
      if (ev.uid === state.me && !room.joined) {
        const relogin = room.loggedIn(ev.ts);
        if (!relogin) view.notice(room.id, 'join', `welcome ${ev.name}`);
        flushOutbox(room, true);
      } else {
        view.notice(room.id, 'join', `welcome ${ev.name}`);
      }
      view.showCounts(room, room === active());
      return;
    case 'logout':
      if (!room) return;
      room.num = ev.num;
      room.total = ev.total;
      view.notice(room.id, 'leave', `${ev.name} left`);
      view.showCounts(room, room === active());
      return;
    case 'message':
      if (room) onMessage(room, ev);
      return;
    case 'ack':
      if (room && room.acked(ev.cid, ev.id)) view.markStored(view.ownPending(room.id, ev.cid), ev.id);
      updateLeaveGuard();
      return;
    case 'error':
      onError(ev);
      return;
    default:
    // An event this page does not know is not shown: it may be from a newer server.
  }
}

function onMessage(room, m) {
  const verdict = room.classify(m, state.me);
  if (verdict === 'drop') return;
  if (!m.offline && !m.replay) {
    // Replayed and queued messages carry the counts of their own time, not of now.
    room.num = m.num;
    room.total = m.total;
    view.showCounts(room, room === active());
  }
  if (verdict === 'own') {
    view.markEchoed(view.ownPending(room.id, m.cid), m);
    return;
  }
  view.message(room.id, m, m.uid === state.me);
  if (room !== active()) {
    room.unread += 1;
    view.showUnread(room);
  }
}

function onError(ev) {
  const room = active();
  if (!room) return;
  const text =
    ev.code === 'rate_limited' ? 'Slow down: that message was not accepted; it will be sent again shortly.' : ev.message;
  view.notice(room.id, 'error', text);
}

const active = () => state.rooms.get(state.active) ?? null;

/** Send what the outbox holds for a room: all of it after a login, else what is overdue. */
function flushOutbox(room, all) {
  if (!room.joined) return;
  const now = Date.now();
  for (const [cid, e] of room.due(now, all ? 0 : RESEND_MS)) {
    if (!conn.send({ event: 'message', roomid: room.id, message: e.text, cid })) return;
    e.sentAt = now;
  }
}

setInterval(() => {
  for (const room of state.rooms.values()) flushOutbox(room, false);
}, 1000);

function updateLeaveGuard() {
  const pending = [...state.rooms.values()].some((r) => r.outbox.size > 0);
  onbeforeunload = pending ? (e) => e.preventDefault() : null;
}

function joinRoom(id) {
  state.leaving.delete(id);
  if (!state.rooms.has(id)) {
    const room = new Room(id);
    state.rooms.set(id, room);
    view.addRoom(id, selectRoom);
    conn.send(room.loginEvent(state.name));
  }
  selectRoom(id);
}

function selectRoom(id) {
  const room = state.rooms.get(id);
  state.active = id;
  room.unread = 0;
  view.selectRoom(room);
  $('compose-text').focus();
}

function leaveRoom() {
  const room = active();
  if (!room) return;
  if (!conn.send({ event: 'leave', roomid: room.id })) state.leaving.add(room.id);
  state.rooms.delete(room.id);
  view.removeRoom(room.id);
  updateLeaveGuard();
  const next = state.rooms.keys().next();
  if (next.done) {
    $('chat').hidden = true;
    $('join').hidden = false;
    $('join-room').focus();
  } else {
    selectRoom(next.value);
  }
}

function fail(id, text) {
  $(id).textContent = text;
  $(id).hidden = !text;
  return !text;
}

$('join').addEventListener('submit', (e) => {
  e.preventDefault();
  const name = $('join-name').value.trim();
  const roomId = $('join-room').value.trim() || 'default';
  const token = $('join-token').value.trim();
  if (!name || [...name].length > 64) return fail('join-error', 'Your name: 1 to 64 characters.');
  if (!validRoomId(roomId)) return fail('join-error', 'Room: letters, digits, - _ . only, up to 64 bytes.');
  if (!settings.dev && !state.token && !token) return fail('join-error', 'Paste your token to sign in.');
  fail('join-error', '');
  if (token) state.token = token;
  state.name = name;
  $('join').hidden = true;
  $('chat').hidden = false;
  joinRoom(roomId);
  conn.start();
});

$('add-room').addEventListener('submit', (e) => {
  e.preventDefault();
  const id = $('add-room-id').value.trim();
  if (!fail('add-room-error', validRoomId(id) ? '' : 'Letters, digits, - _ . only, up to 64 bytes.')) return;
  $('add-room-id').value = '';
  joinRoom(id);
});

$('leave-room').addEventListener('click', leaveRoom);

function send() {
  const room = active();
  const box = $('compose-text');
  const text = box.value.trim();
  if (!room || !text) return;
  if ([...text].length > MAX_TEXT) {
    view.notice(room.id, 'error', `A message can be at most ${MAX_TEXT} characters.`);
    return;
  }
  const cid = room.queue(text);
  const li = view.message(room.id, { uid: state.me, name: state.name, message: text, cid, ts: Date.now() }, true);
  view.markPending(li);
  box.value = '';
  updateLeaveGuard();
  flushOutbox(room, false);
}

$('compose').addEventListener('submit', (e) => {
  e.preventDefault();
  send();
});
$('compose-text').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});

document.addEventListener('visibilitychange', () => {
  const room = active();
  if (!document.hidden && room) view.showUnread(room);
});

if (!settings.dev && !state.token) $('join-token-row').hidden = false;
view.showStatus('offline', 'not connected');
$('join-name').focus();
