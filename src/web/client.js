// @ts-check
/**
 * roomcast browser client: ES modules with no build step, served by the
 * server at `GET /client.js` (this entry) and `GET /client/*.js` (what it
 * imports, by relative path).
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
 * The modules, each importing only those below it:
 * - `client/roomcast.js`: `RoomcastClient`: the public API, state and
 *   status, choosing and restarting a transport (backoff, wake-ups, the
 *   watchdog), the REST reads a room needs beside its transport;
 * - `client/websocket.js`, `client/polling.js`: the two transports;
 * - `client/subscription.js`, `client/room_list.js`: a room (its cursor
 *   and the rule that moves it, its state, members and messages) and a
 *   live room list, apart from any connection;
 * - `client/store.js` (wire frames to events, merge patch, message
 *   versions), `client/rest.js` (credentials, REST), `client/timer.js`,
 *   `client/emitter.js`, `client/types.js` (the API's types).
 *
 * docs/client.md describes the API and the behaviour in full.
 */

export { RoomcastClient } from './client/roomcast.js';
export { RoomList } from './client/room_list.js';
export { Subscription } from './client/subscription.js';

/** @typedef {import('./client/types.js').Mode} Mode */
/** @typedef {import('./client/types.js').Transport} Transport */
/** @typedef {import('./client/types.js').Status} Status */
/** @typedef {import('./client/types.js').Source} Source */
/** @typedef {import('./client/types.js').RoomStatus} RoomStatus */
/** @typedef {import('./client/types.js').RoomEvent} RoomEvent */
/** @typedef {import('./client/types.js').Message} Message */
/** @typedef {import('./client/types.js').Counts} Counts */
/** @typedef {import('./client/types.js').ClientState} ClientState */
/** @typedef {import('./client/types.js').ClientError} ClientError */
/** @typedef {import('./client/types.js').ReconnectInfo} ReconnectInfo */
/** @typedef {import('./client/types.js').ClientEvents} ClientEvents */
/** @typedef {import('./client/types.js').Snapshot} Snapshot */
/** @typedef {import('./client/types.js').SubscriptionEvents} SubscriptionEvents */
/** @typedef {import('./client/types.js').Member} Member */
/** @typedef {import('./client/types.js').PresenceChange} PresenceChange */
/** @typedef {import('./client/types.js').SubscribeOptions} SubscribeOptions */
/** @typedef {import('./client/types.js').ClientOptions} ClientOptions */
/** @typedef {import('./client/types.js').RoomSnapshot} RoomSnapshot */
/** @typedef {import('./client/types.js').RoomsFilter} RoomsFilter */
/** @typedef {import('./client/types.js').RoomListEvents} RoomListEvents */
