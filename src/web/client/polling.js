// @ts-check
/**
 * The long-poll transport: one loop per room reading from its cursor (the
 * server holds the request until an event or `wait`), the room lists read
 * every `roomsPollMs`, and the members of rooms with `presence`. The same
 * read from the cursor (`once`) serves `refresh()` and the gap read-back.
 */

import { HttpError, errorText } from './rest.js';
import { toEvent } from './store.js';
import { Timer } from './timer.js';

/** @typedef {import('./types.js').Source} Source */
/** @typedef {import('./subscription.js').Subscription} Subscription */
/** @typedef {import('./room_list.js').RoomList} RoomList */
/** @typedef {import('./roomcast.js').RoomcastClient} RoomcastClient */

/** Polling mode: the members of a room with `presence` are read this often. */
const MEMBERS_POLL_MS = 5000;

const TERMINAL = new Set(['completed', 'failed']);

export class PollingTransport {
  /** @param {RoomcastClient} client */
  constructor(client) {
    /** @private */
    this.client = client;
    /** Long-polls failing (per client, reset by a success). */
    this.failing = false;
  }

  /** Long-polls every room and reads every room list. */
  start() {
    const client = this.client;
    client._transport = 'longpoll';
    for (const sub of client._subs.values()) this.loop(sub, client._gen);
    for (const list of client._roomLists) this.rooms(list, client._gen);
  }

  /** The long-polls work and every room is known up to date. */
  healthy() {
    const client = this.client;
    if (this.failing) return false;
    if (![...client._subs.values()].some((s) => s.active && !s.failed)) return true;
    for (const sub of client._subs.values()) {
      if (sub.failed || !sub.active) continue;
      if (sub.cursor === null || sub.head === null) return false;
    }
    return client._lastUpdateAt !== null;
  }

  /**
   * One room's long-poll loop, from its cursor, until the transport changes.
   * @param {Subscription} sub
   * @param {number} gen
   */
  async loop(sub, gen) {
    const client = this.client;
    const live = () => gen === client._gen && sub.active && !client._closed && client._online;
    // The client's own transport (else a room polling beside a WebSocket:
    // the connection's state is the socket's, not this loop's).
    const own = () => client._transport === 'longpoll';
    if (sub.loopGen === gen) return;
    if (sub.viewPending) {
      client._loadView(sub);
      return;
    }
    sub.loopGen = gen;
    try {
      while (live()) {
        if (sub.failed) return;
        if (sub.status !== null && TERMINAL.has(sub.status) && sub.cursor !== null && sub.head !== null && sub.cursor >= sub.head) {
          // A closed room gets no more events: nothing to wait for.
          client._changed();
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
          const wait = known ? client._opts.pollWaitS : 0;
          const full = await this.once(sub, 'poll', wait, ctl.signal);
          if (!live()) return;
          sub.failures = 0;
          if (!own()) {
            if (sub.presence && Date.now() - sub.membersReadAt > MEMBERS_POLL_MS) {
              sub.membersReadAt = Date.now();
              this.members(sub, ctl.signal);
            }
            client._changed();
            continue;
          }
          if (this.failing || (client._lost && client._everConnected)) {
            if (client._lost) client._counts.reconnects += 1;
            this.failing = false;
          }
          if (sub.presence && Date.now() - sub.membersReadAt > MEMBERS_POLL_MS) {
            sub.membersReadAt = Date.now();
            this.members(sub, ctl.signal);
          }
          if (!client._everConnected || client._lost) client.emit('connected', { transport: 'longpoll', session: null });
          client._everConnected = true;
          client._lost = false;
          client._attempt = 0;
          client._detail = 'long-polling';
          client._contact();
          client._changed();
          if (full) continue;
        } catch (e) {
          if (!live()) return;
          if (ctl.signal.aborted) continue; // a stuck poll aborted by the watchdog, or a wake-up
          if (e instanceof HttpError && (e.status === 401 || e.status === 403 || e.status === 400)) {
            if (e.status === 401 && !sub.retriedAuth) {
              sub.retriedAuth = true;
              client._credentials.forget();
              continue;
            }
            client._reportFetchError(sub, e);
            sub.failed = { code: e.code, message: e.message, room: sub.room };
            client._changed();
            return;
          }
          const retryAfter = e instanceof HttpError ? e.retryAfterMs : null;
          let delay;
          if (own()) {
            this.failing = true;
            client._lost = true;
            delay = client._nextDelay(`poll failed: ${errorText(e)}`, 'longpoll');
          } else {
            const { backoffMaxMs, backoffBaseMs } = client._opts;
            delay = Math.floor(Math.random() * Math.min(backoffMaxMs, backoffBaseMs * 2 ** sub.failures));
            sub.failures += 1;
          }
          client._changed();
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
   * @param {Subscription} sub
   * @param {Source} source
   * @param {number} wait seconds
   * @param {AbortSignal} [signal]
   */
  async once(sub, source, wait, signal) {
    const since = sub.cursor ?? 0;
    const limit = sub.cursor === null ? 1 : this.client._opts.pollLimit;
    const q = `since=${since}&limit=${limit}${wait > 0 ? `&wait=${wait}` : ''}`;
    /** @type {Record<string, string>} */
    const headers = {};
    if (sub.cursor !== null && sub.head !== null) headers['if-none-match'] = `"${sub.cursor}"`;
    const body = await this.client._rest.get(`/v1/rooms/${encodeURIComponent(sub.room)}/events?${q}`, signal, headers);
    if (!sub.active) return false;
    if (body === null) return false; // 304: nothing new
    const first = sub.head === null;
    if (sub.cursor === null) {
      sub.cursor = body.head; // "from now"
      sub._snapshot(body, 'subscribed');
      return false;
    }
    // `reset: true`: the events after the cursor fell out of the retention;
    // a head below the cursor: the log the cursor knows is gone.
    if (body.reset || body.head < sub.cursor) {
      sub._reset(body.head, body.state, body.first);
      return false;
    }
    sub._lifeStart(body.first);
    for (const e of body.events) sub._deliver(toEvent({ ...e, room: sub.room }, source));
    sub._snapshot(body, first ? 'subscribed' : 'snapshot');
    return body.events.length >= limit;
  }

  /**
   * Reads a room from its cursor until up to date (refresh, gap repair).
   * @param {Subscription} sub
   * @param {Source} source
   */
  async readAll(sub, source) {
    for (let i = 0; i < 1000 && sub.active; i++) {
      if (!(await this.once(sub, source, 0))) break;
    }
  }

  /**
   * Polling mode: the list read every `roomsPollMs`, until the transport
   * changes.
   * @param {RoomList} list
   * @param {number} gen
   */
  async rooms(list, gen) {
    const client = this.client;
    if (!list.active || gen !== client._gen || client._closed) return;
    try {
      const rooms = await client.listRooms(list.filter);
      if (list.active && gen === client._gen) list._replace(rooms);
    } catch (e) {
      if (list.active && gen === client._gen) list.emit('error', { code: 'unavailable', message: errorText(e) });
    }
    if (!list.active || gen !== client._gen || client._closed) return;
    list.timer = setTimeout(() => this.rooms(list, gen), client._opts.roomsPollMs);
  }

  /**
   * The members over REST (the page is not a member itself).
   * @param {Subscription} sub
   * @param {AbortSignal} [signal]
   */
  async members(sub, signal) {
    try {
      const body = await this.client._rest.get(`/v1/rooms/${encodeURIComponent(sub.room)}/presence`, signal);
      if (body && sub.active && Array.isArray(body.members)) sub._members(body.members);
    } catch {
      // the next round tries again
    }
  }
}
