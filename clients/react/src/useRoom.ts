import { useCallback, useEffect, useReducer, useRef, useSyncExternalStore } from 'react';
import type { ClientError, ClientState, Counts, Member, Message, Mode, RoomEvent, RoomStatus, Status, Transport } from './client.js';
import { emptyRoomData, hubOf } from './hub.js';
import type { ResetInfo, RoomData } from './hub.js';
import { useRoomcast } from './provider.js';

export interface UseRoomOptions {
  /**
   * The last seq the component already has: events after it are delivered.
   * `0` (the default): the room's whole history; `null`: from now on.
   * Read when the room is first subscribed (components following the same
   * room share one subscription, opened with the first one's options).
   */
  since?: number | null;
  /**
   * This room's mode: `polling` makes this room long-poll whatever the
   * client's mode (the provider's other rooms keep the WebSocket);
   * `realtime`/`auto` (or absent) follow the client's mode (set it on the
   * provider, or with `setMode`). Read when the room is first subscribed.
   */
  mode?: Mode;
  /** Keep at most this many events in `events` (the latest); default 1000. */
  maxEvents?: number;
  /** Join the room as a member (the token's `sub` and `info`) and follow its members (`members`). `usePresence(room)` asks for it too. */
  presence?: boolean;
  /**
   * Keep the room's messages as they stand in `messages` (versions applied:
   * updates replace, appends extend `text`, deletes remove): the room is
   * read once with `view=latest` rather than replaying every change. Unless
   * `since` is given too, no event is replayed (`events` holds the live ones).
   */
  messages?: boolean;
  /** Re-read the room's state shortly after events arrive over WebSocket. Not needed to follow `state`: every event that changed it carries its patch, applied in seq order. For state changed without an event. Default false. */
  snapshots?: boolean;
  /** false: follow nothing (as with a null room). Default true. */
  enabled?: boolean;
  /** Called for every event as it is delivered (durable ones once each, in seq order; ephemeral ones too). */
  onEvent?: (event: RoomEvent) => void;
}

export interface UseRoomResult {
  /** The room followed (null when none). */
  room: string | null;
  /** The durable events, in seq order, each exactly once (at most `maxEvents`, the latest). */
  events: readonly RoomEvent[];
  /** Durable events received since subscribing (may exceed `events.length`). */
  received: number;
  /** The latest ephemeral event, or null. */
  lastEphemeral: RoomEvent | null;
  /** The latest ephemeral event per key (its `key`, else its `type`): one partial transcript per speaker. */
  ephemeral: Readonly<Record<string, RoomEvent>>;
  /** The room's members with their `info` (with `presence`), live. */
  members: readonly Member[];
  /** The room's messages as they stand, by seq (with `messages`): `{seq, type, data, ts, version, edited}`. */
  messages: readonly Message[];
  /** The room's state: its snapshot with every later event's patch applied in seq order (`{}` until known). */
  state: Readonly<Record<string, unknown>>;
  /** The room's own status: `in_progress`, `completed`, `failed` (null until known). */
  roomStatus: RoomStatus | null;
  /** The room's head as last reported. */
  head: number | null;
  /** The last seq delivered. */
  cursor: number | null;
  /** The server answered the subscription at least once. */
  subscribed: boolean;
  /** True until the server first answered the subscription (or refused it): show a placeholder, not "no events". */
  loading: boolean;
  /** Same as `loading` (TanStack Query's name). */
  isPending: boolean;
  /** The last `reset` (history no longer replayable: resync from `reset.state`), or null. */
  reset: ResetInfo | null;
  /** The subscription's last error (forbidden, bad request...), or null. */
  error: ClientError | null;
  /** The connection: `connecting` (not live yet since the client started), `live`, `delayed` or `offline`. */
  status: Status;
  /** The transport this room uses: `websocket`, `longpoll` or `none` (the client's, or `longpoll` for a room with `mode: 'polling'`). */
  transport: Transport;
  /** The connection mode (the client's). */
  mode: Mode;
  /** Switches the client's mode (every room keeps its cursor). */
  setMode: (mode: Mode) => void;
  /** Reads every room from its cursor now and checks the connection. */
  refresh: () => Promise<void>;
  /** Events by how they came, duplicates dropped, gaps repaired, reconnects (the client's). */
  counts: Counts;
  /** Epoch ms the server was last heard on a healthy transport (data current as of then). */
  lastUpdateAt: number | null;
  /** Epoch ms of the last durable event delivered (any room). */
  lastEventAt: number | null;
  /** While `delayed`: how long the data has not been known up to date. */
  delayMs: number;
  /** A short human explanation of the connection ("reconnecting in 1.2 s"...). */
  detail: string;
  /** The whole client state. */
  clientState: ClientState;
}

const NO_COUNTS: Counts = { push: 0, catchup: 0, poll: 0, duplicates: 0, gaps: 0, reconnects: 0 };
const NOT_CONNECTED: ClientState = {
  mode: 'auto',
  transport: 'none',
  status: 'connecting',
  lastUpdateAt: null,
  lastEventAt: null,
  delayMs: 0,
  online: true,
  detail: 'connecting',
  counts: NO_COUNTS,
};
const NO_ROOM: RoomData = emptyRoomData('');
const noSubscribe = () => () => {};
const getNoRoom = () => NO_ROOM;
const getNotConnected = () => NOT_CONNECTED;

/**
 * Follows `room` on the provider's client: subscribes on mount, unsubscribes
 * on unmount or when `room` changes, and answers its events (once each, in
 * order) with the room's state and the connection's status.
 */
export function useRoom(room: string | null | undefined, options: UseRoomOptions = {}): UseRoomResult {
  const client = useRoomcast();
  const hub = client ? hubOf(client) : null;
  const active = hub !== null && typeof room === 'string' && room !== '' && options.enabled !== false;
  const { snapshots, maxEvents, presence, messages } = options;
  // Messages alone: from where the room's read ends (no replay); events: all history.
  const since = 'since' in options ? options.since : messages ? undefined : 0;
  const storeOptions = { since, snapshots, maxEvents, presence, messages, polling: options.mode === 'polling' };
  const store = active ? hub.store(room, storeOptions) : null;
  const [, rerender] = useReducer((n: number) => n + 1, 0);

  const onEventRef = useRef(options.onEvent);
  useEffect(() => {
    onEventRef.current = options.onEvent;
  });

  useEffect(() => {
    if (!active) return undefined;
    const s = hub.store(room, storeOptions);
    s.acquire();
    if (presence) s.wantPresence();
    const off = s.onEvent((ev) => onEventRef.current?.(ev));
    // The store seen in render was dropped meanwhile: render with this one.
    if (s !== store) rerender();
    return () => {
      off();
      s.release();
    };
    // The options are read when the room is first subscribed.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [hub, room, active]);

  const data = useSyncExternalStore(store ? store.subscribe : noSubscribe, store ? store.getSnapshot : getNoRoom, store ? store.getSnapshot : getNoRoom);
  const cs = useSyncExternalStore(hub ? hub.subscribeState : noSubscribe, hub ? hub.getState : getNotConnected, hub ? hub.getState : getNotConnected);

  const setMode = useCallback((mode: Mode) => client?.setMode(mode), [client]);
  const refresh = useCallback(() => (client ? client.refresh() : Promise.resolve()), [client]);

  // Before the provider's client exists (a server render, the first
  // render in the browser) a room asked for is loading too.
  const wanted = typeof room === 'string' && room !== '' && options.enabled !== false;
  const loading = wanted && !data.subscribed && data.error === null;
  return {
    room: active ? room : null,
    events: data.events,
    received: data.received,
    lastEphemeral: data.lastEphemeral,
    ephemeral: data.ephemeral,
    members: data.members,
    messages: data.messages,
    state: data.state,
    roomStatus: data.roomStatus,
    head: data.head,
    cursor: data.cursor,
    subscribed: data.subscribed,
    loading,
    isPending: loading,
    reset: data.reset,
    error: data.error,
    status: cs.status,
    // A room that long-polls beside the socket says so.
    transport: options.mode === 'polling' && cs.transport !== 'none' ? 'longpoll' : cs.transport,
    mode: cs.mode,
    setMode,
    refresh,
    counts: cs.counts,
    lastUpdateAt: cs.lastUpdateAt,
    lastEventAt: cs.lastEventAt,
    delayMs: cs.delayMs,
    detail: cs.detail,
    clientState: cs,
  };
}

/**
 * The connection's state alone (status, transport, mode, counts...), for a
 * badge outside any room component.
 */
export function useConnection(): ClientState & { setMode: (mode: Mode) => void; refresh: () => Promise<void> } {
  const client = useRoomcast();
  const hub = client ? hubOf(client) : null;
  const cs = useSyncExternalStore(hub ? hub.subscribeState : noSubscribe, hub ? hub.getState : getNotConnected, hub ? hub.getState : getNotConnected);
  const setMode = useCallback((mode: Mode) => client?.setMode(mode), [client]);
  const refresh = useCallback(() => (client ? client.refresh() : Promise.resolve()), [client]);
  return { ...cs, setMode, refresh };
}

export interface UsePresenceResult {
  /** Who is in the room now, with what their tokens say of them (`info`: name, avatar, role). */
  members: readonly Member[];
  /** True until the members were first answered (or the subscription refused). */
  loading: boolean;
  /** The subscription's last error, or null. */
  error: ClientError | null;
}

/**
 * The members of `room`, live: the component joins the room as a member
 * (the token's `sub` and `info`) and follows who joins and leaves. Shares
 * the room's subscription with `useRoom(room)` (one socket, one
 * subscription). In polling mode the members are read every few seconds and
 * the page is not a member.
 */
export function usePresence(room: string | null | undefined, options: { enabled?: boolean } = {}): UsePresenceResult {
  // The room's default options: a `useRoom(room)` elsewhere shares this
  // subscription and expects them.
  const r = useRoom(room, { presence: true, enabled: options.enabled });
  const client = useRoomcast();
  const hub = client ? hubOf(client) : null;
  const store = hub && typeof room === 'string' && room !== '' && options.enabled !== false ? hub.store(room) : null;
  const data = useSyncExternalStore(store ? store.subscribe : noSubscribe, store ? store.getSnapshot : getNoRoom, store ? store.getSnapshot : getNoRoom);
  const wanted = typeof room === 'string' && room !== '' && options.enabled !== false;
  return { members: r.members, loading: wanted && !data.membersKnown && r.error === null, error: r.error };
}
