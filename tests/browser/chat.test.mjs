// Owns the plain-chat browser tests: two users in a room (welcome notices, counts, a message
// delivered once and acked, a leave), the room screenshots, and the HTML-payload (XSS) test.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  ARTIFACTS, counts, holdsFor, messages, notices, scenario, send, waitCounts, waitFor, withText,
} from './harness.mjs';

const hasNotice = async (page, cls, text) =>
  (await notices(page, 'lobby')).some((n) => n.cls.includes(cls) && n.text.includes(text));

scenario('two users chat in lobby: welcomes, counts, one delivery, ack, leave; screenshots', async (env) => {
  const alice = await env.user('alice');
  await waitFor(() => hasNotice(alice.page, 'join', 'welcome alice'), 10_000, 'alice sees "welcome alice"');
  const bob = await env.user('bob');
  await waitFor(() => hasNotice(bob.page, 'join', 'welcome bob'), 10_000, 'bob sees "welcome bob"');
  await waitFor(() => hasNotice(alice.page, 'join', 'welcome bob'), 10_000, 'alice sees "welcome bob"');
  await waitCounts(alice.page, 2, 2);
  await waitCounts(bob.page, 2, 2);

  // alice types + Enter
  await send(alice.page, 'hello bob', { type: true });
  const own = await waitFor(async () => {
    const m = await withText(alice.page, 'lobby', 'hello bob');
    return m.length === 1 && m[0].cls.includes('own') && m;
  }, 5_000, 'alice shows her message as own');
  assert.ok(own[0].cid, 'own message carries data-cid');
  await waitFor(async () => {
    const m = await withText(alice.page, 'lobby', 'hello bob');
    return m.length === 1 && !m[0].cls.includes('pending') && m[0].id;
  }, 10_000, 'alice\'s message acked (pending class gone, data-id set)');
  const got = await waitFor(async () => {
    const m = await withText(bob.page, 'lobby', 'hello bob');
    return m.length >= 1 && m;
  }, 10_000, 'bob receives "hello bob"');
  assert.equal(got[0].uid, 'alice');
  assert.ok(!got[0].cls.includes('own'), 'not own on bob\'s side');
  await holdsFor(async () => (await withText(bob.page, 'lobby', 'hello bob')).length === 1, 1_500,
    'bob has "hello bob" exactly once');

  // a few more lines from both, for a representative screenshot
  await send(bob.page, 'hi alice! how is it going?');
  await send(alice.page, 'fine, testing the page in a headless browser');
  await send(bob.page, 'looks good from here :)');
  await waitFor(async () => {
    const m = await messages(alice.page, 'lobby');
    return m.length === 4 && m.every((x) => x.id && !x.cls.includes('pending')) && m;
  }, 10_000, 'alice shows 4 delivered messages');
  await waitFor(async () => (await messages(bob.page, 'lobby')).length === 4, 10_000, 'bob shows 4 messages');
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await alice.page.locator('#compose-text').blur();
  await alice.page.screenshot({ path: path.join(ARTIFACTS, 'room.png') });
  const wide = alice.page.viewportSize();
  await alice.page.setViewportSize({ width: 390, height: 844 });
  await alice.page.screenshot({ path: path.join(ARTIFACTS, 'room-phone.png') });
  await alice.page.setViewportSize(wide);

  // bob leaves
  await env.closeUser(bob);
  await waitFor(() => hasNotice(alice.page, 'leave', 'bob left'), 10_000, 'alice sees "bob left"');
  await waitCounts(alice.page, 1, 2);
  assert.deepEqual(await counts(alice.page), { num: 1, total: 2 });
});

const PAYLOAD = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold</b>';

scenario('an HTML payload is shown as text and never executed', async (env) => {
  const alice = await env.user('alice');
  const carol = await env.user('carol');
  await send(carol.page, PAYLOAD);
  const got = await waitFor(async () => {
    const m = await withText(alice.page, 'lobby', PAYLOAD);
    return m.length === 1 && m;
  }, 10_000, 'alice shows the payload as the exact text');
  assert.equal(got[0].uid, 'carol');
  // carol's own copy, acked
  await waitFor(async () => {
    const m = await withText(carol.page, 'lobby', PAYLOAD);
    return m.length === 1 && !m[0].cls.includes('pending');
  }, 10_000, 'carol\'s copy acked');
  for (const u of [alice, carol]) {
    const found = await u.page.evaluate((payload) => {
      const li = [...document.querySelectorAll('ol.log[data-room="lobby"] > li.msg')]
        .find((l) => l.querySelector('.text')?.textContent === payload);
      return {
        elements: li ? li.querySelectorAll('img, script, b').length : -1,
        anyImg: document.querySelectorAll('ol.log img, ol.log script').length,
        xss: typeof window.__xss,
      };
    }, PAYLOAD);
    assert.equal(found.elements, 0, `${u.name}: no img/script/b element inside the message`);
    assert.equal(found.anyImg, 0, `${u.name}: no img/script in any log`);
    assert.equal(found.xss, 'undefined', `${u.name}: window.__xss stays undefined`);
  }
  // An img onerror would fire asynchronously: check again a moment later.
  await holdsFor(async () => {
    for (const u of [alice, carol]) {
      if ((await u.page.evaluate(() => typeof window.__xss)) !== 'undefined') return false;
    }
    return true;
  }, 1_000, 'window.__xss undefined in both pages');
});
