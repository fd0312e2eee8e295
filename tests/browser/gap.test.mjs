// Owns the browser tests of the recovery gap notice: a page shut out while more messages are
// sent than natter keeps (`--history-max`, `--offline-max`) re-logs in with `since`, natter
// answers `"recovered":false` and the page shows one "gap" notice above what it still got; with
// the default limits (nothing trimmed) the same outage answers `"recovered":true` and shows none.
import assert from 'node:assert/strict';
import {
  duplicateIds, holdsFor, logItems, messages, notices, scenario, send, state, waitCounts, waitFor, waitState,
  withText,
} from './harness.mjs';

const GAP_TEXT = 'Some messages sent while you were away are no longer kept by the server: there is a gap above.';
const BEFORE = 'before the outage';
const MISSED = Array.from({ length: 8 }, (_, i) => `while away ${i + 1}`);

const delivered = async (page, text) => {
  const m = await withText(page, 'lobby', text);
  return m.length === 1 && m[0].id && !m[0].cls.includes('pending') && m[0];
};
const once = async (page, text) => (await withText(page, 'lobby', text)).length === 1;

/** `li.notice.gap` items of `room`, and how often the gap text occurs anywhere on the page. */
const gapNotices = async (page, room = 'lobby') => (await notices(page, room)).filter((n) => n.cls.includes('gap'));
const gapTextCount = (page) => page.getByText(GAP_TEXT, { exact: true }).count();

/**
 * Every `login` event natter sends to `page` about `uid` (parsed), on every socket the page
 * opens from now on: the server's side of the story (does it carry `recovered`, and which value).
 */
function recordOwnLogins(page, uid) {
  const seen = [];
  page.on('websocket', (ws) => ws.on('framereceived', ({ payload }) => {
    try {
      const ev = JSON.parse(String(payload));
      if (ev?.event === 'login' && ev.uid === uid) seen.push(ev);
    } catch {}
  }));
  return seen;
}

/**
 * alice (direct) and bob (through a gate) in lobby; bob sees BEFORE; bob's link is shut, alice
 * sends MISSED (each acked) while natter counts bob offline; the gate opens and bob reconnects
 * by himself. Returns { alice, bob, beforeId, logins } once bob got his own re-login event.
 */
async function outage(env) {
  const gate = await env.gate();
  const alice = await env.user('alice');
  const bob = await env.user('bob', { via: gate });
  await waitCounts(alice.page, 2, 2);
  await send(alice.page, BEFORE);
  const before = await waitFor(() => delivered(alice.page, BEFORE), 10_000, 'alice\'s first message acked');
  await waitFor(() => once(bob.page, BEFORE), 10_000, 'bob got the first message');
  const logins = recordOwnLogins(bob.page, 'bob');

  env.note('gate closed for bob');
  gate.setMode('closed');
  await waitState(bob.page, 'reconnecting', 15_000);
  // natter saw bob's connection go: he is offline but still a member, so he gets an offline queue.
  await waitCounts(alice.page, 1, 2);
  for (const t of MISSED) {
    await send(alice.page, t);
    await waitFor(() => delivered(alice.page, t), 10_000, `alice's "${t}" acked`);
  }
  env.note(`alice sent ${MISSED.length} messages while bob was shut out`);
  assert.notEqual(await state(bob.page), 'connected', 'bob is still shut out by the gate');
  for (const t of MISSED) assert.equal((await withText(bob.page, 'lobby', t)).length, 0, `bob has no "${t}" yet`);
  assert.deepEqual(await gapNotices(bob.page), [], 'no gap notice before the reconnect');

  env.note('gate open');
  gate.setMode('open');
  await waitState(bob.page, 'connected', 30_000);
  await waitFor(() => logins.some((ev) => 'recovered' in ev), 15_000, 'natter sent bob his own login with recovered');
  env.note(`bob's own login events after the outage: ${JSON.stringify(logins)}`);
  return { alice, bob, beforeId: Number(before.id), logins };
}

scenario('messages trimmed away while down (--history-max 3 --offline-max 2): one gap notice above the kept ones', async (env) => {
  const { alice, bob, beforeId, logins } = await outage(env);
  // The server's side first: the re-login carried `since` and natter says something is lost.
  const withRecovered = logins.filter((ev) => 'recovered' in ev);
  assert.equal(withRecovered[0].recovered, false, `natter answered recovered:false: ${JSON.stringify(withRecovered)}`);

  // History keeps the room's last 3 (the last 3 of MISSED), the queue the last 2 (covered by
  // the replay): bob ends up with BEFORE and exactly those 3, each once.
  const kept = MISSED.slice(-3);
  const lost = MISSED.slice(0, -3);
  const allKept = async () => {
    for (const t of kept) if (!(await once(bob.page, t))) return false;
    return true;
  };
  await waitFor(allKept, 15_000, `bob shows ${kept.join(', ')}`);
  await waitFor(async () => (await gapNotices(bob.page)).length >= 1, 10_000, 'bob shows the gap notice');
  try {
    await holdsFor(async () => (await allKept()) && (await gapNotices(bob.page)).length === 1 &&
      (await gapTextCount(bob.page)) === 1, 2_000,
    'bob shows the kept messages once each and exactly one gap notice');
  } catch (e) {
    // Say whether the page showed one notice per login event, or several for one.
    e.message += `: ${(await gapNotices(bob.page)).length} gap notice(s) in lobby, ${await gapTextCount(bob.page)} ` +
      `on the page; own login events natter sent after the outage: ${JSON.stringify(logins)}`;
    throw e;
  }

  const [gap] = await gapNotices(bob.page);
  assert.equal(gap.text, GAP_TEXT, 'the gap notice text');
  const log = await logItems(bob.page, 'lobby');
  const msgs = log.filter((i) => i.kind === 'msg');
  assert.deepEqual(msgs.map((m) => m.text), [BEFORE, ...kept],
    `bob shows the first message and the last ${kept.length} only: ${JSON.stringify(msgs.map((m) => m.text))}`);
  for (const t of lost) assert.equal((await withText(bob.page, 'lobby', t)).length, 0, `"${t}" is not kept: not shown`);
  const ids = msgs.map((m) => Number(m.id));
  assert.equal(ids[0], beforeId, 'the first message keeps its id');
  assert.ok(ids.every((id, i) => Number.isInteger(id) && (i === 0 || id > ids[i - 1])), `ids increase: ${ids}`);
  assert.ok(ids[1] - ids[0] > lost.length, `the ids jump over the ${lost.length} lost messages: ${ids}`);
  for (const m of msgs.slice(1)) {
    assert.equal(m.uid, 'alice');
    assert.ok(m.cls.includes('replay'), `"${m.text}" came by recovery replay: ${m.cls}`);
  }
  assert.deepEqual(await duplicateIds(bob.page, 'lobby'), [], 'no duplicate data-id in bob\'s log');
  // The notice sits where the gap is: after what bob had, above what the replay brought.
  const at = (pred) => log.findIndex(pred);
  const gapAt = at((i) => i.kind === 'notice' && i.cls.includes('gap'));
  assert.ok(at((i) => i.text === BEFORE) < gapAt && gapAt < at((i) => i.text === kept[0]),
    `gap notice between "${BEFORE}" and "${kept[0]}": ${JSON.stringify(log.map((i) => i.text))}`);

  // alice never lost her link: no gap for her.
  assert.equal(await gapTextCount(alice.page), 0, 'alice shows no gap notice');
  assert.equal(await state(bob.page), 'connected', 'bob is connected at the end');
}, { timeout: 180_000, natter: { args: ['--history-max', '3', '--offline-max', '2'] } });

scenario('the same outage with the default limits: everything recovered, no gap notice', async (env) => {
  const { alice, bob, logins } = await outage(env);
  const withRecovered = logins.filter((ev) => 'recovered' in ev);
  assert.equal(withRecovered[0].recovered, true, `natter answered recovered:true: ${JSON.stringify(withRecovered)}`);

  const allThere = async () => {
    for (const t of MISSED) if (!(await once(bob.page, t))) return false;
    return true;
  };
  await waitFor(allThere, 15_000, 'bob shows all the messages sent while he was away');
  await holdsFor(async () => (await allThere()) && (await gapNotices(bob.page)).length === 0 &&
    (await gapTextCount(bob.page)) === 0, 2_000,
  'bob shows each missed message once and no gap notice');
  const msgs = await messages(bob.page, 'lobby');
  assert.deepEqual(msgs.map((m) => m.text), [BEFORE, ...MISSED], 'bob shows everything, in order');
  assert.deepEqual(await duplicateIds(bob.page, 'lobby'), [], 'no duplicate data-id in bob\'s log');
  assert.equal(await gapTextCount(alice.page), 0, 'alice shows no gap notice');
}, { timeout: 180_000 });
