// @ts-check
/**
 * The WebSocket transport: one socket multiplexing every room, the client's
 * own pings (the browser answers the server's invisibly), the `subscribe`
 * bookkeeping the protocol needs without subscription ids, and, in auto
 * mode, the probe that tries WebSocket again while long-polling.
 */

import { errorText } from './rest.js';
import { toEvent } from './store.js';
import { Timer } from './timer.js';

/** @typedef {import('./types.js').ClientError} ClientError */
/** @typedef {import('./types.js').RoomsFilter} RoomsFilter */
/** @typedef {import('./subscription.js').Subscription} Subscription */
/** @typedef {import('./roomcast.js').RoomcastClient} RoomcastClient */

/** A WebSocket that lived this long before closing resets the backoff. */
const STABLE_MS = 5000;

/**
 * One WebSocket and what the watchdog knows of it.
 */
export class Conn {
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

export class WebSocketTransport {
  /** @param {RoomcastClient} client */
  constructor(client) {
    /** @private */
    this.client = client;
    /** The WebSocket in use (or being opened). @type {Conn | null} */
    this.conn = null;
    /** Auto mode: a WebSocket tried while long-polling. @type {Conn | null} */
    this.probe = null;
    /** The server's heartbeat (from `welcome`). */
    this.heartbeatMs = 15000;
    /** WebSocket attempts that failed in a row (never said welcome). */
    this.failures = 0;
    /** The next WebSocket probe (auto mode, long-polling). @type {Timer | null} */
    this.probeTimer = null;
    /** The filter of the socket's `subscribe_rooms` (one per socket, shared by the lists). @type {RoomsFilter | null} */
    this.roomsSent = null;
  }

  /** The socket in use said `welcome`. */
  get ready() {
    return this.conn?.welcomed ?? false;
  }

  /** Closes the socket and the probe; no reconnect follows. */
  stop() {
    this.probeTimer?.cancel();
    this.probeTimer = null;
    for (const c of [this.conn, this.probe]) if (c) this.drop(c, 1000, 'client switching');
    this.conn = this.probe = null;
  }

  /**
   * The socket is working and every room it carries is known up to date.
   * @param {number} now
   */
  healthy(now) {
    const c = this.conn;
    const client = this.client;
    if (!c || !c.welcomed) return false;
    if (c.pingAt !== null && now - c.pingAt > client._opts.pongTimeoutMs) return false;
    for (const sub of client._subs.values()) {
      if (sub.failed) continue;
      if (sub.mode === 'polling' ? sub.head === null || sub.failures > 0 : !sub.wsSubscribed) return false;
    }
    return true;
  }

  /**
   * Opens a WebSocket (`probe`: auto mode tries it while long-polling).
   * @param {boolean} probe
   */
  async connect(probe) {
    const client = this.client;
    const gen = client._gen;
    let token;
    try {
      // A fresh token from the provider for every (re)connection.
      token = await client._credentials.get(true);
    } catch (e) {
      if (gen !== client._gen) return;
      client.emit('error', { code: 'unauthorized', message: `token provider failed: ${errorText(e)}` });
      if (probe) this.scheduleProbe();
      else client._backoff('token provider failed', 'websocket', () => this.connect(false));
      return;
    }
    if (gen !== client._gen || client._closed) return;
    const url = `${client._base.replace(/^http/, 'ws')}/v1/ws?token=${encodeURIComponent(token)}`;
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      client.emit('error', { code: 'bad_request', message: `cannot open a WebSocket: ${errorText(e)}` });
      return;
    }
    const c = new Conn(ws, probe);
    if (probe) {
      this.probe = c;
    } else {
      this.conn = c;
      client._transport = 'websocket';
      client._changed();
    }
    ws.onmessage = (m) => this.onMessage(c, m.data);
    ws.onclose = (e) => this.onClose(c, e.code, e.reason || `closed (${e.code})`);
  }

  /**
   * Closes a connection on purpose: its close event is then ignored.
   * @param {Conn} c
   * @param {number} code
   * @param {string} reason
   */
  drop(c, code, reason) {
    c.dropped = true;
    try {
      c.ws.close(code, reason);
    } catch {
      // already closing
    }
  }

  /**
   * @param {Conn} c
   * @param {object} msg
   */
  send(c, msg) {
    if (c.ws.readyState !== 1) return;
    try {
      c.ws.send(JSON.stringify(msg));
    } catch {
      // the close event follows
    }
  }

  /** @param {Conn} c */
  ping(c) {
    if (c.pingAt !== null) return;
    c.pingId += 1;
    c.pingAt = Date.now();
    this.send(c, { op: 'ping', id: c.pingId });
  }

  /**
   * The watchdog's look at the sockets: connect timeout, missing pong, and
   * the client's own ping when the socket has been quiet.
   * @param {number} now
   */
  tick(now) {
    const opts = this.client._opts;
    for (const c of [this.conn, this.probe]) {
      if (!c) continue;
      if (!c.welcomed) {
        if (now - c.openedAt > opts.connectTimeoutMs) {
          c.timedOut = true;
          this.drop(c, 4000, 'connect timeout');
          this.onClose(c, 4000, 'connect timeout');
        }
        continue;
      }
      if (c.pingAt !== null) {
        if (now - c.pingAt > 2 * opts.pongTimeoutMs) {
          this.drop(c, 4000, 'no pong');
          this.onClose(c, 4000, 'stale socket: no pong');
          continue;
        }
        if (now - c.pingAt > opts.pongTimeoutMs) this.client._detail = 'stale socket: no pong yet';
      } else if (now - c.lastRx >= (opts.pingIntervalMs ?? this.heartbeatMs)) {
        this.ping(c);
      }
    }
  }

  /**
   * @param {Conn} c
   * @param {unknown} data
   */
  onMessage(c, data) {
    const client = this.client;
    if (c.dropped || client._closed) return;
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
      this.welcome(c, msg);
      return;
    }
    if (c !== this.conn) return;
    if (this.healthyConn(c)) client._contact();
    if ((msg.op === 'subscribed' || msg.op === 'error') && typeof msg.room === 'string' && c.opening.delete(msg.room)) {
      if (c.closeAfterOpen.delete(msg.room)) this.send(c, { op: 'unsubscribe', room: msg.room });
    }
    if (msg.op === 'unsubscribed' && c.leaving.delete(msg.room)) {
      const again = client._subs.get(msg.room);
      if (again) this.subscribe(again);
      return;
    }
    if (msg.op === 'rooms' || (msg.op === 'room' && typeof msg.room === 'object' && msg.room !== null)) {
      this.roomsFrame(msg);
      return;
    }
    if (typeof msg.room === 'string' && c.leaving.has(msg.room)) return;
    const sub = typeof msg.room === 'string' ? client._subs.get(msg.room) : undefined;
    switch (msg.op) {
      case 'subscribed': {
        if (!sub) return;
        sub.wsSubscribed = true;
        sub.failed = null;
        if (sub.cursor === null) sub.cursor = msg.head;
        // A `reset` may follow; if none does, the room's events start at
        // `first` (see Subscription._deliver).
        sub.lifeFirst = typeof msg.first === 'number' ? msg.first : null;
        if (Array.isArray(msg.presence)) sub._members(msg.presence);
        sub._snapshot(msg, 'subscribed');
        if (this.healthyConn(c)) client._contact();
        break;
      }
      case 'event': {
        if (!sub) return;
        const ev = toEvent(msg, msg.via === 'catchup' ? 'catchup' : 'push');
        sub._deliver(ev);
        if (sub.snapshots && ev.seq !== null) client._snapshotSoon(sub);
        break;
      }
      case 'reset': {
        if (!sub) return;
        sub._reset(msg.head, msg.state, msg.first);
        break;
      }
      case 'presence': {
        if (!sub || !sub.presence) return;
        const next = new Map(sub.members);
        for (const m of msg.left ?? []) next.delete(m.sub);
        for (const m of msg.joined ?? []) next.set(m.sub, m.info ?? {});
        sub._members([...next].map(([s, info]) => ({ sub: s, info })));
        break;
      }
      case 'error': {
        /** @type {ClientError} */
        const err = { code: String(msg.code), message: String(msg.message ?? ''), room: msg.room };
        if (sub) {
          if (err.code === 'unavailable' || err.code === 'rate_limited') {
            // Subscribing failed for now: try again shortly on the same socket.
            const delay = client._opts.backoffBaseMs + (Math.random() * client._opts.backoffMaxMs) / 4;
            setTimeout(() => {
              if (c === this.conn && sub.active && !sub.wsSubscribed) this.subscribe(sub);
            }, delay);
          } else if (!sub.wsSubscribed) {
            sub.failed = err;
          }
          sub.emit('error', err);
        }
        client.emit('error', err);
        break;
      }
      default:
        break; // pong, unsubscribed
    }
    client._changed();
  }

  /**
   * `welcome`: the socket works; a probe takes over from long-polling, and
   * every room and list is subscribed on it.
   * @private
   * @param {Conn} c
   * @param {any} msg
   */
  welcome(c, msg) {
    const client = this.client;
    c.welcomed = true;
    c.session = typeof msg.session === 'string' ? msg.session : null;
    if (typeof msg.heartbeat_ms === 'number' && msg.heartbeat_ms > 0) this.heartbeatMs = msg.heartbeat_ms;
    if (c.probe) {
      // Auto mode: WebSocket works again; leave long-polling.
      this.probe = null;
      this.probeTimer?.cancel();
      this.probeTimer = null;
      const gen = ++client._gen;
      for (const sub of client._subs.values()) {
        sub.poll?.abort();
        sub.poll = null;
      }
      client._fallen = false;
      c.probe = false;
      c.gen = gen;
      this.conn = c;
    }
    this.failures = 0;
    client._transport = 'websocket';
    client._polling.failing = false;
    if (client._everConnected && client._lost) client._counts.reconnects += 1;
    client._everConnected = true;
    client._lost = false;
    client._detail = 'connected';
    client._contact();
    for (const sub of client._subs.values()) this.subscribe(sub);
    if (client._roomLists.size > 0) {
      for (const list of client._roomLists) {
        if (list.timer) clearTimeout(list.timer);
        list.timer = null;
      }
      this.roomsSent = null;
      this.subscribeRooms(true);
    }
    client._scheduleAuth(c);
    client.emit('connected', { transport: 'websocket', session: c.session });
    client._changed();
  }

  /**
   * A `rooms` (a fresh list) or `room` (one change) frame, handed to every
   * live room list.
   * @private
   * @param {any} msg
   */
  roomsFrame(msg) {
    const client = this.client;
    const sent = this.roomsSent;
    for (const list of client._roomLists) {
      if (!list.active) continue;
      if (msg.op === 'rooms') {
        // The socket's answer is this list's own when their filters
        // agree; a list under a wider shared filter reads its own.
        const own = sent && list.filter.status === sent.status && list.filter.prefix === sent.prefix;
        if (own) {
          list.wsSubscribed = true;
          list._replace(Array.isArray(msg.rooms) ? msg.rooms : []);
        } else {
          client._refillRoomList(list);
        }
      } else {
        list._update(msg.room, msg.matches !== false);
      }
    }
  }

  /** @param {Conn} c */
  healthyConn(c) {
    return c.welcomed && c === this.conn;
  }

  /** @param {Subscription} sub */
  subscribe(sub) {
    const client = this.client;
    const c = this.conn;
    if (!c || !c.welcomed || !sub.active) return;
    if (sub.viewPending) {
      client._loadView(sub);
      return;
    }
    if (sub.mode === 'polling') {
      // This room long-polls beside the socket.
      if (sub.loopGen !== client._gen) client._polling.loop(sub, client._gen);
      return;
    }
    sub.wsSubscribed = false;
    if (c.leaving.has(sub.room)) return; // subscribed again on `unsubscribed`
    /** @type {{op: string, room: string, since?: number, presence?: boolean}} */
    const msg = { op: 'subscribe', room: sub.room };
    if (sub.cursor !== null) msg.since = sub.cursor;
    if (sub.presence) msg.presence = true;
    c.opening.add(sub.room);
    this.send(c, msg);
  }

  /**
   * A room no longer followed: `unsubscribe` on the socket, if it carries it.
   * @param {string} room
   */
  unsubscribe(room) {
    const c = this.conn;
    if (!c?.welcomed) return;
    // Until `unsubscribed`, frames of this room belong to the old
    // subscription (the protocol has no subscription ids). And no
    // `unsubscribe` while its `subscribe` is unanswered: the server could
    // then open a later subscription of the room from this one's `since`.
    c.leaving.add(room);
    if (c.opening.has(room)) c.closeAfterOpen.add(room);
    else this.send(c, { op: 'unsubscribe', room });
  }

  /**
   * Sends `subscribe_rooms` when what the lists need differs from what the
   * socket has (or `force`: a new socket), `unsubscribe_rooms` when no list
   * is left. Answers whether `subscribe_rooms` was sent.
   * @param {boolean} [force]
   */
  subscribeRooms(force = false) {
    const c = this.conn;
    if (!c || !c.welcomed) return false;
    const f = this.client._roomsFilter();
    if (!f) {
      if (this.roomsSent) this.send(c, { op: 'unsubscribe_rooms' });
      this.roomsSent = null;
      return false;
    }
    if (!force && this.roomsSent && JSON.stringify(this.roomsSent) === JSON.stringify(f)) return false;
    this.roomsSent = f;
    for (const list of this.client._roomLists) list.wsSubscribed = false;
    /** @type {Record<string, unknown>} */
    const msg = { op: 'subscribe_rooms', ...f };
    this.send(c, msg);
    return true;
  }

  /**
   * @param {Conn} c
   * @param {number} code
   * @param {string} reason
   */
  onClose(c, code, reason) {
    const client = this.client;
    if (c.closeHandled) return;
    c.closeHandled = true;
    if (client._closed) return;
    const lived = Date.now() - c.openedAt;
    if (c === this.probe) {
      this.probe = null;
      if (client._mode === 'auto' && client._fallen) this.scheduleProbe();
      return;
    }
    if (c !== this.conn) return;
    if (c.dropped && !c.timedOut && !reason.startsWith('stale')) return;
    this.conn = null;
    client._authTimer?.cancel();
    client._authTimer = null;
    for (const sub of client._subs.values()) sub.wsSubscribed = false;
    if (c.welcomed) client._lost = true;
    if (!client._online) {
      client._transport = 'none';
      client._detail = 'no network';
      client._changed();
      return;
    }
    if (!c.welcomed) this.failures += 1;
    if (c.welcomed && lived >= STABLE_MS) client._attempt = 0;
    let why = reason;
    if (code === 4001) {
      // Token expired: a fresh one, and back at once.
      client._credentials.forget();
      client._attempt = 0;
      why = 'token expired';
    } else if (code === 4029) {
      // Rate limited: the longest window.
      client._attempt = Math.max(client._attempt, 30);
      why = 'rate limited';
    } else if (code === 1001) {
      // The server is going away (restart, deploy): spread the returns
      // over a few seconds so they do not all come back at once.
      client._attempt = Math.max(client._attempt, 3);
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
    if (client._mode === 'auto' && (c.timedOut || this.failures >= client._opts.fallbackAfter)) {
      // WebSocket does not get through here: long-poll, and probe it now and then.
      client._fallen = true;
      client._attempt = 0;
      client._restart(`${why}; falling back to long-poll`);
      return;
    }
    client._transport = 'websocket';
    client._backoff(why, 'websocket', () => this.connect(false));
  }

  /** Auto mode, while long-polling: try WebSocket again after a while. */
  scheduleProbe() {
    const client = this.client;
    this.probeTimer?.cancel();
    const base = client._opts.probeIntervalMs;
    const delay = base * (0.8 + Math.random() * 0.2);
    this.probeTimer = new Timer(delay, () => {
      this.probeTimer = null;
      if (client._mode === 'auto' && client._fallen && !this.probe && client._online) this.connect(true);
    });
  }
}
