// The call board's room list, behind one small interface so that the source
// can change without the hook or its users noticing:
//   - the live room list (`subscribe_rooms`, LiveRoomList): a `rooms` answer
//     then `room` frames, pushed by the server (client.js's subscribeRooms);
//   - `GET /v1/rooms` (RestRoomList), re-read every `refreshMs` and soon
//     after an event of a listed room is seen through this provider, for a
//     client without `subscribeRooms`. Several live lists of one client
//     share the socket's subscription (client.js).
// Either way the list is an array of room snapshots, newest activity first.

import type { RoomStatus, RoomcastClient } from './client.js';
import type { Hub } from './hub.js';

/** A room snapshot, as `GET /v1/rooms` and the live room list answer it. */
export interface RoomInfo {
  room: string;
  status: RoomStatus;
  head: number;
  state: Record<string, unknown>;
  created_at: string;
  updated_at: string;
  /** The lowest seq still stored (servers with retention). */
  first?: number;
}

/** Which rooms to list (as on `GET /v1/rooms` and `subscribe_rooms`). */
export interface RoomsFilter {
  /** Only rooms of this status; default all. */
  status?: RoomStatus;
  /** Only rooms whose id starts with this (applied here for now). */
  prefix?: string;
  /** At most this many rooms (default 100). */
  limit?: number;
}

/** A `room` frame of the live room list. */
export interface RoomFrame {
  room: RoomInfo;
  matches: boolean;
}

/** Where the list comes from. */
export type RoomListKind = 'rest' | 'live';

export interface RoomListSource {
  readonly kind: RoomListKind;
  /** Starts; `onRooms` gets every new list, `onError` failures (the list is kept). */
  start(onRooms: (rooms: RoomInfo[]) => void, onError: (e: Error) => void): void;
  /** Reads the list now. */
  refresh(): Promise<void>;
  stop(): void;
}

export interface RoomListOptions {
  /** How often the list is re-read (REST source); default 10000 ms. */
  refreshMs?: number;
  /** How soon after a room event the list is re-read (REST source); default 500 ms. */
  activityDelayMs?: number;
}

/** Newest activity first, then by id, as the server orders them. */
function byActivity(a: RoomInfo, b: RoomInfo): number {
  if (a.updated_at !== b.updated_at) return a.updated_at < b.updated_at ? 1 : -1;
  return a.room < b.room ? -1 : a.room > b.room ? 1 : 0;
}

/** Whether `r` passes `filter` (status, prefix). */
export function matchesFilter(r: RoomInfo, filter: RoomsFilter): boolean {
  if (filter.status && r.status !== filter.status) return false;
  if (filter.prefix && !r.room.startsWith(filter.prefix)) return false;
  return true;
}

/**
 * Applies a live room list `room` frame to a list: the room is replaced or
 * added when it matches, removed when it no longer does; the list stays
 * ordered by activity and within `limit`.
 */
export function applyRoomFrame(list: readonly RoomInfo[], frame: RoomFrame, filter: RoomsFilter = {}): RoomInfo[] {
  const rest = list.filter((r) => r.room !== frame.room.room);
  if (!frame.matches || !matchesFilter(frame.room, filter)) return rest;
  rest.push(frame.room);
  rest.sort(byActivity);
  return rest.slice(0, filter.limit ?? 100);
}

/** `GET /v1/rooms`, re-read periodically and after activity. */
export class RestRoomList implements RoomListSource {
  readonly kind = 'rest' as const;
  private readonly client: RoomcastClient;
  private readonly hub: Hub;
  private readonly filter: RoomsFilter;
  private readonly refreshMs: number;
  private readonly activityDelayMs: number;
  private interval: ReturnType<typeof setInterval> | null = null;
  private soon: ReturnType<typeof setTimeout> | null = null;
  private offActivity: (() => void) | null = null;
  private inFlight: Promise<void> | null = null;
  private again = false;
  private stopped = true;
  private listed = new Set<string>();
  private onRooms: (rooms: RoomInfo[]) => void = () => {};
  private onError: (e: Error) => void = () => {};

  constructor(client: RoomcastClient, hub: Hub, filter: RoomsFilter, options: RoomListOptions = {}) {
    this.client = client;
    this.hub = hub;
    this.filter = filter;
    this.refreshMs = options.refreshMs ?? 10_000;
    this.activityDelayMs = options.activityDelayMs ?? 500;
  }

  start(onRooms: (rooms: RoomInfo[]) => void, onError: (e: Error) => void): void {
    this.onRooms = onRooms;
    this.onError = onError;
    this.stopped = false;
    void this.refresh();
    if (this.refreshMs > 0) this.interval = setInterval(() => void this.refresh(), this.refreshMs);
    this.offActivity = this.hub.onActivity((ev) => {
      // A listed room moved, or a room the list may not have yet.
      if (this.listed.has(ev.room) || !this.filter.prefix || ev.room.startsWith(this.filter.prefix)) this.refreshSoon();
    });
  }

  refresh(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.inFlight) {
      this.again = true;
      return this.inFlight;
    }
    this.inFlight = (async () => {
      try {
        do {
          this.again = false;
          const limit = this.filter.limit ?? 100;
          // The prefix is applied here: read more so that `limit` rooms can pass it.
          const rooms = (await this.client.listRooms({
            ...(this.filter.status ? { status: this.filter.status } : {}),
            limit: this.filter.prefix ? 1000 : limit,
          })) as RoomInfo[];
          if (this.stopped) return;
          const list = rooms.filter((r) => matchesFilter(r, this.filter)).slice(0, limit);
          this.listed = new Set(list.map((r) => r.room));
          this.onRooms(list);
        } while (this.again && !this.stopped);
      } catch (e) {
        if (!this.stopped) this.onError(e instanceof Error ? e : new Error(String(e)));
      } finally {
        this.inFlight = null;
      }
    })();
    return this.inFlight;
  }

  private refreshSoon(): void {
    if (this.soon !== null || this.stopped) return;
    this.soon = setTimeout(() => {
      this.soon = null;
      void this.refresh();
    }, this.activityDelayMs);
  }

  stop(): void {
    this.stopped = true;
    if (this.interval !== null) clearInterval(this.interval);
    if (this.soon !== null) clearTimeout(this.soon);
    this.interval = this.soon = null;
    this.offActivity?.();
    this.offActivity = null;
  }
}

/**
 * The live room list (`subscribe_rooms`): a fresh list on every (re)connect,
 * then a `room` frame per change, pushed by the server (read every few
 * seconds when the client polls). Built on client.js's `subscribeRooms`.
 */
export class LiveRoomList implements RoomListSource {
  readonly kind = 'live' as const;
  private readonly client: RoomcastClient;
  private readonly filter: RoomsFilter;
  private list: ReturnType<RoomcastClient['subscribeRooms']> | null = null;

  constructor(client: RoomcastClient, filter: RoomsFilter) {
    this.client = client;
    this.filter = filter;
  }

  start(onRooms: (rooms: RoomInfo[]) => void, onError: (e: Error) => void): void {
    const limit = this.filter.limit ?? 100;
    this.list = this.client.subscribeRooms(
      {
        ...(this.filter.status ? { status: this.filter.status } : {}),
        ...(this.filter.prefix ? { prefix: this.filter.prefix } : {}),
        limit,
      },
      { onChange: (rooms) => onRooms((rooms as RoomInfo[]).slice(0, limit)) },
    );
    this.list.on('error', (e) => onError(new Error(`${e.code}: ${e.message}`)));
    this.onError = onError;
  }

  private onError: (e: Error) => void = () => {};

  async refresh(): Promise<void> {
    try {
      await this.list?.refresh();
    } catch (e) {
      this.onError(e instanceof Error ? e : new Error(String(e)));
    }
  }

  stop(): void {
    if (this.list) {
      this.list.unsubscribe();
      this.list = null;
    }
  }
}

/**
 * The best source the client supports: the live room list when client.js
 * has it (any number per client: they share the socket's subscription),
 * else `GET /v1/rooms` re-read periodically. The list's shape is the same.
 */
export function createRoomListSource(client: RoomcastClient, hub: Hub, filter: RoomsFilter, options: RoomListOptions = {}): RoomListSource {
  if (typeof client.subscribeRooms === 'function') {
    return new LiveRoomList(client, filter);
  }
  return new RestRoomList(client, hub, filter, options);
}
