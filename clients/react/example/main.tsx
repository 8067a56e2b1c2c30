// The example: seed 004's hybrid-updates widget on roomcast. One room's
// events with the data-source badge (WebSocket / Polling), the connection
// status, the mode toggle, Refresh, the counters, and a small list of the
// org's rooms (useRooms; a click follows that room instead). "Unmount" removes the provider and everything in
// it: the client closes every connection.
//
// Query: ?token=<JWT>&room=<room>[&mode=realtime|polling|auto][&dev=1][&presence=1]
// plus client options for tests and demos: offlineAfterMs, backoffMaxMs,
// backoffBaseMs, pongTimeoutMs, connectTimeoutMs, fallbackAfter,
// probeIntervalMs, pollWaitS.

import { StrictMode, useEffect, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { RoomcastProvider, usePresence, useRoomcast, useRooms } from '@roomcast/react';
import type { Mode, ProviderClientOptions, RoomEvent, Status } from '@roomcast/react';
import { useHybridUpdates } from './useHybridUpdates.js';

const params = new URLSearchParams(location.search);
const TOKEN = params.get('token') ?? '';
const ROOM = params.get('room') ?? 'demo';
const MODES: Array<[Mode, string]> = [
  ['realtime', 'Real-time'],
  ['polling', 'Polling'],
  ['auto', 'Auto'],
];
const modeParam = params.get('mode');
/** `&messages=1`: the room's messages as they stand (useRoom's `messages`). */
const MESSAGES = params.get('messages') === '1';
/** `&roomPolling=1`: this room long-polls (useRoom's `mode: 'polling'`), whatever the provider's mode. */
const ROOM_POLLING = params.get('roomPolling') === '1';
/** `&presence=1`: join the room as a member and list its members. */
const PRESENCE = params.get('presence') === '1';
const INITIAL_MODE: Mode = modeParam === 'realtime' || modeParam === 'polling' ? modeParam : 'auto';

const NUMERIC = [
  'offlineAfterMs', 'backoffMaxMs', 'backoffBaseMs', 'pongTimeoutMs', 'connectTimeoutMs',
  'fallbackAfter', 'probeIntervalMs', 'pollWaitS',
] as const;
const OPTIONS: ProviderClientOptions = {};
for (const k of NUMERIC) {
  const v = params.get(k);
  if (v !== null && Number.isFinite(Number(v))) OPTIONS[k] = Number(v);
}

function useNow(everyMs: number): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), everyMs);
    return () => clearInterval(t);
  }, [everyMs]);
  return now;
}

function statusText(status: Status, delayMs: number, lastUpdateAt: number | null): string {
  if (status === 'connecting') return 'Connecting…';
  if (status === 'live') return 'Live';
  if (status === 'delayed') return `Delayed ${Math.round(delayMs / 1000)} s`;
  return lastUpdateAt ? `Offline · last update ${new Date(lastUpdateAt).toLocaleTimeString()}` : 'Offline';
}

function ago(now: number, at: number | null): string {
  if (at === null) return 'never';
  const s = Math.max(0, Math.round((now - at) / 1000));
  return s < 2 ? 'just now' : `${s} s ago`;
}

function EventRow({ e }: { e: RoomEvent }) {
  return (
    <li data-seq={e.seq ?? undefined} data-source={e.source}>
      <span className="seq">{e.seq}</span>
      <span className="type">{e.type}</span>
      <time dateTime={e.ts}>{new Date(e.ts).toLocaleTimeString()}</time>
      <span className={`src ${e.source}`}>{e.source === 'catchup' ? 'catch-up' : e.source}</span>
      <span className="data">{JSON.stringify(e.data)}</span>
    </li>
  );
}

function RoomPanel({ room }: { room: string }) {
  const {
    data, loading, updateSource, websocketStatus, refresh, status, mode, setMode, counts,
    lastUpdateAt, delayMs, roomStatus, head, cursor, detail, reset, error, ephemeral, state,
    messages,
  } = useHybridUpdates(room, { ...(ROOM_POLLING ? { websocketEnabled: false } : {}), messages: MESSAGES });
  const now = useNow(1000);
  const [refreshing, setRefreshing] = useState(false);
  const newestFirst = [...data].reverse();
  return (
    <section className="panel" id="room" data-room={room}>
      <div className="bar">
        <span id="source" className="badge" data-source={updateSource ?? 'none'} title="Data source">
          {updateSource === 'websocket' ? 'WebSocket' : updateSource === 'polling' ? 'Polling' : 'Not connected'}
        </span>
        <span id="status" className="badge" data-status={status} data-ws-status={websocketStatus} role="status">
          {statusText(status, delayMs, lastUpdateAt)}
        </span>
        <span id="last-update" className="muted">last update {ago(now, lastUpdateAt)}</span>
        <span id="detail" className="muted">{detail}</span>
        <span className="spacer" />
        <div id="mode" className="toggle" role="radiogroup" aria-label="Connection mode">
          {MODES.map(([m, label]) => (
            <button key={m} type="button" role="radio" data-mode={m} aria-checked={mode === m} onClick={() => setMode(m)}>
              {label}
            </button>
          ))}
        </div>
        <button
          type="button"
          id="refresh"
          className="action"
          disabled={refreshing}
          onClick={() => {
            setRefreshing(true);
            void refresh().finally(() => setRefreshing(false));
          }}
        >
          {refreshing ? 'Refreshing…' : 'Refresh'}
        </button>
      </div>
      <h2>
        {room} <span className="muted">· {roomStatus ?? 'no events yet'} · head <b id="head">{head ?? '–'}</b> · cursor{' '}
        <b id="cursor">{cursor ?? '–'}</b> · stage <b id="stage">{typeof state.stage === 'string' ? state.stage : '–'}</b></span>
      </h2>
      <dl id="counters">
        {(['push', 'catchup', 'poll', 'duplicates', 'gaps', 'reconnects'] as const).map((k) => (
          <div key={k}>
            <dt>{k}</dt>
            <dd id={`count-${k}`}>{counts[k]}</dd>
          </div>
        ))}
      </dl>
      {error && <p className="error" id="error">{error.code}: {error.message}</p>}
      {reset && <p className="muted" id="reset">History after seq {reset.head} is no longer available: resynced from the room's state.</p>}
      {MESSAGES && (
        <ol id="messages" aria-label="Messages as they stand">
          {messages.map((m) => (
            <li key={m.seq} data-seq={m.seq} data-version={m.version}>
              <span className="text">{String((m.data as { text?: unknown })?.text ?? '')}</span>
              {m.edited && <i className="muted"> (edited)</i>}
            </li>
          ))}
        </ol>
      )}
      <ul id="partials" aria-label="Interim text, per speaker">
        {Object.entries(ephemeral).map(([key, e]) => (
          <li key={key} data-key={key} className="muted">
            <b>{key}</b> <i>{typeof (e.data as { text?: unknown })?.text === 'string' ? (e.data as { text: string }).text : JSON.stringify(e.data)}</i>
          </li>
        ))}
      </ul>
      {loading ? <p className="muted" id="loading">Loading…</p> : data.length === 0 && <p className="muted">No events yet.</p>}
      <ol id="timeline" aria-label="Events, newest first">
        {newestFirst.map((e) => (
          <EventRow key={e.seq} e={e} />
        ))}
      </ol>
    </section>
  );
}

/** Who is in the room (usePresence: the page joins as its token's member). */
function People({ room }: { room: string }) {
  const { members, loading } = usePresence(PRESENCE ? room : null);
  if (!PRESENCE) return null;
  return (
    <aside className="panel">
      <h2>People</h2>
      {loading && <p className="muted">Loading…</p>}
      <ul id="members">
        {members.map((m) => (
          <li key={m.sub} data-sub={m.sub}>
            {typeof m.info.name === 'string' ? m.info.name : m.sub}
          </li>
        ))}
      </ul>
    </aside>
  );
}

function Rooms({ current, onSelect }: { current: string; onSelect: (room: string) => void }) {
  const { rooms, loading, error } = useRooms({ limit: 20 });
  return (
    <aside className="panel">
      <h2>Rooms</h2>
      {loading && <p className="muted">Loading…</p>}
      {error && <p className="error">{error.message}</p>}
      <ul id="rooms">
        {rooms.map((r) => (
          <li
            key={r.room}
            data-room={r.room}
            data-head={r.head}
            aria-current={r.room === current}
            role="button"
            tabIndex={0}
            onClick={() => onSelect(r.room)}
            onKeyDown={(e) => {
              if (e.key === 'Enter' || e.key === ' ') onSelect(r.room);
            }}
          >
            <span>{r.room}</span>
            <span className="muted">
              {r.status} · {r.head}
            </span>
          </li>
        ))}
      </ul>
    </aside>
  );
}

/** Exposes the client to the browser tests (and the console) as `roomcast.client`. */
function Expose() {
  const client = useRoomcast();
  useEffect(() => {
    const g = globalThis as unknown as { roomcast?: { client: unknown } };
    if (client) g.roomcast = { client };
    return () => {
      if (g.roomcast?.client === client) delete g.roomcast;
    };
  }, [client]);
  return null;
}

function App() {
  const [mounted, setMounted] = useState(true);
  const [room, setRoom] = useState(ROOM);
  return (
    <>
      <header>
        <h1>roomcast · hybrid updates</h1>
        <span className="spacer" />
        <button type="button" id="unmount" className="action" onClick={() => setMounted((m) => !m)}>
          {mounted ? 'Unmount' : 'Mount'}
        </button>
      </header>
      {!TOKEN && <p className="error" id="no-token">Open this page with ?token=&lt;JWT&gt;&amp;room=&lt;room&gt;.</p>}
      {TOKEN && mounted ? (
        <RoomcastProvider token={TOKEN} mode={INITIAL_MODE} options={OPTIONS}>
          <Expose />
          <main>
            <Rooms current={room} onSelect={setRoom} />
            <RoomPanel room={room} />
            <People room={room} />
          </main>
        </RoomcastProvider>
      ) : (
        TOKEN && <p id="unmounted" className="muted">Unmounted: the client is closed.</p>
      )}
    </>
  );
}

createRoot(document.getElementById('root') as HTMLElement).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
