// @ts-check
/**
 * roomcast browser client: an ES module with no build step, served by the
 * server at `GET /client.js`.
 *
 * ```js
 * import { RoomcastClient } from '/client.js';
 * const client = new RoomcastClient({ token: () => fetch('/my-token').then(r => r.text()) });
 * const sub = client.subscribe('meeting-42', { since: 0, onEvent: (e) => console.log(e.seq, e.type, e.data) });
 * client.on('state', (s) => console.log(s.status, s.transport, s.counts));
 * ```
 *
 * What it guarantees, on every transport (WebSocket, long-poll, refresh):
 * - one cursor per room (the last seq delivered); every (re)connection and
 *   every poll resumes from it, and an event is handed to `onEvent` only when
 *   its seq is the cursor + 1: never a duplicate, never a gap (a gap is read
 *   back over REST before going on; `reset` resyncs from the snapshot);
 * - reconnects with full-jitter exponential backoff (0.5 s rising to 20 s);
 * - a watchdog on wall-clock time (`Date.now()`, since background tabs
 *   throttle timers): the server's WebSocket pings are answered by the
 *   browser invisibly, so the client sends its own `{"op":"ping"}` every
 *   `heartbeat_ms` and treats a missing `pong` as a stale socket;
 * - reacts to `online` / `offline`, `visibilitychange` and `pageshow`;
 * - modes `realtime` (WebSocket), `polling` (long-poll) and `auto`
 *   (WebSocket, falling back to long-poll after repeated failures or a
 *   connect timeout, and probing WebSocket while polling to switch back).
 *
 * docs/client.md describes the API and the behaviour in full.
 */

/** @typedef {'realtime' | 'polling' | 'auto'} Mode */
/** @typedef {'websocket' | 'longpoll' | 'none'} Transport */
/** @typedef {'connecting' | 'live' | 'delayed' | 'offline'} Status */
/** @typedef {'push' | 'catchup' | 'poll'} Source */
/** @typedef {'in_progress' | 'completed' | 'failed'} RoomStatus */

/**
 * An event as handed to `onEvent`.
 * @typedef {object} RoomEvent
 * @property {string} room
 * @property {number | null} seq per-room sequence number; `null` for an ephemeral event
 * @property {string} type
 * @property {unknown} data
 * @property {string} ts RFC 3339 commit time, set by the server
 * @property {Source} source how it reached this client: live push, catch-up (server read-back, or a gap this client repaired) or poll
 * @property {boolean} ephemeral never stored, never advances the cursor
 * @property {string} [key] an ephemeral event's coalescing key
 * @property {Record<string, unknown>} [state] the state merge patch (RFC 7386) its publish applied, if any
 * @property {RoomStatus} [status] the status its publish set, if any
 * @property {number} [updates] a message version: this event's data replaces event `updates`'s
 * @property {number} [appends] a message version: this event's `data.text` is appended to event `appends`'s
 * @property {number} [deletes] a message version: event `deletes` is deleted
 */

/**
 * A message of a room as it stands (subscriptions with `messages`): the
 * original event's seq, type and time, its latest data (updates replace it,
 * appends extend its `text`), and `version`, the seq of the last change
 * applied (its own seq when never changed).
 * @typedef {object} Message
 * @property {number} seq
 * @property {string} type
 * @property {unknown} data
 * @property {string} ts
 * @property {number} version
 * @property {boolean} edited the message was changed after it was published
 */

/**
 * Counters, for the client's whole life.
 * @typedef {object} Counts
 * @property {number} push events delivered by live push
 * @property {number} catchup events delivered by catch-up
 * @property {number} poll events delivered by a poll or `refresh()`
 * @property {number} duplicates events dropped because their seq was already delivered
 * @property {number} gaps gaps repaired (an event arrived ahead of the cursor and the missing ones were read back)
 * @property {number} reconnects connections re-established after one was lost
 */

/**
 * What the client shows the page (`client.state`, and the `state` event).
 * @typedef {object} ClientState
 * @property {Mode} mode
 * @property {Transport} transport the transport in use now
 * @property {Status} status `connecting`: not live yet since the client started (for up to `offlineAfterMs`); `live`: connected and known up to date; `delayed`: not known to be up to date for `delayMs` (stale socket, reconnecting); `offline`: no network, closed, or nothing heard for `offlineAfterMs`
 * @property {number | null} lastUpdateAt epoch ms of the last time the client heard from the server on a healthy transport (an event, a pong, a poll answer): its data is current as of then
 * @property {number | null} lastEventAt epoch ms of the last durable event delivered
 * @property {number} delayMs now - lastUpdateAt while `delayed`, else 0
 * @property {boolean} online the browser's `navigator.onLine`
 * @property {string} detail a short human explanation ("reconnecting in 1.2 s", "stale socket", ...)
 * @property {Counts} counts
 */

/**
 * @typedef {object} ClientError
 * @property {string} code `unauthorized`, `forbidden`, `bad_request`, `unavailable`, `rate_limited`, ... (as in the REST errors)
 * @property {string} message
 * @property {string} [room]
 */

/**
 * @typedef {object} ReconnectInfo
 * @property {Transport} transport
 * @property {number} attempt 0 for the first retry after a loss
 * @property {number} delayMs the jittered delay chosen
 * @property {number} windowMs the backoff window the delay was drawn from (delay is uniform in [0, windowMs))
 * @property {string} reason
 */

/**
 * @typedef {object} ClientEvents
 * @property {ClientState} state any change of the client's state
 * @property {Status} status the status changed
 * @property {ClientError} error an error the server reported, or a request that failed for good
 * @property {ReconnectInfo} reconnecting a reconnect was scheduled
 * @property {{transport: Transport, session: string | null}} connected a transport was (re)established
 */

/**
 * @typedef {object} Snapshot
 * @property {number} head
 * @property {RoomStatus} status
 * @property {Record<string, unknown>} state
 */

/**
 * @typedef {object} SubscriptionEvents
 * @property {RoomEvent} event an event, in seq order, once
 * @property {Snapshot} subscribed the server confirmed the subscription (WebSocket) or answered the first poll
 * @property {Snapshot} snapshot the room's state, status or head changed (from a poll answer, `subscribed`, an event that carried a state patch or a status, or a snapshot read after events when `snapshots` is on)
 * @property {{head: number, state: Record<string, unknown>, first: number, since: number}} reset the events after the cursor (`since`) can no longer be replayed (pruned by the retention when `since < first - 1`, else the cursor was beyond the head): resync from `state`; the cursor is now `head`; `first` is the lowest seq the room still stores
 * @property {ClientError} error
 * @property {PresenceChange} presence the room's members changed (subscriptions with `presence`)
 * @property {Message[]} messages the room's messages as they stand, by seq (subscriptions with `messages`): after the first read and after each change
 */

/**
 * @typedef {object} Member
 * @property {string} sub the member (a token's `sub`)
 * @property {Record<string, unknown>} info what its token says of it (display name, avatar, role)
 */

/**
 * @typedef {object} PresenceChange
 * @property {Member[]} members every member now
 * @property {Member[]} joined
 * @property {{sub: string}[]} left
 */

/**
 * @typedef {object} SubscribeOptions
 * @property {number | null} [since] the last seq the caller already has: events after it are delivered. `0`: the whole history; absent/`null`: from now on (no history)
 * @property {boolean} [presence] join the room as a member (the token's `sub` and `info`) and follow its members: `subscribed` brings them, `presence` frames the changes (realtime); in polling mode the members are read every few seconds and the page is not a member
 * @property {(p: PresenceChange) => void} [onPresence]
 * @property {boolean} [messages] keep the room's messages as they stand (`subscription.messages`, the `messages` event): the room is read once with `view=latest` (a summary streamed as 2,000 appends is one message), then every change is applied as it comes, once. Without `since` the subscription then follows from where that read ended (no event is replayed); with `since` the events after it are delivered as well
 * @property {(m: Message[]) => void} [onMessages]
 * @property {'polling'} [mode] `polling`: this room long-polls whatever the client's mode (the others keep the WebSocket); absent: the room follows the client's mode
 * @property {boolean} [snapshots] re-read the room's snapshot (state, status) shortly after events arrive over WebSocket. Not needed to follow `state` and `status`: every event that changed them carries its patch and status, applied in seq order. For a room whose state is changed without an event. Default false.
 * @property {(e: RoomEvent) => void} [onEvent]
 * @property {(s: Snapshot) => void} [onSubscribed]
 * @property {(s: Snapshot) => void} [onSnapshot]
 * @property {(r: {head: number, state: Record<string, unknown>}) => void} [onReset]
 * @property {(e: ClientError) => void} [onError]
 */

/**
 * @typedef {object} ClientOptions
 * @property {string | (() => string | Promise<string>)} token a JWT, or a function that returns one: called on each WebSocket (re)connect, before expiry to renew it on an open WebSocket (`op: auth`), and for HTTP requests when the last one is near its expiry or was refused (401)
 * @property {string} [url] the server's base URL (`https://rt.example.com`); default: the page's origin
 * @property {Mode} [mode] default `auto`
 * @property {number} [backoffBaseMs] first backoff window; default 500
 * @property {number} [backoffMaxMs] largest backoff window; default 20000
 * @property {number} [connectTimeoutMs] a WebSocket that has not said `welcome` by then failed; default 10000
 * @property {number} [pingIntervalMs] client ping interval; default the server's `heartbeat_ms` (15000)
 * @property {number} [pongTimeoutMs] a ping unanswered this long: `delayed`; twice this long: the socket is dead and replaced; default 5000
 * @property {number} [offlineAfterMs] not up to date for this long: `offline` rather than `delayed`; default 30000
 * @property {number} [fallbackAfter] auto mode: WebSocket attempts failing in a row before falling back to long-poll; default 3
 * @property {number} [probeIntervalMs] auto mode: how often to try WebSocket again while long-polling; default 30000 (jittered by up to 20%)
 * @property {number} [pollWaitS] long-poll `wait`; default 25
 * @property {number} [pollLimit] events per poll request; default 500
 * @property {number} [roomsPollMs] polling mode: how often a live room list is read; default 5000
 * @property {number} [snapshotDelayMs] how long after an event over WebSocket the snapshot is re-read (subscriptions with `snapshots`); default 300
 */

const DEFAULTS = {
  mode: /** @type {Mode} */ ('auto'),
  backoffBaseMs: 500,
  backoffMaxMs: 20000,
  connectTimeoutMs: 10000,
  pongTimeoutMs: 5000,
  offlineAfterMs: 30000,
  fallbackAfter: 3,
  probeIntervalMs: 30000,
  pollWaitS: 25,
  pollLimit: 500,
  roomsPollMs: 5000,
  snapshotDelayMs: 300,
};

/** How often the watchdog runs (it compares wall-clock times; a late tick is fine). */
const TICK_MS = 1000;
/** Polling mode: the members of a room with `presence` are read this often. */
const MEMBERS_POLL_MS = 5000;
/** A WebSocket that lived this long before closing resets the backoff. */
const STABLE_MS = 5000;
/** A long-poll still pending this long past its `wait` is presumed dead. */
const POLL_GRACE_MS = 10000;
/** The watchdog tick came this late: the page was frozen or the machine slept. */
const WOKE_AFTER_MS = 5000;

const TERMINAL = new Set(['completed', 'failed']);

/**
 * A small typed event emitter.
 * @template {object} E
 */
class Emitter {
  constructor() {
    /** @type {Map<keyof E, Set<(payload: any) => void>>} */
    this._listeners = new Map();
  }

  /**
   * Calls `fn` on every `name` event; answers a function that removes it.
   * @template {keyof E} K
   * @param {K} name
   * @param {(payload: E[K]) => void} fn
   * @returns {() => void}
   */
  on(name, fn) {
    let set = this._listeners.get(name);
    if (!set) {
      set = new Set();
      this._listeners.set(name, set);
    }
    set.add(fn);
    return () => this.off(name, fn);
  }

  /**
   * @template {keyof E} K
   * @param {K} name
   * @param {(payload: E[K]) => void} fn
   */
  off(name, fn) {
    this._listeners.get(name)?.delete(fn);
  }

  /**
   * @template {keyof E} K
   * @param {K} name
   * @param {E[K]} payload
   */
  emit(name, payload) {
    for (const fn of [...(this._listeners.get(name) ?? [])]) {
      try {
        fn(payload);
      } catch (e) {
        // A listener's bug must not break delivery; surface it asynchronously.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

/**
 * The `exp` claim of a JWT, in epoch ms (null when unreadable).
 * @param {string} jwt
 * @returns {number | null}
 */
function jwtExpiry(jwt) {
  try {
    const part = jwt.split('.')[1] ?? '';
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
    const exp = JSON.parse(json).exp;
    return typeof exp === 'number' ? exp * 1000 : null;
  } catch {
    return null;
  }
}

/**
 * `fetch` failed with a status the caller may act on.
 */
class HttpError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   * @param {number | null} retryAfterMs
   */
  constructor(status, code, message, retryAfterMs) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * One room followed by a client: its cursor, what is known of the room, and
 * its listeners. Made by `RoomcastClient.subscribe`.
 * @extends {Emitter<SubscriptionEvents>}
 */
export class Subscription extends Emitter {
  /**
   * @param {RoomcastClient} client
   * @param {string} room
   * @param {SubscribeOptions} options
   */
  constructor(client, room, options) {
    super();
    /** @private */
    this._client = client;
    /** The room id. */
    this.room = room;
    /** The last seq delivered (null until known, when subscribing "from now"). @type {number | null} */
    this.cursor = options.since ?? null;
    /** The room's head as last reported by the server. @type {number | null} */
    this.head = null;
    /** The room's status as last reported. @type {RoomStatus | null} */
    this.status = null;
    /** The room's state: the last snapshot's, with every later event's patch applied in seq order. @type {Record<string, unknown>} */
    this.state = {};
    /** @internal the seq `state` and `status` stand at (events at or below it are already in them) @type {number | null} */
    this.stateAt = null;
    /** Re-read the snapshot after WebSocket events. */
    this.snapshots = options.snapshots ?? false;
    /** Join as a member and follow the members. */
    this.presence = options.presence ?? false;
    /** Keep the room's messages as they stand (`messages`). */
    this.messagesMode = options.messages ?? false;
    /** The room's messages as they stand, by seq (with `messages`). @type {Map<number, Message>} */
    this.messages = new Map();
    /** @internal the seq the messages stand at (events after it are applied) @type {number | null} */
    this.messagesAt = null;
    /** @internal the first read of the messages is under way or to come */
    this.viewPending = this.messagesMode;
    /** @internal a read of the messages is running */
    this.viewLoading = false;
    /** @internal the caller gave `since` (events after it are delivered too) */
    this.sinceGiven = options.since !== undefined && options.since !== null;
    /** `polling`: this room long-polls whatever the client's transport. @type {'polling' | null} */
    this.mode = options.mode === 'polling' ? 'polling' : null;
    /** @internal the generation whose long-poll loop runs for this room, if any @type {number | null} */
    this.loopGen = null;
    /** @internal failed polls in a row (a room polling beside a WebSocket) */
    this.failures = 0;
    /** The room's members (with `presence`), by sub. @type {Map<string, Record<string, unknown>>} */
    this.members = new Map();
    /** @internal when the members were last read over REST (polling) */
    this.membersReadAt = 0;
    /** @internal the server confirmed the subscription on the current WebSocket */
    this.wsSubscribed = false;
    /** @internal the server refused the subscription (forbidden, bad request): not retried */
    this.failed = /** @type {ClientError | null} */ (null);
    /** @internal the `first` of the last `subscribed`: the room's first event when the cursor is below it and no `reset` came @type {number | null} */
    this.lifeFirst = null;
    /** @internal events that arrived ahead of the cursor, by seq, while a gap is read back @type {Map<number, RoomEvent>} */
    this.pending = new Map();
    /** @internal a gap read-back is running */
    this.repairing = false;
    /** @internal the long-poll in flight @type {AbortController | null} */
    this.poll = null;
    /** @internal wall-clock start of the long-poll in flight */
    this.pollStartedAt = 0;
    /** @internal snapshot re-read timer */
    this.snapshotTimer = /** @type {ReturnType<typeof setTimeout> | null} */ (null);
    /** @internal false once unsubscribed */
    this.active = true;
    /** @internal the long-poll loop's wait before retrying @type {Timer | null} */
    this.retry = null;
    /** @internal a 401 was retried once with a fresh token */
    this.retriedAuth = false;
    if (options.onEvent) this.on('event', options.onEvent);
    if (options.onSubscribed) this.on('subscribed', options.onSubscribed);
    if (options.onSnapshot) this.on('snapshot', options.onSnapshot);
    if (options.onReset) this.on('reset', options.onReset);
    if (options.onError) this.on('error', options.onError);
    if (options.onPresence) this.on('presence', options.onPresence);
    if (options.onMessages) this.on('messages', options.onMessages);
  }

  /** The room's messages as they stand, by seq (with `messages`). @returns {Message[]} */
  messageList() {
    return [...this.messages.values()];
  }

  /** Stops following the room. */
  unsubscribe() {
    this._client.unsubscribe(this.room);
  }
}

/**
 * @typedef {Snapshot & {room: string, first?: number, created_at: string, updated_at: string}} RoomSnapshot
 */

/**
 * @typedef {object} RoomsFilter
 * @property {RoomStatus} [status] only rooms with this status
 * @property {string} [prefix] only rooms whose id starts with this
 * @property {number} [limit] rooms in the first answer (newest activity first); default 100
 */

/**
 * @typedef {object} RoomListEvents
 * @property {RoomSnapshot[]} rooms a fresh list (on every (re)subscribe, and every poll in polling mode)
 * @property {{room: RoomSnapshot, matches: boolean}} room one room changed (`matches: false`: it no longer passes the filter)
 * @property {RoomSnapshot[]} change the list after any of the above, newest activity first
 * @property {ClientError} error a read of the list failed (tried again: the next poll, the next reconnect); the last list is kept
 */

/**
 * A live room list (`subscribeRooms`): over WebSocket the server pushes a
 * fresh list on every (re)subscribe, then a `room` frame per change; in
 * polling mode the list is read every `roomsPollMs`.
 * @extends {Emitter<RoomListEvents>}
 */
export class RoomList extends Emitter {
  /**
   * @param {RoomcastClient} client
   * @param {RoomsFilter} filter
   */
  constructor(client, filter) {
    super();
    /** @private */
    this._client = client;
    /** The filter. */
    this.filter = filter;
    /** The rooms, by id. @type {Map<string, RoomSnapshot>} */
    this.rooms = new Map();
    /** @internal the server answered on the current WebSocket */
    this.wsSubscribed = false;
    /** @internal false once stopped */
    this.active = true;
    /** @internal rooms changed by a pushed frame since the last full list @type {Map<string, number>} */
    this.pushedAt = new Map();
    /** @internal polling: the next read @type {ReturnType<typeof setTimeout> | null} */
    this.timer = null;
    /** @internal a REST read of the whole list is under way */
    this.refilling = false;
  }

  /** The rooms, newest activity first. @returns {RoomSnapshot[]} */
  list() {
    return [...this.rooms.values()].sort(
      (a, b) => (a.updated_at < b.updated_at ? 1 : a.updated_at > b.updated_at ? -1 : a.room < b.room ? -1 : 1),
    );
  }

  /** Stops the list (the client's other lists go on). */
  unsubscribe() {
    this._client._dropRoomList(this);
  }

  /** Reads the list now (`GET /v1/rooms`) and takes it. */
  async refresh() {
    this._replace(await this._client.listRooms(this.filter));
  }

  /**
   * @internal
   * @param {RoomSnapshot[]} rooms
   */
  _replace(rooms) {
    // A room a pushed frame showed newer than this answer keeps the frame's
    // version (the answer may have been read before that change).
    const next = new Map();
    for (const r of rooms) {
      if (!passes(r, this.filter)) continue;
      const seen = this.rooms.get(r.room);
      next.set(r.room, seen && this.pushedAt.get(r.room) !== undefined && seen.head > r.head ? seen : r);
    }
    this.rooms = next;
    this.pushedAt.clear();
    this._trim();
    this.emit('rooms', this.list());
    this.emit('change', this.list());
  }

  /**
   * A pushed `room` frame (of this list's filter, or of a wider one shared
   * by several lists: then this list's own filter is applied here).
   * @internal
   * @param {RoomSnapshot} room
   * @param {boolean} matches
   */
  _update(room, matches) {
    const ok = matches && passes(room, this.filter);
    const had = this.rooms.has(room.room);
    if (!ok && !had) return;
    const full = this.rooms.size >= (this.filter.limit ?? 100);
    if (ok) this.rooms.set(room.room, room);
    else this.rooms.delete(room.room);
    this.pushedAt.set(room.room, Date.now());
    this._trim();
    this.emit('room', { room, matches: ok });
    this.emit('change', this.list());
    // A full list that lost a room may have one more to show: read it.
    if (!ok && full) this._client._refillRoomList(this);
  }

  /** @private at most `limit` rooms, the newest activity */
  _trim() {
    const limit = this.filter.limit ?? 100;
    if (this.rooms.size <= limit) return;
    const keep = this.list().slice(0, limit);
    this.rooms = new Map(keep.map((r) => [r.room, r]));
  }
}

/**
 * The roomcast browser client. One per page is enough: it multiplexes every
 * subscribed room over one WebSocket (or one long-poll per room).
 * @extends {Emitter<ClientEvents>}
 */
export class RoomcastClient extends Emitter {
  /** @param {ClientOptions} options */
  constructor(options) {
    super();
    if (!options || (typeof options.token !== 'string' && typeof options.token !== 'function')) {
      throw new TypeError('RoomcastClient: options.token (a JWT or a function returning one) is required');
    }
    /** @private */
    this._opts = { ...DEFAULTS, ...options };
    /** @private */
    this._base = (options.url ?? globalThis.location?.origin ?? '').replace(/\/+$/, '');
    /** @private @type {Mode} */
    this._mode = this._opts.mode;
    /** @private @type {Map<string, Subscription>} */
    this._subs = new Map();
    /** @private the live room lists @type {Set<RoomList>} */
    this._roomLists = new Set();
    /** @private the filter of the socket's `subscribe_rooms` (one per socket, shared by the lists) @type {RoomsFilter | null} */
    this._roomsSent = null;
    /** @private @type {Counts} */
    this._counts = { push: 0, catchup: 0, poll: 0, duplicates: 0, gaps: 0, reconnects: 0 };
    /** @private @type {Transport} */
    this._transport = 'none';
    /** @private @type {number | null} */
    this._lastUpdateAt = null;
    /** @private when the client started: `connecting` until first live, for up to `offlineAfterMs` */
    this._startedAt = Date.now();
    /** @private the client was live once */
    this._wasLive = false;
    /** @private @type {number | null} */
    this._lastEventAt = null;
    /** @private */
    this._detail = 'connecting';
    /** @private */
    this._online = globalThis.navigator?.onLine ?? true;
    /** @private */
    this._closed = false;
    /** @private bumps on every transport change: callbacks of an older generation do nothing */
    this._gen = 0;

    // WebSocket
    /** @private @type {Conn | null} the WebSocket in use (or being opened) */
    this._ws = null;
    /** @private @type {Conn | null} auto mode: a WebSocket tried while long-polling */
    this._probe = null;
    /** @private */
    this._heartbeatMs = 15000;
    /** @private backoff attempt (the window is base * 2^attempt) */
    this._attempt = 0;
    /** @private WebSocket attempts that failed in a row (never said welcome) */
    this._failures = 0;
    /** @private a transport worked once (so the next success is a reconnect) */
    this._everConnected = false;
    /** @private the transport was lost since it last worked */
    this._lost = false;
    /** @private auto mode fell back to long-poll */
    this._fallen = false;
    /** @private long-polls failing (per client, reset by a success) */
    this._pollFailing = false;
    /** @private @type {Timer | null} the next reconnect */
    this._retry = null;
    /** @private @type {Timer | null} the next WebSocket probe (auto mode, long-polling) */
    this._probeTimer = null;
    /** @private @type {Timer | null} renew the token on the open WebSocket */
    this._authTimer = null;

    // token
    /** @private @type {string | null} */
    this._token = null;
    /** @private @type {number | null} epoch ms */
    this._tokenExp = null;
    /** @private */
    this._tokenAt = 0;
    /** @private @type {Promise<string> | null} */
    this._tokenPending = null;

    /** @private */
    this._lastTick = Date.now();
    /** @private */
    this._lastEmitted = '';
    /** @private @type {Status | null} */
    this._lastStatus = null;

    /** @private */
    this._onOnline = () => {
      this._online = true;
      this._attempt = 0;
      this._failures = 0;
      this._detail = 'back online';
      this._restart('online');
    };
    /** @private */
    this._onOffline = () => {
      this._online = false;
      if (this._transport !== 'none') this._lost = true;
      this._detail = 'no network';
      this._stopTransports();
      this._changed();
    };
    /** @private */
    this._onVisible = () => {
      if (globalThis.document?.visibilityState !== 'hidden') this._wake('page visible');
    };
    /** @private */
    this._onPageShow = (/** @type {Event} */ e) => {
      if (/** @type {PageTransitionEvent} */ (e).persisted) this._wake('page restored');
    };
    globalThis.addEventListener?.('online', this._onOnline);
    globalThis.addEventListener?.('offline', this._onOffline);
    globalThis.addEventListener?.('pageshow', this._onPageShow);
    globalThis.document?.addEventListener('visibilitychange', this._onVisible);
    /** @private */
    this._ticker = setInterval(() => this._tick(), TICK_MS);
    this._restart('start');
  }

  // ---------------------------------------------------------------- public

  /** The connection mode. */
  get mode() {
    return this._mode;
  }

  /**
   * The client's state now (a copy).
   * @returns {ClientState}
   */
  get state() {
    const status = this._status();
    const now = Date.now();
    return {
      mode: this._mode,
      transport: this._transport,
      status,
      lastUpdateAt: this._lastUpdateAt,
      lastEventAt: this._lastEventAt,
      delayMs: status === 'delayed' && this._lastUpdateAt !== null ? Math.max(0, now - this._lastUpdateAt) : 0,
      online: this._online,
      detail: this._detail,
      counts: { ...this._counts },
    };
  }

  /**
   * The subscription to `room`, if any.
   * @param {string} room
   */
  subscription(room) {
    return this._subs.get(room) ?? null;
  }

  /**
   * Follows `room`: every event after `since` is delivered to `onEvent` (and
   * the subscription's `event` listeners) exactly once, in seq order.
   * Subscribing again to a room already followed answers the same
   * subscription (with the new handlers added).
   * @param {string} room
   * @param {SubscribeOptions} [options]
   * @returns {Subscription}
   */
  subscribe(room, options = {}) {
    const existing = this._subs.get(room);
    if (existing) {
      if (options.onEvent) existing.on('event', options.onEvent);
      if (options.onSubscribed) existing.on('subscribed', options.onSubscribed);
      if (options.onSnapshot) existing.on('snapshot', options.onSnapshot);
      if (options.onReset) existing.on('reset', options.onReset);
      if (options.onError) existing.on('error', options.onError);
      return existing;
    }
    const since = options.since;
    if (since !== undefined && since !== null && !(Number.isInteger(since) && since >= 0)) {
      throw new TypeError(`subscribe(${room}): since must be an integer >= 0, or null for "from now"`);
    }
    const sub = new Subscription(this, room, options);
    this._subs.set(room, sub);
    if (this._closed) return sub;
    if (this._transport === 'websocket' && this._ws?.welcomed) this._wsSubscribe(sub);
    if (this._transport === 'longpoll') this._pollLoop(sub, this._gen);
    this._changed();
    return sub;
  }

  /**
   * Stops following `room`.
   * @param {string} room
   */
  unsubscribe(room) {
    const sub = this._subs.get(room);
    if (!sub) return;
    sub.active = false;
    sub.poll?.abort();
    if (sub.snapshotTimer) clearTimeout(sub.snapshotTimer);
    this._subs.delete(room);
    const c = this._ws;
    if (c?.welcomed) {
      // Until `unsubscribed`, frames of this room belong to the old
      // subscription (the protocol has no subscription ids). And no
      // `unsubscribe` while its `subscribe` is unanswered: the server could
      // then open a later subscription of the room from this one's `since`.
      c.leaving.add(room);
      if (c.opening.has(room)) c.closeAfterOpen.add(room);
      else this._send(c, { op: 'unsubscribe', room });
    }
    this._changed();
  }

  /**
   * Switches the connection mode (the cursor of every room is kept).
   * @param {Mode} mode
   */
  setMode(mode) {
    if (mode !== 'realtime' && mode !== 'polling' && mode !== 'auto') {
      throw new TypeError(`unknown mode ${mode}`);
    }
    if (mode === this._mode) return;
    this._mode = mode;
    this._attempt = 0;
    this._failures = 0;
    this._fallen = false;
    this._restart(`mode ${mode}`);
  }

  /**
   * Fetches every room from its cursor now (REST), whatever the mode, and
   * checks the connection: a WebSocket is pinged, a pending reconnect
   * happens now, a long-poll is restarted. Resolves when the rooms are read.
   * @returns {Promise<void>}
   */
  async refresh() {
    if (this._closed) return;
    this._wake('refresh');
    await Promise.all(
      [...this._subs.values()].map(async (sub) => {
        try {
          await this._readAll(sub, 'poll');
        } catch (e) {
          this._reportFetchError(sub, e);
        }
      }),
    );
    this._changed();
  }

  /**
   * A room's snapshot (`GET /v1/rooms/{room}`); null for a room never
   * published to.
   * @param {string} room
   * @returns {Promise<(Snapshot & {room: string, created_at: string, updated_at: string}) | null>}
   */
  async fetchRoom(room) {
    try {
      return await this._get(`/v1/rooms/${encodeURIComponent(room)}`);
    } catch (e) {
      if (e instanceof HttpError && e.status === 404) return null;
      throw e;
    }
  }

  /**
   * The rooms of the token's org, newest activity first (`GET /v1/rooms`).
   * @param {RoomsFilter} [query]
   * @returns {Promise<Array<Snapshot & {room: string, created_at: string, updated_at: string}>>}
   */
  async listRooms(query = {}) {
    const q = new URLSearchParams();
    if (query.status) q.set('status', query.status);
    if (query.prefix) q.set('prefix', query.prefix);
    q.set('limit', String(query.limit ?? 100));
    const body = await this._get(`/v1/rooms?${q}`);
    return body.rooms;
  }

  /**
   * Follows the org's rooms that pass `filter`, live (a call board): a
   * fresh list on every (re)connect, then a `room` event per change (the
   * server coalesces them: at most 4 a second per room). One list per
   * client: subscribing again replaces it.
   * @param {RoomsFilter} [filter]
   * @param {{onRooms?: (rooms: RoomSnapshot[]) => void, onRoom?: (r: {room: RoomSnapshot, matches: boolean}) => void, onChange?: (rooms: RoomSnapshot[]) => void}} [handlers]
   * @returns {RoomList}
   */
  subscribeRooms(filter = {}, handlers = {}) {
    const list = new RoomList(this, { ...filter });
    if (handlers.onRooms) list.on('rooms', handlers.onRooms);
    if (handlers.onRoom) list.on('room', handlers.onRoom);
    if (handlers.onChange) list.on('change', handlers.onChange);
    this._roomLists.add(list);
    if (this._transport === 'websocket' && this._ws?.welcomed) {
      // The socket's one subscription now covers this list too; a list it
      // already covered reads its first answer over REST.
      if (!this._wsSubscribeRooms()) this._refillRoomList(list);
    }
    if (this._transport === 'longpoll') this._pollRooms(list, this._gen);
    return list;
  }

  /** Stops every live room list. */
  unsubscribeRooms() {
    for (const list of [...this._roomLists]) this._dropRoomList(list);
  }

  /**
   * @internal
   * @param {RoomList} list
   */
  _dropRoomList(list) {
    if (!this._roomLists.delete(list)) return;
    list.active = false;
    if (list.timer) clearTimeout(list.timer);
    list.timer = null;
    if (!this._ws?.welcomed) return;
    if (this._roomLists.size === 0) {
      if (this._roomsSent) this._send(this._ws, { op: 'unsubscribe_rooms' });
      this._roomsSent = null;
    } else {
      this._wsSubscribeRooms();
    }
  }

  /**
   * The filter one `subscribe_rooms` needs for every list: a list's own
   * filter when there is one (or all share it), else the org's every room,
   * each list applying its own filter to the frames.
   * @private
   * @returns {RoomsFilter | null}
   */
  _roomsFilter() {
    const lists = [...this._roomLists].filter((l) => l.active);
    if (lists.length === 0) return null;
    const [first] = lists;
    const same = lists.every((l) => l.filter.status === first.filter.status && l.filter.prefix === first.filter.prefix);
    const limit = Math.max(...lists.map((l) => l.filter.limit ?? 100));
    /** @type {RoomsFilter} */
    const f = { limit };
    if (same && first.filter.status) f.status = first.filter.status;
    if (same && first.filter.prefix) f.prefix = first.filter.prefix;
    return f;
  }

  /**
   * Sends `subscribe_rooms` when what the lists need differs from what the
   * socket has (or `force`: a new socket). Answers whether it was sent.
   * @private
   * @param {boolean} [force]
   */
  _wsSubscribeRooms(force = false) {
    const c = this._ws;
    const f = this._roomsFilter();
    if (!c || !c.welcomed || !f) return false;
    if (!force && this._roomsSent && JSON.stringify(this._roomsSent) === JSON.stringify(f)) return false;
    this._roomsSent = f;
    for (const list of this._roomLists) list.wsSubscribed = false;
    /** @type {Record<string, unknown>} */
    const msg = { op: 'subscribe_rooms', ...f };
    this._send(c, msg);
    return true;
  }

  /**
   * A list's full answer over REST (a list the socket's subscription
   * covers with a wider filter, or a full list that lost a room).
   * @internal
   * @param {RoomList} list
   */
  _refillRoomList(list) {
    if (list.refilling) return;
    list.refilling = true;
    setTimeout(async () => {
      try {
        const rooms = await this.listRooms(list.filter);
        if (list.active) {
          list.wsSubscribed = true;
          list._replace(rooms);
        }
      } catch (e) {
        if (list.active) list.emit('error', { code: 'unavailable', message: errorText(e) });
      } finally {
        list.refilling = false;
      }
    }, 0);
  }

  /**
   * Polling mode: the list read every `roomsPollMs`, until the transport
   * changes.
   * @private
   * @param {RoomList} list
   * @param {number} gen
   */
  async _pollRooms(list, gen) {
    if (!list.active || gen !== this._gen || this._closed) return;
    try {
      const rooms = await this.listRooms(list.filter);
      if (list.active && gen === this._gen) list._replace(rooms);
    } catch (e) {
      if (list.active && gen === this._gen) list.emit('error', { code: 'unavailable', message: errorText(e) });
    }
    if (!list.active || gen !== this._gen || this._closed) return;
    list.timer = setTimeout(() => this._pollRooms(list, gen), this._opts.roomsPollMs);
  }

  /** Closes every connection and stops every timer; the client is done. */
  close() {
    this._closed = true;
    this._stopTransports();
    clearInterval(this._ticker);
    globalThis.removeEventListener?.('online', this._onOnline);
    globalThis.removeEventListener?.('offline', this._onOffline);
    globalThis.removeEventListener?.('pageshow', this._onPageShow);
    globalThis.document?.removeEventListener('visibilitychange', this._onVisible);
    for (const sub of this._subs.values()) sub.active = false;
    this._detail = 'closed';
    this._changed();
  }

  // ------------------------------------------------------- state, status

  /**
   * @private
   * @returns {Status}
   */
  _status() {
    if (this._closed || !this._online) return 'offline';
    if (this._healthy()) {
      this._wasLive = true;
      return 'live';
    }
    const now = Date.now();
    if (!this._wasLive && now - this._startedAt < this._opts.offlineAfterMs) return 'connecting';
    if (this._lastUpdateAt !== null && now - this._lastUpdateAt < this._opts.offlineAfterMs) return 'delayed';
    return 'offline';
  }

  /**
   * The transport in use is working and every room is known up to date.
   * @private
   */
  _healthy() {
    const now = Date.now();
    if (this._transport === 'websocket') {
      const c = this._ws;
      if (!c || !c.welcomed) return false;
      if (c.pingAt !== null && now - c.pingAt > this._opts.pongTimeoutMs) return false;
      for (const sub of this._subs.values()) {
        if (sub.failed) continue;
        if (sub.mode === 'polling' ? sub.head === null || sub.failures > 0 : !sub.wsSubscribed) return false;
      }
      return true;
    }
    if (this._transport === 'longpoll') {
      if (this._pollFailing) return false;
      if (![...this._subs.values()].some((s) => s.active && !s.failed)) return true;
      for (const sub of this._subs.values()) {
        if (sub.failed || !sub.active) continue;
        if (sub.cursor === null || sub.head === null) return false;
      }
      return this._lastUpdateAt !== null;
    }
    return false;
  }

  /** @private the server was heard on a healthy transport */
  _contact() {
    this._lastUpdateAt = Date.now();
  }

  /** @private emits `state` (and `status`) when something shown changed */
  _changed() {
    const s = this.state;
    const key = JSON.stringify({ ...s, delayMs: 0, lastUpdateAt: s.status === 'live' ? 0 : s.lastUpdateAt });
    if (s.status !== this._lastStatus) {
      this._lastStatus = s.status;
      this.emit('status', s.status);
    }
    if (key !== this._lastEmitted) {
      this._lastEmitted = key;
      this.emit('state', s);
    }
  }

  // ------------------------------------------------------------ lifecycle

  /**
   * Stops whatever runs and starts the mode's transport.
   * @private
   * @param {string} why
   */
  _restart(why) {
    if (this._closed) return;
    this._stopTransports();
    if (!this._online) {
      this._detail = 'no network';
      this._changed();
      return;
    }
    this._detail = why === 'start' ? 'connecting' : `reconnecting (${why})`;
    if (this._mode === 'polling' || (this._mode === 'auto' && this._fallen)) {
      this._startPolling();
      if (this._mode === 'auto') this._scheduleProbe();
    } else {
      this._connectWs(false);
    }
    this._changed();
  }

  /** @private closes the WebSocket and the probe, aborts polls, clears timers */
  _stopTransports() {
    this._gen += 1;
    for (const t of [this._retry, this._probeTimer, this._authTimer]) t?.cancel();
    this._retry = this._probeTimer = this._authTimer = null;
    for (const c of [this._ws, this._probe]) if (c) this._drop(c, 1000, 'client switching');
    this._ws = this._probe = null;
    for (const sub of this._subs.values()) {
      sub.wsSubscribed = false;
      sub.poll?.abort();
      sub.poll = null;
      // Ends the loop's wait; it sees the new generation and returns.
      sub.retry?.fire();
      sub.retry = null;
    }
    this._transport = 'none';
  }

  /**
   * Schedules the next attempt of the mode's transport with full-jitter
   * backoff: a delay drawn uniformly from [0, min(max, base * 2^attempt)).
   * @private
   * @param {string} reason
   * @param {Transport} transport
   * @param {() => void} run
   */
  _backoff(reason, transport, run) {
    this._retry?.cancel();
    this._retry = new Timer(this._nextDelay(reason, transport), () => {
      this._retry = null;
      run();
    });
    this._changed();
  }

  /**
   * The next full-jitter delay (and the `reconnecting` event).
   * @private
   * @param {string} reason
   * @param {Transport} transport
   */
  _nextDelay(reason, transport) {
    const windowMs = Math.min(this._opts.backoffMaxMs, this._opts.backoffBaseMs * 2 ** this._attempt);
    const delayMs = Math.floor(Math.random() * windowMs);
    const attempt = this._attempt;
    this._attempt = Math.min(this._attempt + 1, 30);
    this._detail = `${reason}; retrying in ${(delayMs / 1000).toFixed(1)} s`;
    this.emit('reconnecting', { transport, attempt, delayMs, windowMs, reason });
    return delayMs;
  }

  /**
   * The page came back (visible, restored, refresh): check the connection
   * now instead of waiting for throttled timers.
   * @private
   * @param {string} why
   */
  _wake(why) {
    if (this._closed || !this._online) return;
    if (this._retry) {
      // Waiting to reconnect: do it now (the backoff window stays as it was).
      const retry = this._retry;
      this._retry = null;
      retry.fire();
      return;
    }
    if (this._ws?.welcomed) {
      this._ping(this._ws);
    } else if (this._transport === 'longpoll') {
      for (const sub of this._subs.values()) {
        sub.poll?.abort();
        sub.retry?.fire();
      }
    }
    if (this._mode === 'auto' && this._fallen && this._probeTimer && why !== 'page visible') {
      this._probeTimer.fire();
    }
    this._changed();
  }

  /**
   * The watchdog: wall-clock checks, once a second (or whenever the browser
   * lets a throttled timer run).
   * @private
   */
  _tick() {
    const now = Date.now();
    const late = now - this._lastTick > WOKE_AFTER_MS;
    this._lastTick = now;
    if (this._closed) return;
    // Timers that a throttled or frozen page did not run on time.
    for (const t of [this._retry, this._probeTimer, this._authTimer]) if (t && t.due(now)) t.fire();
    if (late) this._wake('woke up');
    for (const c of [this._ws, this._probe]) {
      if (!c) continue;
      if (!c.welcomed) {
        if (now - c.openedAt > this._opts.connectTimeoutMs) {
          c.timedOut = true;
          this._drop(c, 4000, 'connect timeout');
          this._onWsClose(c, 4000, 'connect timeout');
        }
        continue;
      }
      if (c.pingAt !== null) {
        if (now - c.pingAt > 2 * this._opts.pongTimeoutMs) {
          this._drop(c, 4000, 'no pong');
          this._onWsClose(c, 4000, 'stale socket: no pong');
          continue;
        }
        if (now - c.pingAt > this._opts.pongTimeoutMs) this._detail = 'stale socket: no pong yet';
      } else if (now - c.lastRx >= (this._opts.pingIntervalMs ?? this._heartbeatMs)) {
        this._ping(c);
      }
    }
    for (const sub of this._subs.values()) {
      if (sub.poll && now - sub.pollStartedAt > this._opts.pollWaitS * 1000 + POLL_GRACE_MS) sub.poll.abort();
      if (sub.retry?.due(now)) sub.retry.fire();
    }
    this._changed();
  }

  // ---------------------------------------------------------------- token

  /**
   * The token to use now: the provider is called again when the last one is
   * within its renewal margin (or `force`).
   * @private
   * @param {boolean} [force]
   * @returns {Promise<string>}
   */
  async _getToken(force = false) {
    const t = this._opts.token;
    if (typeof t === 'string') return t;
    if (!force && this._token !== null && !this._tokenDue()) return this._token;
    if (!this._tokenPending) {
      this._tokenPending = Promise.resolve()
        .then(() => t())
        .then((token) => {
          if (typeof token !== 'string' || !token) throw new Error('the token provider returned no token');
          this._token = token;
          this._tokenExp = jwtExpiry(token);
          this._tokenAt = Date.now();
          return token;
        })
        .finally(() => {
          this._tokenPending = null;
        });
    }
    return this._tokenPending;
  }

  /**
   * When the current token should be renewed (epoch ms), or null: a fifth of
   * its life before expiry, at most a minute before.
   * @private
   */
  _tokenRenewAt() {
    if (this._tokenExp === null) return null;
    const life = this._tokenExp - this._tokenAt;
    return this._tokenExp - Math.min(60000, Math.max(0, life) / 5);
  }

  /** @private */
  _tokenDue() {
    const at = this._tokenRenewAt();
    return at !== null && Date.now() >= at;
  }

  /**
   * On an open WebSocket: renews the token before it expires with `op: auth`.
   * @private
   * @param {Conn} c
   */
  _scheduleAuth(c) {
    this._authTimer?.cancel();
    this._authTimer = null;
    if (typeof this._opts.token === 'string') return;
    const at = this._tokenRenewAt();
    if (at === null) return;
    this._authTimer = new Timer(Math.max(0, at - Date.now()), async () => {
      this._authTimer = null;
      const old = this._tokenExp;
      try {
        const token = await this._getToken(true);
        if (c !== this._ws || !c.welcomed) return;
        if (this._tokenExp !== null && old !== null && this._tokenExp <= old) {
          // The provider gave no fresher token: ask again shortly.
          this._authTimer = new Timer(5000, () => this._scheduleAuth(c));
          return;
        }
        this._send(c, { op: 'auth', token });
        this._scheduleAuth(c);
      } catch (e) {
        this.emit('error', { code: 'unauthorized', message: `token provider failed: ${errorText(e)}` });
        if (c === this._ws) this._authTimer = new Timer(5000, () => this._scheduleAuth(c));
      }
    });
  }

  // ------------------------------------------------------------ WebSocket

  /**
   * Opens a WebSocket (`probe`: auto mode tries it while long-polling).
   * @private
   * @param {boolean} probe
   */
  async _connectWs(probe) {
    const gen = this._gen;
    let token;
    try {
      // A fresh token from the provider for every (re)connection.
      token = await this._getToken(true);
    } catch (e) {
      if (gen !== this._gen) return;
      this.emit('error', { code: 'unauthorized', message: `token provider failed: ${errorText(e)}` });
      if (probe) this._scheduleProbe();
      else this._backoff('token provider failed', 'websocket', () => this._connectWs(false));
      return;
    }
    if (gen !== this._gen || this._closed) return;
    const url = `${this._base.replace(/^http/, 'ws')}/v1/ws?token=${encodeURIComponent(token)}`;
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      this.emit('error', { code: 'bad_request', message: `cannot open a WebSocket: ${errorText(e)}` });
      return;
    }
    const c = new Conn(ws, probe);
    if (probe) {
      this._probe = c;
    } else {
      this._ws = c;
      this._transport = 'websocket';
      this._changed();
    }
    ws.onmessage = (m) => this._onWsMessage(c, m.data);
    ws.onclose = (e) => this._onWsClose(c, e.code, e.reason || `closed (${e.code})`);
  }

  /**
   * Closes a connection on purpose: its close event is then ignored.
   * @private
   * @param {Conn} c
   * @param {number} code
   * @param {string} reason
   */
  _drop(c, code, reason) {
    c.dropped = true;
    try {
      c.ws.close(code, reason);
    } catch {
      // already closing
    }
  }

  /**
   * @private
   * @param {Conn} c
   * @param {object} msg
   */
  _send(c, msg) {
    if (c.ws.readyState !== 1) return;
    try {
      c.ws.send(JSON.stringify(msg));
    } catch {
      // the close event follows
    }
  }

  /**
   * @private
   * @param {Conn} c
   */
  _ping(c) {
    if (c.pingAt !== null) return;
    c.pingId += 1;
    c.pingAt = Date.now();
    this._send(c, { op: 'ping', id: c.pingId });
  }

  /**
   * @private
   * @param {Conn} c
   * @param {unknown} data
   */
  _onWsMessage(c, data) {
    if (c.dropped || this._closed) return;
    /** @type {any} */
    let msg;
    try {
      msg = JSON.parse(String(data));
    } catch {
      return;
    }
    // Anything from the server proves the socket alive.
    c.lastRx = Date.now();
    c.pingAt = null;
    if (msg.op === 'welcome') {
      c.welcomed = true;
      c.session = typeof msg.session === 'string' ? msg.session : null;
      if (typeof msg.heartbeat_ms === 'number' && msg.heartbeat_ms > 0) this._heartbeatMs = msg.heartbeat_ms;
      if (c.probe) {
        // Auto mode: WebSocket works again; leave long-polling.
        this._probe = null;
        this._probeTimer?.cancel();
        this._probeTimer = null;
        const gen = ++this._gen;
        for (const sub of this._subs.values()) {
          sub.poll?.abort();
          sub.poll = null;
        }
        this._fallen = false;
        c.probe = false;
        c.gen = gen;
        this._ws = c;
      }
      this._failures = 0;
      this._transport = 'websocket';
      this._pollFailing = false;
      if (this._everConnected && this._lost) this._counts.reconnects += 1;
      this._everConnected = true;
      this._lost = false;
      this._detail = 'connected';
      this._contact();
      for (const sub of this._subs.values()) this._wsSubscribe(sub);
      if (this._roomLists.size > 0) {
        for (const list of this._roomLists) {
          if (list.timer) clearTimeout(list.timer);
          list.timer = null;
        }
        this._roomsSent = null;
        this._wsSubscribeRooms(true);
      }
      this._scheduleAuth(c);
      this.emit('connected', { transport: 'websocket', session: c.session });
      this._changed();
      return;
    }
    if (c !== this._ws) return;
    if (this._healthyWs(c)) this._contact();
    if ((msg.op === 'subscribed' || msg.op === 'error') && typeof msg.room === 'string' && c.opening.delete(msg.room)) {
      if (c.closeAfterOpen.delete(msg.room)) this._send(c, { op: 'unsubscribe', room: msg.room });
    }
    if (msg.op === 'unsubscribed' && c.leaving.delete(msg.room)) {
      const again = this._subs.get(msg.room);
      if (again) this._wsSubscribe(again);
      return;
    }
    if (msg.op === 'rooms' || (msg.op === 'room' && typeof msg.room === 'object' && msg.room !== null)) {
      const sent = this._roomsSent;
      for (const list of this._roomLists) {
        if (!list.active) continue;
        if (msg.op === 'rooms') {
          // The socket's answer is this list's own when their filters
          // agree; a list under a wider shared filter reads its own.
          const own = sent && list.filter.status === sent.status && list.filter.prefix === sent.prefix;
          if (own) {
            list.wsSubscribed = true;
            list._replace(Array.isArray(msg.rooms) ? msg.rooms : []);
          } else {
            this._refillRoomList(list);
          }
        } else {
          list._update(msg.room, msg.matches !== false);
        }
      }
      return;
    }
    if (typeof msg.room === 'string' && c.leaving.has(msg.room)) return;
    const sub = typeof msg.room === 'string' ? this._subs.get(msg.room) : undefined;
    switch (msg.op) {
      case 'subscribed': {
        if (!sub) return;
        sub.wsSubscribed = true;
        sub.failed = null;
        if (sub.cursor === null) sub.cursor = msg.head;
        // A `reset` may follow; if none does, the room's events start at
        // `first` (see _deliver).
        sub.lifeFirst = typeof msg.first === 'number' ? msg.first : null;
        if (Array.isArray(msg.presence)) this._members(sub, msg.presence);
        this._snapshot(sub, msg, 'subscribed');
        if (this._healthyWs(c)) this._contact();
        break;
      }
      case 'event': {
        if (!sub) return;
        const ev = toEvent(msg, msg.via === 'catchup' ? 'catchup' : 'push');
        this._deliver(sub, ev);
        if (sub.snapshots && ev.seq !== null) this._snapshotSoon(sub);
        break;
      }
      case 'reset': {
        if (!sub) return;
        this._reset(sub, msg.head, msg.state, msg.first);
        break;
      }
      case 'presence': {
        if (!sub || !sub.presence) return;
        const next = new Map(sub.members);
        for (const m of msg.left ?? []) next.delete(m.sub);
        for (const m of msg.joined ?? []) next.set(m.sub, m.info ?? {});
        this._members(sub, [...next].map(([s, info]) => ({ sub: s, info })));
        break;
      }
      case 'error': {
        /** @type {ClientError} */
        const err = { code: String(msg.code), message: String(msg.message ?? ''), room: msg.room };
        if (sub) {
          if (err.code === 'unavailable' || err.code === 'rate_limited') {
            // Subscribing failed for now: try again shortly on the same socket.
            const delay = this._opts.backoffBaseMs + Math.random() * this._opts.backoffMaxMs / 4;
            setTimeout(() => {
              if (c === this._ws && sub.active && !sub.wsSubscribed) this._wsSubscribe(sub);
            }, delay);
          } else if (!sub.wsSubscribed) {
            sub.failed = err;
          }
          sub.emit('error', err);
        }
        this.emit('error', err);
        break;
      }
      default:
        break; // pong, unsubscribed
    }
    this._changed();
  }

  /**
   * @private
   * @param {Conn} c
   */
  _healthyWs(c) {
    return c.welcomed && c === this._ws;
  }

  /**
   * @private
   * @param {Subscription} sub
   */
  _wsSubscribe(sub) {
    const c = this._ws;
    if (!c || !c.welcomed || !sub.active) return;
    if (sub.viewPending) {
      this._loadView(sub);
      return;
    }
    if (sub.mode === 'polling') {
      // This room long-polls beside the socket.
      if (sub.loopGen !== this._gen) this._pollLoop(sub, this._gen);
      return;
    }
    sub.wsSubscribed = false;
    if (c.leaving.has(sub.room)) return; // subscribed again on `unsubscribed`
    /** @type {{op: string, room: string, since?: number, presence?: boolean}} */
    const msg = { op: 'subscribe', room: sub.room };
    if (sub.cursor !== null) msg.since = sub.cursor;
    if (sub.presence) msg.presence = true;
    c.opening.add(sub.room);
    this._send(c, msg);
  }

  /**
   * @private
   * @param {Conn} c
   * @param {number} code
   * @param {string} reason
   */
  _onWsClose(c, code, reason) {
    if (c.closeHandled) return;
    c.closeHandled = true;
    if (this._closed) return;
    const lived = Date.now() - c.openedAt;
    if (c === this._probe) {
      this._probe = null;
      if (this._mode === 'auto' && this._fallen) this._scheduleProbe();
      return;
    }
    if (c !== this._ws) return;
    if (c.dropped && !c.timedOut && !reason.startsWith('stale')) return;
    this._ws = null;
    this._authTimer?.cancel();
    this._authTimer = null;
    for (const sub of this._subs.values()) sub.wsSubscribed = false;
    if (c.welcomed) this._lost = true;
    if (!this._online) {
      this._transport = 'none';
      this._detail = 'no network';
      this._changed();
      return;
    }
    if (!c.welcomed) this._failures += 1;
    if (c.welcomed && lived >= STABLE_MS) this._attempt = 0;
    let why = reason;
    if (code === 4001) {
      // Token expired: a fresh one, and back at once.
      this._token = null;
      this._attempt = 0;
      why = 'token expired';
    } else if (code === 4029) {
      // Rate limited: the longest window.
      this._attempt = Math.max(this._attempt, 30);
      why = 'rate limited';
    } else if (code === 1001) {
      // The server is going away (restart, deploy): spread the returns
      // over a few seconds so they do not all come back at once.
      this._attempt = Math.max(this._attempt, 3);
      why = 'server going away';
    } else if (code === 4008) {
      why = 'slow consumer; resuming';
    } else if (c.timedOut) {
      why = 'connect timeout';
    } else if (!c.welcomed) {
      why = 'cannot connect';
    } else if (code === 4000 && reason.startsWith('stale')) {
      why = 'stale socket';
    } else {
      why = `connection lost (${code})`;
    }
    if (this._mode === 'auto' && (c.timedOut || this._failures >= this._opts.fallbackAfter)) {
      // WebSocket does not get through here: long-poll, and probe it now and then.
      this._fallen = true;
      this._attempt = 0;
      this._restart(`${why}; falling back to long-poll`);
      return;
    }
    this._transport = 'websocket';
    this._backoff(why, 'websocket', () => this._connectWs(false));
  }

  /**
   * Auto mode, while long-polling: try WebSocket again after a while.
   * @private
   */
  _scheduleProbe() {
    this._probeTimer?.cancel();
    const base = this._opts.probeIntervalMs;
    const delay = base * (0.8 + Math.random() * 0.2);
    this._probeTimer = new Timer(delay, () => {
      this._probeTimer = null;
      if (this._mode === 'auto' && this._fallen && !this._probe && this._online) this._connectWs(true);
    });
  }

  // -------------------------------------------------------------- polling

  /** @private */
  _startPolling() {
    this._transport = 'longpoll';
    for (const sub of this._subs.values()) this._pollLoop(sub, this._gen);
    for (const list of this._roomLists) this._pollRooms(list, this._gen);
  }

  /**
   * One room's long-poll loop, from its cursor, until the transport changes.
   * @private
   * @param {Subscription} sub
   * @param {number} gen
   */
  async _pollLoop(sub, gen) {
    const live = () => gen === this._gen && sub.active && !this._closed && this._online;
    // The client's own transport (else a room polling beside a WebSocket:
    // the connection's state is the socket's, not this loop's).
    const own = () => this._transport === 'longpoll';
    if (sub.loopGen === gen) return;
    if (sub.viewPending) {
      this._loadView(sub);
      return;
    }
    sub.loopGen = gen;
    try {
      while (live()) {
        if (sub.failed) return;
        if (sub.status !== null && TERMINAL.has(sub.status) && sub.cursor !== null && sub.head !== null && sub.cursor >= sub.head) {
          // A closed room gets no more events: nothing to wait for.
          this._changed();
          return;
        }
        const ctl = new AbortController();
        sub.poll = ctl;
        sub.pollStartedAt = Date.now();
        try {
          // Wait only once the head is known and the cursor is not beyond it: the
          // server holds a long-poll whose `since` is past the head for the whole
          // `wait` rather than answering the lower head (a `reset`) at once.
          const known = sub.cursor !== null && sub.head !== null && sub.cursor <= sub.head;
          const wait = known ? this._opts.pollWaitS : 0;
          const full = await this._pollOnce(sub, 'poll', wait, ctl.signal);
          if (!live()) return;
          sub.failures = 0;
          if (!own()) {
            if (sub.presence && Date.now() - sub.membersReadAt > MEMBERS_POLL_MS) {
              sub.membersReadAt = Date.now();
              this._readMembers(sub, ctl.signal);
            }
            this._changed();
            continue;
          }
          if (this._pollFailing || (this._lost && this._everConnected)) {
            if (this._lost) this._counts.reconnects += 1;
            this._pollFailing = false;
          }
          if (sub.presence && Date.now() - sub.membersReadAt > MEMBERS_POLL_MS) {
            sub.membersReadAt = Date.now();
            this._readMembers(sub, ctl.signal);
          }
          if (!this._everConnected || this._lost) this.emit('connected', { transport: 'longpoll', session: null });
          this._everConnected = true;
          this._lost = false;
          this._attempt = 0;
          this._detail = 'long-polling';
          this._contact();
          this._changed();
          if (full) continue;
        } catch (e) {
          if (!live()) return;
          if (ctl.signal.aborted) continue; // a stuck poll aborted by the watchdog, or a wake-up
          if (e instanceof HttpError && (e.status === 401 || e.status === 403 || e.status === 400)) {
            if (e.status === 401 && !sub.retriedAuth) {
              sub.retriedAuth = true;
              this._token = null;
              continue;
            }
            this._reportFetchError(sub, e);
            sub.failed = { code: e.code, message: e.message, room: sub.room };
            this._changed();
            return;
          }
          const retryAfter = e instanceof HttpError ? e.retryAfterMs : null;
          let delay;
          if (own()) {
            this._pollFailing = true;
            this._lost = true;
            delay = this._nextDelay(`poll failed: ${errorText(e)}`, 'longpoll');
          } else {
            delay = Math.floor(Math.random() * Math.min(this._opts.backoffMaxMs, this._opts.backoffBaseMs * 2 ** sub.failures));
            sub.failures += 1;
          }
          this._changed();
          await new Promise((resolve) => {
            sub.retry = new Timer(delay, () => resolve(undefined));
            if (retryAfter !== null) sub.retry.atLeast(retryAfter);
          });
          sub.retry = null;
        } finally {
          if (sub.poll === ctl) sub.poll = null;
        }
        sub.retriedAuth = false;
      }
    } finally {
      if (sub.loopGen === gen) sub.loopGen = null;
    }
  }

  /**
   * One poll request from the cursor; answers whether the page was full
   * (more to read at once).
   * @private
   * @param {Subscription} sub
   * @param {Source} source
   * @param {number} wait seconds
   * @param {AbortSignal} [signal]
   */
  async _pollOnce(sub, source, wait, signal) {
    const since = sub.cursor ?? 0;
    const limit = sub.cursor === null ? 1 : this._opts.pollLimit;
    const q = `since=${since}&limit=${limit}${wait > 0 ? `&wait=${wait}` : ''}`;
    /** @type {Record<string, string>} */
    const headers = {};
    if (sub.cursor !== null && sub.head !== null) headers['if-none-match'] = `"${sub.cursor}"`;
    const body = await this._get(`/v1/rooms/${encodeURIComponent(sub.room)}/events?${q}`, signal, headers);
    if (!sub.active) return false;
    if (body === null) return false; // 304: nothing new
    const first = sub.head === null;
    if (sub.cursor === null) {
      sub.cursor = body.head; // "from now"
      this._snapshot(sub, body, 'subscribed');
      return false;
    }
    // `reset: true`: the events after the cursor fell out of the retention;
    // a head below the cursor: the log the cursor knows is gone.
    if (body.reset || body.head < sub.cursor) {
      this._reset(sub, body.head, body.state, body.first);
      return false;
    }
    this._lifeStart(sub, body.first);
    for (const e of body.events) this._deliver(sub, toEvent({ ...e, room: sub.room }, source));
    this._snapshot(sub, body, first ? 'subscribed' : 'snapshot');
    return body.events.length >= limit;
  }

  /**
   * Reads a room from its cursor until up to date (refresh, gap repair).
   * @private
   * @param {Subscription} sub
   * @param {Source} source
   */
  async _readAll(sub, source) {
    for (let i = 0; i < 1000 && sub.active; i++) {
      if (!(await this._pollOnce(sub, source, 0))) break;
    }
  }

  /**
   * @private
   * @param {Subscription} sub
   * @param {unknown} e
   */
  _reportFetchError(sub, e) {
    /** @type {ClientError} */
    const err =
      e instanceof HttpError
        ? { code: e.code, message: e.message, room: sub.room }
        : { code: 'unavailable', message: errorText(e), room: sub.room };
    sub.emit('error', err);
    this.emit('error', err);
  }

  /**
   * GET with the token; answers the JSON body, or null for 304.
   * @private
   * @param {string} path
   * @param {AbortSignal} [signal]
   * @param {Record<string, string>} [headers]
   * @returns {Promise<any>}
   */
  async _get(path, signal, headers = {}) {
    const token = await this._getToken();
    const res = await fetch(`${this._base}${path}`, {
      headers: { ...headers, authorization: `Bearer ${token}` },
      signal,
      cache: 'no-store',
    });
    if (res.status === 304) return null;
    if (!res.ok) {
      /** @type {any} */
      let body = null;
      try {
        body = await res.json();
      } catch {
        // not JSON
      }
      const ra = Number(res.headers.get('retry-after'));
      if (res.status === 401) this._token = null;
      throw new HttpError(
        res.status,
        body?.error?.code ?? `http_${res.status}`,
        body?.error?.message ?? res.statusText,
        Number.isFinite(ra) && ra > 0 ? ra * 1000 : null,
      );
    }
    return res.json();
  }

  // ------------------------------------------------------------- delivery

  /**
   * The delivery rule: an event goes to the listeners only when its seq is
   * the cursor + 1; at or below the cursor it is a duplicate and dropped;
   * ahead of it, it waits while the gap is read back.
   * @private
   * @param {Subscription} sub
   * @param {RoomEvent} ev
   */
  _deliver(sub, ev) {
    if (ev.seq === null) {
      sub.emit('event', ev); // ephemeral: no cursor, no gap, no duplicate
      return;
    }
    if (sub.cursor === null) sub.cursor = ev.seq - 1;
    // The room's first event after a `subscribed` whose `first` was past the
    // cursor, with no `reset` in between: the seqs before it never existed
    // in the room's current life.
    if (ev.seq === sub.lifeFirst && ev.seq > sub.cursor + 1) sub.cursor = ev.seq - 1;
    if (ev.seq <= sub.cursor) {
      this._counts.duplicates += 1;
      return;
    }
    if (ev.seq > sub.cursor + 1) {
      if (sub.pending.has(ev.seq)) {
        this._counts.duplicates += 1;
        return;
      }
      sub.pending.set(ev.seq, ev);
      this._repair(sub);
      return;
    }
    this._accept(sub, ev);
    let next;
    while ((next = sub.pending.get(/** @type {number} */ (sub.cursor) + 1))) {
      sub.pending.delete(next.seq ?? -1);
      this._accept(sub, next);
    }
    // Waiting events that a read-back delivered meanwhile were received twice.
    for (const seq of sub.pending.keys()) {
      if (seq <= /** @type {number} */ (sub.cursor)) {
        sub.pending.delete(seq);
        this._counts.duplicates += 1;
      }
    }
  }

  /**
   * @private
   * @param {Subscription} sub
   * @param {RoomEvent} ev
   */
  _accept(sub, ev) {
    sub.cursor = /** @type {number} */ (ev.seq);
    if (sub.head === null || sub.cursor > sub.head) sub.head = sub.cursor;
    this._counts[ev.source] += 1;
    this._lastEventAt = Date.now();
    // State travels with events: a patch or status not yet in the
    // snapshot is applied in seq order, with no read.
    const changes = (ev.state !== undefined || ev.status !== undefined) && (sub.stateAt === null || sub.cursor > sub.stateAt);
    if (changes) {
      if (ev.state !== undefined) sub.state = mergePatch(sub.state, ev.state);
      if (ev.status !== undefined) sub.status = ev.status;
    }
    if (sub.stateAt === null || sub.cursor > sub.stateAt) sub.stateAt = sub.cursor;
    sub.emit('event', ev);
    if (changes) sub.emit('snapshot', { head: sub.head, status: /** @type {RoomStatus} */ (sub.status), state: sub.state });
    if (sub.messagesMode && sub.messagesAt !== null && sub.cursor > sub.messagesAt) {
      sub.messagesAt = sub.cursor;
      if (applyChange(sub.messages, ev)) sub.emit('messages', sub.messageList());
    }
  }

  /**
   * `messages`: the room as it stands, read once with `view=latest` (page
   * by page, from 0), before the subscription joins a transport; then the
   * transport's events apply each later change once.
   * @private
   * @param {Subscription} sub
   */
  async _loadView(sub) {
    if (sub.viewLoading) return;
    sub.viewLoading = true;
    try {
      /** @type {Map<number, Message>} */
      const fresh = new Map();
      let cursor = 0;
      for (let tries = 0; sub.active && !this._closed; ) {
        let body;
        try {
          body = await this._get(`/v1/rooms/${encodeURIComponent(sub.room)}/events?since=${cursor}&limit=${this._opts.pollLimit}&view=latest`);
        } catch (e) {
          if (e instanceof HttpError && (e.status === 400 || e.status === 403)) {
            this._reportFetchError(sub, e);
            sub.failed = { code: e.code, message: e.message, room: sub.room };
            return;
          }
          tries += 1;
          await new Promise((r) => setTimeout(r, Math.random() * Math.min(this._opts.backoffMaxMs, this._opts.backoffBaseMs * 2 ** tries)));
          continue;
        }
        if (!sub.active) return;
        if (body.reset) {
          // Below the kept log: the kept messages as they stand.
          fresh.clear();
          cursor = typeof body.first === 'number' ? body.first - 1 : body.head;
          continue;
        }
        for (const m of body.events ?? []) {
          if (m.deleted) fresh.delete(m.seq);
          else fresh.set(m.seq, { seq: m.seq, type: m.type, data: m.data, ts: m.ts, version: m.version ?? m.seq, edited: (m.version ?? m.seq) !== m.seq });
        }
        cursor = typeof body.cursor === 'number' ? body.cursor : Math.max(cursor, body.head ?? cursor);
        if (body.more) continue;
        sub.messages = new Map([...fresh].sort((a, b) => a[0] - b[0]));
        sub.messagesAt = cursor;
        // Without `since` the subscription follows from where this read
        // ended: no event is replayed.
        if (!sub.sinceGiven && (sub.cursor === null || sub.cursor < cursor)) sub.cursor = cursor;
        if (sub.viewPending) {
          this._snapshot(sub, { head: body.head, status: body.status, state: body.state }, 'snapshot');
        }
        sub.emit('messages', sub.messageList());
        break;
      }
    } finally {
      sub.viewLoading = false;
    }
    if (!sub.active || !sub.viewPending) return;
    sub.viewPending = false;
    if (this._transport === 'websocket' && this._ws?.welcomed) this._wsSubscribe(sub);
    if (this._transport === 'longpoll') this._pollLoop(sub, this._gen);
    this._changed();
  }

  /**
   * An answer with no `reset` whose `first` is past the cursor: the seqs in
   * between never existed in the room's current life (it was created after
   * its org's floor rose), so the cursor moves to `first - 1`: nothing is
   * lost.
   * @private
   * @param {Subscription} sub
   * @param {unknown} first the lowest seq the room stores
   */
  _lifeStart(sub, first) {
    if (typeof first === 'number' && sub.cursor !== null && sub.cursor < first - 1) {
      sub.cursor = first - 1;
    }
  }

  /**
   * An event arrived ahead of the cursor: read the missing ones back over
   * REST, then deliver what waited.
   * @private
   * @param {Subscription} sub
   */
  async _repair(sub) {
    if (sub.repairing) return;
    sub.repairing = true;
    try {
      for (let tries = 0; sub.active && sub.pending.size > 0 && tries < 20; tries++) {
        try {
          await this._pollOnce(sub, 'catchup', 0);
          const still = [...sub.pending.keys()].some((s) => s > /** @type {number} */ (sub.cursor) + 1);
          if (!still) break;
        } catch (e) {
          if (tries >= 5) throw e;
          await new Promise((r) => setTimeout(r, this._opts.backoffBaseMs * 2 ** tries));
        }
      }
      this._counts.gaps += 1;
    } catch (e) {
      this._reportFetchError(sub, e);
    } finally {
      sub.repairing = false;
      // Whatever still waits is either delivered now or read back again.
      const first = Math.min(...sub.pending.keys());
      if (sub.pending.size > 0 && sub.cursor !== null && first === sub.cursor + 1) {
        const ev = /** @type {RoomEvent} */ (sub.pending.get(first));
        sub.pending.delete(first);
        this._deliver(sub, ev);
      }
      this._changed();
    }
  }

  /**
   * Takes the room's members as they are now and tells the listeners who
   * joined and who left since the last time.
   * @private
   * @param {Subscription} sub
   * @param {{sub: string, info?: Record<string, unknown>}[]} list
   */
  _members(sub, list) {
    const next = new Map(list.map((m) => [m.sub, m.info ?? {}]));
    /** @type {Member[]} */
    const joined = [];
    for (const [s, info] of next) if (!sub.members.has(s)) joined.push({ sub: s, info });
    const left = [...sub.members.keys()].filter((s) => !next.has(s)).map((s) => ({ sub: s }));
    sub.members = next;
    if (joined.length || left.length) {
      sub.emit('presence', { members: [...next].map(([s, info]) => ({ sub: s, info })), joined, left });
    }
  }

  /**
   * Polling mode: the members over REST (the page is not a member itself).
   * @private
   * @param {Subscription} sub
   * @param {AbortSignal} [signal]
   */
  async _readMembers(sub, signal) {
    try {
      const body = await this._get(`/v1/rooms/${encodeURIComponent(sub.room)}/presence`, signal);
      if (body && sub.active && Array.isArray(body.members)) this._members(sub, body.members);
    } catch {
      // the next round tries again
    }
  }

  /**
   * `reset`: the events after the cursor cannot be replayed; resync from the
   * snapshot and go on from `head`.
   * @private
   * @param {Subscription} sub
   * @param {number} head
   * @param {Record<string, unknown>} state
   * @param {number} [first] the lowest seq the room still stores
   */
  _reset(sub, head, state, first) {
    const since = sub.cursor ?? head;
    if (sub.messagesMode && !sub.viewPending) {
      // The changes after the cursor are gone: read the kept messages again.
      sub.messagesAt = null;
      this._loadView(sub);
    }
    sub.lifeFirst = null;
    sub.cursor = head;
    sub.head = head;
    sub.state = state ?? {};
    sub.stateAt = head;
    sub.pending.clear();
    sub.emit('reset', { head, state: sub.state, first: first ?? head + 1, since });
  }

  /**
   * Takes what a server answer says of the room.
   * @private
   * @param {Subscription} sub
   * @param {{head: number, status: RoomStatus, state: Record<string, unknown>}} s
   * @param {'subscribed' | 'snapshot'} name
   */
  _snapshot(sub, s, name) {
    const changed =
      sub.head !== s.head || sub.status !== s.status || JSON.stringify(sub.state) !== JSON.stringify(s.state);
    if (sub.head === null || s.head >= sub.head) sub.head = s.head;
    // A snapshot older than what the events already gave is not taken.
    if (sub.stateAt === null || s.head >= sub.stateAt) {
      sub.status = s.status;
      sub.state = s.state ?? {};
      sub.stateAt = s.head;
    }
    const snap = { head: s.head, status: /** @type {RoomStatus} */ (sub.status), state: sub.state };
    if (name === 'subscribed') sub.emit('subscribed', snap);
    if (changed || name === 'subscribed') sub.emit('snapshot', snap);
  }

  /**
   * `snapshots: true`: re-read the snapshot shortly after WebSocket events
   * (for state changed by a path that publishes no event of its own).
   * @private
   * @param {Subscription} sub
   */
  _snapshotSoon(sub) {
    if (sub.snapshotTimer) return;
    sub.snapshotTimer = setTimeout(async () => {
      sub.snapshotTimer = null;
      if (!sub.active) return;
      try {
        const snap = await this.fetchRoom(sub.room);
        if (snap && sub.active && snap.head >= (sub.cursor ?? 0)) this._snapshot(sub, snap, 'snapshot');
      } catch {
        // the next event tries again
      }
    }, this._opts.snapshotDelayMs);
  }
}

/**
 * One WebSocket and what the watchdog knows of it.
 * @private
 */
class Conn {
  /**
   * @param {WebSocket} ws
   * @param {boolean} probe
   */
  constructor(ws, probe) {
    this.ws = ws;
    this.probe = probe;
    this.gen = 0;
    this.openedAt = Date.now();
    /** Last frame received (wall clock). */
    this.lastRx = Date.now();
    /** The outstanding ping's send time, or null. @type {number | null} */
    this.pingAt = null;
    this.pingId = 0;
    this.welcomed = false;
    /** @type {string | null} */
    this.session = null;
    /** Closed by this client on purpose. */
    this.dropped = false;
    this.timedOut = false;
    this.closeHandled = false;
    /** Rooms unsubscribed whose `unsubscribed` has not come yet. @type {Set<string>} */
    this.leaving = new Set();
    /** Rooms whose `subscribe` is not answered yet (`subscribed` or `error`). @type {Set<string>} */
    this.opening = new Set();
    /** Rooms to unsubscribe once their `subscribe` is answered. @type {Set<string>} */
    this.closeAfterOpen = new Set();
  }
}

/**
 * A timeout that also knows its wall-clock due time, so the watchdog can run
 * it when a throttled page did not.
 * @private
 */
class Timer {
  /**
   * @param {number} delayMs
   * @param {() => void} fn
   */
  constructor(delayMs, fn) {
    this.fn = fn;
    this.dueAt = Date.now() + delayMs;
    this.done = false;
    this.handle = setTimeout(() => this.fire(), delayMs);
  }

  /** @param {number} now */
  due(now) {
    return !this.done && now >= this.dueAt;
  }

  /** Runs it now (once). */
  fire() {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.handle);
    this.fn();
  }

  cancel() {
    this.done = true;
    clearTimeout(this.handle);
  }

  /**
   * Not before `ms` from now (a server's Retry-After).
   * @param {number} ms
   */
  atLeast(ms) {
    const at = Date.now() + ms;
    if (this.done || at <= this.dueAt) return;
    clearTimeout(this.handle);
    this.dueAt = at;
    this.handle = setTimeout(() => this.fire(), ms);
  }
}

/**
 * @param {any} m a WebSocket event frame or a poll answer's event
 * @param {Source} source
 * @returns {RoomEvent}
 */
function toEvent(m, source) {
  /** @type {RoomEvent} */
  const ev = {
    room: m.room,
    seq: typeof m.seq === 'number' ? m.seq : null,
    type: m.type,
    data: m.data,
    ts: m.ts,
    source,
    ephemeral: m.seq === null || m.seq === undefined || m.ephemeral === true,
  };
  if (typeof m.key === 'string') ev.key = m.key;
  if (m.state !== null && typeof m.state === 'object' && !Array.isArray(m.state)) ev.state = m.state;
  if (typeof m.status === 'string') ev.status = m.status;
  for (const k of /** @type {const} */ (['updates', 'appends', 'deletes'])) {
    if (typeof m[k] === 'number') ev[k] = m[k];
  }
  return ev;
}

/**
 * Applies a message version (or a new message) to `messages`; answers
 * whether anything changed.
 * @param {Map<number, Message>} messages
 * @param {RoomEvent} ev
 */
function applyChange(messages, ev) {
  const seq = /** @type {number} */ (ev.seq);
  if (ev.deletes !== undefined) return messages.delete(ev.deletes);
  const target = ev.updates ?? ev.appends;
  if (target === undefined) {
    messages.set(seq, { seq, type: ev.type, data: ev.data, ts: ev.ts, version: seq, edited: false });
    return true;
  }
  const m = messages.get(target);
  if (!m) return false;
  let data = ev.data;
  if (ev.appends !== undefined) {
    const old = /** @type {Record<string, unknown>} */ (m.data ?? {});
    const add = /** @type {Record<string, unknown>} */ (ev.data ?? {});
    data = { ...old, text: `${old.text ?? ''}${add.text ?? ''}` };
  }
  messages.set(target, { ...m, data, version: seq, edited: true });
  return true;
}

/**
 * JSON merge patch (RFC 7386): a new object, `target` untouched.
 * @param {unknown} target
 * @param {unknown} patch
 * @returns {any}
 */
function mergePatch(target, patch) {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  /** @type {Record<string, unknown>} */
  const out =
    target !== null && typeof target === 'object' && !Array.isArray(target)
      ? { .../** @type {Record<string, unknown>} */ (target) }
      : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/**
 * Whether a room passes a list's filter (status, prefix).
 * @param {RoomSnapshot} r
 * @param {RoomsFilter} f
 */
function passes(r, f) {
  if (f.status && r.status !== f.status) return false;
  if (f.prefix && !r.room.startsWith(f.prefix)) return false;
  return true;
}

/** @param {unknown} e */
function errorText(e) {
  return e instanceof Error ? e.message : String(e);
}
