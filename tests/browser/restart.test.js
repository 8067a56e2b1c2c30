// The server dies under the page: kill -9 and a restart on the same port and
// database, while another instance keeps committing events. The timeline must
// end with exactly the room's events: no gap, no duplicate. And a graceful
// restart (SIGTERM, close 1001) spreads the reconnects.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  Server, clientState, dashboardUrl, freshOrg, launch, newContext, publishN, range,
  timelineSeqs, token, until, untilStatus, untilTimeline,
} from './harness.js';

let server;
let browser;

before(async () => {
  [server, browser] = await Promise.all([Server.start(), launch()]);
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** The room's events as the server stores them (REST poll from 0). */
async function storedSeqs(srv, tok, room) {
  const res = await fetch(`${srv.url}/v1/rooms/${room}/events?since=0&limit=1000`, { headers: { authorization: `Bearer ${tok}` } });
  const body = await res.json();
  return body.events.map((e) => e.seq);
}

for (const mode of ['realtime', 'polling']) {
  test(`kill -9 of the server and a restart (${mode}): exactly the room's events, no gap, no duplicate`, async () => {
    const org = freshOrg();
    const room = `restart-${mode}`;
    const producer = token({ org, sub: 'p', pub: true });
    const viewer = token({ org });
    await publishN(server, producer, room, 5);
    const ctx = await newContext(browser, { mode });
    const page = await ctx.newPage();
    await page.clock.install();
    await page.goto(dashboardUrl(server, viewer, room));
    await untilStatus(page, 'live');
    await untilTimeline(page, 5);

    await server.kill9();
    await untilStatus(page, 'delayed', { timeout: 5000 });
    // Another instance on the same database commits while this one is dead.
    const other = await Server.start();
    await publishN(other, producer, room, 5, 'while.dead', 6);
    await other.stop();
    assert.equal((await timelineSeqs(page)).length, 5);

    await server.restart();
    await publishN(server, producer, room, 2, 'after.restart', 11);
    // Whatever backoff window the client is in, its retry is due within 20 s.
    await page.clock.fastForward(21000);
    await untilStatus(page, 'live', { timeout: 10000 });
    await untilTimeline(page, 12);
    await publishN(server, producer, room, 1, 'live.again', 13);
    await untilTimeline(page, 13);

    const seqs = await timelineSeqs(page);
    assert.deepEqual(seqs, range(1, 13));
    assert.deepEqual(seqs, await storedSeqs(server, viewer, room));
    const s = await clientState(page);
    assert.equal(s.counts.duplicates, 0);
    assert.ok(s.counts.reconnects >= 1, `reconnects ${s.counts.reconnects}`);
    assert.equal(s.transport, mode === 'polling' ? 'longpoll' : 'websocket');
    await ctx.close();
  });
}

test('graceful restart (close 1001): reconnects are spread over a window of seconds, then resume', async () => {
  const org = freshOrg();
  const room = 'going-away';
  const producer = token({ org, sub: 'p', pub: true });
  await publishN(server, producer, room, 2);
  const ctx = await newContext(browser, { mode: 'realtime' });
  const page = await ctx.newPage();
  await page.clock.install();
  await page.goto(dashboardUrl(server, token({ org }), room));
  await untilStatus(page, 'live');
  await page.evaluate(() => {
    globalThis.reconnecting = [];
    globalThis.roomcast.client.on('reconnecting', (r) => globalThis.reconnecting.push(r));
  });

  await server.stop(); // SIGTERM: every WebSocket is closed with 1001
  const first = await until(page, () => globalThis.reconnecting[0], null, { what: 'a reconnect scheduled' });
  assert.equal(first.reason, 'server going away');
  assert.equal(first.windowMs, 4000, 'a going-away close draws its delay from a 4 s window');
  assert.ok(first.delayMs >= 0 && first.delayMs < 4000);

  await server.restart();
  await publishN(server, producer, room, 1, 'after', 3);
  await page.clock.fastForward(21000);
  await untilStatus(page, 'live', { timeout: 10000 });
  await untilTimeline(page, 3);
  assert.deepEqual(await timelineSeqs(page), [1, 2, 3]);
  await ctx.close();
});
