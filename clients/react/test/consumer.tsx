// Type-checked against the built declarations (dist/*.d.ts, what the tarball
// ships) by `npm run check:dist`: every public export used as an application would.
import { useEffect } from 'react';
import {
  RoomcastClient, RoomcastProvider, applyRoomFrame, matchesFilter, useConnection, useRoom, useRoomcast, useRooms,
} from '@roomcast/react';
import type {
  ClientState, Mode, ResetInfo, RoomEvent, RoomInfo, RoomStatus, Status, Transport, UseRoomResult, UseRoomsResult,
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
      </RoomcastProvider>
      <RoomcastProvider client={same}>
        <Board />
      </RoomcastProvider>
    </>
  );
}
