// Owns the heartbeat-watchdog browser test: a frozen (half-open) link is noticed by the page
// itself, which reconnects once the link works again and then receives new messages once.
import assert from 'node:assert/strict';
import { duplicateIds, holdsFor, scenario, send, state, waitFor, waitState, withText } from './harness.mjs';

scenario('a frozen link is detected by the heartbeat watchdog and recovered', async (env) => {
  const gate = await env.gate();
  const alice = await env.user('alice');
  const bob = await env.user('bob', { via: gate });
  await send(alice.page, 'before the freeze');
  await waitFor(async () => (await withText(bob.page, 'lobby', 'before the freeze')).length === 1, 10_000,
    'bob got "before the freeze"');
  assert.equal(await state(bob.page), 'connected');

  env.note('gate frozen');
  gate.setMode('frozen');
  const t0 = Date.now();
  // No close reaches the page: only its watchdog (interval 2 s + 1 s) can notice.
  await waitState(bob.page, ['reconnecting', 'connecting'], 10_000);
  env.note(`bob left connected after ${Date.now() - t0} ms`);

  env.note('gate open');
  gate.setMode('open');
  await waitState(bob.page, 'connected', 30_000);

  const text = 'after the thaw';
  await send(alice.page, text);
  await waitFor(async () => (await withText(bob.page, 'lobby', text)).length >= 1, 15_000, 'bob receives it');
  await holdsFor(async () => (await withText(bob.page, 'lobby', text)).length === 1, 2_000,
    'bob has it exactly once');
  const [m] = await withText(bob.page, 'lobby', text);
  assert.equal(m.uid, 'alice');
  assert.ok(!m.cls.includes('own'));
  assert.deepEqual(await duplicateIds(bob.page, 'lobby'), []);
  assert.equal((await withText(bob.page, 'lobby', 'before the freeze')).length, 1, 'earlier message not duplicated');
}, { timeout: 120_000 });

// Beyond "the open socket goes silent": a new attempt that connects at TCP level but never gets
// through (a black hole) receives no ping either, so per the contract (no ping for interval + 1 s:
// close and reconnect with backoff) the page must give it up and retry instead of hanging.
scenario('a connection attempt into a frozen link is abandoned and retried', async (env) => {
  const gate = await env.gate();
  const bob = await env.user('bob', { via: gate });
  gate.setMode('frozen');
  await waitFor(() => gate.stats.held >= 1, 15_000, 'bob\'s page makes a first attempt into the frozen link');
  const t0 = Date.now();
  // Three more attempts: each waits at most 3 s for a ping, plus a backoff of at most 20 s in
  // total for the attempts at this stage; 45 s leaves room for a slow machine.
  await waitFor(() => gate.stats.held >= 4, 45_000, 'three more attempts (a hung one is given up)');
  env.note(`4 attempts after ${Date.now() - t0} ms`);
  assert.notEqual(await state(bob.page), 'connected');
  gate.setMode('open');
  await waitState(bob.page, 'connected', 30_000);
}, { timeout: 120_000 });
