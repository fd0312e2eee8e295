// What the page knows of each joined room: ids seen (for dedupe and `since`), counts, unread,
// and the outbox of own messages not yet acked. No DOM, no socket: chat.js wires it to both.

/** A cid: random, 1 to 64 characters, unique enough to tell one page's sends apart forever. */
export function newCid() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes); // works on plain http too, unlike crypto.randomUUID
  return 'c' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The server's roomid rule: 1 to 64 bytes of letters, digits, `-`, `_`, `.` (Rust's is_alphanumeric). */
export function validRoomId(id) {
  return /^[\p{Alphabetic}\p{N}._-]+$/u.test(id) && new TextEncoder().encode(id).length <= 64;
}

/** The server's name rule: 1 to 64 characters, no control characters. */
export function validName(name) {
  const n = [...name].length;
  return n >= 1 && n <= 64 && !/\p{Cc}/u.test(name);
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
    /** The server has taken our login on this connection (its barrier pong came back): sends may go out. */
    this.joined = false;
    /** Logged in at least once (the next login is a re-login, with `since`). */
    this.everJoined = false;
    /** Our own "welcome" has been shown (it is not repeated on every reconnect). */
    this.welcomed = false;
    /** The server refused the login (bad_room, ...): nothing is sent until a new try. */
    this.failed = false;
    this.retries = 0;
    this.num = 0;
    this.total = 0;
    this.unread = 0;
    /**
     * cid -> { text, sentAt, echoId, live } in send order. `echoId`: the id of the broadcast
     * copy we saw; `live`: seen on this connection, so the server has it and no resend is due.
     */
    this.outbox = new Map();
  }

  /**
   * The login event to send now. A re-login asks for everything after the last id seen, and
   * early enough to include any own message whose broadcast we saw but whose ack we lost: if
   * the replay carries it, it is stored; if not, it is sent again.
   */
  loginEvent(name) {
    const ev = { event: 'login', name, roomid: this.id };
    if (this.everJoined) {
      let since = this.lastId ?? 0;
      for (const e of this.outbox.values()) if (e.echoId !== null) since = Math.min(since, e.echoId - 1);
      ev.since = since;
    }
    return ev;
  }

  /** The server has processed our login (and queued its replay): the room takes messages. */
  loggedIn() {
    this.joined = true;
    this.everJoined = true;
    this.failed = false;
    this.retries = 0;
  }

  /**
   * What an incoming message is: 'drop' (seen already, or history from before we joined),
   * 'echo' (the live broadcast of an own message), 'stored' (an own message found in a replay:
   * the server has it, as good as an ack) or 'show'.
   */
  classify(msg, myUid) {
    const own = msg.uid === myUid && msg.cid ? this.outbox.get(msg.cid) : undefined;
    if (own && msg.replay) {
      this.outbox.delete(msg.cid);
      this.see(msg.id);
      return 'stored';
    }
    if (this.seen.has(msg.id)) return 'drop';
    if (msg.replay && this.lastId === null && this.joinedTs !== null && msg.ts < this.joinedTs) return 'drop';
    this.see(msg.id);
    if (own) {
      own.echoId = msg.id;
      own.live = true;
      return 'echo';
    }
    return 'show';
  }

  see(id) {
    this.seen.add(id);
    if (this.lastId === null || id > this.lastId) this.lastId = id;
  }

  /** An ack for one of our cids; false when it is not ours (e.g. a room left and joined again). */
  acked(cid, id) {
    if (!this.outbox.delete(cid)) return false;
    if (typeof id === 'number') this.see(id);
    return true;
  }

  queue(text) {
    const cid = newCid();
    this.outbox.set(cid, { text, sentAt: 0, echoId: null, live: false });
    return cid;
  }

  /** Entries to (re)send: never sent, or sent `olderThanMs` ago with neither ack nor broadcast. */
  due(now, olderThanMs) {
    const out = [];
    for (const [cid, e] of this.outbox) {
      if (e.live) continue;
      if (e.sentAt === 0 || now - e.sentAt >= olderThanMs) out.push([cid, e]);
    }
    return out;
  }

  /** The connection went away: the next login starts over, and every unacked entry is due again. */
  disconnected() {
    this.joined = false;
    for (const e of this.outbox.values()) {
      e.sentAt = 0;
      e.live = false;
    }
  }
}
