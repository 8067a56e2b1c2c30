// @ts-check
/**
 * The client: the public API, the connection's state and status, the
 * lifecycle that chooses and restarts a transport (backoff, wake-ups, the
 * watchdog), and the REST reads a room needs beside its transport (gap
 * read-back, `view=latest`, snapshots).
 */

import { Emitter } from './emitter.js';
import { PollingTransport } from './polling.js';
import { Credentials, HttpError, Rest, errorText } from './rest.js';
import { RoomList } from './room_list.js';
import { Subscription } from './subscription.js';
import { Timer } from './timer.js';
import { WebSocketTransport } from './websocket.js';

/** @typedef {import('./types.js').ClientError} ClientError */
/** @typedef {import('./types.js').ClientEvents} ClientEvents */
/** @typedef {import('./types.js').ClientOptions} ClientOptions */
/** @typedef {import('./types.js').ClientState} ClientState */
/** @typedef {import('./types.js').Counts} Counts */
/** @typedef {import('./types.js').Message} Message */
/** @typedef {import('./types.js').Mode} Mode */
/** @typedef {import('./types.js').RoomEvent} RoomEvent */
/** @typedef {import('./types.js').RoomSnapshot} RoomSnapshot */
/** @typedef {import('./types.js').RoomsFilter} RoomsFilter */
/** @typedef {import('./types.js').Snapshot} Snapshot */
/** @typedef {import('./types.js').Status} Status */
/** @typedef {import('./types.js').SubscribeOptions} SubscribeOptions */
/** @typedef {import('./types.js').Transport} Transport */
/** @typedef {import('./websocket.js').Conn} Conn */

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
/** A long-poll still pending this long past its `wait` is presumed dead. */
const POLL_GRACE_MS = 10000;
/** The watchdog tick came this late: the page was frozen or the machine slept. */
const WOKE_AFTER_MS = 5000;

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
    /** @internal */
    this._opts = { ...DEFAULTS, ...options };
    /** @internal */
    this._base = (options.url ?? globalThis.location?.origin ?? '').replace(/\/+$/, '');
    /** @internal the token (renewed through the provider) */
    this._credentials = new Credentials(options.token);
    /** @internal @type {Mode} */
    this._mode = this._opts.mode;
    /** @internal @type {Map<string, Subscription>} */
    this._subs = new Map();
    /** @internal the live room lists @type {Set<RoomList>} */
    this._roomLists = new Set();
    /** @internal @type {Counts} */
    this._counts = { push: 0, catchup: 0, poll: 0, duplicates: 0, gaps: 0, reconnects: 0 };
    /** @internal @type {Transport} */
    this._transport = 'none';
    /** @internal @type {number | null} */
    this._lastUpdateAt = null;
    /** @private when the client started: `connecting` until first live, for up to `offlineAfterMs` */
    this._startedAt = Date.now();
    /** @private the client was live once */
    this._wasLive = false;
    /** @internal @type {number | null} */
    this._lastEventAt = null;
    /** @internal */
    this._detail = 'connecting';
    /** @internal */
    this._online = globalThis.navigator?.onLine ?? true;
    /** @internal */
    this._closed = false;
    /** @internal bumps on every transport change: callbacks of an older generation do nothing */
    this._gen = 0;

    /** @internal the REST reads, with the token @type {Rest} */
    this._rest = new Rest(this._base, this._credentials);
    /** @internal the WebSocket transport */
    this._websocket = new WebSocketTransport(this);
    /** @internal the long-poll transport (and the REST read from a cursor) */
    this._polling = new PollingTransport(this);

    /** @internal backoff attempt (the window is base * 2^attempt) */
    this._attempt = 0;
    /** @internal a transport worked once (so the next success is a reconnect) */
    this._everConnected = false;
    /** @internal the transport was lost since it last worked */
    this._lost = false;
    /** @internal auto mode fell back to long-poll */
    this._fallen = false;
    /** @private @type {Timer | null} the next reconnect */
    this._retry = null;
    /** @internal @type {Timer | null} renew the token on the open WebSocket */
    this._authTimer = null;

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
      this._websocket.failures = 0;
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
    if (this._transport === 'websocket' && this._websocket.ready) this._websocket.subscribe(sub);
    if (this._transport === 'longpoll') this._polling.loop(sub, this._gen);
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
    this._websocket.unsubscribe(room);
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
    this._websocket.failures = 0;
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
          await this._polling.readAll(sub, 'poll');
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
      return await this._rest.get(`/v1/rooms/${encodeURIComponent(room)}`);
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
    const body = await this._rest.get(`/v1/rooms?${q}`);
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
    if (this._transport === 'websocket' && this._websocket.ready) {
      // The socket's one subscription now covers this list too; a list it
      // already covered reads its first answer over REST.
      if (!this._websocket.subscribeRooms()) this._refillRoomList(list);
    }
    if (this._transport === 'longpoll') this._polling.rooms(list, this._gen);
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
    this._websocket.subscribeRooms();
  }

  /**
   * The filter one `subscribe_rooms` needs for every list: a list's own
   * filter when there is one (or all share it), else the org's every room,
   * each list applying its own filter to the frames.
   * @internal
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
    if (this._transport === 'websocket') return this._websocket.healthy(Date.now());
    if (this._transport === 'longpoll') return this._polling.healthy();
    return false;
  }

  /** @internal the server was heard on a healthy transport */
  _contact() {
    this._lastUpdateAt = Date.now();
  }

  /** @internal emits `state` (and `status`) when something shown changed */
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
   * @internal
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
      this._polling.start();
      if (this._mode === 'auto') this._websocket.scheduleProbe();
    } else {
      this._websocket.connect(false);
    }
    this._changed();
  }

  /** @private closes the WebSocket and the probe, aborts polls, clears timers */
  _stopTransports() {
    this._gen += 1;
    for (const t of [this._retry, this._authTimer]) t?.cancel();
    this._retry = this._authTimer = null;
    this._websocket.stop();
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
   * @internal
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
   * @internal
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
    const c = this._websocket.conn;
    if (c?.welcomed) {
      this._websocket.ping(c);
    } else if (this._transport === 'longpoll') {
      for (const sub of this._subs.values()) {
        sub.poll?.abort();
        sub.retry?.fire();
      }
    }
    const probe = this._websocket.probeTimer;
    if (this._mode === 'auto' && this._fallen && probe && why !== 'page visible') probe.fire();
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
    for (const t of [this._retry, this._websocket.probeTimer, this._authTimer]) if (t && t.due(now)) t.fire();
    if (late) this._wake('woke up');
    this._websocket.tick(now);
    for (const sub of this._subs.values()) {
      if (sub.poll && now - sub.pollStartedAt > this._opts.pollWaitS * 1000 + POLL_GRACE_MS) sub.poll.abort();
      if (sub.retry?.due(now)) sub.retry.fire();
    }
    this._changed();
  }

  // ---------------------------------------------------------------- token

  /**
   * On an open WebSocket: renews the token before it expires with `op: auth`.
   * @internal
   * @param {Conn} c
   */
  _scheduleAuth(c) {
    this._authTimer?.cancel();
    this._authTimer = null;
    const credentials = this._credentials;
    if (credentials.fixed) return;
    const at = credentials.renewAt();
    if (at === null) return;
    this._authTimer = new Timer(Math.max(0, at - Date.now()), async () => {
      this._authTimer = null;
      const old = credentials.exp;
      try {
        const token = await credentials.get(true);
        if (c !== this._websocket.conn || !c.welcomed) return;
        if (credentials.exp !== null && old !== null && credentials.exp <= old) {
          // The provider gave no fresher token: ask again shortly.
          this._authTimer = new Timer(5000, () => this._scheduleAuth(c));
          return;
        }
        this._websocket.send(c, { op: 'auth', token });
        this._scheduleAuth(c);
      } catch (e) {
        this.emit('error', { code: 'unauthorized', message: `token provider failed: ${errorText(e)}` });
        if (c === this._websocket.conn) this._authTimer = new Timer(5000, () => this._scheduleAuth(c));
      }
    });
  }

  /**
   * @internal
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

  // ------------------------------------------------------------- delivery

  /**
   * `messages`: the room as it stands, read once with `view=latest` (page
   * by page, from 0), before the subscription joins a transport; then the
   * transport's events apply each later change once.
   * @internal
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
          const q = `since=${cursor}&limit=${this._opts.pollLimit}&view=latest`;
          body = await this._rest.get(`/v1/rooms/${encodeURIComponent(sub.room)}/events?${q}`);
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
          sub._snapshot({ head: body.head, status: body.status, state: body.state }, 'snapshot');
        }
        sub.emit('messages', sub.messageList());
        break;
      }
    } finally {
      sub.viewLoading = false;
    }
    if (!sub.active || !sub.viewPending) return;
    sub.viewPending = false;
    if (this._transport === 'websocket' && this._websocket.ready) this._websocket.subscribe(sub);
    if (this._transport === 'longpoll') this._polling.loop(sub, this._gen);
    this._changed();
  }

  /**
   * An event arrived ahead of the cursor: read the missing ones back over
   * REST, then deliver what waited.
   * @internal
   * @param {Subscription} sub
   */
  async _repair(sub) {
    if (sub.repairing) return;
    sub.repairing = true;
    try {
      for (let tries = 0; sub.active && sub.pending.size > 0 && tries < 20; tries++) {
        try {
          await this._polling.once(sub, 'catchup', 0);
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
        sub._deliver(ev);
      }
      this._changed();
    }
  }

  /**
   * `snapshots: true`: re-read the snapshot shortly after WebSocket events
   * (for state changed by a path that publishes no event of its own).
   * @internal
   * @param {Subscription} sub
   */
  _snapshotSoon(sub) {
    if (sub.snapshotTimer) return;
    sub.snapshotTimer = setTimeout(async () => {
      sub.snapshotTimer = null;
      if (!sub.active) return;
      try {
        const snap = await this.fetchRoom(sub.room);
        if (snap && sub.active && snap.head >= (sub.cursor ?? 0)) sub._snapshot(snap, 'snapshot');
      } catch {
        // the next event tries again
      }
    }, this._opts.snapshotDelayMs);
  }
}
