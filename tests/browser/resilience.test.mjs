// Owns the resilience browser tests beyond a single reconnect: a burst of 60 messages typed while
// shut out (paced under the server's rate limit, each delivered once, in order), the
// connections-per-uid limit (a halted tab that waits for "Retry now"), a join refused by the
// rooms-per-connection limit, a leave made while disconnected (sent once the page reconnects,
// with no room left open) and messages typed in two rooms while down.
import assert from 'node:assert/strict';
import {
  counts, holdsFor, messages, notices, scenario, send, state, waitCounts, waitFor, waitState, withText,
} from './harness.mjs';

const tab = (page, room) => page.locator(`#rooms button.room-tab[data-room="${room}"]`);

/** Adds `room` with the "Join another room" form and waits until its tab is the active one. */
async function addRoom(page, room) {
  await page.fill('#add-room-id', room);
  await page.locator('#add-room button[type="submit"]').click();
  await tab(page, room).waitFor({ state: 'visible' });
  await waitFor(async () => (await tab(page, room).getAttribute('aria-current')) === 'true', 10_000,
    `${room} tab is active`);
}

/** Clicks the tab of `room` and waits until it is the active one. */
async function selectRoom(page, room) {
  await tab(page, room).click();
  await waitFor(async () => (await tab(page, room).getAttribute('aria-current')) === 'true', 10_000,
    `${room} tab is active`);
}

const hasNotice = async (page, room, cls, text) =>
  (await notices(page, room)).some((n) => n.cls.includes(cls) && n.text.includes(text));

/** An own message with `text` shown exactly once in `room`, acked (no pending, data-id set). */
const ackedOnce = async (page, room, text) => {
  const m = await withText(page, room, text);
  return m.length === 1 && m[0].cls.includes('own') && !m[0].cls.includes('pending') && m[0].id && m[0];
};

/** GET a natter path through the context's request API (it accepts the dev certificate). */
async function fetchText(env, ctx, p) {
  const r = await ctx.request.get(`${env.base}${p}`);
  assert.equal(r.status(), 200, `GET ${p}`);
  return r.text();
}

/** `natter_<name>` from /metrics (`labels` e.g. `{code="1008"}`); 0 when the line is absent. */
function metric(text, name, labels = '') {
  const line = text.split('\n').find((l) => l.startsWith(`natter_${name}${labels} `));
  return line ? Number(line.split(' ').pop()) : 0;
}

const BURST = Array.from({ length: 60 }, (_, i) => `burst ${i + 1}`);
const isBurst = (m) => /^burst \d+$/.test(m.text);

scenario('a burst of 60 messages typed while down: all acked, each delivered once in order, no rate-limit close', async (env) => {
  const gate = await env.gate();
  const alice = await env.user('alice');
  const bob = await env.user('bob', { via: gate });
  await waitCounts(bob.page, 2, 2);
  // Every socket bob's page opens, and how each one ends (a server close shows up here).
  const sockets = [];
  bob.page.on('websocket', (ws) => {
    const s = { url: ws.url(), openedAt: Date.now(), closedAt: null };
    sockets.push(s);
    ws.on('close', () => { s.closedAt = Date.now(); });
  });

  env.note('gate closed');
  gate.setMode('closed');
  await waitState(bob.page, 'reconnecting', 15_000);
  for (const t of BURST) await send(bob.page, t);
  const pending = await waitFor(async () => {
    const m = (await messages(bob.page, 'lobby')).filter(isBurst);
    return m.length === BURST.length && m;
  }, 10_000, 'bob shows all 60 burst messages');
  assert.deepEqual(pending.map((m) => m.text), BURST, 'bob shows them in typing order');
  for (const m of pending) {
    assert.ok(m.cls.includes('own') && m.cls.includes('pending'), `${m.text} is own and pending: ${m.cls}`);
    assert.equal(m.id, null, `${m.text} has no data-id yet`);
  }
  assert.equal(new Set(pending.map((m) => m.cid)).size, BURST.length, '60 distinct data-cid');
  assert.equal((await messages(alice.page, 'lobby')).filter(isBurst).length, 0, 'alice has none yet');
  assert.notEqual(await state(bob.page), 'connected', 'bob is still shut out');

  env.note('gate open');
  gate.setMode('open');
  const opened = Date.now();
  await waitState(bob.page, 'connected', 30_000);
  env.note(`bob connected ${Date.now() - opened} ms after the gate opened`);
  const left = () => Math.max(1_000, 60_000 - (Date.now() - opened));
  await waitFor(async () => {
    const m = (await messages(bob.page, 'lobby')).filter(isBurst);
    return m.length === BURST.length && m.every((x) => !x.cls.includes('pending') && x.id);
  }, left(), 'all 60 acked on bob\'s page (no .pending, data-id set)');
  env.note(`bob: all acked ${Date.now() - opened} ms after the gate opened`);
  await waitFor(async () => (await messages(alice.page, 'lobby')).filter(isBurst).length >= BURST.length,
    left(), 'alice shows 60 burst messages');
  env.note(`alice: all 60 shown ${Date.now() - opened} ms after the gate opened`);

  const aliceInOrder = async () => {
    const m = (await messages(alice.page, 'lobby')).filter(isBurst);
    return m.length === BURST.length && m.every((x, i) => x.text === BURST[i] && x.uid === 'bob') && m;
  };
  await holdsFor(async () => (await aliceInOrder()) &&
    (await bob.page.locator('ol.log li.msg.pending').count()) === 0, 2_000,
  'alice has each burst message exactly once, in order 1..60, and bob has nothing pending');

  const atAlice = await aliceInOrder();
  assert.ok(atAlice, `alice's burst messages: ${JSON.stringify((await messages(alice.page, 'lobby')).map((x) => x.text))}`);
  const aliceIds = atAlice.map((x) => Number(x.id));
  assert.ok(aliceIds.every((id, i) => Number.isInteger(id) && (i === 0 || id > aliceIds[i - 1])),
    `ids increase along 1..60 at alice: ${aliceIds}`);
  const atBob = (await messages(bob.page, 'lobby')).filter(isBurst);
  assert.deepEqual(atBob.map((x) => x.text), BURST, 'bob shows them in order 1..60');
  assert.deepEqual(atBob.map((x) => Number(x.id)), aliceIds, 'the same ids on both pages');
  assert.deepEqual(atBob.map((x) => x.cid), pending.map((x) => x.cid), 'the same cids as while pending');

  // Not closed for rate limiting: still connected on the socket it reconnected with, no 1008
  // close and no error event (rate_limited) from the server, no error notice about the rate.
  assert.equal(await state(bob.page), 'connected', 'bob is connected at the end');
  const live = sockets.filter((s) => s.closedAt === null);
  const closedAfterOpen = sockets.filter((s) => s.closedAt !== null && s.openedAt >= opened);
  env.note(`bob sockets: ${JSON.stringify(sockets.map((s) => ({ ...s, openedAt: s.openedAt - opened,
    closedAt: s.closedAt && s.closedAt - opened })))}`);
  assert.equal(live.length, 1, 'bob has one open socket');
  assert.deepEqual(closedAfterOpen, [], 'no socket of bob\'s was closed after the gate opened');
  const m = await fetchText(env, alice.ctx, '/metrics');
  assert.equal(metric(m, 'closes_total', '{code="1008"}'), 0, 'natter closed no connection with 1008');
  assert.equal(metric(m, 'errors_sent_total'), 0, 'natter sent no error event (no rate_limited)');
  assert.ok(!env.natter.log.some((l) => /1008|rate limit/i.test(l)), 'natter stderr shows no 1008 / rate limit');
  const rateNotices = (await bob.page.locator('li.notice.error').allTextContents())
    .filter((t) => /rate|slow down/i.test(t));
  assert.deepEqual(rateNotices, [], 'no error notice about the rate on bob\'s page');
}, { timeout: 180_000 });

scenario('too many connections for a uid: the extra tab halts, does not retry by itself, "Retry now" works later', async (env) => {
  const first = await env.user('alice');
  const second = await env.open('alice');
  const sockets = [];
  second.page.on('websocket', (ws) => sockets.push(ws.url()));
  await second.page.fill('#join-name', 'alice');
  await second.page.fill('#join-room', 'lobby');
  await second.page.click('#join-submit');
  await second.page.locator('#chat').waitFor({ state: 'visible' });

  await waitState(second.page, 'halted', 15_000);
  const text = (await second.page.locator('#status').textContent()).trim();
  env.note(`second tab status: ${text}`);
  assert.match(text, /too many/i, '#status mentions "too many"');
  assert.ok(await second.page.locator('#retry-now').isVisible(), '#retry-now is visible');
  await holdsFor(async () => sockets.length <= 2 && (await state(second.page)) === 'halted' &&
    (await state(first.page)) === 'connected', 8_000,
  'over 8 s: the second tab opened at most 2 sockets and stays halted, the first stays connected');
  env.note(`second tab opened ${sockets.length} socket(s) in the 8 s`);
  await waitCounts(first.page, 1, 1);

  await env.closeUser(first);
  // The uid's slot is free once natter has let go of the first tab's connection.
  await waitFor(async () => JSON.parse(await fetchText(env, second.ctx, '/healthz')).connections === 0, 10_000,
    '/healthz connections 0 after closing the first tab');
  assert.equal(await state(second.page), 'halted', 'still halted: it does not retry by itself');
  const before = sockets.length;
  await second.page.click('#retry-now');
  await waitState(second.page, 'connected', 15_000);
  assert.equal(sockets.length, before + 1, 'one new socket for the retry');
  await waitFor(() => hasNotice(second.page, 'lobby', 'join', 'welcome alice'), 10_000,
    'the second tab joined lobby ("welcome alice")');
  await waitCounts(second.page, 1, 1);
  assert.ok(await second.page.locator('#retry-now').isHidden(), '#retry-now hidden once connected');
}, { natter: { args: ['--max-connections-per-uid', '1'] } });

scenario('a join refused by the rooms-per-connection limit: failed tab with the reason, lobby keeps working', async (env) => {
  const alice = await env.user('alice');
  const p = alice.page;
  await waitFor(() => hasNotice(p, 'lobby', 'join', 'welcome alice'), 10_000, 'alice joined lobby');
  await addRoom(p, 'side');
  await waitFor(async () => (await tab(p, 'side').getAttribute('class')).split(/\s+/).includes('failed'), 10_000,
    'the side tab gets class failed');
  const errs = await waitFor(async () => {
    const n = (await notices(p, 'side')).filter((x) => x.cls.includes('error'));
    return n.length > 0 && n;
  }, 5_000, 'the side log shows an error notice');
  env.note(`side error: ${errs.map((n) => n.text).join(' | ')}`);
  assert.equal(errs.length, 1, 'one error notice in side');
  assert.match(errs[0].text, /at most 1 room/, 'the notice names the limit');
  assert.ok(!(await tab(p, 'lobby').getAttribute('class')).split(/\s+/).includes('failed'), 'lobby tab not failed');
  assert.deepEqual((await notices(p, 'lobby')).filter((x) => x.cls.includes('error')), [], 'no error in lobby');
  assert.equal(await state(p), 'connected', 'the connection is not affected');

  await selectRoom(p, 'lobby');
  await send(p, 'lobby still works');
  await waitFor(() => ackedOnce(p, 'lobby', 'lobby still works'), 10_000, 'the lobby message is acked');
  assert.equal((await withText(p, 'side', 'lobby still works')).length, 0, 'not shown in side');
}, { natter: { args: ['--max-rooms-per-connection', '1'] } });

scenario('a leave made while disconnected reaches the server once the page reconnects', async (env) => {
  const gate = await env.gate();
  const alice = await env.user('alice', { via: gate });
  const bob = await env.user('bob');
  await waitCounts(bob.page, 2, 2);

  env.note('gate closed for alice');
  gate.setMode('closed');
  await waitState(alice.page, 'reconnecting', 15_000);
  // natter saw alice's connection go: she is offline but still a member.
  await waitCounts(bob.page, 1, 2);

  await alice.page.click('#leave-room');
  await alice.page.locator('#join').waitFor({ state: 'visible', timeout: 5_000 });
  assert.ok(await alice.page.locator('#chat').isHidden(), 'alice is back on the join form (no room left)');
  await holdsFor(async () => (await counts(bob.page)).total === 2, 1_000,
    'bob still counts 2 members while alice cannot reach the server');

  env.note('gate open');
  gate.setMode('open');
  const opened = Date.now();
  await waitFor(async () => (await counts(bob.page)).total === 1, 30_000,
    'bob shows #total 1 (alice\'s owed leave was made after her reconnect)');
  env.note(`bob's total 1 after ${Date.now() - opened} ms`);
  await waitState(alice.page, 'connected', 5_000);
  await holdsFor(async () => (await counts(bob.page)).total === 1, 1_000, 'bob keeps #total 1');
}, { timeout: 120_000 });

scenario('messages typed in two rooms while down: each delivered once, in its own room', async (env) => {
  const gate = await env.gate();
  const alice = await env.user('alice', { via: gate });
  await addRoom(alice.page, 'side');
  await waitFor(() => hasNotice(alice.page, 'side', 'join', 'welcome alice'), 10_000, 'alice joined side');
  const bob = await env.user('bob');
  await addRoom(bob.page, 'side');
  await waitFor(() => hasNotice(bob.page, 'side', 'join', 'welcome bob'), 10_000, 'bob joined side');
  await waitFor(() => hasNotice(alice.page, 'side', 'join', 'welcome bob'), 10_000, 'alice sees bob in side');

  env.note('gate closed for alice');
  gate.setMode('closed');
  await waitState(alice.page, 'reconnecting', 15_000);
  await selectRoom(alice.page, 'lobby');
  await send(alice.page, 'L1');
  await selectRoom(alice.page, 'side');
  await send(alice.page, 'S1');
  for (const [room, text] of [['lobby', 'L1'], ['side', 'S1']]) {
    const m = await waitFor(async () => {
      const x = await withText(alice.page, room, text);
      return x.length === 1 && x;
    }, 5_000, `alice shows ${text} in ${room}`);
    assert.ok(m[0].cls.includes('pending'), `${text} pending while down`);
  }
  assert.notEqual(await state(alice.page), 'connected', 'alice is still shut out');

  env.note('gate open');
  gate.setMode('open');
  await waitState(alice.page, 'connected', 30_000);
  await waitFor(async () => (await withText(bob.page, 'lobby', 'L1')).length >= 1 &&
    (await withText(bob.page, 'side', 'S1')).length >= 1, 20_000, 'bob gets L1 in lobby and S1 in side');
  await waitFor(async () => (await ackedOnce(alice.page, 'lobby', 'L1')) && (await ackedOnce(alice.page, 'side', 'S1')),
    15_000, 'alice\'s L1 and S1 acked');
  await holdsFor(async () =>
    (await withText(bob.page, 'lobby', 'L1')).length === 1 && (await withText(bob.page, 'side', 'S1')).length === 1 &&
    (await withText(bob.page, 'lobby', 'S1')).length === 0 && (await withText(bob.page, 'side', 'L1')).length === 0 &&
    (await alice.page.locator('ol.log li.msg.pending').count()) === 0,
  2_000, 'bob: L1 once in lobby, S1 once in side, neither in the other room; alice: nothing pending');
  const [l1] = await withText(bob.page, 'lobby', 'L1');
  const [s1] = await withText(bob.page, 'side', 'S1');
  assert.equal(l1.uid, 'alice');
  assert.equal(s1.uid, 'alice');
  assert.equal(l1.id, (await ackedOnce(alice.page, 'lobby', 'L1')).id, 'L1: same id on both pages');
  assert.equal(s1.id, (await ackedOnce(alice.page, 'side', 'S1')).id, 'S1: same id on both pages');
}, { timeout: 120_000 });
