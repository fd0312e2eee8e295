// Owns the multi-room browser test: adding a room with #add-room, unread counts on the room tabs
// while another room is active, and switching back with a tab click.
import assert from 'node:assert/strict';
import { scenario, send, waitCounts, waitFor, withText } from './harness.mjs';

const tab = (page, room) => page.locator(`#rooms button.room-tab[data-room="${room}"]`);

scenario('two rooms: unread count on the inactive tab, cleared when it is opened', async (env) => {
  const alice = await env.user('alice');
  const bob = await env.user('bob');
  const p = alice.page;

  await p.fill('#add-room-id', 'side');
  await p.locator('#add-room [type="submit"], #add-room button').first().click();
  await tab(p, 'side').waitFor({ state: 'visible' });
  await waitFor(async () => (await tab(p, 'side').getAttribute('aria-current')) === 'true', 10_000,
    'side tab is active');
  assert.notEqual(await tab(p, 'lobby').getAttribute('aria-current'), 'true', 'lobby tab is not active');
  await p.locator('ol.log[data-room="side"]').waitFor({ state: 'visible' });
  await p.locator('ol.log[data-room="lobby"]').waitFor({ state: 'hidden' });
  await waitCounts(p, 1, 1);

  for (const t of ['while you were away 1', 'while you were away 2']) {
    await send(bob.page, t);
    await waitFor(async () => {
      const m = await withText(bob.page, 'lobby', t);
      return m.length === 1 && !m[0].cls.includes('pending');
    }, 10_000, `bob's "${t}" acked`);
  }
  const lobbyUnread = tab(p, 'lobby').locator('span.unread');
  await waitFor(async () => (await lobbyUnread.textContent()).trim() === '2' && (await lobbyUnread.isVisible()),
    10_000, 'lobby tab shows unread "2"');
  assert.equal(await tab(p, 'side').locator('span.unread').getAttribute('hidden'), '',
    'the active side tab has its unread badge hidden');

  await tab(p, 'lobby').click();
  await waitFor(async () => (await tab(p, 'lobby').getAttribute('aria-current')) === 'true', 10_000,
    'lobby tab is active');
  await p.locator('ol.log[data-room="lobby"]').waitFor({ state: 'visible' });
  await p.locator('ol.log[data-room="side"]').waitFor({ state: 'hidden' });
  for (const t of ['while you were away 1', 'while you were away 2']) {
    assert.equal((await withText(p, 'lobby', t)).length, 1, `alice shows "${t}" once`);
    await p.locator('ol.log[data-room="lobby"] li.msg .text', { hasText: t }).first().waitFor({ state: 'visible' });
  }
  await waitFor(async () => (await lobbyUnread.getAttribute('hidden')) !== null, 10_000,
    'lobby unread badge hidden (hidden attribute) after opening it');
  assert.equal(await lobbyUnread.isVisible(), false);
  await waitCounts(p, 2, 2);
}, { timeout: 120_000 });
