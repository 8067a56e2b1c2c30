// @ts-check
/**
 * What a room holds, apart from any connection: events as the wire frames
 * carry them, the state merge patch, and the messages with their versions
 * applied.
 */

/** @typedef {import('./types.js').RoomEvent} RoomEvent */
/** @typedef {import('./types.js').Message} Message */
/** @typedef {import('./types.js').Source} Source */

/**
 * @param {any} m a WebSocket event frame or a poll answer's event
 * @param {Source} source
 * @returns {RoomEvent}
 */
export function toEvent(m, source) {
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
export function applyChange(messages, ev) {
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
export function mergePatch(target, patch) {
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
