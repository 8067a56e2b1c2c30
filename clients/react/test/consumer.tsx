// Type-checked against the built declarations (dist/*.d.ts, what the tarball
// ships) by `npm run check:dist`: every public export used as an application would.
import { useEffect } from 'react';
import {
  RoomcastClient, RoomcastProvider, applyRoomFrame, matchesFilter, useConnection, usePresence, useRoom, useRoomcast, useRooms,
} from '@roomcast/react';
import type {
  ClientState, Member, Mode, ResetInfo, RoomEvent, RoomInfo, RoomStatus, Status, Transport, UsePresenceResult, UseRoomResult,
  UseRoomsResult,
} from '@roomcast/react';
import { RoomcastClient as SameClient } from '@roomcast/react/client';

function Meeting({ id }: { id: string }) {
  const r: UseRoomResult = useRoom(id, { since: 0, maxEvents: 200, onEvent: (e: RoomEvent) => void e.seq });
  const status: Status = r.status;
  const transport: Transport = r.transport;
  const mode: Mode = r.mode;
  const reset: ResetInfo | null = r.reset;
  const roomStatus: RoomStatus | null = r.roomStatus;
  const first: number | null = r.events[0]?.seq ?? null;
  void [status, transport, mode, reset, roomStatus, first, r.counts.duplicates, r.lastUpdateAt];
  return (
    <div>
      <button onClick={() => r.setMode('polling')}>polling</button>
      <button onClick={() => void r.refresh()}>refresh</button>
      {r.events.map((e) => <p key={e.seq}>{e.type}</p>)}
    </div>
  );
}

function People({ id }: { id: string }) {
  const p: UsePresenceResult = usePresence(id);
  const members: readonly Member[] = p.members;
  const r = useRoom(id, { presence: true, mode: 'polling' });
  const partials: Readonly<Record<string, RoomEvent>> = r.ephemeral;
  const pending: boolean = r.loading && r.isPending;
  const stage = r.events.at(-1)?.state?.stage;
  return (
    <ul data-loading={p.loading || pending} data-stage={String(stage ?? '')}>
      {members.map((m) => <li key={m.sub}>{String(m.info.name ?? m.sub)}</li>)}
      {Object.entries(partials).map(([k, e]) => <li key={k}>{JSON.stringify(e.data)}</li>)}
    </ul>
  );
}

function Board() {
  const b: UseRoomsResult = useRooms({ status: 'in_progress', prefix: 'call-', limit: 50, refreshMs: 5000 });
  const rooms: readonly RoomInfo[] = b.rooms;
  const c = useConnection();
  const s: ClientState = c;
  const client: RoomcastClient | null = useRoomcast();
  useEffect(() => void client?.refresh(), [client]);
  const next = applyRoomFrame(rooms, { room: rooms[0]!, matches: matchesFilter(rooms[0]!, { status: 'in_progress' }) });
  return <ul data-status={s.status}>{next.map((r) => <li key={r.room}>{r.room} {r.head}</li>)}</ul>;
}

export function App() {
  const own = new SameClient({ token: 'jwt', mode: 'auto' });
  const same: RoomcastClient = own;
  return (
    <>
      <RoomcastProvider url="https://rt.example.com" token={() => Promise.resolve('jwt')} mode="auto" options={{ offlineAfterMs: 10000 }}>
        <Meeting id="meeting-42" />
        <People id="meeting-42" />
      </RoomcastProvider>
      <RoomcastProvider client={same}>
        <Board />
      </RoomcastProvider>
    </>
  );
}
