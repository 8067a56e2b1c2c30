"""The subscriber: :class:`Client` follows rooms exactly once, in order.

One cursor per room (the last seq delivered). Every (re)connection and every
poll resumes from it, and an event is handed on only when its seq is the
cursor + 1: at or below the cursor it is a duplicate (dropped and counted),
ahead of it it waits while the missing ones are read back over REST. A
``reset`` (the events after the cursor cannot be replayed) moves the cursor
to the head and is yielded in-band as a :class:`~roomcast.Reset`.

Transports: one WebSocket (``/v1/ws``) for every room of the client, with
full-jitter backoff, the ``websockets`` keepalive (a ping every
``ping_interval``; a socket whose pong does not come within twice
``pong_timeout`` is closed and replaced), token renewal with ``{"op": "auth"}`` before expiry;
long-poll (``GET /v1/rooms/{room}/events?since=N&wait=25``), one per room;
and ``auto``: WebSocket, falling back to long-poll after ``fallback_after``
failed attempts in a row (or a connect timeout), probing WebSocket every
``probe_interval`` and switching back when one says ``welcome``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from ._core import USER_AGENT
from .errors import (
    BadRequest,
    Forbidden,
    NotFound,
    RoomcastError,
    Unauthorized,
    error_for,
)
from .models import Counts, Event, EventPage, Member, Message, Presence, PresenceChange, Reset, RoomSnapshot, Source
from .producer import AsyncProducer
from .retry import NO_RETRY, RetryPolicy, full_jitter
from .tokens import token_expiry

__all__ = ["Client", "RoomSubscription", "Mode", "Transport", "Status", "TokenProvider"]

log = logging.getLogger("roomcast")

# Polling: the members of a room followed with ``presence`` are read this often.
MEMBERS_POLL_S = 5.0

Mode = Literal["realtime", "polling", "auto"]
Transport = Literal["websocket", "longpoll", "none"]
Status = Literal["connecting", "live", "delayed", "offline"]
TokenProvider = Callable[[], str | Awaitable[str]]

TERMINAL = frozenset({"completed", "failed"})
_END = object()


class _WsFailed(Exception):
    def __init__(self, why: str, *, timed_out: bool = False, status: int | None = None, retry_after: float | None = None):
        super().__init__(why)
        self.timed_out = timed_out
        self.status = status
        self.retry_after = retry_after


class _Conn:
    """One welcomed WebSocket and what the watchdog knows of it."""

    def __init__(self, ws: ClientConnection, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.session: str | None = welcome.get("session") if isinstance(welcome.get("session"), str) else None
        hb = welcome.get("heartbeat_ms")
        self.heartbeat = hb / 1000 if isinstance(hb, (int, float)) and hb > 0 else 15.0
        self.opened_at = time.monotonic()
        self.last_rx = time.monotonic()
        self.outbox: asyncio.Queue[str] = asyncio.Queue()
        #: rooms whose ``subscribe`` is not answered yet
        self.opening: set[str] = set()
        #: rooms unsubscribed whose ``unsubscribed`` has not come yet
        self.leaving: set[str] = set()
        #: rooms to unsubscribe once their ``subscribe`` is answered
        self.close_after_open: set[str] = set()

    def send(self, msg: dict[str, Any]) -> None:
        self.outbox.put_nowait(json.dumps(msg, separators=(",", ":")))


class RoomSubscription:
    """A followed room: an async iterator of :class:`~roomcast.Event` and
    :class:`~roomcast.Reset` items, each event exactly once, in seq order.

    ``async for item in client.room("meeting-42", since=0): ...``

    The iteration ends when the subscription or the client is closed. A
    subscription the server refuses (``forbidden``, ``bad_request``, a
    token refused twice) raises the typed error from the iteration.

    Attributes:
        room: the room id.
        cursor: the last seq delivered (``None`` until known when following
            "from now").
        head, status, state: the room as the server reported it
            (``subscribed``, polls, resets), with every later event's state
            patch and status applied in seq order: they follow each event
            on every transport, with no read.
    """

    def __init__(
        self,
        client: Client,
        room: str,
        since: int | None,
        ephemeral: bool,
        presence: bool = False,
        messages: bool = False,
    ) -> None:
        self._client = client
        self.room = room
        self.cursor: int | None = since
        self.head: int | None = None
        self.status: str | None = None
        self.state: dict[str, Any] = {}
        # The seq ``state`` and ``status`` stand at: an event at or below it
        # is already in them.
        self._state_at: int | None = None
        self.first: int | None = None
        self.ephemeral = ephemeral
        self.presence = presence
        # Message versions (``messages=True``): the room as it stands, by seq.
        self.messages_mode = messages
        self.messages: dict[int, Message] = {}
        self._view_loaded = not messages
        self._view_task: asyncio.Task[None] | None = None
        # The room's members (with ``presence``): sub -> info.
        self.members: dict[str, dict[str, Any]] = {}
        self._members_read_at = 0.0
        self.active = True
        self.failed: RoomcastError | None = None
        self.ws_subscribed = False
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pending: dict[int, Event] = {}
        # The ``first`` of the last ``subscribed``: the room's first event
        # when the cursor is below it and no ``reset`` came.
        self._life_first: int | None = None
        self._repair_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._ended = False

    def __repr__(self) -> str:
        return f"RoomSubscription(room={self.room!r}, cursor={self.cursor!r}, head={self.head!r}, status={self.status!r})"

    def __aiter__(self) -> RoomSubscription:
        return self

    async def __anext__(self) -> Event | Reset | PresenceChange:
        if self._ended and self._queue.empty():
            raise StopAsyncIteration
        self._client._ensure_started()
        item = await self._queue.get()
        if item is _END:
            self._ended = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return item  # type: ignore[no-any-return]

    async def next(self, timeout: float | None = None) -> Event | Reset | PresenceChange:
        """The next item, waiting at most ``timeout`` seconds (``TimeoutError``)."""
        if timeout is None:
            return await self.__anext__()
        return await asyncio.wait_for(self.__anext__(), timeout)

    @property
    def loading(self) -> bool:
        """True until the server first answered the subscription (or
        refused it): the cursor, state and status are not known yet."""
        return not self._ready.is_set() and self.failed is None

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Waits until the server has answered the subscription once
        (``subscribed`` or a first poll), so the cursor is known."""
        self._client._ensure_started()
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def close(self) -> None:
        """Stops following the room; the iteration ends."""
        await self._client._unsubscribe(self)

    unsubscribe = close

    async def __aenter__(self) -> RoomSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _put(self, item: Any) -> None:
        self._queue.put_nowait(item)

    def _end(self, error: BaseException | None = None) -> None:
        self._queue.put_nowait(error if error is not None else _END)


class Client:
    """Follows rooms over WebSocket, long-poll or both (``mode="auto"``).

    Args:
        base_url: the server, ``http(s)://host:port``.
        token: a JWT used as it is.
        token_provider: instead of ``token``: a callable (sync or async)
            answering a fresh JWT; called on every WebSocket (re)connection,
            before the token expires (its new token is sent with
            ``{"op": "auth"}``, keeping the connection), and for HTTP requests
            when the last token is near expiry or was refused.
        mode: ``"realtime"`` (WebSocket only), ``"polling"`` (long-poll only)
            or ``"auto"`` (WebSocket, long-poll while it does not get through).
        ws_url: where to open WebSockets (``ws(s)://host:port``), when not at
            ``base_url`` (a separate gateway; tests).
        backoff_base, backoff_max: full-jitter windows, 0.5 s doubling up to 20 s.
        connect_timeout: a WebSocket without ``welcome`` by then has failed.
        ping_interval: the ``websockets`` keepalive sends a ping this often
            (default 15 s, the server's default heartbeat).
        pong_timeout: a ping unanswered for twice this closes the socket,
            which is replaced (resuming from the cursors).
        fallback_after: auto mode: failed WebSocket attempts in a row before
            long-polling.
        probe_interval: auto mode: WebSocket is tried again this often
            (80-100 % of it) while long-polling.
        poll_wait, poll_limit: long-poll ``wait`` (s) and page size.
        renew_before: renew the token this many seconds before ``exp``
            (default: a fifth of its life, at most 60 s).
        http_timeout: HTTP timeout (a long-poll gets ``poll_wait`` more).
        retry: the retry policy of :meth:`snapshot`, :meth:`rooms`,
            :meth:`events` and :meth:`members`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        mode: Mode = "auto",
        ws_url: str | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        connect_timeout: float = 10.0,
        ping_interval: float | None = None,
        pong_timeout: float = 5.0,
        fallback_after: int = 3,
        probe_interval: float = 30.0,
        poll_wait: int = 25,
        poll_limit: int = 500,
        renew_before: float | None = None,
        http_timeout: float = 10.0,
        stable_after: float = 5.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        if (token is None) == (token_provider is None):
            raise TypeError("Client: give exactly one of token= or token_provider=")
        if token is not None and not isinstance(token, str):
            raise TypeError("Client: token must be a str (use token_provider= for a callable)")
        _check_mode(mode)
        self.base_url = base_url.rstrip("/")
        ws_base = (ws_url or self.base_url).rstrip("/")
        if ws_base.startswith("http"):
            ws_base = "ws" + ws_base[4:]
        self._ws_endpoint = ws_base + "/v1/ws"
        self._static_token = token
        self._provider = token_provider
        self._mode: Mode = mode
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._pong_timeout = pong_timeout
        self._fallback_after = fallback_after
        self._probe_interval = probe_interval
        self._poll_wait = poll_wait
        self._poll_limit = poll_limit
        self._renew_before = renew_before
        self._stable_after = stable_after

        self._http = httpx.AsyncClient(
            timeout=http_timeout,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=20),
        )
        # Polls and gap read-backs: no retries (the loops back off themselves).
        self._api = AsyncProducer(self.base_url, self._get_token, retry=NO_RETRY, timeout=http_timeout, http_client=self._http)
        self._rest = AsyncProducer(self.base_url, self._get_token, retry=retry, timeout=http_timeout, http_client=self._http)

        self._subs: dict[str, RoomSubscription] = {}
        self._counts = Counts()
        #: tokens sent with ``{"op": "auth"}`` on an open WebSocket
        self.auth_renewals = 0
        #: WebSocket connections that said ``welcome``
        self.connections = 0
        #: the last error met (connection failures, refused polls), for diagnostics
        self.last_error: BaseException | None = None

        self._task: asyncio.Task[None] | None = None
        self._cycle: asyncio.Task[None] | None = None
        self._closed = False
        self._conn: _Conn | None = None
        self._handoff: _Conn | None = None
        self._transport: Transport = "none"
        self._polling = False
        self._attempt = 0
        self._failures = 0
        self._auth_refusals = 0
        self._fallen = False
        self._ever_connected = False
        self._lost = False
        self._poll_failing = False
        self._last_update: float | None = None
        self._started_at: float | None = None
        self._was_live = False

        self._token: str | None = None
        self._token_exp: float | None = None
        self._token_at = 0.0
        self._token_lock = asyncio.Lock()

    # ----------------------------------------------------------- public

    def room(
        self,
        room: str,
        *,
        since: int | None = None,
        ephemeral: bool = False,
        presence: bool = False,
        messages: bool = False,
    ) -> RoomSubscription:
        """Follows ``room``; iterate the answer (``async for``).

        Args:
            since: the last seq you have: ``0`` for all history, ``None`` for
                "from now" (no history).
            ephemeral: also yield ephemeral events (``seq`` ``None``, never
                stored; best effort, not ordered with durable events).
            presence: join the room as a member (the token's ``sub`` and
                ``info``) and follow its members: ``sub.members``, and a
                :class:`PresenceChange` yielded when they change. Polling
                reads them every 5 s (and is not a member).
            messages: keep the room's messages as they stand in
                ``sub.messages`` (versions applied: updates replace, appends
                extend ``text``, deletes remove): the room is read once
                with ``view=latest`` from ``since`` (default 0, not every
                change replayed), then each change is applied as it comes,
                once.
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
            raise ValueError("since must be an int >= 0, or None for 'from now'")
        if room in self._subs:
            raise ValueError(f"already following {room!r}: close that subscription first")
        if messages and since is None:
            since = 0
        sub = RoomSubscription(self, room, since, ephemeral, presence, messages)
        self._subs[room] = sub
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return sub  # started on the first iteration
        self._ensure_started()
        self._attach(sub)
        return sub

    subscribe = room

    def subscription(self, room: str) -> RoomSubscription | None:
        """The subscription of ``room``, if followed."""
        return self._subs.get(room)

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        """Switches the mode; every room keeps its cursor."""
        _check_mode(mode)
        if mode == self._mode:
            return
        self._mode = mode
        self._attempt = 0
        self._failures = 0
        self._fallen = False
        if self._cycle is not None and not self._cycle.done():
            self._cycle.cancel()

    @property
    def transport(self) -> Transport:
        """The transport in use now."""
        return self._transport

    @property
    def session(self) -> str | None:
        """The server's session id of the open WebSocket, if any."""
        return self._conn.session if self._conn else None

    @property
    def counts(self) -> Counts:
        """A copy of the counters (push, catchup, poll, duplicates, gaps, reconnects)."""
        return self._counts.copy()

    @property
    def status(self) -> Status:
        """``connecting``: not live yet (for up to 30 s after the client
        started); ``live``: connected and every room known
        up to date; ``delayed``: not known up to date (reconnecting, a stale
        socket, polls failing); ``offline``: closed, or nothing heard for 30 s."""
        if self._closed:
            return "offline"
        now = time.monotonic()
        subs = [s for s in self._subs.values() if s.active and s.failed is None]
        if self._transport == "websocket" and self._conn is not None:
            if all(s.ws_subscribed for s in subs):
                self._was_live = True
                return "live"
        elif self._transport == "longpoll" and not self._poll_failing:
            if all(s.cursor is not None and s.head is not None for s in subs):
                self._was_live = True
                return "live"
        if not self._was_live and (self._started_at is None or now - self._started_at < 30):
            return "connecting"
        if self._last_update is not None and now - self._last_update < 30:
            return "delayed"
        return "offline"

    async def close(self) -> None:
        """Closes every connection; every subscription's iteration ends."""
        if self._closed:
            return
        self._closed = True
        tasks: list[asyncio.Task[Any]] = [t for t in (self._task, self._cycle) if t is not None]
        for sub in self._subs.values():
            tasks += [t for t in (sub._poll_task, sub._repair_task) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._handoff is not None:
            await _close_ws(self._handoff.ws)
            self._handoff = None
        for sub in list(self._subs.values()):
            sub.active = False
            sub._end()
        self._subs.clear()
        self._transport = "none"
        await self._http.aclose()

    async def __aenter__(self) -> Client:
        self._ensure_started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # REST reads, with the client's token (retried like a producer's).

    async def snapshot(self, room: str) -> RoomSnapshot | None:
        """``GET /v1/rooms/{room}``; ``None`` for a room never published to."""
        return await self._rest.snapshot(room)

    async def rooms(self, status: str | None = None, limit: int | None = None) -> list[RoomSnapshot]:
        """The org's rooms, newest activity first."""
        return await self._rest.rooms(status, limit)

    async def events(self, room: str, since: int | None = None, limit: int | None = None) -> EventPage:
        """One page of events after ``since`` (REST; does not move any cursor)."""
        return await self._rest.events(room, since, limit)

    async def members(self, room: str, *, count_only: bool = False) -> Presence:
        """``GET /v1/rooms/{room}/presence`` (PROTOCOL.md, Additions)."""
        return await self._rest.members(room, count_only=count_only)

    # ------------------------------------------------------------ token

    async def _get_token(self, force: bool = False) -> str:
        if self._static_token is not None:
            return self._static_token
        if not force and self._token is not None and not self._token_due():
            return self._token
        async with self._token_lock:
            if not force and self._token is not None and not self._token_due():
                return self._token
            assert self._provider is not None
            v = self._provider()
            if inspect.isawaitable(v):
                v = await v
            if not isinstance(v, str) or not v:
                raise Unauthorized("the token provider returned no token")
            self._token = v
            self._token_exp = token_expiry(v)
            self._token_at = time.time()
            return v

    def _renew_at(self) -> float | None:
        """When the current token should be renewed (unix seconds)."""
        if self._token_exp is None:
            return None
        if self._renew_before is not None:
            margin = self._renew_before
        else:
            margin = min(60.0, max(0.0, self._token_exp - self._token_at) / 5)
        return self._token_exp - margin

    def _token_due(self) -> bool:
        at = self._renew_at()
        return at is not None and time.time() >= at

    # -------------------------------------------------------- lifecycle

    def _ensure_started(self) -> None:
        if self._task is None and not self._closed:
            self._started_at = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="roomcast-client")

    def _attach(self, sub: RoomSubscription) -> None:
        """A room followed while a transport runs joins it."""
        if not sub._view_loaded:
            self._load_view_soon(sub)
            return
        if self._conn is not None:
            self._ws_subscribe(self._conn, sub)
        elif self._polling:
            self._start_poll(sub)

    async def _supervise(self) -> None:
        while not self._closed:
            if self._mode == "polling" or (self._mode == "auto" and self._fallen):
                cycle = self._poll_cycle()
            else:
                cycle = self._ws_cycle()
            self._cycle = asyncio.create_task(cycle)
            try:
                await asyncio.wait({self._cycle})
            except asyncio.CancelledError:
                self._cycle.cancel()
                with contextlib.suppress(BaseException):
                    await self._cycle
                raise
            if self._cycle.cancelled():
                continue  # a mode switch: start the new mode now
            exc = self._cycle.exception()
            if exc is not None:
                log.exception("roomcast: transport cycle failed", exc_info=exc)
                self.last_error = exc
                await asyncio.sleep(self._next_delay())

    def _next_delay(self) -> float:
        d = full_jitter(self._attempt, self._backoff_base, self._backoff_max)
        self._attempt = min(self._attempt + 1, 30)
        return d

    # -------------------------------------------------------- WebSocket

    async def _open_ws(self) -> _Conn:
        """Opens a WebSocket and waits for ``welcome``."""
        started = time.monotonic()
        try:
            token = await self._get_token(force=True)  # a fresh one for every connection
        except Exception as e:
            raise _WsFailed(f"token provider failed: {e}") from e
        try:
            ws = await connect(
                self._ws_endpoint,
                additional_headers={"Authorization": f"Bearer {token}"},
                user_agent_header=USER_AGENT,
                open_timeout=self._connect_timeout,
                # The library's keepalive finds a dead or silent socket.
                ping_interval=self._ping_interval or 15.0,
                ping_timeout=2 * self._pong_timeout,
                close_timeout=1,
                compression=None,
                max_size=1 << 24,
                # proxy: the library's default (HTTPS_PROXY / ALL_PROXY).
            )
        except InvalidStatus as e:
            status = e.response.status_code
            ra = e.response.headers.get("Retry-After")
            retry_after = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
            raise _WsFailed(f"upgrade refused with HTTP {status}", status=status, retry_after=retry_after) from e
        except TimeoutError as e:
            raise _WsFailed("connect timeout", timed_out=True) from e
        except (OSError, WebSocketException, EOFError) as e:
            raise _WsFailed(f"cannot connect: {e or type(e).__name__}") from e
        try:
            left = self._connect_timeout - (time.monotonic() - started)
            raw = await asyncio.wait_for(ws.recv(), max(left, 0.01))
            msg = json.loads(raw)
            if not isinstance(msg, dict) or msg.get("op") != "welcome":
                raise _WsFailed("no welcome")
        except TimeoutError as e:
            await _close_ws(ws)
            raise _WsFailed("connect timeout (no welcome)", timed_out=True) from e
        except (ConnectionClosed, ValueError) as e:
            await _close_ws(ws)
            raise _WsFailed(f"lost before welcome: {e}") from e
        except _WsFailed:
            await _close_ws(ws)
            raise
        return _Conn(ws, msg)

    async def _ws_cycle(self) -> None:
        conn, self._handoff = self._handoff, None
        self._transport = "websocket"
        if conn is None:
            try:
                conn = await self._open_ws()
            except _WsFailed as f:
                self.last_error = f
                self._failures += 1
                if f.status in (401, 403):
                    self._auth_refusals += 1
                    self._token = None
                    if self._auth_refusals >= 2:
                        err = error_for(
                            "unauthorized" if f.status == 401 else "forbidden",
                            f"the WebSocket upgrade was refused twice with HTTP {f.status}",
                            status=f.status,
                        )
                        for sub in list(self._subs.values()):
                            self._fail(sub, err)
                if self._mode == "auto" and (f.timed_out or self._failures >= self._fallback_after):
                    log.info("roomcast: %s; falling back to long-poll", f)
                    self._fallen = True
                    self._attempt = 0
                    self._lost = self._lost or self._ever_connected
                    return
                delay = self._next_delay()
                if f.retry_after is not None:
                    delay = max(delay, f.retry_after)
                log.info("roomcast: %s; retrying in %.1f s", f, delay)
                await asyncio.sleep(delay)
                return
        self._failures = 0
        self._auth_refusals = 0
        self._fallen = False
        code, reason, lived = await self._run_conn(conn)
        log.info("roomcast: WebSocket closed (%s %s) after %.1f s", code, reason, lived)
        self._lost = True
        if lived >= self._stable_after:
            self._attempt = 0
        if code in (4001, 1008) and lived >= 1.0:
            # Token expired / identity switched: a fresh token, back at once.
            self._token = None
            self._attempt = 0
            return
        if code == 4029:
            self._attempt = max(self._attempt, 30)
        elif code == 1001:
            self._attempt = max(self._attempt, 3)
        await asyncio.sleep(self._next_delay())

    async def _run_conn(self, conn: _Conn) -> tuple[int, str, float]:
        """Runs a welcomed WebSocket until it closes: (code, reason, seconds lived)."""
        self._conn = conn
        self._transport = "websocket"
        self.connections += 1
        if self._ever_connected and self._lost:
            self._counts.reconnects += 1
        self._ever_connected = True
        self._lost = False
        self._last_update = time.monotonic()
        writer = asyncio.create_task(self._writer(conn))
        renew = asyncio.create_task(self._renew_loop(conn)) if self._provider is not None else None
        try:
            for sub in list(self._subs.values()):
                self._ws_subscribe(conn, sub)
            code, reason = await self._read_loop(conn)
        finally:
            writer.cancel()
            if renew is not None:
                renew.cancel()
            self._conn = None
            for sub in self._subs.values():
                sub.ws_subscribed = False
            await _close_ws(conn.ws)
        return code, reason, time.monotonic() - conn.opened_at

    async def _writer(self, conn: _Conn) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await conn.ws.send(await conn.outbox.get())

    async def _read_loop(self, conn: _Conn) -> tuple[int, str]:
        ws = conn.ws
        while True:
            try:
                raw = await ws.recv()
            except ConnectionClosed as e:
                if e.rcvd is not None:
                    return e.rcvd.code, e.rcvd.reason
                if e.sent is not None and e.sent.code == 1011:
                    return 4000, "stale socket: no pong"  # the keepalive gave up
                return 1006, "connection lost"
            conn.last_rx = time.monotonic()
            self._last_update = conn.last_rx
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if isinstance(msg, dict):
                self._on_message(conn, msg)

    async def _renew_loop(self, conn: _Conn) -> None:
        """Sends a fresh token with ``op: auth`` before the current one expires."""
        while True:
            at = self._renew_at()
            if at is None:
                return
            await asyncio.sleep(max(0.0, at - time.time()))
            old = self._token_exp
            try:
                token = await self._get_token(force=True)
            except Exception as e:
                self.last_error = e
                log.warning("roomcast: token provider failed: %s", e)
                await asyncio.sleep(5)
                continue
            if self._token_exp is not None and old is not None and self._token_exp <= old:
                await asyncio.sleep(5)  # no fresher token yet: ask again shortly
                continue
            conn.send({"op": "auth", "token": token})
            self.auth_renewals += 1

    def _ws_subscribe(self, conn: _Conn, sub: RoomSubscription) -> None:
        if not sub.active or sub.failed is not None:
            return
        if not sub._view_loaded:
            self._load_view_soon(sub)
            return
        sub.ws_subscribed = False
        if sub.room in conn.leaving:
            return  # subscribed again once ``unsubscribed`` comes
        msg: dict[str, Any] = {"op": "subscribe", "room": sub.room}
        if sub.cursor is not None:
            msg["since"] = sub.cursor
        if sub.presence:
            msg["presence"] = True
        conn.opening.add(sub.room)
        conn.send(msg)

    def _on_message(self, conn: _Conn, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        room = msg.get("room")
        if not isinstance(room, str):
            room = None
        if op in ("subscribed", "error") and room is not None and room in conn.opening:
            conn.opening.discard(room)
            if room in conn.close_after_open:
                conn.close_after_open.discard(room)
                conn.send({"op": "unsubscribe", "room": room})
        if op == "unsubscribed" and room is not None and room in conn.leaving:
            conn.leaving.discard(room)
            again = self._subs.get(room)
            if again is not None:
                self._ws_subscribe(conn, again)
            return
        if room is not None and room in conn.leaving:
            return  # frames of a subscription being closed
        sub = self._subs.get(room) if room is not None else None
        if op == "event":
            if sub is not None:
                src: Source = "catchup" if msg.get("via") == "catchup" else "push"
                self._deliver(sub, Event.from_wire(sub.room, msg, src))
        elif op == "subscribed":
            if sub is not None:
                sub.ws_subscribed = True
                head = msg.get("head")
                if sub.cursor is None and isinstance(head, int):
                    sub.cursor = head
                # A ``reset`` may follow; if none does, the room's events
                # start at ``first`` (see _deliver).
                first = msg.get("first")
                sub._life_first = first if isinstance(first, int) else None
                if sub.presence and isinstance(msg.get("presence"), list):
                    self._members(sub, msg["presence"])
                self._snapshot(sub, msg)
        elif op == "presence":
            if sub is not None and sub.presence:
                now = dict(sub.members)
                for m in msg.get("left") or []:
                    if isinstance(m, dict):
                        now.pop(str(m.get("sub", "")), None)
                for m in msg.get("joined") or []:
                    if isinstance(m, dict):
                        now[str(m.get("sub", ""))] = m.get("info") or {}
                self._members(sub, [{"sub": s, "info": info} for s, info in now.items()])
        elif op == "reset":
            if sub is not None:
                self._reset(sub, int(msg.get("head") or 0), msg.get("state"), msg.get("first"))
        elif op == "error":
            code = str(msg.get("code", ""))
            err = error_for(code, str(msg.get("message", "")), room=room)
            self.last_error = err
            if sub is not None:
                if code in ("unavailable", "rate_limited"):
                    # Subscribing failed for now: again shortly on the same socket.
                    delay = self._backoff_base + random.random() * self._backoff_max / 4
                    asyncio.get_running_loop().call_later(delay, self._resubscribe, conn, sub)
                elif not sub.ws_subscribed:
                    self._fail(sub, err)
            else:
                log.warning("roomcast: server error: %s", err)

    def _resubscribe(self, conn: _Conn, sub: RoomSubscription) -> None:
        if conn is self._conn and sub.active and not sub.ws_subscribed and self._subs.get(sub.room) is sub:
            self._ws_subscribe(conn, sub)

    # ---------------------------------------------------------- polling

    async def _poll_cycle(self) -> None:
        self._transport = "longpoll"
        self._polling = True
        try:
            for sub in list(self._subs.values()):
                self._start_poll(sub)
            if self._mode == "auto":
                await self._probe_loop()
            else:
                await asyncio.Event().wait()  # until the mode changes or close()
        finally:
            self._polling = False
            tasks = [s._poll_task for s in self._subs.values() if s._poll_task is not None]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            for s in self._subs.values():
                s._poll_task = None
            self._transport = "none"

    async def _probe_loop(self) -> None:
        """Auto mode, long-polling: tries WebSocket now and then; returns when one works."""
        while True:
            await asyncio.sleep(self._probe_interval * (0.8 + 0.2 * random.random()))
            try:
                conn = await self._open_ws()
            except _WsFailed as f:
                log.debug("roomcast: WebSocket probe failed: %s", f)
                continue
            log.info("roomcast: WebSocket works again; leaving long-poll")
            self._handoff = conn
            self._fallen = False
            self._failures = 0
            self._attempt = 0
            return

    def _load_view_soon(self, sub: RoomSubscription) -> None:
        if sub._view_task is None or sub._view_task.done():
            sub._view_task = asyncio.create_task(self._load_view(sub), name=f"roomcast-view-{sub.room}")

    async def _load_view(self, sub: RoomSubscription) -> None:
        """``messages=True``: the room as it stands from the cursor
        (``view=latest``, page by page), then the subscription follows it
        from the head that read reached, like any other."""
        cursor = sub.cursor or 0
        tries = 0
        while sub.active and not self._closed:
            try:
                page = await self._api._execute(self._api._latest_call(sub.room, cursor, self._poll_limit))
            except (BadRequest, Forbidden, NotFound) as e:
                self._fail(sub, e)
                return
            except Exception as e:
                self.last_error = e
                tries += 1
                await asyncio.sleep(min(self._backoff_max, self._backoff_base * 2**tries) * random.random())
                continue
            if page.reset:
                # Below the kept log: the kept messages as they stand.
                sub.messages.clear()
                cursor = (page.first - 1) if page.first is not None else page.head
                continue
            for m in page.messages:
                sub.messages[m.seq] = m
            for seq in page.deleted:
                sub.messages.pop(seq, None)
            cursor = page.cursor
            if not page.more:
                sub.messages = dict(sorted(sub.messages.items()))
                sub.cursor = cursor
                sub.head = page.head
                self._snapshot(sub, {"head": page.head, "status": page.status, "state": page.state})
                sub._view_loaded = True
                if sub.active:
                    self._attach(sub)
                return

    async def _reload_messages(self, sub: RoomSubscription) -> None:
        with contextlib.suppress(Exception):
            fresh: dict[int, Message] = {}
            page = await self._api._execute(self._api._latest_call(sub.room, 0, self._poll_limit))
            cursor = (page.first - 1) if page.reset and page.first is not None else 0
            while True:
                page = await self._api._execute(self._api._latest_call(sub.room, cursor, self._poll_limit))
                for m in page.messages:
                    fresh[m.seq] = m
                for seq in page.deleted:
                    fresh.pop(seq, None)
                cursor = page.cursor
                if not page.more or page.reset:
                    break
            if sub.active:
                sub.messages = dict(sorted(fresh.items()))

    def _start_poll(self, sub: RoomSubscription) -> None:
        if not sub._view_loaded:
            self._load_view_soon(sub)
            return
        if sub.active and sub.failed is None and (sub._poll_task is None or sub._poll_task.done()):
            sub._poll_task = asyncio.create_task(self._poll_loop(sub), name=f"roomcast-poll-{sub.room}")

    async def _poll_loop(self, sub: RoomSubscription) -> None:
        retried_auth = False
        while sub.active and not self._closed and sub.failed is None:
            if sub.status in TERMINAL and sub.cursor is not None and sub.head is not None and sub.cursor >= sub.head:
                return  # a closed room gets no more events
            known = sub.cursor is not None and sub.head is not None and sub.cursor <= sub.head
            if sub.presence and time.monotonic() - sub._members_read_at >= MEMBERS_POLL_S:
                await self._read_members(sub)
            wait: float = self._poll_wait if known else 0
            if sub.presence:
                wait = min(wait, MEMBERS_POLL_S)
            try:
                more = await self._poll_once(sub, "poll", wait)
            except Unauthorized as e:
                if self._provider is not None and not retried_auth:
                    retried_auth = True
                    self._token = None
                    continue
                self._fail(sub, e)
                return
            except (BadRequest, Forbidden, NotFound) as e:
                self._fail(sub, e)
                return
            except Exception as e:  # unavailable, rate limited, unreachable, a failing token provider
                self.last_error = e
                self._poll_failing = True
                self._lost = True
                delay = self._next_delay()
                retry_after = e.retry_after if isinstance(e, RoomcastError) else None
                if retry_after is not None:
                    delay = max(delay, retry_after)
                log.info("roomcast: poll of %s failed (%s); retrying in %.1f s", sub.room, e, delay)
                await asyncio.sleep(delay)
                continue
            if self._poll_failing or (self._lost and self._ever_connected):
                if self._lost:
                    self._counts.reconnects += 1
                self._poll_failing = False
            self._ever_connected = True
            self._lost = False
            self._attempt = 0
            self._last_update = time.monotonic()
            retried_auth = False
            if more:
                continue

    async def _poll_once(self, sub: RoomSubscription, source: Source, wait: float) -> bool:
        """One poll from the cursor; answers whether there is more to read now."""
        since = sub.cursor or 0
        limit = 1 if sub.cursor is None else self._poll_limit
        etag = sub.cursor if (sub.cursor is not None and sub.head is not None) else None
        page = await self._api._execute(self._api._events_call(sub.room, since, limit, wait, None, etag=etag, source=source))
        if not sub.active or page is None:
            return False
        if sub.cursor is None:
            sub.cursor = page.head  # "from now"
            self._snapshot(sub, page)
            return False
        if page.reset or page.head < sub.cursor:
            self._reset(sub, page.head, page.state, page.first)
            return False
        self._life_start(sub, page.first)
        for ev in page.events:
            self._deliver(sub, ev)
        self._snapshot(sub, page)
        return bool(page.events) and sub.cursor is not None and sub.cursor < page.head

    @staticmethod
    def _life_start(sub: RoomSubscription, first: object) -> None:
        """An answer with no ``reset`` whose ``first`` is past the cursor: the
        seqs in between never existed in the room's current life (it was
        created after its org's floor rose); the cursor moves to ``first - 1``
        and nothing is lost."""
        if isinstance(first, int) and sub.cursor is not None and sub.cursor < first - 1:
            sub.cursor = first - 1

    # --------------------------------------------------------- delivery

    def _deliver(self, sub: RoomSubscription, ev: Event) -> None:
        """The delivery rule: only seq == cursor + 1 goes on; at or below the
        cursor it is a duplicate; ahead of it, it waits while the gap is read back."""
        if not sub.active:
            return
        if ev.seq is None:
            if sub.ephemeral:
                sub._put(ev)
            return
        if sub.cursor is None:
            sub.cursor = ev.seq - 1
        # The room's first event after a ``subscribed`` whose ``first`` was
        # past the cursor, with no ``reset`` in between: the seqs before it
        # never existed in the room's current life.
        if ev.seq == sub._life_first and ev.seq > sub.cursor + 1:
            sub.cursor = ev.seq - 1
        if ev.seq <= sub.cursor:
            self._counts.duplicates += 1
            return
        if ev.seq > sub.cursor + 1:
            if ev.seq in sub._pending:
                self._counts.duplicates += 1
                return
            sub._pending[ev.seq] = ev
            if sub._repair_task is None or sub._repair_task.done():
                sub._repair_task = asyncio.create_task(self._repair(sub), name=f"roomcast-repair-{sub.room}")
            return
        self._accept(sub, ev)
        while sub.cursor + 1 in sub._pending:
            self._accept(sub, sub._pending.pop(sub.cursor + 1))
        for seq in [s for s in sub._pending if s <= sub.cursor]:
            del sub._pending[seq]
            self._counts.duplicates += 1

    def _accept(self, sub: RoomSubscription, ev: Event) -> None:
        assert ev.seq is not None
        sub.cursor = ev.seq
        if sub.head is None or ev.seq > sub.head:
            sub.head = ev.seq
        if ev.source == "push":
            self._counts.push += 1
        elif ev.source == "catchup":
            self._counts.catchup += 1
        else:
            self._counts.poll += 1
        if sub.messages_mode:
            target = ev.updates or ev.appends or ev.deletes
            if target is None:
                sub.messages[ev.seq] = Message(ev.seq, ev.type, ev.data, ev.ts, ev.seq)
            elif target in sub.messages:
                changed = sub.messages[target].changed_by(ev)
                if changed is None:
                    del sub.messages[target]
                else:
                    sub.messages[target] = changed
        if sub._state_at is None or ev.seq > sub._state_at:
            if ev.state is not None:
                sub.state = merge_patch(sub.state, ev.state)
            if ev.status is not None:
                sub.status = ev.status
            sub._state_at = ev.seq
        sub._put(ev)

    async def _repair(self, sub: RoomSubscription) -> None:
        """An event came ahead of the cursor: read the missing ones back over REST."""
        try:
            for tries in range(20):
                if not sub.active or not sub._pending:
                    break
                try:
                    await self._poll_once(sub, "catchup", 0)
                except Exception:
                    if tries >= 5:
                        raise
                    await asyncio.sleep(self._backoff_base * 2**tries)
                    continue
                if sub.cursor is None or not any(s > sub.cursor + 1 for s in sub._pending):
                    break
            self._counts.gaps += 1
        except Exception as e:
            self.last_error = e
            log.warning("roomcast: gap read-back of %s failed: %s", sub.room, e)
        finally:
            sub._repair_task = None
            if sub.active and sub._pending and sub.cursor is not None:
                first = min(sub._pending)
                if first == sub.cursor + 1:
                    self._deliver(sub, sub._pending.pop(first))

    def _reset(self, sub: RoomSubscription, head: int, state: Any, first: Any = None) -> None:
        before = sub.cursor
        sub._life_first = None
        sub.cursor = head
        sub.head = head
        sub.state = state if isinstance(state, dict) else {}
        sub._state_at = head
        sub.first = first if isinstance(first, int) else sub.first
        sub._pending.clear()
        sub._ready.set()
        if sub.messages_mode and sub._view_loaded:
            # The changes after the cursor are gone: the kept messages as
            # they stand now replace what was held.
            asyncio.create_task(self._reload_messages(sub), name=f"roomcast-view-{sub.room}")
        sub._put(Reset(room=sub.room, head=head, state=sub.state, cursor=before, first=sub.first))

    def _snapshot(self, sub: RoomSubscription, s: Any) -> None:
        if isinstance(s, dict):
            head, status, state = s.get("head"), s.get("status"), s.get("state")
        else:
            head, status, state = s.head, s.status, s.state
        if isinstance(head, int) and (sub.head is None or head >= sub.head):
            sub.head = head
        # A snapshot older than what the events already gave is not taken.
        if isinstance(head, int) and (sub._state_at is None or head >= sub._state_at):
            if isinstance(status, str):
                sub.status = status
            if isinstance(state, dict):
                sub.state = state
            sub._state_at = head
        sub._ready.set()

    @staticmethod
    def _members(sub: RoomSubscription, listed: list[Any]) -> None:
        """Takes the room's members as they are now; yields who joined and
        left since the last time (nothing when nobody did)."""
        now = {str(m.get("sub", "")): (m.get("info") or {}) for m in listed if isinstance(m, dict)}
        joined = [Member(sub=s, info=info) for s, info in now.items() if s not in sub.members]
        left = [s for s in sub.members if s not in now]
        sub.members = now
        if joined or left:
            sub._put(
                PresenceChange(
                    room=sub.room,
                    members=[Member(sub=s, info=info) for s, info in now.items()],
                    joined=joined,
                    left=left,
                )
            )

    async def _read_members(self, sub: RoomSubscription) -> None:
        """Polling: the members over REST (this client is not one of them)."""
        sub._members_read_at = time.monotonic()
        try:
            p = await self._rest.members(sub.room)
        except Exception as e:  # the next round tries again
            log.debug("roomcast: reading the members of %s failed: %s", sub.room, e)
            return
        if sub.active and p.members is not None:
            self._members(sub, [{"sub": m.sub, "info": m.info} for m in p.members])

    def _fail(self, sub: RoomSubscription, err: RoomcastError) -> None:
        if sub.failed is not None or not sub.active:
            return
        sub.failed = err
        sub.active = False
        if self._subs.get(sub.room) is sub:
            del self._subs[sub.room]
        if sub._poll_task is not None and sub._poll_task is not asyncio.current_task():
            sub._poll_task.cancel()
        sub._end(err)

    async def _unsubscribe(self, sub: RoomSubscription) -> None:
        if not sub.active:
            return
        sub.active = False
        if self._subs.get(sub.room) is sub:
            del self._subs[sub.room]
        for t in (sub._poll_task, sub._repair_task):
            if t is not None and t is not asyncio.current_task():
                t.cancel()
        conn = self._conn
        if conn is not None:
            # Until ``unsubscribed``, frames of the room belong to the old
            # subscription; and no ``unsubscribe`` while its ``subscribe`` is
            # unanswered (the server could open a later one from this since).
            conn.leaving.add(sub.room)
            if sub.room in conn.opening:
                conn.close_after_open.add(sub.room)
            else:
                conn.send({"op": "unsubscribe", "room": sub.room})
        sub._end()


def _check_mode(mode: str) -> None:
    if mode not in ("realtime", "polling", "auto"):
        raise ValueError(f"unknown mode {mode!r} (realtime | polling | auto)")


async def _close_ws(ws: ClientConnection) -> None:
    # The close handshake, then the TCP connection is dropped at once: the
    # server only closes its side about a second after the handshake.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 0.1)
    with contextlib.suppress(Exception):
        ws.transport.abort()


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386): a new value, ``target`` untouched."""
    if not isinstance(patch, dict):
        return patch
    out: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out
