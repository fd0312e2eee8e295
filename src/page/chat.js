// The rooms over the connection: logins confirmed by a heartbeat barrier, leaves, the paced
// outbox, and what each server event does to the rooms (rooms.js) and the screen (view.js).

import { Room } from './rooms.js';
import * as view from './view.js';

/** An unacked message with no broadcast seen is sent again after this long (the server drops a repeated cid). */
const RESEND_MS = 5_000;
/**
 * Sends are paced under the server's default rate limit (20/s, burst 50), resends included;
 * a server set tighter says `rate_limited`, and the pace halves each time it does.
 */
const PACE_PER_SEC = 10;
const PACE_BURST = 20;
/** Errors that answer a `login` (the others answer messages or the connection). */
const LOGIN_ERRORS = new Set(['bad_room', 'bad_field', 'not_in_room', 'internal', 'forbidden_room', 'too_many_rooms']);
/** A refreshed token that no longer allows a room: the server left it for us (docs/protocol.md). */
const LEFT_FORBIDDEN = /^left room (\S+): /;
const MAX_LOGIN_RETRIES = 3;

export class Chat {
  constructor(conn) {
    this.conn = conn;
    this.rooms = new Map();
    this.activeId = null;
    this.me = null;
    this.name = '';
    /**
     * What we wait on, in send order: each `login` or `leave` is followed by a heartbeat ping,
     * and the server answers that ping only after it has handled the event before it (and, for a
     * login, queued its replay and offline messages). So the k-th pong settles the k-th entry,
     * and an error that arrives before it is that entry's error.
     */
    this.barriers = [];
    /** Rooms left while no connection could carry the `leave`. */
    this.leaving = new Set();
    this.pace = { perSec: PACE_PER_SEC, burst: PACE_BURST };
    this.tokens = PACE_BURST;
    this.refilledAt = Date.now();
    this.pausedUntil = 0;
    setInterval(() => this.flushAll(), 1000);
  }

  active() {
    return this.rooms.get(this.activeId) ?? null;
  }

  /**
   * A new socket is authenticated: leaves still owed are made, then every room logs in again.
   * `reauthed` may have done so a moment before (the first token of a socket is both): the
   * barriers it left (cleared on every disconnect) keep a room from logging in twice.
   */
  connected(me) {
    this.me = me;
    this.catchUp();
  }

  /** A fresh token on the same socket: what failed for want of it is tried again. */
  reauthed() {
    this.catchUp();
  }

  catchUp() {
    for (const id of this.leaving) {
      // The server takes a leave only from a connection in the room.
      if (!this.conn.send({ event: 'login', name: this.name, roomid: id }) || !this.leaveNow(id)) return;
    }
    const waiting = new Set(this.barriers.map((b) => b.room));
    for (const room of this.rooms.values()) if (!room.joined && !waiting.has(room)) this.login(room);
  }

  disconnected() {
    for (const b of this.barriers) if (b.leave) this.leaving.add(b.leave);
    this.barriers = [];
    for (const room of this.rooms.values()) room.disconnected();
  }

  login(room) {
    if (!this.conn.send(room.loginEvent(this.name))) return;
    this.conn.send({ event: 'heartbeat', message: 'ping' });
    this.barriers.push({ room, error: null });
  }

  leaveNow(id) {
    if (!this.conn.send({ event: 'leave', roomid: id })) return false;
    this.conn.send({ event: 'heartbeat', message: 'ping' });
    this.leaving.delete(id);
    this.barriers.push({ leave: id });
    return true;
  }

  /** Our barrier ping came back: the event before it is settled. */
  pong() {
    const b = this.barriers.shift();
    if (!b?.room || this.rooms.get(b.room.id) !== b.room) return; // a leave, or a room left meanwhile
    const room = b.room;
    if (!b.error) {
      room.loggedIn();
      this.flush(room, true);
      return;
    }
    if (['internal', 'rate_limited'].includes(b.error.code) && room.retries < MAX_LOGIN_RETRIES) {
      // A store hiccup, or missed messages that could not be sent: log in again with `since`.
      room.retries += 1;
      if (/log in again/.test(b.error.message)) room.everJoined = true;
      setTimeout(() => this.rooms.get(room.id) === room && !room.joined && this.login(room), 1000 * room.retries);
      return;
    }
    room.failed = true;
    view.roomFailed(room.id, `could not join ${room.id}: ${b.error.message}`);
  }

  join(id) {
    this.leaving.delete(id);
    if (!this.rooms.has(id)) {
      const room = new Room(id);
      this.rooms.set(id, room);
      view.addRoom(id, (r) => this.select(r));
      this.login(room);
    }
    this.select(id);
  }

  select(id) {
    const room = this.rooms.get(id);
    this.activeId = id;
    room.unread = 0;
    view.selectRoom(room);
  }

  /** Leave a room; false when the user would rather keep its unsent messages. */
  leave(id) {
    const room = this.rooms.get(id);
    if (!room) return true;
    const n = room.outbox.size;
    if (n > 0 && !confirm(`${n} message(s) in ${id} are not stored yet and will be dropped. Leave anyway?`)) {
      return false;
    }
    this.rooms.delete(id);
    view.removeRoom(id);
    if (!this.leaveNow(id)) this.leaving.add(id);
    return true;
  }

  pendingCount() {
    let n = 0;
    for (const r of this.rooms.values()) n += r.outbox.size;
    return n;
  }

  /** Queue an own message and show it as pending at once. */
  say(text) {
    const room = this.active();
    if (!room) return;
    const cid = room.queue(text);
    const li = view.message(room.id, { uid: this.me, name: this.name, message: text, cid, ts: Date.now() }, true);
    view.markPending(li);
    this.flush(room, false);
  }

  /** Pacing: a token bucket, paused for a while after the server said `rate_limited`. */
  take() {
    const now = Date.now();
    if (now < this.pausedUntil) return false;
    this.tokens = Math.min(this.pace.burst, this.tokens + ((now - this.refilledAt) * this.pace.perSec) / 1000);
    this.refilledAt = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Send what is due: after a login everything not yet broadcast, else what is new or overdue. */
  flush(room, all) {
    if (!room.joined) return;
    for (const [cid, e] of room.due(Date.now(), all ? 0 : RESEND_MS)) {
      if (!this.take() || !this.conn.send({ event: 'message', roomid: room.id, message: e.text, cid })) return;
      e.sentAt = Date.now();
    }
  }

  flushAll() {
    for (const room of this.rooms.values()) this.flush(room, false);
  }

  /** One server event (auth, heartbeat and noauth are the connection's). */
  handle(ev) {
    const room = this.rooms.get(ev.roomid);
    switch (ev.event) {
      case 'login':
      case 'logout':
        if (room) this.presence(room, ev);
        return;
      case 'message':
        if (room) this.message(room, ev);
        return;
      case 'ack':
        if (room?.acked(ev.cid, ev.id)) view.markStored(view.ownPending(room.id, ev.cid), ev.id);
        return;
      case 'error':
        this.error(ev);
        return;
      default:
      // An event this page does not know is not shown: it may come from a newer server.
    }
  }

  presence(room, ev) {
    room.num = ev.num;
    room.total = ev.total;
    view.showCounts(room, room === this.active());
    if (ev.event === 'logout') {
      view.notice(room.id, 'leave', `${ev.name} left`);
    } else if (ev.uid === this.me && ev.recovered === false) {
      // Only our own copy of a login with `since` carries it (docs/protocol.md, Recovery).
      view.notice(room.id, 'gap', 'Some messages sent while you were away are no longer kept by the server: there is a gap above.');
    } else if (ev.uid !== this.me || !room.welcomed) {
      // Our own welcome once; not again on every reconnect.
      if (ev.uid === this.me) room.welcomed = true;
      view.notice(room.id, 'join', `welcome ${ev.name}`);
    }
  }

  message(room, m) {
    const verdict = room.classify(m, this.me);
    if (verdict === 'drop') return;
    if (!m.offline && !m.replay) {
      // Replayed and queued messages carry the counts of their own time, not of now.
      room.num = m.num;
      room.total = m.total;
      view.showCounts(room, room === this.active());
    }
    if (verdict === 'echo' || verdict === 'stored') {
      // The pending entry moves to where the server put the message.
      const li = view.ownPending(room.id, m.cid);
      view.markEchoed(li, m);
      if (verdict === 'stored') view.markStored(li, m.id);
      return;
    }
    view.message(room.id, m, m.uid === this.me);
    if (room !== this.active()) {
      room.unread += 1;
      view.showUnread(room);
    }
  }

  error(ev) {
    const head = this.barriers[0];
    if (head?.room && !head.error && LOGIN_ERRORS.has(ev.code)) {
      head.error = ev; // settled by the next pong
      return;
    }
    if (ev.code === 'rate_limited') {
      // Logins count toward the rate too: one refused here is tried again after the pause
      // (a second login to a room is harmless if the refused event was a message instead).
      if (head?.room && !head.error) head.error = ev;
      this.pausedUntil = Date.now() + 2000;
      this.tokens = 0;
      this.pace = { perSec: Math.max(0.5, this.pace.perSec / 2), burst: Math.max(1, this.pace.burst / 2) };
      return; // the dropped message is resent once the pause is over
    }
    const left = ev.code === 'forbidden_room' && LEFT_FORBIDDEN.exec(ev.message);
    if (left && this.rooms.get(left[1])) {
      const room = this.rooms.get(left[1]);
      room.joined = false;
      room.failed = true;
      view.roomFailed(room.id, `left ${room.id}: your new token does not allow it`);
      return;
    }
    if (ev.code === 'too_many_connections') {
      this.conn.halt('too many connections for this user: close another tab, then retry');
      return;
    }
    const room = this.active();
    if (room) view.notice(room.id, 'error', ev.message);
  }
}
