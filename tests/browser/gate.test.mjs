// Owns the standalone tests of the gate proxy (gate.mjs) against a local TCP echo server: no
// browser, no natter. If these fail, the browser tests that rely on the gate mean nothing.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { GateProxy } from './gate.mjs';
import { waitFor } from './harness.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let echo;
const upstreamSockets = new Set();

before(async () => {
  echo = net.createServer((s) => {
    upstreamSockets.add(s);
    s.on('error', () => {});
    s.on('close', () => upstreamSockets.delete(s));
    s.on('data', (d) => s.write(d));
  });
  await new Promise((r) => echo.listen(0, '127.0.0.1', r));
});
after(async () => {
  for (const s of upstreamSockets) s.destroy();
  await new Promise((r) => echo.close(r));
});

/** A client socket that records what it received and whether it closed. */
function client(port) {
  const s = net.connect(port, '127.0.0.1');
  const c = { s, got: '', closed: false, connected: false };
  s.setEncoding('utf8');
  s.on('error', () => {});
  s.on('connect', () => (c.connected = true));
  s.on('data', (d) => (c.got += d));
  s.on('close', () => (c.closed = true));
  return c;
}

async function withGate(fn) {
  const g = new GateProxy(echo.address().port);
  await g.listen();
  try {
    await fn(g);
  } finally {
    await g.close();
  }
}

test('open: forwards both ways; a close on either side closes the other', { timeout: 10_000 }, () =>
  withGate(async (g) => {
    const a = client(g.port);
    a.s.write('ping');
    await waitFor(() => a.got === 'ping', 3000, 'echo through the gate');
    // client closes -> upstream closes
    const before = upstreamSockets.size;
    a.s.end();
    await waitFor(() => upstreamSockets.size === before - 1, 3000, 'upstream closed after client');
    // upstream closes -> client closes
    const b = client(g.port);
    b.s.write('x');
    await waitFor(() => b.got === 'x', 3000, 'second echo');
    for (const s of upstreamSockets) s.destroy();
    await waitFor(() => b.closed, 3000, 'client closed after upstream');
    assert.equal(g.size, 0);
  }));

test('closed: existing connections torn down, new ones refused; open again works', { timeout: 10_000 }, () =>
  withGate(async (g) => {
    const a = client(g.port);
    a.s.write('1');
    await waitFor(() => a.got === '1', 3000, 'echo');
    const ups = upstreamSockets.size;
    g.setMode('closed');
    await waitFor(() => a.closed, 3000, 'existing client destroyed');
    await waitFor(() => upstreamSockets.size === ups - 1, 3000, 'existing upstream destroyed');
    const b = client(g.port);
    await waitFor(() => b.closed, 3000, 'new connection destroyed');
    assert.equal(b.got, '');
    assert.equal(g.stats.refused, 1);
    g.setMode('open');
    const c = client(g.port);
    c.s.write('again');
    await waitFor(() => c.got === 'again', 3000, 'echo after reopening');
    c.s.destroy();
  }));

test('frozen: nothing forwarded, no close propagated, new connections held; open afterwards works',
  { timeout: 10_000 }, () =>
    withGate(async (g) => {
      const a = client(g.port);
      a.s.write('before');
      await waitFor(() => a.got === 'before', 3000, 'echo');
      g.setMode('frozen');
      a.s.write('during');
      const b = client(g.port); // accepted while frozen
      await waitFor(() => b.connected, 3000, 'held connection accepted');
      const ups = upstreamSockets.size;
      // Upstream side of `a` goes away: the frozen client must not hear about it.
      for (const s of upstreamSockets) s.destroy();
      b.s.write('held');
      await sleep(400); // a negative check: nothing may happen in this window
      assert.equal(a.got, 'before', 'no bytes forwarded while frozen');
      assert.equal(a.closed, false, 'upstream close not propagated while frozen');
      assert.equal(b.got, '');
      assert.equal(b.closed, false, 'held connection stays open');
      assert.equal(ups, 1, 'the held connection opened no upstream connection');
      g.setMode('open');
      await waitFor(() => a.closed && b.closed, 3000, 'frozen connections dropped on leaving frozen');
      const c = client(g.port);
      c.s.write('fresh');
      await waitFor(() => c.got === 'fresh', 3000, 'echo after unfreezing');
      c.s.destroy();
    }));

test('setUpstream redirects new connections', { timeout: 10_000 }, async () => {
  const other = net.createServer((s) => {
    s.on('error', () => {});
    s.end('other');
  });
  await new Promise((r) => other.listen(0, '127.0.0.1', r));
  try {
    await withGate(async (g) => {
      g.setUpstream(other.address().port);
      const a = client(g.port);
      await waitFor(() => a.got === 'other' && a.closed, 3000, 'reply from the new upstream');
    });
  } finally {
    await new Promise((r) => other.close(r));
  }
});
