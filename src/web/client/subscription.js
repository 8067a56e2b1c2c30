// @ts-check
/**
 * One room followed by a client: its cursor and the rule that moves it (an
 * event is taken only at cursor + 1), and what is known of the room (head,
 * status, state, members, messages). It opens no connection: the client's
 * transports hand it what they receive.
 */

import { Emitter } from './emitter.js';
import { applyChange, mergePatch } from './store.js';

/** @typedef {import('./types.js').ClientError} ClientError */
/** @typedef {import('./types.js').Counts} Counts */
/** @typedef {import('./types.js').Member} Member */
/** @typedef {import('./types.js').Message} Message */
/** @typedef {import('./types.js').RoomEvent} RoomEvent */
/** @typedef {import('./types.js').RoomStatus} RoomStatus */
/** @typedef {import('./types.js').SubscribeOptions} SubscribeOptions */
/** @typedef {import('./types.js').SubscriptionEvents} SubscriptionEvents */
/** @typedef {import('./timer.js').Timer} Timer */

/**
 * What a room needs of the client that follows it.
 * @typedef {object} RoomHost
 * @property {(room: string) => void} unsubscribe
 * @property {Counts} _counts the client's counters
 * @property {number | null} _lastEventAt
 * @property {(sub: Subscription) => void} _repair reads back the events missing before those waiting in `pending`
 * @property {(sub: Subscription) => void} _loadView reads the room's messages as they stand (`view=latest`)
 */

/**
 * One room followed by a client: its cursor, what is known of the room, and
 * its listeners. Made by `RoomcastClient.subscribe`.
 * @extends {Emitter<SubscriptionEvents>}
 */
export class Subscription extends Emitter {
  /**
   * @param {RoomHost} host the client that follows it
   * @param {string} room
   * @param {SubscribeOptions} options
   */
  constructor(host, room, options) {
    super();
    /** @private */
    this._host = host;
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
    this._host.unsubscribe(this.room);
  }

  // ------------------------------------------------ the cursor rule

  /**
   * The delivery rule: an event goes to the listeners only when its seq is
   * the cursor + 1; at or below the cursor it is a duplicate and dropped;
   * ahead of it, it waits while the gap is read back.
   * @internal
   * @param {RoomEvent} ev
   */
  _deliver(ev) {
    if (ev.seq === null) {
      this.emit('event', ev); // ephemeral: no cursor, no gap, no duplicate
      return;
    }
    if (this.cursor === null) this.cursor = ev.seq - 1;
    // The room's first event after a `subscribed` whose `first` was past the
    // cursor, with no `reset` in between: the seqs before it never existed
    // in the room's current life.
    if (ev.seq === this.lifeFirst && ev.seq > this.cursor + 1) this.cursor = ev.seq - 1;
    if (ev.seq <= this.cursor) {
      this._host._counts.duplicates += 1;
      return;
    }
    if (ev.seq > this.cursor + 1) {
      if (this.pending.has(ev.seq)) {
        this._host._counts.duplicates += 1;
        return;
      }
      this.pending.set(ev.seq, ev);
      this._host._repair(this);
      return;
    }
    this._accept(ev);
    let next;
    while ((next = this.pending.get(/** @type {number} */ (this.cursor) + 1))) {
      this.pending.delete(next.seq ?? -1);
      this._accept(next);
    }
    // Waiting events that a read-back delivered meanwhile were received twice.
    for (const seq of this.pending.keys()) {
      if (seq <= /** @type {number} */ (this.cursor)) {
        this.pending.delete(seq);
        this._host._counts.duplicates += 1;
      }
    }
  }

  /**
   * @internal
   * @param {RoomEvent} ev
   */
  _accept(ev) {
    this.cursor = /** @type {number} */ (ev.seq);
    if (this.head === null || this.cursor > this.head) this.head = this.cursor;
    this._host._counts[ev.source] += 1;
    this._host._lastEventAt = Date.now();
    // State travels with events: a patch or status not yet in the
    // snapshot is applied in seq order, with no read.
    const changes = (ev.state !== undefined || ev.status !== undefined) && (this.stateAt === null || this.cursor > this.stateAt);
    if (changes) {
      if (ev.state !== undefined) this.state = mergePatch(this.state, ev.state);
      if (ev.status !== undefined) this.status = ev.status;
    }
    if (this.stateAt === null || this.cursor > this.stateAt) this.stateAt = this.cursor;
    this.emit('event', ev);
    if (changes) this.emit('snapshot', { head: this.head, status: /** @type {RoomStatus} */ (this.status), state: this.state });
    if (this.messagesMode && this.messagesAt !== null && this.cursor > this.messagesAt) {
      this.messagesAt = this.cursor;
      if (applyChange(this.messages, ev)) this.emit('messages', this.messageList());
    }
  }

  /**
   * An answer with no `reset` whose `first` is past the cursor: the seqs in
   * between never existed in the room's current life (it was created after
   * its org's floor rose), so the cursor moves to `first - 1`: nothing is
   * lost.
   * @internal
   * @param {unknown} first the lowest seq the room stores
   */
  _lifeStart(first) {
    if (typeof first === 'number' && this.cursor !== null && this.cursor < first - 1) {
      this.cursor = first - 1;
    }
  }

  /**
   * Takes the room's members as they are now and tells the listeners who
   * joined and who left since the last time.
   * @internal
   * @param {{sub: string, info?: Record<string, unknown>}[]} list
   */
  _members(list) {
    const next = new Map(list.map((m) => [m.sub, m.info ?? {}]));
    /** @type {Member[]} */
    const joined = [];
    for (const [s, info] of next) if (!this.members.has(s)) joined.push({ sub: s, info });
    const left = [...this.members.keys()].filter((s) => !next.has(s)).map((s) => ({ sub: s }));
    this.members = next;
    if (joined.length || left.length) {
      this.emit('presence', { members: [...next].map(([s, info]) => ({ sub: s, info })), joined, left });
    }
  }

  /**
   * `reset`: the events after the cursor cannot be replayed; resync from the
   * snapshot and go on from `head`.
   * @internal
   * @param {number} head
   * @param {Record<string, unknown>} state
   * @param {number} [first] the lowest seq the room still stores
   */
  _reset(head, state, first) {
    const since = this.cursor ?? head;
    if (this.messagesMode && !this.viewPending) {
      // The changes after the cursor are gone: read the kept messages again.
      this.messagesAt = null;
      this._host._loadView(this);
    }
    this.lifeFirst = null;
    this.cursor = head;
    this.head = head;
    this.state = state ?? {};
    this.stateAt = head;
    this.pending.clear();
    this.emit('reset', { head, state: this.state, first: first ?? head + 1, since });
  }

  /**
   * Takes what a server answer says of the room.
   * @internal
   * @param {{head: number, status: RoomStatus, state: Record<string, unknown>}} s
   * @param {'subscribed' | 'snapshot'} name
   */
  _snapshot(s, name) {
    const changed =
      this.head !== s.head || this.status !== s.status || JSON.stringify(this.state) !== JSON.stringify(s.state);
    if (this.head === null || s.head >= this.head) this.head = s.head;
    // A snapshot older than what the events already gave is not taken.
    if (this.stateAt === null || s.head >= this.stateAt) {
      this.status = s.status;
      this.state = s.state ?? {};
      this.stateAt = s.head;
    }
    const snap = { head: s.head, status: /** @type {RoomStatus} */ (this.status), state: this.state };
    if (name === 'subscribed') this.emit('subscribed', snap);
    if (changed || name === 'subscribed') this.emit('snapshot', snap);
  }
}
