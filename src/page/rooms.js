// What the page knows of each joined room: ids seen (for dedupe and `since`), counts, unread,
// and the outbox of own messages not yet acked. No DOM, no socket: app.js wires it to both.

/** A cid: random, 1 to 64 characters, unique enough to tell one page's sends apart forever. */
export function newCid() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes); // works on plain http too, unlike crypto.randomUUID
  return 'c' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** roomid rule of the protocol: 1 to 64 bytes of letters, digits, `-`, `_`, `.`. */
export function validRoomId(id) {
  return /^[\p{L}\p{N}._-]+$/u.test(id) && new TextEncoder().encode(id).length <= 64;
}

export class Room {
  constructor(id) {
    this.id = id;
    /** Highest message id seen: the `since` of the next login. */
    this.lastId = null;
    /** Every id shown, so a message replayed after a reconnect is shown once. */
    this.seen = new Set();
    /** Server time of our first login here: replays from before it are not ours to show. */
    this.joinedTs = null;
    /** The `login` broadcast for our latest login has come back: sends may go out. */
    this.joined = false;
    /** Logged in at least once on some connection (the next login is a re-login). */
    this.everJoined = false;
    this.num = 0;
    this.total = 0;
    this.unread = 0;
    /** cid -> { text, sentAt } in send order (Map keeps insertion order). */
    this.outbox = new Map();
  }

  /** The login event to send now: `since` once we have been here before, so nothing is missed. */
  loginEvent(name) {
    const ev = { event: 'login', name, roomid: this.id };
    if (this.everJoined) ev.since = this.lastId ?? 0;
    return ev;
  }

  /** Our own `login` came back: from now on the room takes our messages. */
  loggedIn(ts) {
    const relogin = this.everJoined;
    this.joined = true;
    this.everJoined = true;
    if (this.joinedTs === null) this.joinedTs = ts;
    return relogin;
  }

  /**
   * Decide what to do with an incoming message: 'drop' (seen already, or history from before
   * we joined), 'own' (the broadcast of a message from our outbox) or 'show'.
   */
  classify(msg, myUid) {
    if (this.seen.has(msg.id)) return 'drop';
    if (msg.replay && this.lastId === null && this.joinedTs !== null && msg.ts < this.joinedTs) return 'drop';
    this.seen.add(msg.id);
    if (this.lastId === null || msg.id > this.lastId) this.lastId = msg.id;
    if (msg.uid === myUid && msg.cid && this.outbox.has(msg.cid)) return 'own';
    return 'show';
  }

  /** An ack's id counts as seen: the broadcast that may follow it is the same message. */
  acked(cid, id) {
    const had = this.outbox.delete(cid);
    if (typeof id === 'number') {
      this.seen.add(id);
      if (this.lastId === null || id > this.lastId) this.lastId = id;
    }
    return had;
  }

  queue(text) {
    const cid = newCid();
    this.outbox.set(cid, { text, sentAt: 0 });
    return cid;
  }

  /** Outbox entries to (re)send: never sent, or sent more than `olderThanMs` ago without an ack. */
  due(now, olderThanMs) {
    const out = [];
    for (const [cid, e] of this.outbox) {
      if (e.sentAt === 0 || now - e.sentAt >= olderThanMs) out.push([cid, e]);
    }
    return out;
  }

  /** The connection went away: every message must be resent after the next login. */
  disconnected() {
    this.joined = false;
    for (const e of this.outbox.values()) e.sentAt = 0;
  }
}
