// Owns the shared test harness: starting/killing/restarting natter, launching headless Chromium,
// per-test environments with guaranteed cleanup (and a failure report: natter's stderr, page
// console, screenshots), the polling `waitFor`, and the page helpers that speak the DOM contract.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { GateProxy } from './gate.mjs';

export { GateProxy };

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..');
export const ARTIFACTS = path.join(HERE, 'artifacts');
export const NATTER_BIN = process.env.NATTER_BIN || path.join(REPO, 'target', 'debug', 'natter');
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

// ---- process hygiene: no natter child outlives the test process ----
const children = new Set();
function killChildren() {
  for (const p of children) {
    try {
      p.kill('SIGKILL');
    } catch {}
  }
}
process.on('exit', killChildren);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killChildren();
    process.exit(1);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `fn` until it returns a truthy value (returned) or `timeoutMs` passes (throws, naming
 * `what` and the last value or error seen). `fn` may be async.
 */
export async function waitFor(fn, timeoutMs, what = 'condition', intervalMs = 50) {
  const deadline = Date.now() + timeoutMs;
  let last;
  let lastErr;
  for (;;) {
    try {
      last = await fn();
      lastErr = undefined;
      if (last) return last;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() >= deadline) {
      const seen = lastErr ? `last error: ${lastErr.message}` : `last value: ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${seen})`);
    }
    await sleep(intervalMs);
  }
}

/** Asserts that `fn` stays truthy for `ms` (used after something arrived, to catch a late duplicate). */
export async function holdsFor(fn, ms, what = 'condition', intervalMs = 100) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const v = await fn();
    if (!v) throw new Error(`${what} stopped holding`);
    await sleep(intervalMs);
  }
}

// ---- natter ----
export class Natter {
  /**
   * `dev: false` starts natter without `--dev` (plain http/ws unless `args` give --cert/--key);
   * `args` are extra `serve` flags (e.g. `['--jwt-leeway', '0']`).
   */
  constructor(dir, { dev = true, args = [] } = {}) {
    this.dir = dir;
    this.dev = dev;
    this.extraArgs = args;
    this.scheme = 'https';
    this.data = path.join(dir, 'data');
    this.port = 0;
    this.proc = null;
    this.log = [];
    this.generation = 0;
  }

  /** Starts natter (port 0 the first time, then the same port: retries while it cannot bind). */
  async start() {
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        return await this.#spawnOnce();
      } catch (e) {
        if (!this.port || !e.earlyExit || Date.now() > deadline) throw e;
        await sleep(200);
      }
    }
  }

  #spawnOnce() {
    const gen = ++this.generation;
    // Without --dev a token needs a rooms claim or public rooms: tokens without the claim may
    // join every room here unless the scenario gives its own --public-rooms.
    const publicRooms = this.dev || this.extraArgs.includes('--public-rooms') ? [] : ['--public-rooms', '*'];
    const args = ['serve', '--listen', `127.0.0.1:${this.port}`, '--data', this.data,
      ...(this.dev ? ['--dev'] : []), '--jwt-secret', TEST_SECRET, '--heartbeat', '2', ...publicRooms,
      ...this.extraArgs];
    const proc = spawn(NATTER_BIN, args, { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(proc);
    this.proc = proc;
    const exited = new Promise((r) => proc.once('exit', (code, sig) => r({ code, sig })));
    proc.exited = exited;
    exited.then(({ code, sig }) => {
      children.delete(proc);
      this.log.push(`[natter#${gen} exited code=${code} signal=${sig}]`);
    });
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => this.log.push(...d.trimEnd().split('\n').map((l) => `[#${gen}] ${l}`)));
    proc.stdout.setEncoding('utf8');
    return new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => {
        proc.kill('SIGKILL');
        reject(new Error(`natter did not print its listening line within 20 s`));
      }, 20_000);
      proc.once('error', (e) => {
        clearTimeout(timer);
        reject(new Error(`cannot start ${NATTER_BIN}: ${e.message}`));
      });
      proc.stdout.on('data', (d) => {
        out += d;
        const m = /natter listening on (wss?):\/\/127\.0\.0\.1:(\d+)/.exec(out);
        if (m && timer) {
          clearTimeout(timer);
          this.scheme = m[1] === 'wss' ? 'https' : 'http';
          this.port = Number(m[2]);
          resolve(this.port);
        }
      });
      exited.then(({ code, sig }) => {
        clearTimeout(timer);
        const e = new Error(`natter exited before listening (code ${code}, signal ${sig})`);
        e.earlyExit = true;
        reject(e);
      });
    });
  }

  get running() {
    return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** SIGKILL (a crash) and wait for the exit. */
  async kill() {
    if (!this.running) return;
    this.proc.kill('SIGKILL');
    await this.proc.exited;
  }

  /** SIGTERM and wait (SIGKILL after 10 s). */
  async stop() {
    if (!this.running) return;
    const p = this.proc;
    p.kill('SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
    await p.exited;
    clearTimeout(t);
  }
}

export async function launchBrowser() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} missing: apt-get install chromium`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30_000,
  });
}

// ---- one test's world: natter, a browser, gates, users; torn down whatever happens ----
const openEnvs = new Set();
after(async () => {
  // Only a test that never finished (timed out) still has its Env open here.
  for (const env of [...openEnvs]) {
    await env.report(new Error('test did not finish (timed out?)')).catch(() => {});
    await env.close();
  }
});

export class Env {
  /** `natter`: options for the Natter (see its constructor). */
  constructor(title, { natter = {} } = {}) {
    this.title = title;
    this.natterOpts = natter;
    this.users = [];
    this.gates = [];
    this.notes = [];
  }

  async init() {
    openEnvs.add(this);
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'natter-browser-'));
    this.natter = new Natter(this.dir, this.natterOpts);
    await this.natter.start();
    this.browser = await launchBrowser();
  }

  get base() {
    return `${this.natter.scheme}://127.0.0.1:${this.natter.port}`;
  }

  /** A gate proxy in front of natter (same upstream port across restarts). */
  async gate() {
    const g = new GateProxy(this.natter.port);
    await g.listen();
    this.gates.push(g);
    return g;
  }

  /** Restart natter on the same port and data dir (after kill/stop). */
  async restart() {
    await this.natter.start();
    for (const g of this.gates) g.setUpstream(this.natter.port);
  }

  /**
   * Opens a new browser context for `name`, loads the page (directly, or through `via` gate),
   * joins `room` and waits until the status is `connected`.
   */
  async user(name, { room = 'lobby', via = null, viewport = { width: 1100, height: 760 } } = {}) {
    const origin = via ? `https://127.0.0.1:${via.port}` : this.base;
    const u = await this.open(name, { url: `${origin}/`, viewport });
    const { page } = u;
    await page.fill('#join-name', name);
    await page.fill('#join-room', room);
    await page.click('#join-submit');
    await page.locator('#chat').waitFor({ state: 'visible' });
    await page.locator('#join').waitFor({ state: 'hidden' });
    await waitState(page, 'connected', 20_000);
    return u;
  }

  /**
   * Opens a new browser context for `name` and loads `url` (default: the page at `this.base`,
   * plus `hash` when given), without joining; waits until the join form is visible.
   */
  async open(name, { url = null, hash = '', viewport = { width: 1100, height: 760 } } = {}) {
    const ctx = await this.browser.newContext({ ignoreHTTPSErrors: true, viewport });
    const page = await ctx.newPage();
    page.setDefaultTimeout(15_000);
    const u = { name, ctx, page, console: [], closed: false };
    this.users.push(u);
    page.on('console', (m) => u.console.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => u.console.push(`pageerror: ${e.message}`));
    await page.goto(url ?? `${this.base}/${hash}`);
    await page.locator('#join').waitFor({ state: 'visible' });
    return u;
  }

  async closeUser(u) {
    if (u.closed) return;
    u.closed = true;
    await u.ctx.close().catch(() => {});
  }

  note(s) {
    this.notes.push(`${new Date().toISOString()} ${s}`);
  }

  /** Prints what helps to understand a failure, and screenshots every open page. */
  async report(err) {
    const slug = this.title.replace(/[^a-z0-9]+/gi, '-').toLowerCase().slice(0, 60);
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const lines = [`---- failure report: ${this.title}`, String(err?.stack || err)];
    lines.push('-- test notes', ...this.notes);
    for (const u of this.users) {
      if (!u.closed) {
        const file = path.join(ARTIFACTS, `fail-${slug}-${u.name}.png`);
        await u.page.screenshot({ path: file, timeout: 5_000 }).then(() => lines.push(`screenshot: ${file}`), () => {});
        const dump = await logItems(u.page).catch((e) => `(no log: ${e.message})`);
        const st = await u.page.locator('#status').evaluate((e) => `${e.dataset.state} "${e.textContent}"`).catch(() => '?');
        lines.push(`-- ${u.name}: status ${st}; log ${JSON.stringify(dump)}`);
      }
      lines.push(`-- ${u.name} console (last 60)`, ...u.console.slice(-60));
    }
    for (const [i, g] of this.gates.entries()) lines.push(`-- gate ${i}: mode ${g.mode} ${JSON.stringify(g.stats)}`);
    lines.push('-- natter stderr (last 200 lines)', ...(this.natter?.log.slice(-200) ?? []));
    console.error(lines.join('\n'));
  }

  async close() {
    if (!openEnvs.delete(this)) return;
    for (const u of this.users) await this.closeUser(u);
    await this.browser?.close().catch(() => {});
    for (const g of this.gates) await g.close().catch(() => {});
    await this.natter?.stop().catch(() => {});
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A node:test test with its own Env, a failure report and cleanup on every path. */
export function scenario(title, fn, { timeout = 120_000, natter = {} } = {}) {
  test(title, { timeout }, async () => {
    const env = new Env(title, { natter });
    try {
      await env.init();
      await fn(env);
    } catch (e) {
      await env.report(e);
      throw e;
    } finally {
      await env.close();
    }
  });
}

/** The HS256 secret the harness starts natter with (natter wants 32 bytes or more). */
export const TEST_SECRET = 'natter-browser-test-secret-0123456789abcdef';

/**
 * An HS256 token from `natter token` (`secret` defaults to the one the harness starts natter
 * with; `rooms`: comma-separated room patterns for the rooms claim).
 */
export function mintToken({ sub, name = null, ttl = 3600, secret = TEST_SECRET, rooms = null }) {
  const args = ['token', '--secret', secret, '--sub', sub, '--ttl', String(ttl)];
  if (name !== null) args.push('--name', name);
  if (rooms !== null) args.push('--rooms', rooms);
  return execFileSync(NATTER_BIN, args, { encoding: 'utf8', timeout: 10_000 }).trim();
}

// ---- page helpers (the DOM contract) ----
export async function state(page) {
  return page.locator('#status').getAttribute('data-state', { timeout: 5_000 });
}

/** Waits until #status data-state is one of `states` (a string or an array); returns it. */
export async function waitState(page, states, timeoutMs = 30_000) {
  const want = [].concat(states);
  return waitFor(async () => {
    const s = await state(page);
    return want.includes(s) && s;
  }, timeoutMs, `#status[data-state] in ${want.join('|')}`);
}

/** The items of a room's `ol.log` (the active room when `room` is omitted), in DOM order. */
export async function logItems(page, room = null) {
  return page.evaluate((room) => {
    const sel = room ? `ol.log[data-room="${CSS.escape(room)}"]` : 'ol.log:not([hidden])';
    const ol = document.querySelector(sel);
    if (!ol) return null;
    return [...ol.querySelectorAll(':scope > li')].map((li) => ({
      kind: li.classList.contains('msg') ? 'msg' : li.classList.contains('notice') ? 'notice' : 'other',
      cls: [...li.classList].filter((c) => c !== 'msg' && c !== 'notice'),
      id: li.getAttribute('data-id'),
      uid: li.getAttribute('data-uid'),
      cid: li.getAttribute('data-cid'),
      text: li.classList.contains('msg') ? (li.querySelector('.text')?.textContent ?? null) : li.textContent.trim(),
      mark: li.querySelector('.mark')?.textContent ?? null,
    }));
  }, room);
}

export async function messages(page, room) {
  return ((await logItems(page, room)) ?? []).filter((i) => i.kind === 'msg');
}

export async function notices(page, room) {
  return ((await logItems(page, room)) ?? []).filter((i) => i.kind === 'notice');
}

/** Messages of `room` whose text is exactly `text`. */
export async function withText(page, room, text) {
  return (await messages(page, room)).filter((m) => m.text === text);
}

/** Sends `text` the way a user does: type (or fill) into #compose-text, then Enter. */
export async function send(page, text, { type = false } = {}) {
  const box = page.locator('#compose-text');
  if (type) {
    await box.click();
    await box.pressSequentially(text, { delay: 5 });
  } else {
    await box.fill(text);
  }
  await box.press('Enter');
}

/** `#num` and `#total` as numbers. */
export async function counts(page) {
  const num = Number((await page.locator('#num').textContent()).trim());
  const total = Number((await page.locator('#total').textContent()).trim());
  return { num, total };
}

export async function waitCounts(page, num, total, timeoutMs = 15_000) {
  return waitFor(async () => {
    const c = await counts(page);
    return c.num === num && c.total === total && c;
  }, timeoutMs, `#num=${num} #total=${total}`);
}

/** Data-ids that occur more than once in the room's log. */
export async function duplicateIds(page, room) {
  const ids = (await messages(page, room)).map((m) => m.id).filter((id) => id != null);
  return ids.filter((id, i) => ids.indexOf(id) !== i);
}
