// The dashboard through a bad network: offline and back, a half-open socket
// found by the watchdog (fake clock), auto mode falling back to long-poll and
// returning, and a proxy that loses and duplicates frames. Screenshots of the
// Offline and Delayed badges are saved here (Live in dashboard.test.js).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  Server, clientState, dashboardUrl, freshOrg, launch, newContext, publish, publishN, range, screenshot,
  sleep, timelineSeqs, timelineSources, token, until, untilStatus, untilTimeline,
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

const transportIs = (t) => globalThis.roomcast.client.state.transport === t && globalThis.roomcast.client.state.status === 'live';

test('offline then back online: Offline with the last update time, then Live with every missed event once', async () => {
  const org = freshOrg();
  const room = 'offline';
  const producer = token({ org, sub: 'p', pub: true });
  await publishN(server, producer, room, 2);
  const ctx = await newContext(browser, { mode: 'realtime' });
  const page = await ctx.newPage();
  await page.goto(dashboardUrl(server, token({ org }), room));
  await untilStatus(page, 'live');
  await untilTimeline(page, 2);

  await ctx.setOffline(true);
  await untilStatus(page, 'offline', { timeout: 5000 });
  assert.match(await page.textContent('#status'), /^Offline · last update \d\d:\d\d:\d\d$/);
  await screenshot(page, 'dashboard-offline.png');

  await publishN(server, producer, room, 3, 'while.offline', 3);
  await sleep(500);
  assert.deepEqual(await timelineSeqs(page), [1, 2], 'nothing arrives while offline');
  assert.equal((await clientState(page)).status, 'offline');

  await ctx.setOffline(false);
  await untilStatus(page, 'live', { timeout: 10000 });
  await untilTimeline(page, 5);
  assert.deepEqual(await timelineSeqs(page), range(1, 5));
  const sources = await timelineSources(page);
  for (const seq of [3, 4, 5]) assert.equal(sources[seq], 'catchup');
  const s = await clientState(page);
  assert.equal(s.counts.reconnects, 1);
  assert.equal(s.counts.duplicates, 0);
  await ctx.close();
});

test('half-open socket: the watchdog (on a fake clock) shows Delayed, replaces the socket and recovers', async () => {
  const org = freshOrg();
  const room = 'half-open';
  const producer = token({ org, sub: 'p', pub: true });
  await publishN(server, producer, room, 1);
  const ctx = await newContext(browser, { mode: 'realtime' });
  const page = await ctx.newPage();
  // The first connection goes half-open on demand: frames in both directions
  // are swallowed, and nothing closes (the server still gets its protocol pongs).
  let halfOpen = false;
  let connections = 0;
  await page.routeWebSocket(/\/v1\/ws/, (ws) => {
    const n = ++connections;
    const srv = ws.connectToServer();
    const dead = () => halfOpen && n === 1;
    ws.onMessage((m) => { if (!dead()) srv.send(m); });
    srv.onMessage((m) => { if (!dead()) ws.send(m); });
  });
  await page.clock.install();
  await page.goto(dashboardUrl(server, token({ org }), room));
  await untilStatus(page, 'live');
  await untilTimeline(page, 1);

  halfOpen = true;
  await publishN(server, producer, room, 2, 'unseen', 2);
  // A ping goes out after heartbeat_ms (15 s) of silence; unanswered for 5 s: Delayed.
  await page.clock.runFor(22000);
  await untilStatus(page, 'delayed', { timeout: 5000 });
  const delayed = await clientState(page);
  assert.equal(delayed.transport, 'websocket');
  assert.ok(delayed.delayMs >= 5000, `delay ${delayed.delayMs} ms`);
  assert.match(await page.textContent('#status'), /^Delayed \d+ s$/);
  assert.deepEqual(await timelineSeqs(page), [1]);
  assert.equal(connections, 1, 'not replaced yet');
  await screenshot(page, 'dashboard-delayed.png');

  // Unanswered for twice the pong timeout: the socket is dead and replaced.
  await page.clock.runFor(6000);
  await untilStatus(page, 'live', { timeout: 10000 });
  await untilTimeline(page, 3);
  assert.equal(connections, 2);
  assert.deepEqual(await timelineSeqs(page), range(1, 3));
  const sources = await timelineSources(page);
  assert.equal(sources[2], 'catchup');
  assert.equal(sources[3], 'catchup');
  const s = await clientState(page);
  assert.equal(s.counts.reconnects, 1);
  assert.equal(s.counts.duplicates, 0);
  await ctx.close();
});

test('back to the page (visibilitychange): a ping at once, so a dead socket is replaced without waiting for the heartbeat', async () => {
  const org = freshOrg();
  const room = 'visible-again';
  const producer = token({ org, sub: 'p', pub: true });
  await publishN(server, producer, room, 1);
  const ctx = await newContext(browser, { mode: 'realtime' });
  const page = await ctx.newPage();
  let halfOpen = false;
  let connections = 0;
  const pings = [];
  await page.routeWebSocket(/\/v1\/ws/, (ws) => {
    const n = ++connections;
    const srv = ws.connectToServer();
    const dead = () => halfOpen && n === 1;
    ws.onMessage((m) => {
      if (JSON.parse(String(m)).op === 'ping') pings.push(n);
      if (!dead()) srv.send(m);
    });
    srv.onMessage((m) => { if (!dead()) ws.send(m); });
  });
  await page.clock.install();
  await page.goto(dashboardUrl(server, token({ org }), room));
  await untilStatus(page, 'live');
  halfOpen = true; // e.g. the laptop slept and the network changed meanwhile
  await publishN(server, producer, room, 1, 'missed', 2);
  assert.deepEqual(pings, []);
  await page.evaluate(() => document.dispatchEvent(new Event('visibilitychange')));
  // Well before the 15 s heartbeat: the ping goes out at once.
  const t0 = Date.now();
  while (pings.length === 0 && Date.now() - t0 < 3000) await sleep(20);
  assert.deepEqual(pings, [1]);
  await page.clock.runFor(11000);
  await untilStatus(page, 'live', { timeout: 10000 });
  await untilTimeline(page, 2);
  assert.equal(connections, 2);
  assert.deepEqual(await timelineSeqs(page), [1, 2]);
  await ctx.close();
});

test('auto mode falls back to long-poll when WebSocket is blocked, and returns when it is allowed', async () => {
  const org = freshOrg();
  const room = 'auto';
  const producer = token({ org, sub: 'p', pub: true });
  await publishN(server, producer, room, 1);
  const ctx = await newContext(browser, { mode: 'auto' });
  const page = await ctx.newPage();
  let blocked = true;
  let attempts = 0;
  await page.routeWebSocket(/\/v1\/ws/, (ws) => {
    attempts += 1;
    if (blocked) {
      ws.close({ code: 4403, reason: 'blocked by a proxy' });
      return;
    }
    ws.connectToServer();
  });
  await page.clock.install();
  await page.goto(dashboardUrl(server, token({ org }), room));
  await until(page, transportIs, 'longpoll', { what: 'long-poll, live', timeout: 10000 });
  assert.equal(attempts, 3, 'three WebSocket attempts failed before the fallback');
  await untilTimeline(page, 1);
  await sleep(200);
  await publish(server, producer, room, { type: 'by.poll', data: {} });
  await untilTimeline(page, 2);
  assert.equal((await timelineSources(page))[2], 'poll');
  assert.equal(await page.getAttribute('#mode button[data-mode="auto"]', 'aria-checked'), 'true');

  // Still blocked: a probe fails and polling goes on.
  await page.clock.fastForward(31000);
  await until(page, () => true);
  await sleep(300);
  assert.equal(attempts, 4, 'one probe');
  assert.equal((await clientState(page)).transport, 'longpoll');

  blocked = false;
  await page.clock.fastForward(31000);
  await until(page, transportIs, 'websocket', { what: 'back on WebSocket', timeout: 10000 });
  await publish(server, producer, room, { type: 'by.push', data: {} });
  await untilTimeline(page, 3);
  assert.deepEqual(await timelineSeqs(page), range(1, 3));
  assert.equal((await timelineSources(page))[3], 'push');
  const s = await clientState(page);
  assert.equal(s.counts.duplicates, 0);
  assert.equal(s.counts.gaps, 0);
  await ctx.close();
});

test('auto mode: a proxy that accepts the upgrade but passes nothing is left after the connect timeout', async () => {
  const org = freshOrg();
  const room = 'silent-proxy';
  const producer = token({ org, sub: 'p', pub: true });
  await publishN(server, producer, room, 2);
  const ctx = await newContext(browser, { mode: 'auto' });
  const page = await ctx.newPage();
  // Never connects to the server: the socket opens, and nothing ever comes.
  await page.routeWebSocket(/\/v1\/ws/, () => {});
  await page.clock.install();
  await page.goto(dashboardUrl(server, token({ org }), room));
  await sleep(500);
  const before = await clientState(page);
  assert.equal(before.transport, 'websocket');
  assert.notEqual(before.status, 'live');
  await page.clock.runFor(11000);
  await until(page, transportIs, 'longpoll', { what: 'long-poll after the connect timeout', timeout: 10000 });
  await untilTimeline(page, 2);
  assert.deepEqual(await timelineSeqs(page), [1, 2]);
  await ctx.close();
});

test('a proxy that loses one frame and duplicates others: gaps repaired, duplicates dropped, exactly 1..N', async () => {
  const org = freshOrg();
  const room = 'lossy';
  const producer = token({ org, sub: 'p', pub: true });
  const ctx = await newContext(browser, { mode: 'realtime' });
  const page = await ctx.newPage();
  let lost = 0;
  await page.routeWebSocket(/\/v1\/ws/, (ws) => {
    const srv = ws.connectToServer();
    srv.onMessage((m) => {
      const f = JSON.parse(String(m));
      if (f.op === 'event' && f.seq === 3 && lost === 0) {
        lost += 1;
        return;
      }
      ws.send(m);
      if (f.op === 'event' && f.seq % 2 === 0) ws.send(m);
    });
  });
  await page.goto(dashboardUrl(server, token({ org }), room));
  await untilStatus(page, 'live');
  await publishN(server, producer, room, 8);
  await untilTimeline(page, 8);
  await sleep(300);
  assert.equal(lost, 1);
  assert.deepEqual(await timelineSeqs(page), range(1, 8));
  const s = await clientState(page);
  assert.ok(s.counts.gaps >= 1, `gaps repaired: ${s.counts.gaps}`);
  assert.ok(s.counts.duplicates >= 3, `duplicates dropped: ${s.counts.duplicates}`);
  assert.equal(await page.textContent('#count-gaps'), String(s.counts.gaps));
  assert.equal(await page.textContent('#count-duplicates'), String(s.counts.duplicates));
  assert.equal(s.status, 'live');
  await ctx.close();
});
