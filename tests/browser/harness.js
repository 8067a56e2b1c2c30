// Harness of the browser suite: the real `roomcast serve` binary (started,
// killed with SIGKILL, restarted on the same port and database), tokens
// minted like the server checks them, publishing over REST, and Debian's
// chromium driven by playwright-core (never a downloaded browser).
//
// Environment (set by tests/browser.rs, or by hand):
//   ROOMCAST_BIN        the server binary (default target/debug/roomcast)
//   DATABASE_URL        the PostgreSQL database the servers use (required)
//   ROOMCAST_ARTIFACTS  where screenshots go (default target/browser)
//   CHROMIUM            the browser (default /usr/bin/chromium)
//   ROOMCAST_WEB_DIR    passed to the server: serve src/web from disk (development)

import { spawn } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

export { sleep };

export const SECRET = 'browser-suite-secret';
export const BIN = process.env.ROOMCAST_BIN ?? 'target/debug/roomcast';
export const ARTIFACTS = process.env.ROOMCAST_ARTIFACTS ?? 'target/browser';
const DATABASE_URL = process.env.DATABASE_URL;
if (!DATABASE_URL) throw new Error('DATABASE_URL must name the test database (tests/browser.rs sets it)');

/** Every server started here, killed when the test process ends. */
const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** A fresh org per test: rooms and lists never cross tests sharing the database. */
export function freshOrg() {
  return `org-${randomUUID().slice(0, 8)}`;
}

const b64url = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/**
 * An HS256 JWT as the server checks it.
 * @param {{org: string, sub?: string, pub?: boolean, rooms?: string[], ttl?: number, info?: object}} c
 */
export function token({ org, sub = 'viewer', pub = false, rooms, ttl = 3600, info }) {
  const claims = { sub, org, exp: Math.floor(Date.now() / 1000) + ttl };
  if (pub) claims.pub = true;
  if (rooms) claims.rooms = rooms;
  if (info) claims.info = info;
  const head = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

/** The real server binary in a child process. */
export class Server {
  /**
   * @param {{port?: number, env?: Record<string, string>}} [opts]
   */
  static async start(opts = {}) {
    const s = new Server(opts.env ?? {});
    await s.#spawn(opts.port ?? 0);
    return s;
  }

  constructor(env) {
    this.env = env;
    this.port = 0;
    this.child = null;
  }

  async #spawn(port) {
    const env = {
      ...process.env,
      DATABASE_URL,
      ROOMCAST_BIND: `127.0.0.1:${port}`,
      ROOMCAST_JWT_SECRET: SECRET,
      ROOMCAST_RATE_LIMITS: 'off',
      ROOMCAST_WORKERS: '1',
      ROOMCAST_DB_POOL: '6',
      RUST_LOG: 'warn',
      ...this.env,
    };
    const child = spawn(BIN, ['serve'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    running.add(child);
    child.on('exit', () => running.delete(child));
    const lines = createInterface({ input: child.stdout });
    const line = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the server did not start within 30 s')), 30000);
      lines.once('line', (l) => {
        clearTimeout(timer);
        resolve(l);
      });
      child.once('exit', (code) => reject(new Error(`the server exited (${code}) before listening`)));
    });
    const m = /port (\d+)/.exec(line);
    if (!m) throw new Error(`no port in ${JSON.stringify(line)}`);
    this.port = Number(m[1]);
    this.child = child;
  }

  /** The server's base URL. */
  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** SIGKILL: no shutdown of any kind. */
  async kill9() {
    const child = this.child;
    if (!child) return;
    this.child = null;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await gone;
  }

  /** Starts the binary again on the same port and database. */
  async restart() {
    if (this.child) throw new Error('still running');
    // The port was just released; retry briefly in case it is not yet free.
    for (let i = 0; ; i++) {
      try {
        await this.#spawn(this.port);
        return;
      } catch (e) {
        if (i >= 20) throw e;
        await sleep(100);
      }
    }
  }

  /** SIGTERM and wait. */
  async stop() {
    const child = this.child;
    if (!child) return;
    this.child = null;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await gone;
  }
}

/**
 * Publishes one event (or a batch body) through REST; answers the parsed body.
 * @param {Server | string} server a server or a base URL
 * @param {string} tok a token with `pub`
 * @param {string} room
 * @param {object} body
 */
export async function publish(server, tok, room, body) {
  const base = typeof server === 'string' ? server : server.url;
  const res = await fetch(`${base}/v1/rooms/${room}/events`, {
    method: 'POST',
    headers: { authorization: `Bearer ${tok}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status >= 300) throw new Error(`publish answered ${res.status}: ${text}`);
  return JSON.parse(text);
}

/** Publishes `n` events of type `t` with data {i}; answers their seqs. */
export async function publishN(server, tok, room, n, t = 'tick', from = 1) {
  const seqs = [];
  for (let i = from; i < from + n; i++) seqs.push((await publish(server, tok, room, { type: t, data: { i } })).seq);
  return seqs;
}

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-dev-shm-usage',
];

/** Debian's chromium, never a downloaded browser. */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
  });
}

/**
 * A page context, with the dashboard's remembered mode set beforehand.
 * @param {import('playwright-core').Browser} browser
 * @param {{mode?: string}} [opts]
 */
export async function newContext(browser, opts = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 820 } });
  if (opts.mode) {
    await ctx.addInitScript((m) => {
      if (!sessionStorage.getItem('roomcast.test.mode-set')) {
        localStorage.setItem('roomcast.mode', m);
        sessionStorage.setItem('roomcast.test.mode-set', '1');
      }
    }, opts.mode);
  }
  return ctx;
}

/** The dashboard URL of `room` with `tok`. */
export function dashboardUrl(server, tok, room) {
  const q = new URLSearchParams({ token: tok });
  if (room) q.set('room', room);
  return `${server.url}/?${q}`;
}

/**
 * Polls `fn` in the page (from Node, on real time: page.clock may fake the
 * page's timers) until it answers truthy; answers that value.
 * @template T
 * @param {import('playwright-core').Page} page
 * @param {(arg: any) => T} fn
 * @param {any} [arg]
 * @param {{timeout?: number, what?: string}} [opts]
 * @returns {Promise<T>}
 */
export async function until(page, fn, arg, opts = {}) {
  const timeout = opts.timeout ?? 15000;
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await page.evaluate(fn, arg);
    if (last) return last;
    if (Date.now() > deadline) {
      const state = await page.evaluate(() => globalThis.roomcast?.client?.state ?? null).catch(() => null);
      throw new Error(`timed out after ${timeout} ms waiting for ${opts.what ?? fn.toString()}; client state: ${JSON.stringify(state)}`);
    }
    await sleep(50);
  }
}

/** The timeline's seqs, oldest first (the page shows newest first). */
export async function timelineSeqs(page) {
  return page.$$eval('#timeline li[data-seq]', (lis) => lis.map((li) => Number(li.dataset.seq)).reverse());
}

/** The timeline's sources by seq. */
export async function timelineSources(page) {
  return page.$$eval('#timeline li[data-seq]', (lis) =>
    Object.fromEntries(lis.map((li) => [Number(li.dataset.seq), li.dataset.source])),
  );
}

/** Waits until the timeline shows `n` events. */
export function untilTimeline(page, n, opts = {}) {
  return until(page, (n) => document.querySelectorAll('#timeline li[data-seq]').length >= n, n, {
    what: `${n} events in the timeline`,
    ...opts,
  });
}

/** Waits until the status badge shows `status`. */
export function untilStatus(page, status, opts = {}) {
  return until(page, (s) => document.querySelector('#status')?.dataset.status === s, status, {
    what: `status ${status}`,
    ...opts,
  });
}

/** The dashboard's client state. */
export function clientState(page) {
  return page.evaluate(() => globalThis.roomcast.client.state);
}

/** 1..n */
export const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** Saves a screenshot of the page as an artifact. */
export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, name);
  await page.screenshot({ path });
  return path;
}
