// Owns the gate proxy: a TCP proxy between one browser page and natter that lets a test switch
// that page's connectivity between `open` (bytes forwarded), `closed` (everything refused and
// torn down) and `frozen` (a half-open link: sockets stay up, nothing moves, no close propagates).
// TLS passes through untouched; the listening port stays the same for the proxy's whole life.
import net from 'node:net';

const MODES = new Set(['open', 'closed', 'frozen']);

export class GateProxy {
  /** @param {number} upstreamPort natter's port on 127.0.0.1 */
  constructor(upstreamPort, { host = '127.0.0.1' } = {}) {
    this.upstreamHost = host;
    this.upstreamPort = upstreamPort;
    this.mode = 'open';
    this.port = 0;
    this.conns = new Set();
    this.stats = { accepted: 0, refused: 0, held: 0 };
    this.server = net.createServer((s) => this.#accept(s));
    this.server.on('error', () => {});
  }

  /** Starts listening on 127.0.0.1 with a free port; resolves to that port. */
  listen() {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => {
        this.server.off('error', reject);
        this.port = this.server.address().port;
        resolve(this.port);
      });
    });
  }

  setUpstream(port) {
    this.upstreamPort = port;
  }

  /** Switches mode. Leaving `frozen` destroys the frozen connections; `open` only affects new ones. */
  setMode(mode) {
    if (!MODES.has(mode)) throw new Error(`gate: unknown mode ${mode}`);
    const prev = this.mode;
    this.mode = mode;
    for (const c of [...this.conns]) {
      if (mode === 'closed') this.#destroy(c);
      else if (mode === 'frozen') this.#freeze(c);
      else if (prev === 'frozen' && c.frozen) this.#destroy(c);
    }
  }

  /** Number of live (piped or held) connections. */
  get size() {
    return this.conns.size;
  }

  async close() {
    for (const c of [...this.conns]) this.#destroy(c);
    await new Promise((resolve) => this.server.close(() => resolve()));
  }

  #accept(client) {
    client.on('error', () => {});
    if (this.mode === 'closed') {
      this.stats.refused++;
      client.resetAndDestroy ? client.resetAndDestroy() : client.destroy();
      return;
    }
    client.setNoDelay(true);
    const c = { client, upstream: null, frozen: false, dead: false };
    this.conns.add(c);
    client.on('close', () => this.#sideClosed(c, client));
    if (this.mode === 'frozen') {
      // Accepted and held: never read from, never answered.
      this.stats.held++;
      c.frozen = true;
      client.pause();
      return;
    }
    this.stats.accepted++;
    const up = net.connect(this.upstreamPort, this.upstreamHost);
    c.upstream = up;
    up.on('error', () => {});
    up.setNoDelay(true);
    up.on('close', () => this.#sideClosed(c, up));
    this.#pump(c, client, up);
    this.#pump(c, up, client);
  }

  #pump(c, from, to) {
    from.on('data', (chunk) => {
      if (c.frozen || c.dead) return;
      if (!to.write(chunk)) from.pause();
    });
    to.on('drain', () => {
      if (!c.frozen && !c.dead) from.resume();
    });
    from.on('end', () => {
      if (!c.frozen && !c.dead) to.end();
    });
  }

  #sideClosed(c, side) {
    if (c.dead) return;
    if (c.frozen) return; // half-open on purpose: the other side is not told
    const other = side === c.client ? c.upstream : c.client;
    c.dead = true;
    this.conns.delete(c);
    if (other && !other.destroyed) {
      other.end();
      setTimeout(() => other.destroy(), 500).unref();
    }
  }

  #freeze(c) {
    c.frozen = true;
    c.client.pause();
    c.upstream?.pause();
  }

  #destroy(c) {
    c.dead = true;
    this.conns.delete(c);
    c.client.destroy();
    c.upstream?.destroy();
  }
}
