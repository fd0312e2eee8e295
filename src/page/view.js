// DOM rendering: room tabs, message lists, notices, counts and the status indicator. Text from
// the network only ever goes into `textContent`, never into HTML.

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function timeOf(ts) {
  const d = new Date(ts);
  return {
    short: d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }),
    full: d.toLocaleString(),
  };
}

/**
 * The indicator: `text` is what screen readers hear (the status is a live region), `countdown`
 * (" in 3 s") is only seen, so a ticking countdown is not read out every second.
 */
export function showStatus(state, text, countdown = '') {
  const s = $('status');
  s.dataset.state = state;
  s.querySelector('.state').textContent = text;
  s.querySelector('.countdown').textContent = countdown;
  $('retry-now').hidden = !(state === 'reconnecting' || state === 'halted');
}

/** Tab and message list of a new room; `onSelect` when the user picks the tab. */
export function addRoom(id, onSelect) {
  const li = el('li');
  const tab = el('button', 'room-tab');
  tab.type = 'button';
  tab.dataset.room = id;
  tab.append(el('span', 'room-name', id), el('span', 'unread'), el('span', 'visually-hidden unread-label'));
  tab.lastChild.hidden = true;
  tab.addEventListener('click', () => onSelect(id));
  li.append(tab);
  $('rooms').append(li);
  const log = el('ol', 'log');
  log.dataset.room = id;
  log.setAttribute('role', 'log');
  log.setAttribute('aria-label', `Messages in ${id}`);
  log.tabIndex = 0; // scrollable by keyboard
  log.hidden = true;
  $('logs').append(log);
}

/** The server refused the login: the tab says so, the room says why. */
export function roomFailed(id, text) {
  tabOf(id)?.classList.add('failed');
  tabOf(id)?.setAttribute('title', text);
  notice(id, 'error', text);
}

export function removeRoom(id) {
  tabOf(id)?.parentElement.remove();
  logOf(id)?.remove();
}

const tabOf = (id) => document.querySelector(`.room-tab[data-room="${CSS.escape(id)}"]`);
const logOf = (id) => document.querySelector(`ol.log[data-room="${CSS.escape(id)}"]`);

export function selectRoom(room) {
  for (const t of document.querySelectorAll('.room-tab')) {
    if (t.dataset.room === room.id) t.setAttribute('aria-current', 'true');
    else t.removeAttribute('aria-current');
  }
  for (const l of document.querySelectorAll('ol.log')) l.hidden = l.dataset.room !== room.id;
  $('room-title').textContent = room.id;
  showCounts(room, true);
  showUnread(room);
  const log = logOf(room.id);
  log.scrollTop = log.scrollHeight;
  $('compose-text').focus();
}

export function showCounts(room, active) {
  if (!active) return;
  $('num').textContent = String(room.num);
  $('total').textContent = String(room.total);
}

export function showUnread(room) {
  const badge = tabOf(room.id)?.querySelector('.unread');
  if (!badge) return;
  badge.textContent = String(room.unread);
  badge.hidden = room.unread === 0;
  badge.setAttribute('aria-hidden', 'true');
  badge.nextSibling.textContent = room.unread ? `, ${room.unread} unread` : '';
}

/** Append to a room's list, keeping it scrolled to the end if the reader was at the end. */
function append(roomId, item) {
  const log = logOf(roomId);
  if (!log) return;
  const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(item);
  if (atEnd) log.scrollTop = log.scrollHeight;
}

export function notice(roomId, kind, text) {
  append(roomId, el('li', `notice ${kind}`, text));
}

/**
 * A chat message. `m` is the server's message object, or for an own message not yet stored
 * `{ uid, name, message, cid, ts }` without an id.
 */
export function message(roomId, m, own) {
  const li = el('li', 'msg');
  li.dataset.uid = m.uid;
  if (m.id !== undefined) li.dataset.id = String(m.id);
  if (own) {
    li.classList.add('own');
    if (m.cid) li.dataset.cid = m.cid;
  }
  const head = el('div', 'head');
  const t = timeOf(m.ts);
  const time = el('time', 'time', t.short);
  time.dateTime = new Date(m.ts).toISOString();
  time.title = t.full;
  head.append(el('span', 'name', m.name), time);
  const mark = el('span', 'mark');
  mark.hidden = true;
  head.append(mark);
  li.append(head, el('p', 'text', m.message));
  if (m.offline) setMark(li, 'offline', 'offline', 'delivered from your offline queue');
  else if (m.replay) setMark(li, 'replay', 'replayed', 'missed while disconnected, replayed');
  append(roomId, li);
  return li;
}

function setMark(li, cls, text, title) {
  li.classList.add(cls);
  const mark = li.querySelector('.mark');
  mark.textContent = text;
  mark.title = title;
  mark.hidden = false;
}

export function ownPending(roomId, cid) {
  return document.querySelector(`ol.log[data-room="${CSS.escape(roomId)}"] li.msg[data-cid="${CSS.escape(cid)}"]`);
}

export function markPending(li) {
  setMark(li, 'pending', 'pending', 'not yet stored by the server; resent until it is');
}

/** The server has the message: the element gets its id and loses the pending mark. */
export function markStored(li, id) {
  if (!li) return;
  if (typeof id === 'number') li.dataset.id = String(id);
  li.classList.remove('pending');
  const mark = li.querySelector('.mark');
  if (mark.textContent === 'pending') {
    mark.textContent = '';
    mark.hidden = true;
  }
}

/**
 * The server's copy of an own pending message: its server time replaces the local one, and the
 * entry moves to the end, where the server's order puts it (it may have been typed offline).
 */
export function markEchoed(li, m) {
  if (!li) return;
  if (li.dataset.id === undefined) append(li.parentElement.dataset.room, li);
  li.dataset.id = String(m.id);
  li.dataset.uid = m.uid;
  li.querySelector('.name').textContent = m.name;
  const time = li.querySelector('.time');
  const t = timeOf(m.ts);
  time.textContent = t.short;
  time.title = t.full;
  time.dateTime = new Date(m.ts).toISOString();
}
