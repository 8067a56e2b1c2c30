// The state that the hooks share, one `Hub` per RoomcastClient: one
// `RoomStore` per room (one client subscription, whatever the number of
// components that follow the room) and a cache of the client's state.
//
// React reads these through useSyncExternalStore. Events are appended outside
// React, once each, so re-renders, StrictMode's double effects and several
// components on one room never duplicate an event.

import type { ClientError, ClientState, Member, Message, RoomEvent, RoomStatus, RoomcastClient, Snapshot, Subscription } from './client.js';

/** What a `reset` said: the events after the cursor could not be replayed. */
export interface ResetInfo {
  /** The room's head at the reset: the next event is `head + 1`. */
  head: number;
  /** The room's state to resync from. */
  state: Record<string, unknown>;
  /** When it happened (epoch ms). */
  at: number;
}

/** One room as the hooks show it (immutable: a new object on every change). */
export interface RoomData {
  /** The room id. */
  readonly room: string;
  /** The durable events received, in seq order, each once (the latest `maxEvents`). */
  readonly events: readonly RoomEvent[];
  /** Durable events received since the room was subscribed (may exceed `events.length`). */
  readonly received: number;
  /** The latest ephemeral event (`seq: null`: interim text, typing...), or null. */
  readonly lastEphemeral: RoomEvent | null;
  /** The latest ephemeral event per key (its `key`, else its `type`): partial transcripts of `spk-1` and `spk-2` side by side. */
  readonly ephemeral: Readonly<Record<string, RoomEvent>>;
  /** The room's members with their `info` (a room followed with `presence`), live. */
  readonly members: readonly Member[];
  /** The members were answered at least once (a room followed with `presence`). */
  readonly membersKnown: boolean;
  /** The room's messages as they stand, by seq (a room followed with `messages`). */
  readonly messages: readonly Message[];
  /** The last seq delivered (the client's cursor for the room). */
  readonly cursor: number | null;
  /** The room's head as last reported by the server. */
  readonly head: number | null;
  /** The room's status (`in_progress`, `completed`, `failed`), once known. */
  readonly roomStatus: RoomStatus | null;
  /** The room's state (its latest snapshot). */
  readonly state: Readonly<Record<string, unknown>>;
  /** The server answered the subscription at least once. */
  readonly subscribed: boolean;
  /** The last `reset`, or null. */
  readonly reset: ResetInfo | null;
  /** The last error of the subscription (cleared when it is answered again). */
  readonly error: ClientError | null;
}

/** How a room is subscribed (read when the room's store is first opened). */
export interface RoomStoreOptions {
  since?: number | null;
  snapshots?: boolean;
  presence?: boolean;
  /** This room long-polls whatever the client's mode. */
  polling?: boolean;
  /** Keep the room's messages as they stand (read once with view=latest). */
  messages?: boolean;
  maxEvents?: number;
}

export const DEFAULT_MAX_EVENTS = 1000;

/** How often the client's state is re-read while components show it. */
const STATE_TICK_MS = 1000;

/** A store made in a render that never mounted is dropped after this long. */
const SWEEP_MS = 10_000;

const hubs = new WeakMap<RoomcastClient, Hub>();

/** The hub of `client` (made on first use). */
export function hubOf(client: RoomcastClient): Hub {
  let hub = hubs.get(client);
  if (!hub) {
    hub = new Hub(client);
    hubs.set(client, hub);
  }
  return hub;
}

export function emptyRoomData(room: string): RoomData {
  return {
    room,
    events: [],
    received: 0,
    lastEphemeral: null,
    ephemeral: {},
    members: [],
    membersKnown: false,
    messages: [],
    cursor: null,
    head: null,
    roomStatus: null,
    state: {},
    subscribed: false,
    reset: null,
    error: null,
  };
}

function sameState(a: ClientState, b: ClientState): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export class Hub {
  readonly client: RoomcastClient;
  /** @internal */
  readonly rooms = new Map<string, RoomStore>();
  private readonly activity = new Set<(ev: RoomEvent) => void>();
  private readonly stateListeners = new Set<() => void>();
  private stateCache: ClientState;
  private offState: (() => void) | null = null;
  private ticker: ReturnType<typeof setInterval> | null = null;

  constructor(client: RoomcastClient) {
    this.client = client;
    this.stateCache = client.state;
  }

  /** The store of `room` (made, not yet subscribed, when there is none). */
  store(room: string, options: RoomStoreOptions = {}): RoomStore {
    let s = this.rooms.get(room);
    if (!s) {
      s = new RoomStore(this, room, options);
      this.rooms.set(room, s);
    }
    return s;
  }

  /** Ephemeral events kept per room (the latest per key), at most. */
  static readonly MAX_EPHEMERAL_KEYS = 64;

  /** Listens to every durable event of every room followed through this hub. */
  onActivity(fn: (ev: RoomEvent) => void): () => void {
    this.activity.add(fn);
    return () => {
      this.activity.delete(fn);
    };
  }

  /** @internal */
  emitActivity(ev: RoomEvent): void {
    for (const fn of [...this.activity]) fn(ev);
  }

  // The client's state, for useSyncExternalStore.
  readonly subscribeState = (cb: () => void): (() => void) => {
    this.stateListeners.add(cb);
    if (!this.offState) {
      this.offState = this.client.on('state', (s) => {
        this.stateCache = s;
        this.notifyState();
      });
      // The client emits `state` when what it shows changes, not as
      // `delayMs` grows or `lastUpdateAt` moves on a pong: re-read it each second.
      this.ticker = setInterval(() => this.touchState(), STATE_TICK_MS);
      this.touchState();
    }
    return () => {
      this.stateListeners.delete(cb);
      if (this.stateListeners.size === 0 && this.offState) {
        this.offState();
        this.offState = null;
        if (this.ticker !== null) clearInterval(this.ticker);
        this.ticker = null;
      }
    };
  };

  readonly getState = (): ClientState => this.stateCache;

  /**
   * Re-reads the client's state; a new object only when something changed.
   * @internal
   */
  touchState(): void {
    const s = this.client.state;
    if (!sameState(s, this.stateCache)) {
      this.stateCache = s;
      this.notifyState();
    }
  }

  private notifyState(): void {
    for (const cb of [...this.stateListeners]) cb();
  }
}

/** One room followed through the hooks: one client subscription, reference counted. */
export class RoomStore {
  readonly room: string;
  private readonly hub: Hub;
  private readonly since: number | null | undefined;
  private readonly snapshots: boolean;
  private presence: boolean;
  private readonly polling: boolean;
  private readonly messages: boolean;
  private readonly maxEvents: number;
  private refs = 0;
  private sub: Subscription | null = null;
  /** This store made the client subscription (and so ends it). */
  private owned = false;
  private offs: Array<() => void> = [];
  private disposed = false;
  private releaseTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly sweepTimer: ReturnType<typeof setTimeout>;
  private readonly listeners = new Set<() => void>();
  private readonly eventListeners = new Set<(ev: RoomEvent) => void>();
  private pending: RoomEvent[] = [];
  private patch: Partial<RoomData> | null = null;
  private flushQueued = false;
  /** The last durable seq appended: a second line of defence against duplicates. */
  private lastSeq: number | null = null;
  private data: RoomData;

  constructor(hub: Hub, room: string, options: RoomStoreOptions) {
    this.hub = hub;
    this.room = room;
    this.since = options.since;
    this.snapshots = options.snapshots ?? false;
    this.presence = options.presence ?? false;
    this.polling = options.polling ?? false;
    this.messages = options.messages ?? false;
    this.maxEvents = Math.max(1, options.maxEvents ?? DEFAULT_MAX_EVENTS);
    this.data = emptyRoomData(room);
    this.sweepTimer = setTimeout(() => {
      if (this.refs === 0 && !this.sub) this.dispose();
    }, SWEEP_MS);
  }

  /** A component follows the room: subscribe if this is the first. */
  acquire(): void {
    if (this.disposed) throw new Error(`roomcast: the store of ${this.room} was disposed`);
    this.refs += 1;
    clearTimeout(this.sweepTimer);
    if (this.releaseTimer !== null) {
      clearTimeout(this.releaseTimer);
      this.releaseTimer = null;
    }
    if (!this.sub) this.open();
  }

  /**
   * A component stops following it; the last one unsubscribes on the next
   * tick (so StrictMode's unmount/remount and a quick re-mount keep the
   * subscription and the events).
   */
  release(): void {
    this.refs = Math.max(0, this.refs - 1);
    if (this.refs > 0 || this.releaseTimer !== null) return;
    this.releaseTimer = setTimeout(() => {
      this.releaseTimer = null;
      if (this.refs === 0) this.dispose();
    }, 0);
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  /**
   * A hook wants the room's members: a store opened without `presence` is
   * subscribed again with it, from its cursor (no event twice: the client's
   * cursor and this store's last seq both hold).
   */
  wantPresence(): void {
    if (this.presence || this.disposed) return;
    this.presence = true;
    const client = this.hub.client;
    if (!this.sub || !this.owned || client.subscription(this.room) !== this.sub) return;
    for (const off of this.offs) off();
    this.offs = [];
    const cursor = this.sub.cursor;
    client.unsubscribe(this.room);
    this.sub = null;
    this.open(cursor);
  }

  /** Calls `fn` for every event (durable and ephemeral) as it is delivered. */
  onEvent(fn: (ev: RoomEvent) => void): () => void {
    this.eventListeners.add(fn);
    return () => {
      this.eventListeners.delete(fn);
    };
  }

  readonly subscribe = (cb: () => void): (() => void) => {
    this.listeners.add(cb);
    return () => {
      this.listeners.delete(cb);
    };
  };

  readonly getSnapshot = (): RoomData => this.data;

  private open(from?: number | null): void {
    const client = this.hub.client;
    const existing = client.subscription(this.room);
    this.owned = !existing;
    const since = from !== undefined ? from : (this.since ?? null);
    const sub = existing ?? client.subscribe(this.room, {
        since,
        snapshots: this.snapshots,
        presence: this.presence,
        messages: this.messages,
        ...(this.polling ? { mode: 'polling' as const } : {}),
      });
    this.sub = sub;
    if (sub.cursor !== null) this.lastSeq = sub.cursor;
    this.offs = [
      sub.on('event', (ev) => this.onClientEvent(ev)),
      sub.on('subscribed', (s) => this.onSnapshot(s, true)),
      sub.on('snapshot', (s) => this.onSnapshot(s, false)),
      sub.on('reset', (r) => {
        this.lastSeq = r.head;
        this.update({
          reset: { head: r.head, state: r.state, at: Date.now() },
          state: r.state,
          head: r.head,
          cursor: r.head,
        });
      }),
      sub.on('error', (e) => this.update({ error: e })),
      sub.on('presence', (p) => this.update({ members: p.members, membersKnown: true })),
      sub.on('messages', (m) => this.update({ messages: m })),
    ];
    if (sub.messagesMode && sub.messages.size > 0) this.update({ messages: sub.messageList() });
    if (sub.presence && sub.members.size > 0) {
      this.update({ members: [...sub.members].map(([s, info]) => ({ sub: s, info })), membersKnown: true });
    }
    if (existing && existing.head !== null) {
      this.update({ head: existing.head, roomStatus: existing.status, state: existing.state, cursor: existing.cursor });
    }
  }

  private dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    clearTimeout(this.sweepTimer);
    for (const off of this.offs) off();
    this.offs = [];
    const client = this.hub.client;
    if (this.sub && this.owned && client.subscription(this.room) === this.sub) client.unsubscribe(this.room);
    this.sub = null;
    if (this.hub.rooms.get(this.room) === this) this.hub.rooms.delete(this.room);
  }

  private onClientEvent(ev: RoomEvent): void {
    if (this.disposed) return;
    if (ev.seq === null) {
      const key = ev.key ?? ev.type;
      const prev = this.patch?.ephemeral ?? this.data.ephemeral;
      const next: Record<string, RoomEvent> = { ...prev };
      delete next[key]; // the latest goes last (oldest first when trimmed)
      next[key] = ev;
      const keys = Object.keys(next);
      if (keys.length > Hub.MAX_EPHEMERAL_KEYS) delete next[keys[0]];
      this.update({ lastEphemeral: ev, ephemeral: next });
    } else {
      if (this.lastSeq !== null && ev.seq <= this.lastSeq) return;
      this.lastSeq = ev.seq;
      this.pending.push(ev);
      this.queueFlush();
    }
    for (const fn of [...this.eventListeners]) {
      try {
        fn(ev);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
    if (ev.seq !== null) this.hub.emitActivity(ev);
  }

  private onSnapshot(s: Snapshot, subscribed: boolean): void {
    this.update(subscribed ? { head: s.head, roomStatus: s.status, state: s.state, subscribed: true, error: null } : { head: s.head, roomStatus: s.status, state: s.state });
    if (subscribed && this.sub?.presence) {
      this.update({ members: [...this.sub.members].map(([m, info]) => ({ sub: m, info })), membersKnown: true });
    }
  }

  private update(p: Partial<RoomData>): void {
    this.patch = { ...(this.patch ?? {}), ...p };
    this.queueFlush();
  }

  /** Changes are applied once per microtask: a burst of events is one render. */
  private queueFlush(): void {
    if (this.flushQueued) return;
    this.flushQueued = true;
    queueMicrotask(() => this.flush());
  }

  private flush(): void {
    this.flushQueued = false;
    const added = this.pending;
    const patch = this.patch;
    this.pending = [];
    this.patch = null;
    if (added.length === 0 && patch === null) return;
    let events = this.data.events;
    if (added.length > 0) {
      events = events.concat(added);
      if (events.length > this.maxEvents) events = events.slice(events.length - this.maxEvents);
    }
    const cursor = this.sub?.cursor ?? patch?.cursor ?? this.data.cursor;
    const head = Math.max(patch?.head ?? this.data.head ?? -1, cursor ?? -1);
    this.data = {
      ...this.data,
      ...(patch ?? {}),
      events,
      received: this.data.received + added.length,
      cursor,
      head: head >= 0 ? head : null,
    };
    for (const cb of [...this.listeners]) cb();
    this.hub.touchState();
  }
}
