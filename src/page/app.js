// The page's entry point: settings, the token, the forms and keys, wiring the connection
// (connection.js) to the rooms (chat.js).

import { Chat } from './chat.js';
import { Connection } from './connection.js';
import { validName, validRoomId } from './rooms.js';
import * as view from './view.js';

const $ = (id) => document.getElementById(id);
const settings = {
  dev: document.body.dataset.dev === 'true',
  heartbeatMs: Number(document.body.dataset.heartbeatMs) || 30_000,
};
const MAX_TEXT = 4096;

/** The token as given (URL, paste box, /dev/token); `devFailures`: refused dev tokens in a row. */
const auth = { token: null, devFailures: 0 };

// A token in the URL (`#token=...`) is taken and removed from the address bar and history.
{
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    try {
      auth.token = decodeURIComponent(m[1]);
    } catch {
      auth.token = m[1];
    }
    history.replaceState(null, '', location.pathname + location.search);
  } else {
    auth.token = sessionStorage.getItem('natter.token');
  }
}

async function getToken() {
  if (auth.token) return auth.token;
  if (!settings.dev) return null;
  const q = new URLSearchParams({ uid: chat.me ?? chat.name, name: chat.name });
  const r = await fetch(`/dev/token?${q}`, { cache: 'no-store' });
  if (!r.ok) throw new Error(await r.text());
  auth.token = (await r.json()).token;
  return auth.token;
}

const conn = new Connection({
  heartbeatMs: settings.heartbeatMs,
  getToken,
  onStatus: view.showStatus,
  onAuth(info) {
    auth.devFailures = 0;
    if (auth.token && !settings.dev) sessionStorage.setItem('natter.token', auth.token);
    $('token-form').hidden = true;
    scheduleDevRefresh(info.exp);
    chat.reauthed();
  },
  onReady(info) {
    chat.connected(info.uid);
  },
  onDown() {
    chat.disconnected();
  },
  onPong() {
    chat.pong();
  },
  onNoauth(reason) {
    // Refused or expired: the token is of no more use. What the user typed stays where it is,
    // and unsent messages stay in the outbox.
    auth.token = null;
    sessionStorage.removeItem('natter.token');
    if (settings.dev && auth.devFailures < 2) {
      auth.devFailures += 1;
      getToken().then(
        (t) => conn.useToken(t),
        () => conn.retryLater(),
      );
      return;
    }
    askForToken(reason);
  },
  onEvent: (ev) => chat.handle(ev),
});
const chat = new Chat(conn);

/** In dev mode the page fetches a fresh token a minute before this one expires. */
let refreshTimer = null;
function scheduleDevRefresh(exp) {
  clearTimeout(refreshTimer);
  if (!settings.dev || typeof exp !== 'number') return;
  const wait = Math.max(1000, exp * 1000 - Date.now() - 60_000);
  refreshTimer = setTimeout(
    () => {
      auth.token = null;
      getToken().then(
        (t) => conn.useToken(t),
        () => {},
      );
    },
    Math.min(wait, 2 ** 31 - 1),
  );
}

/** The prompt does not take the focus: the user may be in the middle of a sentence. */
function askForToken(reason) {
  conn.needToken('sign-in needed');
  $('token-reason').textContent = `The server refused the token: ${reason}. Paste a new one to go on.`;
  $('token-form').hidden = false;
}

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const t = $('token-input').value.trim();
  if (!t) return;
  auth.token = t;
  $('token-input').value = '';
  $('token-form').hidden = true;
  conn.useToken(t);
});

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
  if (!validName(name)) return fail('join-error', 'Your name: 1 to 64 characters.');
  if (!validRoomId(roomId)) return fail('join-error', 'Room: letters, digits, - _ . only, up to 64 bytes.');
  if (!settings.dev && !auth.token && !token) return fail('join-error', 'Paste your token to sign in.');
  fail('join-error', '');
  if (token) auth.token = token;
  $('join-token').value = '';
  chat.name = name;
  $('join').hidden = true;
  $('chat').hidden = false;
  chat.join(roomId);
  conn.start();
  $('compose-text').focus();
});

$('add-room').addEventListener('submit', (e) => {
  e.preventDefault();
  const id = $('add-room-id').value.trim();
  if (!fail('add-room-error', validRoomId(id) ? '' : 'Letters, digits, - _ . only, up to 64 bytes.')) return;
  $('add-room-id').value = '';
  chat.join(id);
  $('compose-text').focus();
});

$('leave-room').addEventListener('click', () => {
  if (!chat.activeId || !chat.leave(chat.activeId)) return;
  const next = chat.rooms.keys().next();
  if (next.done) {
    $('chat').hidden = true;
    $('join').hidden = false;
    $('join-room').focus();
  } else {
    chat.select(next.value);
  }
});

$('retry-now').addEventListener('click', () => conn.retryNow());

function send() {
  const box = $('compose-text');
  const text = box.value.trim();
  const room = chat.active();
  if (!room || !text) return;
  if ([...text].length > MAX_TEXT) {
    view.notice(room.id, 'error', `A message can be at most ${MAX_TEXT} characters.`);
    return;
  }
  chat.say(text);
  box.value = '';
}

$('compose').addEventListener('submit', (e) => {
  e.preventDefault();
  send();
});
// On a touch screen there is no Shift key: Enter makes a new line and the Send button sends.
const touch = matchMedia('(pointer: coarse)').matches;
$('compose-text').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !touch) {
    e.preventDefault();
    send();
  }
});

// Closing or reloading the tab with messages not yet stored asks first (the outbox is in memory).
addEventListener('beforeunload', (e) => {
  if (chat.pendingCount() === 0) return;
  e.preventDefault();
  e.returnValue = '';
});

if (!settings.dev && !auth.token) $('join-token-row').hidden = false;
view.showStatus('offline', 'not connected');
$('join-name').focus();
