// @ts-check
/**
 * The types of the browser client's public API (JSDoc only: this module
 * exports no value). `/client.js` re-exports each of them.
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

export {};
