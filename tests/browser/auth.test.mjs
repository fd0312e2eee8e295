// Owns the sign-in browser tests against natter without --dev (plain http/ws, HS256 test secret):
// the join form's token box, a token given as `#token=…`, a refused token and the paste prompt,
// and a token expiring while connected (pending message delivered once after a fresh token).
import assert from 'node:assert/strict';
import {
  holdsFor, mintToken, notices, scenario, send, state, waitFor, waitState, withText,
} from './harness.mjs';

const NON_DEV = { dev: false };

const hasNotice = async (page, cls, text) =>
  (await notices(page, 'lobby')).some((n) => n.cls.includes(cls) && n.text.includes(text));

/** Resolves once app.js has run to its end (its last statement focuses #join-name). */
const pageReady = (page) =>
  waitFor(() => page.evaluate(() => document.activeElement?.id === 'join-name'), 10_000,
    'app.js ran (focus on #join-name)');

/** Records the URL of every WebSocket the page opens. */
function trackSockets(page) {
  const urls = [];
  page.on('websocket', (ws) => urls.push(ws.url()));
  return urls;
}

/** Fills and submits the join form (`token` into the paste box when given). */
async function submitJoin(page, { name, room = 'lobby', token = null }) {
  await page.fill('#join-name', name);
  await page.fill('#join-room', room);
  if (token !== null) await page.fill('#join-token', token);
  await page.click('#join-submit');
}

/** Joins through the form with `token` and waits for `connected` and the own welcome. */
async function joinWithToken(u, token, displayName) {
  await submitJoin(u.page, { name: u.name, token });
  await u.page.locator('#chat').waitFor({ state: 'visible' });
  await waitState(u.page, 'connected', 20_000);
  await waitFor(() => hasNotice(u.page, 'join', `welcome ${displayName}`), 10_000,
    `${u.name} sees "welcome ${displayName}"`);
}

const expOf = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString()).exp;

scenario('without --dev: the join form asks for a token, refuses to join without one, joins with one', async (env) => {
  const alice = await env.open('alice');
  const p = alice.page;
  const sockets = trackSockets(p);
  await pageReady(p);
  assert.equal(await p.locator('body').getAttribute('data-dev'), 'false', 'server renders data-dev="false"');
  assert.ok(await p.locator('#join-token-row').isVisible(), '#join-token-row is visible without --dev');

  // No token: an error, no socket, still on the join form.
  await submitJoin(p, { name: 'alice' });
  await p.locator('#join-error').waitFor({ state: 'visible', timeout: 5_000 });
  const err = (await p.locator('#join-error').textContent()).trim();
  env.note(`join-error: ${err}`);
  assert.ok(err.length > 0, '#join-error has a text');
  assert.ok(await p.locator('#join').isVisible(), 'join form still shown');
  assert.ok(await p.locator('#chat').isHidden(), 'chat not shown');
  await holdsFor(async () => sockets.length === 0 && (await state(p)) === 'offline', 1_500,
    'no WebSocket opened and status stays offline');

  // A valid token pasted: joins lobby as uid alice, shown with the name claim "Alice".
  const token = mintToken({ sub: 'alice', name: 'Alice' });
  await joinWithToken(alice, token, 'Alice');
  assert.ok(await p.locator('#join-error').isHidden(), '#join-error hidden after a successful join');
  assert.equal(await state(p), 'connected');
  assert.equal(sockets.length, 1, 'one WebSocket');
  assert.ok(!sockets[0].includes(token) && !sockets[0].includes('token='), `the token is not in the socket URL (${sockets[0]})`);
  assert.ok(sockets[0].startsWith('ws://'), `plain ws:// on a plain http page (${sockets[0]})`);
}, { natter: NON_DEV });

scenario('#token=… in the address: no token box, removed from the address bar, joins', async (env) => {
  const token = mintToken({ sub: 'alice', name: 'Alice' });
  const alice = await env.open('alice', { hash: `#token=${encodeURIComponent(token)}` });
  const p = alice.page;
  await pageReady(p);
  assert.ok(await p.locator('#join-token-row').isHidden(), '#join-token-row hidden: the page took the token');
  assert.ok(!p.url().includes('token='), `address bar without the token (${p.url()})`);
  assert.equal(p.url(), `${env.base}/`);
  await joinWithToken(alice, null, 'Alice');
  assert.ok(!p.url().includes('token='), `still no token in the address after joining (${p.url()})`);
}, { natter: NON_DEV });

scenario('a refused token: the paste prompt, the compose text kept, a valid token gets connected', async (env) => {
  const alice = await env.open('alice');
  const p = alice.page;
  await pageReady(p);
  const bad = mintToken({ sub: 'alice', name: 'Alice', secret: 'some-other-secret' });
  await submitJoin(p, { name: 'alice', token: bad });
  await p.locator('#chat').waitFor({ state: 'visible' });

  await p.locator('#token-form').waitFor({ state: 'visible', timeout: 10_000 });
  await waitState(p, 'auth', 10_000);
  const reason = (await p.locator('#token-reason').textContent()).trim();
  env.note(`token-reason: ${reason}`);
  assert.ok(await p.locator('#token-reason').isVisible(), '#token-reason visible');
  assert.ok(reason.length > 0, '#token-reason has a text');

  // Typed while signed out (no Enter): must survive the token submission.
  const draft = 'drafted while signed out';
  await p.locator('#compose-text').pressSequentially(draft, { delay: 5 });
  assert.equal(await p.locator('#compose-text').inputValue(), draft);

  await p.fill('#token-input', mintToken({ sub: 'alice', name: 'Alice' }));
  await p.locator('#token-form button[type="submit"]').click();
  await waitState(p, 'connected', 15_000);
  await p.locator('#token-form').waitFor({ state: 'hidden', timeout: 5_000 });
  await waitFor(() => hasNotice(p, 'join', 'welcome Alice'), 10_000, 'welcome Alice after the valid token');
  assert.equal(await p.locator('#compose-text').inputValue(), draft, '#compose-text kept its text');

  // The room works: the draft is sent and acked.
  await p.locator('#compose-text').press('Enter');
  await waitFor(async () => {
    const m = await withText(p, 'lobby', draft);
    return m.length === 1 && m[0].cls.includes('own') && !m[0].cls.includes('pending') && m[0].id;
  }, 10_000, 'the message is shown once, own, acked (no pending, data-id set)');
}, { natter: NON_DEV });

scenario('a token expiring while connected: prompt, pending message, delivered once after a fresh token', async (env) => {
  const bob = await env.open('bob');
  await pageReady(bob.page);
  await joinWithToken(bob, mintToken({ sub: 'bob', name: 'Bob' }), 'Bob');

  const alice = await env.open('alice');
  const p = alice.page;
  await pageReady(p);
  const short = mintToken({ sub: 'alice', name: 'Alice', ttl: 4 });
  const expMs = expOf(short) * 1000;
  await joinWithToken(alice, short, 'Alice');
  env.note(`alice connected ${expMs - Date.now()} ms before exp`);
  assert.ok(Date.now() < expMs, 'alice connected before her token expired (else the test proves nothing)');
  assert.ok(await p.locator('#token-form').isHidden(), 'no prompt while the token is valid');

  // Expiry: the server sends noauth "token expired" and the page asks for a new token.
  await p.locator('#token-form').waitFor({ state: 'visible', timeout: expMs - Date.now() + 10_000 });
  env.note(`prompt shown ${Date.now() - expMs} ms after exp`);
  assert.ok(Date.now() >= expMs - 500, 'the prompt came at expiry, not before');
  await waitState(p, 'auth', 5_000);
  const reason = (await p.locator('#token-reason').textContent()).trim();
  env.note(`token-reason: ${reason}`);
  assert.match(reason, /token expired/, '#token-reason names the server\'s reason');

  // Written while the session is expired: shown pending, not delivered.
  const text = 'sent while my token had expired';
  await send(p, text, { type: true });
  await waitFor(async () => {
    const m = await withText(p, 'lobby', text);
    return m.length === 1 && m[0].cls.includes('own') && m[0].cls.includes('pending') && m;
  }, 5_000, 'alice shows the message as own and pending');
  await holdsFor(async () => {
    const mine = await withText(p, 'lobby', text);
    return mine.length === 1 && mine[0].cls.includes('pending') &&
      (await withText(bob.page, 'lobby', text)).length === 0 && (await state(p)) === 'auth' &&
      /token expired/.test(await p.locator('#token-reason').textContent());
  }, 1_500, 'still pending, not at bob, status auth, prompt unchanged, while no token is given');

  // A fresh token: the pending message goes out, exactly once.
  await p.fill('#token-input', mintToken({ sub: 'alice', name: 'Alice' }));
  await p.locator('#token-form button[type="submit"]').click();
  await waitState(p, 'connected', 15_000);
  await p.locator('#token-form').waitFor({ state: 'hidden', timeout: 5_000 });
  await waitFor(async () => {
    const m = await withText(p, 'lobby', text);
    return m.length === 1 && !m[0].cls.includes('pending') && m[0].id;
  }, 15_000, 'alice\'s message acked (pending gone, data-id set)');
  await waitFor(async () => (await withText(bob.page, 'lobby', text)).length >= 1, 10_000, 'bob receives it');
  await holdsFor(async () => (await withText(bob.page, 'lobby', text)).length === 1 &&
    (await withText(p, 'lobby', text)).length === 1, 2_000, 'exactly one copy at bob and at alice');
  const [atBob] = await withText(bob.page, 'lobby', text);
  assert.equal(atBob.uid, 'alice');
  const [atAlice] = await withText(p, 'lobby', text);
  assert.equal(atBob.id, atAlice.id, 'same id on both sides');
}, { natter: { dev: false, args: ['--jwt-leeway', '0', '--expiry-grace', '30'] } });

// Beyond the brief's four: docs/page.md says the token is kept in sessionStorage "so a reload does
// not ask again".
scenario('a reload after signing in does not ask for the token again', async (env) => {
  const alice = await env.open('alice');
  await pageReady(alice.page);
  await joinWithToken(alice, mintToken({ sub: 'alice', name: 'Alice' }), 'Alice');
  await alice.page.reload();
  await pageReady(alice.page);
  assert.ok(await alice.page.locator('#join-token-row').isHidden(), 'no token box after a reload');
  await joinWithToken(alice, null, 'Alice');
}, { natter: NON_DEV });

// Room permissions (docs/protocol.md): a room the token does not allow gets a failed tab with the
// server's reason, and the rooms it allows go on working.
scenario('a room the token does not allow: its tab shows why, the others keep working', async (env) => {
  const alice = await env.open('alice');
  const p = alice.page;
  await pageReady(p);
  await joinWithToken(alice, mintToken({ sub: 'alice', name: 'Alice', rooms: 'lobby' }), 'Alice');
  await p.fill('#add-room-id', 'secret');
  await p.locator('#add-room [type="submit"], #add-room button').first().click();
  const tab = p.locator('#rooms button.room-tab[data-room="secret"]');
  await waitFor(async () => ((await tab.getAttribute('class')) ?? '').includes('failed'), 10_000,
    'the secret tab is marked failed');
  const why = await tab.getAttribute('title');
  env.note(`failed tab title: ${why}`);
  assert.match(why, /does not allow room secret/, 'the reason is the server\'s');
  const text = 'lobby still works';
  await p.locator('#rooms button.room-tab[data-room="lobby"]').click();
  await send(p, text);
  await waitFor(async () => {
    const m = await withText(p, 'lobby', text);
    return m.length === 1 && !m[0].cls.includes('pending');
  }, 10_000, 'a message in lobby is acked');
}, { natter: { dev: false, args: ['--public-rooms', ''] } });
