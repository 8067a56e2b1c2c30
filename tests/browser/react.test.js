// The React package (clients/react, @roomcast/react): its example app (seed
// 004's hybrid-updates widget rebuilt on useRoom, built into
// clients/react/example/dist by clients/react/ci.sh) in chromium, against the
// real server. A small Node server serves the page and reverse-proxies /v1/
// (HTTP and WebSocket upgrades) and /client.js to roomcast, so the page and
// roomcast share one origin (roomcast sends no CORS headers). The page is
// mostly the development build (?dev=1): React StrictMode's double render and
// double effects are live, so the hooks must neither duplicate an event nor
// open a second connection or subscription; one test runs the production one.

import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import {
  Server, freshOrg, launch, publish, publishN, range, screenshot, sleep, timelineSeqs, token, until,
  untilStatus, untilTimeline,
} from './harness.js';

const PKG = fileURLToPath(new URL('../../clients/react/', import.meta.url));
const EXAMPLE = join(PKG, 'example/dist');
for (const f of ['index.html', 'app.js', 'app.dev.js']) {
  if (!existsSync(join(EXAMPLE, f))) {
    throw new Error(
      `the React example is not built (${join(EXAMPLE, f)} is missing): run \`bash clients/react/ci.sh\` ` +
        '(or `cd clients/react && npm ci && npm run build`) before the browser suite',
    );
  }
}

const STATIC = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/index.html': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/app.dev.js': ['app.dev.js', 'text/javascript; charset=utf-8'],
};

/**
 * The page's origin: the example's files, and /v1/, /client.js and /client/ proxied to
 * `backend` (looked up per request: the server restarts on the same port).
 * A connection closed on either side is closed on the other, so a socket or
 * long-poll the page drops is dropped at roomcast too.
 */
async function startFront(backend) {
  const sockets = new Set();
  // Proxied requests and WebSockets still open, as the page holds them.
  const open = { http: 0, ws: 0 };
  const proxied = (url) =>
    url.startsWith('/v1/') || url === '/client.js' || url.startsWith('/client.js?') || url.startsWith('/client/');
  const front = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (proxied(req.url ?? '')) {
      open.http += 1;
      res.on('close', () => {
        open.http -= 1;
      });
      const up = httpRequest(
        { host: '127.0.0.1', port: backend.port, method: req.method, path: req.url, headers: req.headers },
        (ures) => {
          res.writeHead(ures.statusCode ?? 502, ures.headers);
          ures.pipe(res);
        },
      );
      up.on('error', () => {
        if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { code: 'unavailable', message: 'roomcast is down (test proxy)' } }));
      });
      // The page gave up (an aborted long-poll): give up upstream too.
      res.on('close', () => {
        if (!res.writableFinished) up.destroy();
      });
      req.pipe(up);
      return;
    }
    const file = STATIC[path];
    if (!file || req.method !== 'GET') {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': file[1], 'cache-control': 'no-store' });
    res.end(readFileSync(join(EXAMPLE, file[0])));
  });
  front.on('upgrade', (req, socket, head) => {
    if (!proxied(req.url ?? '')) {
      socket.destroy();
      return;
    }
    const up = connect(backend.port, '127.0.0.1');
    sockets.add(socket);
    open.ws += 1;
    let closed = false;
    const close = () => {
      up.destroy();
      socket.destroy();
      sockets.delete(socket);
      if (!closed) open.ws -= 1;
      closed = true;
    };
    up.on('error', close);
    up.on('close', close);
    socket.on('error', close);
    socket.on('close', close);
    up.on('connect', () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(`${raw}\r\n`);
      if (head.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
  });
  front.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((r) => front.listen(0, '127.0.0.1', r));
  const { port } = /** @type {import('node:net').AddressInfo} */ (front.address());
  return {
    url: `http://127.0.0.1:${port}`,
    open: () => ({ ...open }),
    close: () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        front.close(r);
      }),
  };
}

/** Short client timings, so that offline and back fit in seconds (real clock). */
const FAST = { offlineAfterMs: '2000', backoffBaseMs: '200', backoffMaxMs: '800' };

let server;
let browser;
let front;

before(async () => {
  [server, browser] = await Promise.all([Server.start(), launch()]);
  front = await startFront(server);
});

after(async () => {
  await browser?.close();
  await front?.close();
  await server?.stop();
});

/**
 * Opens the example on `room`: the development build (StrictMode checks live),
 * or the production one with `{prod: '1'}`.
 */
async function openExample(room, tok, mode, { prod, ...extra } = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await ctx.newPage();
  const errors = [];
  const sockets = [];
  page.on('pageerror', (e) => errors.push(e));
  page.on('websocket', (ws) => sockets.push(ws));
  const q = new URLSearchParams({ token: tok, room, mode, ...FAST, ...extra });
  if (!prod) q.set('dev', '1');
  await page.goto(`${front.url}/?${q}`);
  return { ctx, page, errors, sockets };
}

/** The page's data-source badge: websocket, polling or none. */
const source = (page) => page.$eval('#source', (el) => el.dataset.source);
const untilSource = (page, s, opts = {}) =>
  until(page, (s) => document.querySelector('#source')?.dataset.source === s, s, { what: `data source ${s}`, ...opts });
const counter = async (page, name) => Number(await page.$eval(`#count-${name}`, (el) => el.textContent));

/** The room's events as stored (REST from 0). */
async function storedSeqs(room, tok) {
  const res = await fetch(`${server.url}/v1/rooms/${room}/events?since=0&limit=1000`, { headers: { authorization: `Bearer ${tok}` } });
  return (await res.json()).events.map((e) => e.seq);
}

/** roomcast's gauges that say what a page holds open. */
async function gauges() {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const value = (re) => {
    const m = re.exec(text);
    return m ? Number(m[1]) : 0;
  };
  return {
    ws: value(/^roomcast_connections\{transport="ws"\} (\S+)$/m),
    poll: value(/^roomcast_connections\{transport="poll"\} (\S+)$/m),
    subscriptions: value(/^roomcast_subscriptions (\S+)$/m),
  };
}

/** Waits (Node side) until `fn()` is truthy. */
async function waitFor(fn, what, show = () => '', timeout = 5000) {
  const deadline = Date.now() + timeout;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(show())}`);
    await sleep(50);
  }
}

async function untilGauges(want, timeout = 8000) {
  const deadline = Date.now() + timeout;
  let g;
  for (;;) {
    g = await gauges();
    if (Object.entries(want).every(([k, v]) => g[k] === v)) return g;
    if (Date.now() > deadline) throw new Error(`timed out waiting for gauges ${JSON.stringify(want)}; now ${JSON.stringify(g)}`);
    await sleep(100);
  }
}

test('the package ships the server\'s /client.js and its modules byte for byte (one protocol implementation)', async () => {
  const modules = readdirSync(join(PKG, 'dist/client')).filter((f) => f.endsWith('.js'));
  assert.ok(modules.includes('roomcast.js'), 'dist/client/ holds no modules: build the package (clients/react/ci.sh)');
  for (const f of ['client.js', ...modules.map((m) => `client/${m}`)]) {
    const shipped = join(PKG, 'dist', f);
    assert.ok(existsSync(shipped), `${shipped} is missing: build the package (clients/react/ci.sh)`);
    const res = await fetch(`${front.url}/${f}`);
    assert.equal(res.status, 200, `/${f} is not served`);
    assert.equal(readFileSync(shipped, 'utf8'), await res.text(), `clients/react/dist/${f} differs from the /${f} of ROOMCAST_BIN: rebuild the package (bash clients/react/ci.sh) after changing src/web/`);
  }
});

test('kill -9 and restart: the badge goes Live -> Offline -> Live and the list holds exactly 1..N', async () => {
  const org = freshOrg();
  const room = 'react-restart';
  const producer = token({ org, sub: 'p', pub: true });
  const viewer = token({ org });
  await publishN(server, producer, room, 5);
  const { ctx, page, errors } = await openExample(room, viewer, 'realtime');
  await untilStatus(page, 'live');
  await untilTimeline(page, 5);
  assert.equal(await source(page), 'websocket');
  await publishN(server, producer, room, 2, 'live', 6);
  await untilTimeline(page, 7);
  await screenshot(page, 'react-live.png');

  await server.kill9();
  await untilStatus(page, 'offline', { timeout: 8000 });
  await screenshot(page, 'react-offline.png');
  // Another instance on the same database commits while this one is dead.
  const other = await Server.start();
  await publishN(other, producer, room, 3, 'while.dead', 8);
  await other.stop();
  assert.deepEqual(await timelineSeqs(page), range(1, 7));

  await server.restart();
  await untilStatus(page, 'live', { timeout: 10000 });
  await untilTimeline(page, 10);
  await publishN(server, producer, room, 2, 'after.restart', 11);
  await untilTimeline(page, 12);
  await sleep(200); // anything extra (a duplicate) would show by now

  const seqs = await timelineSeqs(page);
  assert.deepEqual(seqs, range(1, 12));
  assert.deepEqual(seqs, await storedSeqs(room, viewer));
  assert.equal(await counter(page, 'duplicates'), 0);
  assert.ok((await counter(page, 'reconnects')) >= 1);
  assert.equal(await source(page), 'websocket');
  // The room list (useRooms) followed the events it saw.
  await until(page, (r) => document.querySelector(`#rooms li[data-room="${r}"]`)?.dataset.head === '12', room, { what: 'the room list at head 12' });
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('mode toggle realtime -> polling -> auto while events flow: exactly 1..N, no duplicate', async () => {
  const org = freshOrg();
  const room = 'react-modes';
  const producer = token({ org, sub: 'p', pub: true });
  const viewer = token({ org });
  await publishN(server, producer, room, 3);
  const { ctx, page, errors } = await openExample(room, viewer, 'realtime');
  await untilStatus(page, 'live');
  await untilTimeline(page, 3);
  assert.equal(await source(page), 'websocket');

  // A producer publishing all along, one event at a time.
  let next = 4;
  let stop = false;
  const producing = (async () => {
    while (!stop) {
      await publish(server, producer, room, { type: 'tick', data: { i: next } });
      next += 1;
      await sleep(40);
    }
  })();

  await page.click('[data-mode="polling"]');
  await untilSource(page, 'polling');
  assert.equal(await page.$eval('[data-mode="polling"]', (b) => b.getAttribute('aria-checked')), 'true');
  await untilStatus(page, 'live');
  await until(page, (n) => document.querySelectorAll('#timeline li[data-seq]').length >= n, next, { what: 'events while polling' });

  await page.click('[data-mode="auto"]');
  await untilSource(page, 'websocket');
  await untilStatus(page, 'live');
  await until(page, (n) => document.querySelectorAll('#timeline li[data-seq]').length >= n, next, { what: 'events in auto mode' });

  await page.click('#refresh');
  stop = true;
  await producing;
  const last = next - 1;
  await untilTimeline(page, last);
  await sleep(200);
  const seqs = await timelineSeqs(page);
  assert.deepEqual(seqs, range(1, last));
  assert.deepEqual(seqs, await storedSeqs(room, viewer));
  assert.ok(last >= 10, `only ${last} events were published during the switches`);
  assert.ok((await counter(page, 'poll')) > 0, 'some events came by long-poll');
  assert.deepEqual(errors, []);
  await ctx.close();
});

for (const mode of ['realtime', 'polling']) {
  test(`unmounting the provider closes every connection (${mode}); mounting again shows the events once`, async () => {
    const org = freshOrg();
    const room = `react-unmount-${mode}`;
    const producer = token({ org, sub: 'p', pub: true });
    const viewer = token({ org });
    await publishN(server, producer, room, 4);
    // A short long-poll `wait`: roomcast holds a long-poll its client gave up on until the wait passes.
    const { ctx, page, errors, sockets } = await openExample(room, viewer, mode, { pollWaitS: '2' });
    await untilStatus(page, 'live');
    await untilTimeline(page, 4);
    // StrictMode mounted everything twice: still one connection, one subscription.
    if (mode === 'realtime') await untilGauges({ ws: 1, subscriptions: 1, poll: 0 });
    else await untilGauges({ ws: 0, poll: 1 });

    assert.ok(front.open().http + front.open().ws >= 1, `the page holds its connection: ${JSON.stringify(front.open())}`);

    await page.click('#unmount');
    await page.waitForSelector('#unmounted');
    // The page dropped everything at once (the proxy sees it)...
    await waitFor(() => front.open().http === 0 && front.open().ws === 0, 'the page to close its connections', () => front.open());
    await waitFor(() => sockets.every((ws) => ws.isClosed()), 'every WebSocket of the page closed', () => sockets.length);
    // ...and roomcast holds nothing for it: no socket, no subscription, no long-poll
    // (an abandoned long-poll is held by the server until its `wait`, 2 s here).
    await untilGauges({ ws: 0, poll: 0, subscriptions: 0 });
    await sleep(300);
    assert.deepEqual(front.open(), { http: 0, ws: 0 }, 'nothing was opened again after unmounting');
    assert.equal(await page.evaluate(() => globalThis.roomcast), undefined);

    // While unmounted, events go on; mounted again, the list starts afresh from 0.
    await publishN(server, producer, room, 2, 'while.unmounted', 5);
    await page.click('#unmount');
    await untilStatus(page, 'live');
    await untilTimeline(page, 6);
    await publishN(server, producer, room, 1, 'again', 7);
    await untilTimeline(page, 7);
    await sleep(200);
    assert.deepEqual(await timelineSeqs(page), range(1, 7));
    if (mode === 'realtime') await untilGauges({ ws: 1, subscriptions: 1 });
    else assert.equal((await gauges()).ws, 0);
    assert.deepEqual(errors, []);
    await ctx.close();
    await untilGauges({ ws: 0, poll: 0, subscriptions: 0 });
  });
}

test('switching rooms (useRoom with a new room; production build) unsubscribes the old one: one subscription, each list exact', async () => {
  const org = freshOrg();
  const producer = token({ org, sub: 'p', pub: true });
  const viewer = token({ org });
  await publishN(server, producer, 'react-room-b', 3);
  await publishN(server, producer, 'react-room-a', 4);
  const { ctx, page, errors } = await openExample('react-room-a', viewer, 'realtime', { prod: '1' });
  await untilStatus(page, 'live');
  await untilTimeline(page, 4);
  await untilGauges({ ws: 1, subscriptions: 1 });

  await page.click('#rooms li[data-room="react-room-b"]');
  await until(page, () => document.querySelector('#room')?.dataset.room === 'react-room-b', null, { what: 'room b shown' });
  await untilTimeline(page, 3);
  await publishN(server, producer, 'react-room-b', 1, 'b', 4);
  await publishN(server, producer, 'react-room-a', 1, 'a', 5); // the room left: not shown
  await untilTimeline(page, 4);
  await untilGauges({ ws: 1, subscriptions: 1 });
  await sleep(200);
  assert.deepEqual(await timelineSeqs(page), range(1, 4));
  assert.deepEqual(await page.$$eval('#timeline li[data-seq] .type', (els) => els.map((e) => e.textContent)), ['b', 'tick', 'tick', 'tick']);

  // Back to a: followed afresh from its history, each event once.
  await page.click('#rooms li[data-room="react-room-a"]');
  await until(page, () => document.querySelector('#room')?.dataset.room === 'react-room-a', null, { what: 'room a shown' });
  await untilTimeline(page, 5);
  await sleep(200);
  assert.deepEqual(await timelineSeqs(page), range(1, 5));
  await untilGauges({ ws: 1, subscriptions: 1 });
  assert.equal(await counter(page, 'duplicates'), 0);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('the stage changes over WebSocket with no snapshot read: state travels with events (issue 26, item 1)', async () => {
  const org = freshOrg();
  const room = 'react-stage';
  const producer = token({ org, sub: 'p', pub: true });
  const viewer = token({ org });
  await publish(server, producer, room, { type: 'stage', data: {}, state: { stage: 'queued' } });
  const { ctx, page, errors } = await openExample(room, viewer, 'realtime');
  const reads = [];
  page.on('request', (req) => {
    const path = new URL(req.url()).pathname;
    if (path.startsWith('/v1/rooms/')) reads.push(`${req.method()} ${path}`);
  });
  await untilStatus(page, 'live');
  await untilTimeline(page, 1);
  const stage = (s) => until(page, (s) => document.querySelector('#stage')?.textContent === s, s, { what: `stage ${s}` });
  await stage('queued');
  const before = reads.length;
  for (const [i, s] of ['transcribing', 'diarizing', 'summarizing'].entries()) {
    await publish(server, producer, room, { type: 'stage', data: { i }, state: { stage: s, progress: i / 3 } });
    await stage(s);
  }
  await publish(server, producer, room, { type: 'done', state: { stage: 'done', progress: null }, status: 'completed' });
  await stage('done');
  await untilTimeline(page, 5);
  assert.equal(await counter(page, 'push'), 4, 'the four events came by push');
  assert.deepEqual(reads.slice(before), [], 'no REST read (snapshot or poll) after the subscription');
  const shown = await page.evaluate(() => {
    const sub = globalThis.roomcast.client.subscription('react-stage');
    return { state: sub.state, status: sub.status };
  });
  assert.deepEqual(shown, { state: { stage: 'done' }, status: 'completed' });
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('a page load shows Connecting and Loading, then Live with the events: never Offline (issue 26, item 3)', async () => {
  const org = freshOrg();
  const room = 'react-connecting';
  const producer = token({ org, sub: 'p', pub: true });
  const viewer = token({ org });
  await publishN(server, producer, room, 3);
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await ctx.newPage();
  // Every status the badge shows and whether Loading was shown, from the
  // first render on.
  await page.addInitScript(() => {
    const seen = { statuses: [], loading: false };
    globalThis.__seen = seen;
    new MutationObserver(() => {
      const s = document.querySelector('#status')?.dataset.status;
      if (s && seen.statuses[seen.statuses.length - 1] !== s) seen.statuses.push(s);
      if (document.querySelector('#loading')) seen.loading = true;
    }).observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
  });
  const q = new URLSearchParams({ token: viewer, room, mode: 'realtime', dev: '1', ...FAST });
  await page.goto(`${front.url}/?${q}`);
  await untilStatus(page, 'live');
  await untilTimeline(page, 3);
  const seen = await page.evaluate(() => globalThis.__seen);
  assert.deepEqual(seen.statuses, ['connecting', 'live'], JSON.stringify(seen));
  assert.equal(seen.loading, true, 'Loading was shown before the subscription was answered');
  assert.equal(await page.$('#loading'), null);
  await ctx.close();
});

test('usePresence with two pages: each lists both members, a closed page leaves; two speakers\' partials both shown (issue 26, item 4)', async () => {
  const org = freshOrg();
  const room = 'react-people';
  const producer = token({ org, sub: 'p', pub: true });
  const alice = token({ org, sub: 'alice', info: { name: 'Alice' } });
  const bob = token({ org, sub: 'bob', info: { name: 'Bob' } });
  await publishN(server, producer, room, 1);
  const a = await openExample(room, alice, 'realtime', { presence: '1' });
  const b = await openExample(room, bob, 'realtime', { presence: '1' });
  const members = (page) => page.$$eval('#members li', (lis) => lis.map((li) => `${li.dataset.sub}:${li.textContent}`).sort());
  const untilMembers = (page, want) =>
    until(page, (w) => [...document.querySelectorAll('#members li')].map((li) => `${li.dataset.sub}:${li.textContent}`).sort().join(',') === w, want.join(','), { what: `members ${want}` });
  for (const { page } of [a, b]) await untilMembers(page, ['alice:Alice', 'bob:Bob']);
  // The room's events are there too: one subscription serves both hooks.
  await untilTimeline(a.page, 1);
  assert.equal((await gauges()).subscriptions >= 2, true);

  // Partial transcripts keyed by speaker: both shown, each its latest.
  const partial = (key, text) => publish(server, producer, room, { type: 'transcript.partial', ephemeral: true, key, data: { text } });
  await partial('spk-1', 'hello');
  await partial('spk-2', 'good morn');
  await partial('spk-1', 'hello every');
  const partials = (page) => page.$$eval('#partials li', (lis) => lis.map((li) => `${li.dataset.key}=${li.querySelector('i').textContent}`).sort());
  await until(a.page, () => document.querySelectorAll('#partials li').length === 2 && document.querySelector('#partials li[data-key="spk-1"] i')?.textContent === 'hello every', null, { what: 'two partials' });
  assert.deepEqual(await partials(a.page), ['spk-1=hello every', 'spk-2=good morn']);

  await b.ctx.close();
  await untilMembers(a.page, ['alice:Alice']);
  assert.deepEqual(await members(a.page), ['alice:Alice']);
  assert.deepEqual(a.errors, []);
  await a.ctx.close();
});

test('useRoom({mode: "polling"}) long-polls that room only: the client stays realtime and its room list live over the socket (issue 26, item 5)', async () => {
  const org = freshOrg();
  const room = 'react-room-polls';
  const producer = token({ org, sub: 'p', pub: true });
  const viewer = token({ org });
  await publishN(server, producer, room, 2);
  const { ctx, page, errors, sockets } = await openExample(room, viewer, 'realtime', { roomPolling: '1' });
  await untilStatus(page, 'live');
  await untilTimeline(page, 2);
  await untilSource(page, 'polling');
  await publishN(server, producer, room, 2, 'live', 3);
  await untilTimeline(page, 4);
  const mode = await page.evaluate(() => ({ mode: globalThis.roomcast.client.mode, transport: globalThis.roomcast.client.state.transport }));
  assert.deepEqual(mode, { mode: 'realtime', transport: 'websocket' }, 'the client keeps its own mode');
  assert.equal(await counter(page, 'push'), 0, 'no event of this room came by push');
  assert.ok((await counter(page, 'poll')) >= 2);
  assert.equal(sockets.length, 1, 'one socket (the room list)');
  await until(page, (r) => document.querySelector(`#rooms li[data-room="${r}"]`)?.dataset.head === '4', room, { what: 'the live room list at head 4' });
  assert.deepEqual(await timelineSeqs(page), range(1, 4));
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('useRoom({messages: true}): the room as it stands in one read, then each change once, across a mode switch (issue 28)', async () => {
  const org = freshOrg();
  const room = 'react-messages';
  const producer = token({ org, sub: 'p', pub: true });
  const viewer = token({ org });
  const pub = (body) => publish(server, producer, room, body);
  const s = (await pub({ type: 'summary', data: { text: '' } })).seq;
  for (let i = 0; i < 30; i++) await pub({ type: 'summary.delta', data: { text: `${i} ` }, appends: s });
  const { ctx, page, errors } = await openExample(room, viewer, 'realtime', { messages: '1' });
  await untilStatus(page, 'live');
  const summary = () => page.$eval('#messages li[data-seq="1"] .text', (el) => el.textContent).catch(() => null);
  const want = Array.from({ length: 30 }, (_, i) => `${i} `).join('');
  await until(page, (w) => document.querySelector('#messages li[data-seq="1"] .text')?.textContent === w, want, { what: 'the summary as it stands' });
  assert.equal(await counter(page, 'push') + await counter(page, 'catchup'), 0, 'no change replayed');
  await pub({ type: 'summary.delta', data: { text: 'end.' }, appends: s });
  await until(page, (w) => document.querySelector('#messages li[data-seq="1"] .text')?.textContent === w, `${want}end.`, { what: 'a live append' });
  await page.click('#mode [data-mode="polling"]');
  await untilSource(page, 'polling');
  await pub({ type: 'summary.delta', data: { text: '!' }, appends: s });
  await until(page, (w) => document.querySelector('#messages li[data-seq="1"] .text')?.textContent === w, `${want}end.!`, { what: 'an append while polling' });
  assert.equal(await counter(page, 'duplicates'), 0);
  assert.equal(await summary(), `${want}end.!`);
  assert.deepEqual(errors, []);
  await ctx.close();
});
