// The dashboard against the real server: events appear live and in order,
// the rooms list, the pipeline stepper, the mode toggle (remembered across a
// reload) and the Refresh button.

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

test('events published while the page is open appear in order, with the stage, the rooms and Live', async () => {
  const org = freshOrg();
  const room = 'meeting-live';
  const producer = token({ org, sub: 'pipeline', pub: true });
  // The room exists before the page opens: two events are history (catch-up).
  await publish(server, producer, room, { type: 'upload.started', data: { file: 'sync.m4a' }, state: { stage: 'upload', progress: 0 } });
  await publish(server, producer, room, { type: 'upload.progress', data: { progress: 0.5 }, state: { progress: 0.5 } });
  await publish(server, producer, 'other-room', { type: 'x', data: {} });

  const ctx = await newContext(browser, { mode: 'realtime' });
  const page = await ctx.newPage();
  await page.goto(dashboardUrl(server, token({ org }), room));
  await untilStatus(page, 'live');
  await untilTimeline(page, 2);

  const lines = ['Morning all.', 'The build is green.', 'Ship it behind a flag.'];
  await publish(server, producer, room, { type: 'diarization.completed', data: { speakers: ['Ana', 'Ben'] }, state: { stage: 'transcription', progress: 0 } });
  for (const [i, text] of lines.entries()) {
    await publish(server, producer, room, { type: 'transcript.segment', data: { speaker: 'Ana', text }, state: { progress: (i + 1) / 3 } });
  }
  await untilTimeline(page, 6);
  assert.deepEqual(await timelineSeqs(page), range(1, 6));
  const sources = await timelineSources(page);
  assert.equal(sources[1], 'catchup');
  assert.equal(sources[2], 'catchup');
  for (const seq of range(3, 6)) assert.equal(sources[seq], 'push', `seq ${seq} came by push`);
  // Newest first, with the text of the segment.
  assert.match(await page.textContent('#timeline li:first-child'), /Ship it behind a flag/);
  const counts = (await clientState(page)).counts;
  assert.equal(counts.push, 4);
  assert.equal(counts.catchup, 2);
  assert.equal(await page.textContent('#count-push'), '4');
  assert.equal(await page.textContent('#count-catchup'), '2');

  // The stepper follows the room's state (each event carries its patch).
  await until(page, () => document.querySelector('#stepper li[aria-current="step"]')?.dataset.stage === 'transcription', null, { what: 'stage transcription' });
  assert.deepEqual(
    await page.$$eval('#stepper li', (lis) => lis.map((li) => [li.dataset.stage, li.className])),
    [['upload', 'done'], ['transcription', 'current'], ['summary', 'todo'], ['completed', 'todo']],
  );

  // Rooms of the org (and only of the org), with heads.
  await until(page, (r) => [...document.querySelectorAll('#rooms li')].some((li) => li.dataset.room === r && li.textContent.includes('head 6')), room, { what: 'room listed with head 6' });
  const listed = await page.$$eval('#rooms li', (lis) => lis.map((li) => li.dataset.room).sort());
  assert.deepEqual(listed, ['meeting-live', 'other-room']);
  assert.match(await page.textContent('#last-update'), /last update \d+ s ago/);
  assert.equal(await page.textContent('#status'), 'Live');

  // An ephemeral (interim) event shows, and moves no cursor.
  await publish(server, producer, room, { type: 'transcript.partial', data: { text: 'and one more thi' }, ephemeral: true, key: 'spk-1' });
  await until(page, () => document.querySelector('#interim').textContent.includes('one more thi'), null, { what: 'interim text' });
  await publish(server, producer, room, { type: 'summary.ready', data: { summary: 'Ship it.' }, state: { stage: 'summary' } });
  await untilTimeline(page, 7);
  assert.deepEqual(await timelineSeqs(page), range(1, 7));
  const state = await clientState(page);
  assert.equal(state.counts.gaps, 0);
  assert.equal(state.counts.duplicates, 0);
  await until(page, () => document.querySelector('#stepper li[aria-current="step"]')?.dataset.stage === 'summary', null, { what: 'stage summary' });
  await until(page, (r) => document.querySelector(`#rooms li[data-room="${r}"]`)?.textContent.includes('head 7'), room, { what: 'room listed with head 7' });
  await screenshot(page, 'dashboard-live.png');

  // Completion marks every step done.
  await publish(server, producer, room, { type: 'meeting.completed', data: { duration_s: 52 }, state: { stage: 'completed' }, status: 'completed' });
  await untilTimeline(page, 8);
  await until(page, () => [...document.querySelectorAll('#stepper li')].every((li) => li.className === 'done'), null, { what: 'every step done' });
  await until(page, () => document.querySelector('#room-status').textContent === 'completed', null, { what: 'room completed' });
  await ctx.close();
});

test('mode toggle: polling reads by long-poll, the choice survives a reload, Real-time goes back to push', async () => {
  const org = freshOrg();
  const room = 'toggle';
  const producer = token({ org, sub: 'p', pub: true });
  await publishN(server, producer, room, 2);

  const ctx = await newContext(browser);
  const page = await ctx.newPage();
  await page.goto(dashboardUrl(server, token({ org }), room));
  await untilStatus(page, 'live');
  // Auto by default, on WebSocket. 'live' is the connection's: the room's
  // first two events may still be on their way (the transcript's view is
  // read before the room joins the socket). Toggling before they arrive
  // would have the poll read them, and the count below would be 3.
  assert.equal(await page.getAttribute('#mode button[data-mode="auto"]', 'aria-checked'), 'true');
  assert.equal((await clientState(page)).transport, 'websocket');
  await untilTimeline(page, 2);

  await page.click('#mode button[data-mode="polling"]');
  await until(page, () => globalThis.roomcast.client.state.transport === 'longpoll' && globalThis.roomcast.client.state.status === 'live', null, { what: 'long-poll, live' });
  await sleep(200); // the long-poll is waiting at the server
  await publish(server, producer, room, { type: 'polled', data: {} });
  await untilTimeline(page, 3);
  assert.equal((await timelineSources(page))[3], 'poll');
  assert.equal(await page.textContent('#count-poll'), '1');
  assert.equal(await page.textContent('#transport'), 'long-poll');

  // Remembered: the page comes back in Polling mode.
  await page.reload();
  await untilStatus(page, 'live');
  assert.equal(await page.getAttribute('#mode button[data-mode="polling"]', 'aria-checked'), 'true');
  assert.equal((await clientState(page)).transport, 'longpoll');
  assert.equal(await page.evaluate(() => localStorage.getItem('roomcast.mode')), 'polling');
  await untilTimeline(page, 3);
  assert.deepEqual(await timelineSeqs(page), range(1, 3));

  await page.click('#mode button[data-mode="realtime"]');
  await until(page, () => globalThis.roomcast.client.state.transport === 'websocket' && globalThis.roomcast.client.state.status === 'live', null, { what: 'websocket, live' });
  await publish(server, producer, room, { type: 'pushed', data: {} });
  await untilTimeline(page, 4);
  assert.deepEqual(await timelineSeqs(page), range(1, 4));
  assert.equal((await timelineSources(page))[4], 'push');
  const s = await clientState(page);
  assert.equal(s.mode, 'realtime');
  assert.equal(s.counts.duplicates + s.counts.gaps, 0);
  await ctx.close();
});

test('Refresh fetches from the cursor now (an event whose push was lost shows at once)', async () => {
  const org = freshOrg();
  const room = 'refresh';
  const producer = token({ org, sub: 'p', pub: true });
  await publishN(server, producer, room, 1);

  const ctx = await newContext(browser, { mode: 'realtime' });
  const page = await ctx.newPage();
  // A proxy that loses event frames while `lose` is set (pongs still pass).
  let lose = false;
  await page.routeWebSocket(/\/v1\/ws/, (ws) => {
    const srv = ws.connectToServer();
    srv.onMessage((m) => {
      if (lose && JSON.parse(String(m)).op === 'event') return;
      ws.send(m);
    });
  });
  await page.goto(dashboardUrl(server, token({ org }), room));
  await untilStatus(page, 'live');
  await untilTimeline(page, 1);

  lose = true;
  await publish(server, producer, room, { type: 'lost.push', data: {} });
  await sleep(700);
  assert.deepEqual(await timelineSeqs(page), [1], 'the push was lost on the way');
  lose = false;
  await page.click('#refresh');
  await untilTimeline(page, 2, { timeout: 5000 });
  assert.deepEqual(await timelineSeqs(page), [1, 2]);
  assert.equal((await timelineSources(page))[2], 'poll');

  // The socket goes on from the new cursor: the next push is not a gap.
  await publish(server, producer, room, { type: 'after', data: {} });
  await untilTimeline(page, 3);
  assert.deepEqual(await timelineSeqs(page), [1, 2, 3]);
  const s = await clientState(page);
  assert.equal(s.counts.gaps, 0);
  assert.equal(s.status, 'live');
  await ctx.close();
});

test('the room shows who is in it (presence) and who is typing', async () => {
  const org = freshOrg();
  const room = 'meeting-people';
  const producer = token({ org, sub: 'pipeline', pub: true });
  await publish(server, producer, room, { type: 'meeting.started', data: {} });
  const ctxA = await newContext(browser, { mode: 'realtime' });
  const pageA = await ctxA.newPage();
  await pageA.goto(dashboardUrl(server, token({ org, sub: 'dana', info: { name: 'Dana' } }), room));
  await untilStatus(pageA, 'live');
  await until(pageA, () => [...document.querySelectorAll('#members li')].map((li) => li.textContent).join(',') === 'Dana', null, { what: 'Dana alone' });
  // Another member opens the room: both pages show both.
  const ctxB = await newContext(browser, { mode: 'realtime' });
  const pageB = await ctxB.newPage();
  await pageB.goto(dashboardUrl(server, token({ org, sub: 'eli', info: { name: 'Eli' } }), room));
  const both = () => [...document.querySelectorAll('#members li')].map((li) => li.textContent).sort().join(',') === 'Dana,Eli';
  await until(pageA, both, null, { what: 'Dana and Eli on page A' });
  await until(pageB, both, null, { what: 'Dana and Eli on page B' });
  // Typing: an ephemeral event keyed by member.
  await publish(server, producer, room, { type: 'typing', data: { name: 'Eli' }, ephemeral: true, key: 'eli' });
  await until(pageA, () => /Eli is typing/.test(document.querySelector('#typing').textContent), null, { what: 'Eli is typing' });
  await screenshot(pageA, 'dashboard-presence.png');
  // Eli leaves (closes the page): after the 2 s grace Dana is alone again.
  await ctxB.close();
  await until(pageA, () => [...document.querySelectorAll('#members li')].map((li) => li.textContent).join(',') === 'Dana', null, { what: 'Eli gone', timeout: 10000 });
  await ctxA.close();
});

test('the rooms list is live: a new room, a head that moves and a room that completes show without a reload', async () => {
  const org = freshOrg();
  const producer = token({ org, sub: 'pipeline', pub: true });
  await publish(server, producer, 'board-a', { type: 'x', data: {} });
  const ctx = await newContext(browser, { mode: 'realtime' });
  const page = await ctx.newPage();
  await page.goto(dashboardUrl(server, token({ org }), 'board-a'));
  await untilStatus(page, 'live');
  const roomsShown = () => [...document.querySelectorAll('#rooms li')].map((li) => `${li.dataset.room}:${li.querySelector('.meta').textContent.split(' · ')[0]}:${li.querySelector('.rstatus').textContent}`).sort().join('|');
  await until(page, (want) => [...document.querySelectorAll('#rooms li')].length === 1, null, { what: 'one room' });
  const reloads = await page.evaluate(() => performance.getEntriesByType('navigation').length);
  await publish(server, producer, 'board-b', { type: 'x', data: {} });
  await publish(server, producer, 'board-a', { type: 'y', data: {} });
  await publish(server, producer, 'board-b', { type: 'done', data: {}, status: 'completed' });
  await until(page, (f) => new Function(`return (${f})()`)() === 'board-a:head 2:in progress|board-b:head 2:completed', roomsShown.toString(), { what: 'the live list' });
  assert.equal(await page.evaluate(() => performance.getEntriesByType('navigation').length), reloads);
  await ctx.close();
});

test('the transcript as it stands: a corrected line marked edited, a deleted one gone, the summary streamed as appends (issue 28)', async () => {
  const org = freshOrg();
  const room = 'meeting-versions';
  const producer = token({ org, sub: 'pipeline', pub: true });
  const pub = (body) => publish(server, producer, room, body);
  const a = (await pub({ type: 'transcript.segment', data: { speaker: 'Ana', text: 'Morning al' } })).seq;
  const b = (await pub({ type: 'transcript.segment', data: { speaker: 'Ben', text: 'uh' } })).seq;
  const c = (await pub({ type: 'transcript.segment', data: { speaker: 'Ben', text: "I'll write the notes." } })).seq;
  await pub({ type: 'transcript.segment', data: { speaker: 'Ana', text: 'Morning all.' }, updates: a });
  await pub({ type: 'transcript.deleted', deletes: b });
  const s = (await pub({ type: 'summary', data: { text: '' } })).seq;
  for (const w of ['Notes ', 'by ']) await pub({ type: 'summary.delta', data: { text: w }, appends: s });

  const ctx = await newContext(browser, { mode: 'realtime' });
  const page = await ctx.newPage();
  const views = [];
  page.on('request', (req) => {
    if (req.url().includes('view=latest')) views.push(req.url());
  });
  await page.goto(dashboardUrl(server, token({ org }), room));
  await untilStatus(page, 'live');
  const transcript = () =>
    page.$$eval('#transcript li', (lis) => lis.map((li) => `${li.dataset.seq}|${li.querySelector('.who').textContent}|${li.querySelector('.text').textContent}|${li.classList.contains('is-edited') ? 'edited' : ''}`));
  const untilTranscript = async (want) => {
    const deadline = Date.now() + 10000;
    let got;
    while (JSON.stringify((got = await transcript())) !== JSON.stringify(want)) {
      if (Date.now() > deadline) throw new Error(`transcript: ${JSON.stringify(got)}`);
      await sleep(50);
    }
  };
  await untilTranscript([`${a}|Ana|Morning all.|edited`, `${c}|Ben|I'll write the notes.|`, `${s}|Summary|Notes by |edited`]);
  assert.equal(views.length, 1, `the room as it stands is read once: ${views}`);
  // Live: the summary streams on, a line is corrected.
  await pub({ type: 'summary.delta', data: { text: 'Ben.' }, appends: s });
  await pub({ type: 'transcript.segment', data: { speaker: 'Chen', text: "I'll write the notes." }, updates: c });
  await untilTranscript([`${a}|Ana|Morning all.|edited`, `${c}|Chen|I'll write the notes.|edited`, `${s}|Summary|Notes by Ben.|edited`]);
  // The timeline still shows every event once, and the head follows it.
  await untilTimeline(page, 10);
  assert.deepEqual(await timelineSeqs(page), range(1, 10));
  await until(page, () => document.querySelector('#room-head-seq')?.textContent === '10', null, { what: 'head 10' });
  await screenshot(page, 'dashboard-transcript.png');
  // A reload reads it the same way.
  await page.reload();
  await untilStatus(page, 'live');
  await untilTranscript([`${a}|Ana|Morning all.|edited`, `${c}|Chen|I'll write the notes.|edited`, `${s}|Summary|Notes by Ben.|edited`]);
  await ctx.close();
});
