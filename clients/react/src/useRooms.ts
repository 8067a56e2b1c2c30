import { useCallback, useEffect, useRef, useState } from 'react';
import { hubOf } from './hub.js';
import { useRoomcast } from './provider.js';
import { createRoomListSource } from './roomList.js';
import type { RoomInfo, RoomListKind, RoomListOptions, RoomListSource, RoomsFilter } from './roomList.js';

export interface UseRoomsOptions extends RoomsFilter, RoomListOptions {
  /** false: list nothing. Default true. */
  enabled?: boolean;
}

export interface UseRoomsResult {
  /** The rooms, newest activity first (room snapshots). */
  rooms: readonly RoomInfo[];
  /** No list yet (false once a list or an error came). */
  loading: boolean;
  /** The last failure to read the list (the last list is kept), or null. */
  error: Error | null;
  /** Epoch ms of the last list received. */
  updatedAt: number | null;
  /** Where the list comes from: `live` (the server pushes changes) or `rest` (GET /v1/rooms re-read). */
  source: RoomListKind | null;
  /** Reads the list now. */
  refresh: () => Promise<void>;
}

function sameRooms(a: readonly RoomInfo[], b: readonly RoomInfo[]): boolean {
  return a.length === b.length && JSON.stringify(a) === JSON.stringify(b);
}

/**
 * The rooms of the token's org for a call board, live: the server pushes
 * every change of a room that passes the filter (coalesced, at most 4 a
 * second per room). Several lists on one client (an in-progress board
 * beside a completed one) are all live: they share the socket's one
 * subscription, each applying its own filter.
 */
export function useRooms(filter: UseRoomsOptions = {}): UseRoomsResult {
  const client = useRoomcast();
  const { status, prefix, limit, refreshMs, activityDelayMs, enabled = true } = filter;
  const [rooms, setRooms] = useState<readonly RoomInfo[]>([]);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<Error | null>(null);
  const [updatedAt, setUpdatedAt] = useState<number | null>(null);
  const [kind, setKind] = useState<RoomListKind | null>(null);
  const sourceRef = useRef<RoomListSource | null>(null);

  useEffect(() => {
    if (!client || !enabled) return undefined;
    const f: RoomsFilter = {
      ...(status ? { status } : {}),
      ...(prefix ? { prefix } : {}),
      ...(limit !== undefined ? { limit } : {}),
    };
    const o: RoomListOptions = {
      ...(refreshMs !== undefined ? { refreshMs } : {}),
      ...(activityDelayMs !== undefined ? { activityDelayMs } : {}),
    };
    const source = createRoomListSource(client, hubOf(client), f, o);
    sourceRef.current = source;
    setKind(source.kind);
    setLoading(true);
    source.start(
      (list) => {
        setRooms((prev) => (sameRooms(prev, list) ? prev : list));
        setLoading(false);
        setError(null);
        setUpdatedAt(Date.now());
      },
      (e) => {
        // A list that cannot be read is not loading for ever: the error
        // shows, and the next read (poll, reconnect, refresh) clears it.
        setError(e);
        setLoading(false);
      },
    );
    return () => {
      source.stop();
      if (sourceRef.current === source) sourceRef.current = null;
    };
  }, [client, enabled, status, prefix, limit, refreshMs, activityDelayMs]);

  const refresh = useCallback(() => sourceRef.current?.refresh() ?? Promise.resolve(), []);
  return { rooms, loading, error, updatedAt, source: kind, refresh };
}
