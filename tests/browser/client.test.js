// The client module on its own (imported from /client.js into a page of the
// real server): full-jitter backoff on a fake clock, the token provider and
// `op: auth` renewal, and `reset` on WebSocket and on long-poll (a cursor
// beyond the head, and one that fell out of the retention).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Server, dashboardUrl, freshOrg, launch, newContext, publishN, sleep, token, until } from './harness.js';

let server;
let browser;

before(async () => {
  [server, browser] = await Promise.all([Server.start(), launch()]);
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A page of the server's origin, where `/client.js` can be imported. */
async function blankPage(ctx) {
  const page = await ctx.newPage();
  await page.goto(`${server.url}/healthz`);
  return page;
}

test('backoff: full jitter, 0.5 s window doubling to 20 s, never retried early, spread across clients (fake clock)', async () => {
  const ctx = await browser.newContext();
  // WebSocket refused every time.
  await ctx.routeWebSocket(/\/v1\/ws/, (ws) => ws.close({ code: 4403, reason: 'refused' }));
  const page = await blankPage(ctx);
  await page.clock.install();
  const org = freshOrg();
  const tokens = Array.from({ length: 8 }, (_, i) => token({ org, sub: `c${i}` }));
  await page.evaluate(async (tokens) => {
    // Record when each client really opens a socket (page time).
    globalThis.opens = [];
    const Native = globalThis.WebSocket;
    globalThis.WebSocket = class extends Native {
      constructor(url, protocols) {
        super(url, protocols);
        const t = new URL(url).searchParams.get('token');
        globalThis.opens.push({ client: globalThis.tokens.indexOf(t), at: Date.now() });
      }
    };
    globalThis.tokens = tokens;
    globalThis.log = [];
    const { RoomcastClient } = await import('/client.js');
    globalThis.clients = tokens.map((t, i) => {
      const c = new RoomcastClient({ token: t, mode: 'realtime' });
      c.on('reconnecting', (r) => globalThis.log.push({ client: i, at: Date.now(), ...r }));
      return c;
    });
  }, tokens);

  const rounds = 8;
  for (let k = 0; k < rounds; k++) {
    // Every client has scheduled its retry number k; then run the clock past any window.
    await until(page, (k) => globalThis.clients.every((_, i) => globalThis.log.filter((e) => e.client === i).length > k), k, { what: `retry ${k} of every client` });
    await page.clock.runFor(20000);
  }
  await until(page, (n) => globalThis.opens.length >= n, 8 * (rounds + 1), { what: 'the last attempts' });
  const { log, opens } = await page.evaluate(() => ({ log: globalThis.log, opens: globalThis.opens }));

  for (let i = 0; i < 8; i++) {
    const mine = log.filter((e) => e.client === i);
    const myOpens = opens.filter((o) => o.client === i);
    for (let k = 0; k < rounds; k++) {
      const e = mine[k];
      assert.equal(e.attempt, k);
      assert.equal(e.windowMs, Math.min(20000, 500 * 2 ** k), `client ${i} retry ${k}`);
      assert.ok(e.delayMs >= 0 && e.delayMs < e.windowMs, `delay ${e.delayMs} in [0, ${e.windowMs})`);
      // The attempt after retry k is the (k+2)th socket; never before its delay.
      const open = myOpens[k + 1];
      assert.ok(open, `client ${i} opened after retry ${k}`);
      assert.ok(open.at >= e.at + e.delayMs, `client ${i} retry ${k}: opened at +${open.at - e.at} ms, delay ${e.delayMs} ms`);
    }
  }
  // Jitter: at the 16 s window the eight clients do not come back together.
  const delays = log.filter((e) => e.attempt === 5).map((e) => e.delayMs);
  assert.equal(delays.length, 8);
  assert.ok(Math.max(...delays) - Math.min(...delays) > 2000, `delays spread: ${delays}`);
  assert.ok(new Set(delays).size >= 6, `delays differ: ${delays}`);
  await ctx.close();
});

test('token provider: called again before expiry and sent as op:auth, the socket stays up past the first exp', async () => {
  const org = freshOrg();
  const room = 'auth';
  const producer = token({ org, sub: 'p', pub: true });
  const ctx = await browser.newContext();
  const page = await blankPage(ctx);
  let minted = 0;
  await page.exposeFunction('mintToken', () => {
    minted += 1;
    return token({ org, sub: 'renewing', ttl: 3 });
  });
  const sent = [];
  page.on('websocket', (ws) => ws.on('framesent', (f) => sent.push(JSON.parse(String(f.payload)).op)));
  await page.evaluate(async (room) => {
    const { RoomcastClient } = await import('/client.js');
    globalThis.got = [];
    globalThis.closes = [];
    globalThis.client = new RoomcastClient({ token: () => globalThis.mintToken(), mode: 'realtime' });
    globalThis.client.on('reconnecting', (r) => globalThis.closes.push(r.reason));
    globalThis.client.subscribe(room, { since: 0, onEvent: (e) => globalThis.got.push(e.seq) });
  }, room);
  await until(page, () => globalThis.client.state.status === 'live', null, { what: 'live' });
  // Past the first token's expiry (3 s; the server closes with 4001 at exp).
  await sleep(4500);
  await publishN(server, producer, room, 2);
  await until(page, () => globalThis.got.length === 2, null, { what: 'two events' });
  const state = await page.evaluate(() => ({ s: globalThis.client.state, closes: globalThis.closes }));
  assert.deepEqual(state.closes, [], 'no reconnect: the token was renewed in place');
  assert.equal(state.s.counts.reconnects, 0);
  assert.ok(minted >= 2, `provider called ${minted} times`);
  assert.ok(sent.includes('auth'), `frames sent: ${sent}`);
  await ctx.close();
});

test('token expired on the socket (4001): a fresh token from the provider and a resume from the cursor', async () => {
  const org = freshOrg();
  const room = 'auth-expired';
  const producer = token({ org, sub: 'p', pub: true });
  await publishN(server, producer, room, 1);
  const ctx = await browser.newContext();
  const page = await blankPage(ctx);
  let minted = 0;
  // The provider answers 2 s tokens, and the client is told to renew only in the
  // last 10 ms: the server closes with 4001 first.
  await page.exposeFunction('mintToken', () => {
    minted += 1;
    return token({ org, sub: 'short', ttl: minted === 1 ? 2 : 3600 });
  });
  await page.evaluate(async (room) => {
    const { RoomcastClient } = await import('/client.js');
    globalThis.got = [];
    globalThis.reasons = [];
    globalThis.client = new RoomcastClient({ token: () => globalThis.mintToken(), mode: 'realtime' });
    globalThis.client._scheduleAuth = () => {}; // no renewal in place: exercise the 4001 path
    globalThis.client.on('reconnecting', (r) => globalThis.reasons.push(r.reason));
    globalThis.client.subscribe(room, { since: 0, onEvent: (e) => globalThis.got.push(e.seq) });
  }, room);
  await until(page, () => globalThis.got.length === 1, null, { what: 'first event' });
  await until(page, () => globalThis.reasons.includes('token expired'), null, { what: 'close 4001', timeout: 6000 });
  await publishN(server, producer, room, 2, 'after', 2);
  await until(page, () => globalThis.got.length === 3 && globalThis.client.state.status === 'live', null, { what: 'resumed' });
  assert.deepEqual(await page.evaluate(() => globalThis.got), [1, 2, 3]);
  assert.equal(minted, 2, 'one fresh token after 4001');
  await ctx.close();
});

test('unsubscribe and subscribe again on the same socket: the new subscription gets only its own frames', async () => {
  const org = freshOrg();
  const producer = token({ org, sub: 'p', pub: true });
  await publishN(server, producer, 'again', 30);
  const ctx = await browser.newContext();
  const page = await blankPage(ctx);
  await page.evaluate(async (tok) => {
    const { RoomcastClient } = await import('/client.js');
    globalThis.client = new RoomcastClient({ token: tok, mode: 'realtime' });
    await new Promise((r) => globalThis.client.on('connected', r));
    globalThis.first = [];
    globalThis.second = [];
    globalThis.client.subscribe('again', { since: 0, onEvent: (e) => globalThis.first.push(e.seq) });
    globalThis.client.unsubscribe('again');
    globalThis.sub = globalThis.client.subscribe('again', { since: 25, onEvent: (e) => globalThis.second.push(e.seq) });
  }, token({ org }));
  await until(page, () => globalThis.second.length === 5 && globalThis.client.state.status === 'live', null, { what: '26..30' });
  await publishN(server, producer, 'again', 1, 'next', 31);
  await until(page, () => globalThis.second.length === 6, null, { what: '31' });
  const r = await page.evaluate(() => ({ first: globalThis.first, second: globalThis.second, counts: globalThis.client.state.counts }));
  assert.deepEqual(r.first, []);
  assert.deepEqual(r.second, [26, 27, 28, 29, 30, 31]);
  assert.equal(r.counts.duplicates, 0);
  assert.equal(r.counts.gaps, 0);
  await ctx.close();
});

for (const mode of ['realtime', 'polling']) {
  test(`reset (${mode}): a cursor beyond the head resyncs from the snapshot and goes on from the head`, async () => {
    const org = freshOrg();
    const room = `reset-${mode}`;
    const producer = token({ org, sub: 'p', pub: true });
    await publishN(server, producer, room, 3);
    const ctx = await browser.newContext();
    const page = await blankPage(ctx);
    await page.evaluate(async ({ tok, room, mode }) => {
      const { RoomcastClient } = await import('/client.js');
      globalThis.got = [];
      globalThis.resets = [];
      globalThis.client = new RoomcastClient({ token: tok, mode });
      globalThis.sub = globalThis.client.subscribe(room, {
        since: 50,
        onEvent: (e) => globalThis.got.push(e.seq),
        onReset: (r) => globalThis.resets.push(r),
      });
    }, { tok: token({ org }), room, mode });
    await until(page, () => globalThis.resets.length === 1, null, { what: 'reset' });
    const reset = await page.evaluate(() => globalThis.resets[0]);
    assert.equal(reset.head, 3);
    assert.deepEqual(reset.state, {});
    await until(page, () => globalThis.client.state.status === 'live', null, { what: 'live' });
    await publishN(server, producer, room, 2, 'next', 4);
    await until(page, () => globalThis.got.length === 2, null, { what: 'events after the reset' });
    const after = await page.evaluate(() => ({ got: globalThis.got, cursor: globalThis.sub.cursor, counts: globalThis.client.state.counts }));
    assert.deepEqual(after.got, [4, 5]);
    assert.equal(after.cursor, 5);
    assert.equal(after.counts.gaps, 0);
    await ctx.close();
  });
}

for (const mode of ['realtime', 'polling']) {
  test(`retention (${mode}): a cursor whose events were pruned resyncs from the snapshot, then every later event once; the dashboard shows it`, async () => {
    const pruning = await Server.start({ env: { ROOMCAST_RETAIN_MAX_EVENTS: '3', ROOMCAST_PRUNE_EVERY: '100ms' } });
    try {
      const org = freshOrg();
      const room = `pruned-${mode}`;
      const producer = token({ org, sub: 'p', pub: true });
      await publishN(pruning, producer, room, 10);
      // Wait until the room keeps only 8..10.
      for (let i = 0; ; i++) {
        const res = await fetch(`${pruning.url}/v1/rooms/${room}`, { headers: { authorization: `Bearer ${token({ org })}` } });
        if ((await res.json()).first === 8) break;
        assert.ok(i < 200, 'the room was never pruned');
        await sleep(50);
      }
      const ctx = await browser.newContext();
      const page = await ctx.newPage();
      await page.goto(`${pruning.url}/healthz`);
      await page.evaluate(async ({ tok, room, mode }) => {
        const { RoomcastClient } = await import('/client.js');
        globalThis.got = [];
        globalThis.resets = [];
        globalThis.client = new RoomcastClient({ token: tok, mode });
        globalThis.sub = globalThis.client.subscribe(room, {
          since: 2,
          onEvent: (e) => globalThis.got.push(e.seq),
          onReset: (r) => globalThis.resets.push(r),
        });
      }, { tok: token({ org }), room, mode });
      await until(page, () => globalThis.resets.length === 1, null, { what: 'reset' });
      const reset = await page.evaluate(() => globalThis.resets[0]);
      assert.equal(reset.head, 10);
      assert.equal(reset.first, 8);
      await until(page, () => globalThis.client.state.status === 'live', null, { what: 'live' });
      await publishN(pruning, producer, room, 2, 'next', 11);
      await until(page, () => globalThis.got.length === 2, null, { what: 'events after the reset' });
      assert.deepEqual(await page.evaluate(() => globalThis.got), [11, 12]);
      await ctx.close();
      if (mode === 'polling') {
        // The dashboard, opened on the room from seq 0: it says why.
        const dctx = await newContext(browser, { mode: 'realtime' });
        const dash = await dctx.newPage();
        await dash.goto(dashboardUrl(pruning, token({ org }), room));
        await until(dash, () => [...document.querySelectorAll('#timeline li.marker')].some((li) => /no longer kept \(retention\)/.test(li.textContent)), null, { what: 'the retention marker' });
        await dctx.close();
      }
    } finally {
      await pruning.stop();
    }
  });
}

test('two live room lists on one client (in progress, completed): both live over the one socket, each its own filter; a failed read is an error (issue 26, item 5)', async () => {
  const ctx = await browser.newContext();
  const page = await blankPage(ctx);
  const org = freshOrg();
  const producer = token({ org, sub: 'p', pub: true });
  const publish = (room, body) =>
    fetch(`${server.url}/v1/rooms/${room}/events`, {
      method: 'POST',
      headers: { authorization: `Bearer ${producer}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    }).then((r) => assert.ok(r.status < 300, `publish ${r.status}`));
  await publish('call-1', { type: 'x' });
  await publish('call-2', { type: 'x' });
  await publish('call-3', { type: 'x', status: 'completed' });
  const reads = [];
  page.on('request', (req) => {
    const u = new URL(req.url());
    if (u.pathname === '/v1/rooms') reads.push(u.search);
  });
  await page.evaluate(async (tok) => {
    const { RoomcastClient } = await import('/client.js');
    const c = new RoomcastClient({ token: tok, mode: 'realtime' });
    globalThis.c = c;
    globalThis.lists = { live: [], done: [] };
    c.subscribeRooms({ status: 'in_progress' }, { onChange: (rs) => (globalThis.lists.live = rs.map((r) => r.room)) });
    c.subscribeRooms({ status: 'completed' }, { onChange: (rs) => (globalThis.lists.done = rs.map((r) => r.room)) });
  }, token({ org }));
  const lists = () => page.evaluate(() => JSON.stringify(globalThis.lists));
  const untilLists = async (want, what) => {
    const deadline = Date.now() + 3000; // pushed: well under the old 10 s re-read
    while ((await lists()) !== JSON.stringify(want)) {
      if (Date.now() > deadline) throw new Error(`${what}: ${await lists()}`);
      await sleep(50);
    }
  };
  await untilLists({ live: ['call-2', 'call-1'], done: ['call-3'] }, 'first lists');
  const first = reads.length;
  await publish('call-1', { type: 'done', status: 'completed' });
  await untilLists({ live: ['call-2'], done: ['call-1', 'call-3'] }, 'call-1 completed moves between the lists');
  await publish('call-4', { type: 'x' });
  await untilLists({ live: ['call-4', 'call-2'], done: ['call-1', 'call-3'] }, 'a new room shows at once');
  assert.equal(reads.length, first, `no REST re-read for the changes: ${reads}`);
  assert.equal(await page.evaluate(() => globalThis.c._roomLists.size), 2);

  // A list whose read fails says so (polling mode, /v1/rooms refused).
  await page.route(/\/v1\/rooms(\?|$)/, (route) =>
    route.fulfill({ status: 503, contentType: 'application/json', body: '{"error":{"code":"unavailable","message":"down"}}' }),
  );
  const err = await page.evaluate(
    () =>
      new Promise((resolve) => {
        const c = globalThis.c;
        c.setMode('polling');
        const l = c.subscribeRooms({ status: 'failed' });
        l.on('error', (e) => resolve(e.code));
      }),
  );
  assert.equal(err, 'unavailable');
  await ctx.close();
});

for (const mode of ['realtime', 'polling']) {
  test(`failover gap (${mode}): past a new timeline's gap every event once with no reset; a cursor inside it is reset`, async () => {
    // A database of its own: the move of every head is database-wide.
    const { execFileSync } = await import('node:child_process');
    // DATABASE_URL is a URL or a `key=value` connection string.
    const withDb = (db) => {
      const conn = process.env.DATABASE_URL;
      if (/^postgres(ql)?:/.test(conn)) {
        const u = new URL(conn);
        u.pathname = `/${db}`;
        return u.href;
      }
      return conn.replace(/dbname=\S+/, `dbname=${db}`);
    };
    const name = `rc_gap_${mode}_${Date.now()}`;
    const admin = { href: withDb('postgres') };
    execFileSync('psql', [admin.href, '-qc', `CREATE DATABASE ${name}`]);
    const own = { href: withDb(name) };
    const sql = (q) => execFileSync('psql', [own.href, '-qAtc', q]).toString().trim();
    const gapped = await Server.start({ env: { DATABASE_URL: own.href } });
    try {
      const org = freshOrg();
      const room = `gap-${mode}`;
      const producer = token({ org, sub: 'p', pub: true });
      await publishN(gapped, producer, room, 3);
      const ctx = await browser.newContext();
      const page = await ctx.newPage();
      await page.goto(`${gapped.url}/healthz`);
      await page.evaluate(async ({ tok, room, mode }) => {
        const { RoomcastClient } = await import('/client.js');
        globalThis.got = [];
        globalThis.resets = [];
        globalThis.client = new RoomcastClient({ token: tok, mode });
        globalThis.sub = globalThis.client.subscribe(room, {
          since: 0,
          onEvent: (e) => globalThis.got.push([e.seq, e.data]),
          onReset: (r) => globalThis.resets.push(r),
        });
        globalThis.inside = [];
        globalThis.other = new RoomcastClient({ token: tok, mode });
      }, { tok: token({ org }), room, mode });
      await until(page, () => globalThis.got.length === 3, null, { what: 'events 1-3' });
      // PostgreSQL on a timeline roomcast has not followed (as after a
      // promotion); a SQL producer's publish moves the heads.
      sql('UPDATE roomcast_timeline SET tli = 0');
      assert.equal(sql(`SELECT roomcast_publish('${org}', '${room}', 'tick', '4'::jsonb)`), '1000004');
      await publishN(gapped, producer, room, 1, 'tick', 5);
      await until(page, () => globalThis.got.length === 5, null, { what: 'events past the gap' });
      const seen = await page.evaluate(() => ({ got: globalThis.got, resets: globalThis.resets.length, cursor: globalThis.sub.cursor }));
      assert.deepEqual(seen.got.map(([s]) => s), [1, 2, 3, 1000004, 1000005]);
      assert.equal(seen.resets, 0);
      assert.equal(seen.cursor, 1000005);
      await page.evaluate((room) => {
        globalThis.other.subscribe(room, { since: 500, onReset: (r) => globalThis.inside.push(r.head) });
      }, room);
      await until(page, () => globalThis.inside.length === 1, null, { what: 'reset inside the gap' });
      assert.deepEqual(await page.evaluate(() => globalThis.inside), [1000005]);
      await ctx.close();
    } finally {
      await gapped.stop();
      try {
        execFileSync('psql', [admin.href, '-qc', `DROP DATABASE ${name} WITH (FORCE)`]);
      } catch {
        // left for the next run's cleanup
      }
    }
  });
}
