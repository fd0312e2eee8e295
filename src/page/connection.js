// The page's one WebSocket to its own origin: auth, heartbeat answers and watchdog, reconnect
// with exponential backoff and full jitter, and the status the indicator shows. It knows no
// rooms: every other event goes to `onEvent`, and `onReady` says when events may be sent.

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 20_000;
/** A connection that stayed up this long starts the backoff again from the bottom. */
const STABLE_MS = 5_000;

/** Full jitter: a random delay in [0, min(cap, base * 2^attempt)]. */
export function backoffDelay(attempt, random = Math.random) {
  return random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
}

export class Connection {
  /**
   * @param {object} o
   * @param {number} o.heartbeatMs server ping interval; no ping for this + 1 s means a dead link
   * @param {() => Promise<string|null>} o.getToken a token, or null while the user must give one
   * @param {(info: object) => void} o.onAuth each accepted token (first or refresh): `{uid, name, exp}`
   * @param {(info: object) => void} o.onReady the first accepted token on a new socket
   * @param {(ev: object) => void} o.onEvent every event but auth, heartbeat and noauth
   * @param {(reason: string) => void} o.onNoauth the token was refused or has expired
   * @param {() => void} o.onDown the connection is gone (rooms must re-login on the next one)
   * @param {() => void} o.onPong the server answered our heartbeat ping (see chat.js: barriers)
   * @param {(state: string, text: string, countdown: string) => void} o.onStatus for the indicator
   */
  constructor(o) {
    this.o = o;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    this.url = `${proto}//${location.host}/ws`;
    this.ws = null;
    this.ready = false;
    /** The server takes events: false again after a `noauth` until a fresh `auth` succeeds. */
    this.authOk = false;
    this.attempt = 0;
    this.readyAt = 0;
    this.retryTimer = null;
    this.retryAt = 0;
    this.tick = null;
    this.watchdog = null;
    this.waitingForToken = false;
    /** Set by `halt`: no retries until the user asks (e.g. too many connections). */
    this.halted = null;
    // The browser knows the network is gone: say so now, and try again as soon as it is back.
    addEventListener('offline', () => this.status('offline', 'offline'));
    addEventListener('online', () => {
      if (this.halted || this.waitingForToken) return;
      this.drop();
      this.retryNow();
    });
  }

  start() {
    if (!this.ws && !this.retryTimer) this.connect();
  }

  /** Send one event; false when not connected and authenticated (the caller keeps it). */
  send(ev) {
    if (!this.authOk || this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(ev));
    return true;
  }

  /** A new token from the user or /dev/token: refresh on the open socket, or connect with it. */
  useToken(token) {
    this.waitingForToken = false;
    if (this.ws?.readyState === WebSocket.OPEN) {
      this.status('connecting', 'signing in…');
      this.ws.send(JSON.stringify({ event: 'auth', message: token }));
    } else {
      this.retryNow();
    }
  }

  /** Stop trying until `useToken` (the user must paste a token). */
  needToken(text) {
    this.waitingForToken = true;
    this.status('auth', text);
  }

  /** Stop trying until the user presses "retry" (`retryNow`): retrying alone would not help. */
  halt(text) {
    this.halted = text;
    if (this.ws) {
      this.drop();
    } else {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      this.status('halted', text);
    }
  }

  /** Give up on this socket (or this attempt) and go through the backoff. */
  retryLater() {
    if (this.ws) this.drop();
    else this.scheduleRetry();
  }

  retryNow() {
    this.halted = null;
    if (this.ws || this.waitingForToken) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.connect();
  }

  async connect() {
    this.status('connecting', 'connecting…');
    let token;
    try {
      token = await this.o.getToken();
    } catch (e) {
      this.scheduleRetry();
      return;
    }
    if (token === null) {
      this.needToken('sign-in needed');
      return;
    }
    if (this.ws) return; // connected meanwhile (retryNow raced with this attempt)
    const ws = new WebSocket(this.url, 'natter.v1');
    this.ws = ws;
    // Armed before the socket opens: a link that swallows the handshake is given up like a
    // silent open one (the first ping is due within an interval of the upgrade).
    this.armWatchdog();
    ws.onopen = () => {
      if (ws.protocol !== 'natter.v1') {
        // Without it there is no auth confirmation: a proxy in between dropped the header.
        this.halt('the server did not accept the natter.v1 subprotocol');
        return;
      }
      ws.send(JSON.stringify({ event: 'auth', message: token }));
      this.armWatchdog();
    };
    ws.onmessage = (e) => this.receive(e.data);
    ws.onclose = () => this.lost();
  }

  receive(data) {
    // Any frame proves the link alive: a ping queued behind a long replay must not kill it.
    this.armWatchdog();
    let ev;
    try {
      ev = JSON.parse(data);
    } catch {
      return; // the server only sends JSON; anything else is not ours to show
    }
    switch (ev.event) {
      case 'heartbeat':
        if (ev.message === 'ping' && this.ready) this.ws.send('{"event":"heartbeat","message":"pong"}');
        else if (ev.message === 'pong') this.o.onPong();
        return;
      case 'auth':
        if (ev.message === 'ok') {
          const first = !this.ready;
          this.ready = true;
          this.authOk = true;
          this.readyAt = Date.now();
          this.status('connected', 'connected');
          this.o.onAuth(ev);
          if (first) this.o.onReady(ev);
        }
        return;
      case 'noauth':
        // A refresh with another user's token leaves the session as it was.
        if (!/uid mismatch/.test(ev.message)) this.authOk = false;
        this.o.onNoauth(ev.message);
        return;
      default:
        this.o.onEvent(ev);
    }
  }

  /** No ping for interval + 1 s: the link is dead even if TCP has not noticed. */
  armWatchdog() {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => this.drop(), this.o.heartbeatMs + 1000);
  }

  /** Give up on the current socket now, without waiting for a close handshake that may never come. */
  drop() {
    const ws = this.ws;
    if (!ws) return;
    ws.onclose = ws.onmessage = ws.onopen = null;
    try {
      ws.close();
    } catch {
      /* already closing */
    }
    this.lost();
  }

  lost() {
    clearTimeout(this.watchdog);
    const wasReady = this.ready;
    if (this.ws) this.ws.onclose = this.ws.onmessage = this.ws.onopen = null;
    this.ws = null;
    this.ready = false;
    this.authOk = false;
    if (wasReady && Date.now() - this.readyAt > STABLE_MS) this.attempt = 0;
    this.o.onDown();
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.halted) {
      this.status('halted', this.halted);
      return;
    }
    if (this.waitingForToken) {
      this.status('auth', 'sign-in needed');
      return;
    }
    this.scheduleRetry();
  }

  scheduleRetry() {
    const delay = backoffDelay(this.attempt);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.connect();
    }, delay);
    this.showRetry();
  }

  /** The indicator counts down each second while a retry is scheduled. */
  showRetry() {
    clearInterval(this.tick);
    const show = () => {
      if (!this.retryTimer) {
        clearInterval(this.tick);
        return;
      }
      if (!navigator.onLine) {
        this.status('offline', 'offline');
        return;
      }
      const s = Math.max(0, Math.ceil((this.retryAt - Date.now()) / 1000));
      this.status('reconnecting', 'reconnecting', ` in ${s} s`);
    };
    show();
    if (this.retryTimer) this.tick = setInterval(show, 1000);
  }

  status(state, text, countdown = '') {
    this.o.onStatus(state, text, countdown);
  }
}
