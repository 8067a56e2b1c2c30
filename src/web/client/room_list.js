// @ts-check
/** A live room list (a call board): the rooms of an org that pass a filter. */

import { Emitter } from './emitter.js';

/** @typedef {import('./types.js').RoomSnapshot} RoomSnapshot */
/** @typedef {import('./types.js').RoomsFilter} RoomsFilter */
/** @typedef {import('./types.js').RoomListEvents} RoomListEvents */

/**
 * What a room list needs of the client that follows it.
 * @typedef {object} ListHost
 * @property {(filter: RoomsFilter) => Promise<RoomSnapshot[]>} listRooms
 * @property {(list: RoomList) => void} _dropRoomList
 * @property {(list: RoomList) => void} _refillRoomList
 */

/**
 * A live room list (`subscribeRooms`): over WebSocket the server pushes a
 * fresh list on every (re)subscribe, then a `room` frame per change; in
 * polling mode the list is read every `roomsPollMs`.
 * @extends {Emitter<RoomListEvents>}
 */
export class RoomList extends Emitter {
  /**
   * @param {ListHost} host the client that follows it
   * @param {RoomsFilter} filter
   */
  constructor(host, filter) {
    super();
    /** @private */
    this._host = host;
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
    this._host._dropRoomList(this);
  }

  /** Reads the list now (`GET /v1/rooms`) and takes it. */
  async refresh() {
    this._replace(await this._host.listRooms(this.filter));
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
    if (!ok && full) this._host._refillRoomList(this);
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
 * Whether a room passes a list's filter (status, prefix).
 * @param {RoomSnapshot} r
 * @param {RoomsFilter} f
 */
function passes(r, f) {
  if (f.status && r.status !== f.status) return false;
  if (f.prefix && !r.room.startsWith(f.prefix)) return false;
  return true;
}
