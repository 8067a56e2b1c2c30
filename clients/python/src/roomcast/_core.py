"""The REST logic shared by the sync and asyncio forms (no I/O here).

Each operation is built as a :class:`Call`: the request to send and how to
read its answer. :class:`SyncRunner` and :class:`AsyncRunner` send calls with
the same retry loop, one with ``time.sleep`` and ``httpx.Client``, the other
with ``asyncio.sleep`` and ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from ._version import __version__
from .errors import ConnectionFailed, RoomcastError, error_for, parse_error_body
from .models import BatchResult, EventPage, LatestPage, Presence, PublishResult, RoomSnapshot
from .retry import DEFAULT_RETRY, EPHEMERAL_RETRY, RetryPolicy

T = TypeVar("T")

SyncToken = str | Callable[[], str]
AsyncToken = str | Callable[[], str | Awaitable[str]]

MAX_BATCH = 1000
RETRY_STATUSES = frozenset({429, 502, 503, 504})
USER_AGENT = f"roomcast-python/{__version__}"


def dumps(value: Any) -> bytes:
    """Compact JSON, as the server measures it; NaN/Infinity refused."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def room_path(room: str) -> str:
    if not isinstance(room, str) or not room:
        raise ValueError("room must be a non-empty string")
    return quote(room, safe="")


def new_key() -> str:
    """A fresh idempotency key."""
    return str(uuid.uuid4())


def retry_after_of(headers: httpx.Headers) -> float | None:
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        v = float(raw)
    except ValueError:
        return None
    return v if v >= 0 else None


@dataclass
class Call(Generic[T]):
    """One REST operation: what to send and how to read the answer."""

    method: str
    path: str
    parse: Callable[[int, Any], T]
    params: dict[str, str] | None = None
    body: bytes | None = None
    #: extra headers computed at each attempt (a webhook's fresh signature)
    headers: Callable[[bytes | None], dict[str, str]] | None = None
    #: send the token
    auth: bool = True
    #: retry after a failure that may have happened after the request was
    #: sent (true for publishes with idempotency keys and for reads)
    idempotent: bool = True
    #: statuses handed to ``parse`` besides 2xx
    accept: frozenset[int] = field(default_factory=frozenset)
    timeout: float | None = None
    retry: RetryPolicy | None = None


class Attempts:
    """The retry loop's decisions, shared by the sync and async runners: one
    request's attempts so far, and whether (and when) to try again."""

    def __init__(self, call: Call[Any], policy: RetryPolicy) -> None:
        self.call = call
        self.policy = policy
        self.started = time.monotonic()
        self.attempt = 0
        self.renewed = False

    def failed(self, e: Exception, renews: Callable[[RoomcastError, bool], bool]) -> float | None:
        """After a failed attempt: ``None`` to try again at once (a renewed
        token), else the wait before the next attempt; raises the typed
        error when there is none."""
        if isinstance(e, httpx.TransportError):
            err: RoomcastError = _connection_failed(e)
            err.__cause__ = e
            retryable = _retryable_transport(self.call, e)
        elif isinstance(e, RoomcastError):
            err = e
            retryable = e.status in RETRY_STATUSES
            if renews(e, self.renewed):
                self.renewed = True
                return None
        else:
            raise e
        self.attempt += 1
        if not retryable or self.attempt >= self.policy.max_attempts:
            raise err
        delay = self.policy.delay(self.attempt - 1, err.retry_after)
        if self.policy.deadline is not None and time.monotonic() - self.started + delay > self.policy.deadline:
            raise err
        return delay


def interpret(call: Call[T], resp: httpx.Response) -> T:
    """The call's result, or raises the typed error of the answer."""
    status = resp.status_code
    if 200 <= status < 300 or status == 304 or status in call.accept:
        body: Any = None
        if status != 304 and resp.content:
            try:
                body = resp.json()
            except ValueError:
                body = None
        return call.parse(status, body)
    try:
        payload = resp.json()
    except ValueError:
        payload = None
    code, message = parse_error_body(payload)
    raise error_for(
        code,
        message or (resp.text[:200] if resp.content else resp.reason_phrase),
        status=status,
        retry_after=retry_after_of(resp.headers),
    )


def _retryable_transport(call: Call[Any], exc: httpx.TransportError) -> bool:
    if call.idempotent:
        return True
    # The request never left: safe even without an idempotency key.
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def _connection_failed(exc: httpx.TransportError) -> ConnectionFailed:
    text = str(exc) or type(exc).__name__
    return ConnectionFailed(f"cannot reach the server: {text}")


class Ops:
    """The operations, as calls (shared by every producer and the client)."""

    def __init__(self, base_url: str, *, retry: RetryPolicy | None, timeout: float) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.retry = retry or DEFAULT_RETRY
        self.timeout = timeout
        #: how many retries this object made (all calls together)
        self.retries = 0

    # -- publishing ----------------------------------------------------

    def _publish_path(self, room: str) -> str:
        return f"/v1/rooms/{room_path(room)}/events"

    def _publish_auth(self) -> bool:
        return True

    def _publish_headers(self) -> Callable[[bytes | None], dict[str, str]] | None:
        return None

    def _publish_call(
        self,
        room: str,
        type: str,
        data: Any,
        *,
        id: str | None,
        state: Mapping[str, Any] | None,
        status: str | None,
        updates: int | None = None,
        appends: int | None = None,
        deletes: int | None = None,
    ) -> Call[PublishResult]:
        key = new_key() if id is None else id
        event: dict[str, Any] = {"type": type, "data": data, "id": key}
        for name, target in (("updates", updates), ("appends", appends), ("deletes", deletes)):
            if target is not None:
                event[name] = target
        if state is not None:
            event["state"] = dict(state) if isinstance(state, Mapping) else state
        if status is not None:
            event["status"] = status

        def parse(_status: int, body: Any) -> PublishResult:
            body = body or {}
            seq = body.get("seq")
            return PublishResult(
                room=str(body.get("room", room)),
                seq=seq if isinstance(seq, int) else None,
                duplicate=body.get("duplicate") is True,
                id=key,
            )

        return Call(
            "POST",
            self._publish_path(room),
            parse,
            body=dumps(event),
            headers=self._publish_headers(),
            auth=self._publish_auth(),
        )

    def _batch_call(self, room: str, events: Sequence[Mapping[str, Any]]) -> Call[BatchResult]:
        if isinstance(events, Mapping) or isinstance(events, (str, bytes)):
            raise TypeError("publish_batch: events must be a list of event mappings")
        if not 1 <= len(events) <= MAX_BATCH:
            raise ValueError(f"publish_batch: a batch holds 1 to {MAX_BATCH} events (got {len(events)})")
        out: list[dict[str, Any]] = []
        for e in events:
            if not isinstance(e, Mapping) or "type" not in e:
                raise ValueError("publish_batch: every event is a mapping with at least a 'type'")
            if e.get("ephemeral"):
                raise ValueError("publish_batch: ephemeral events are published one at a time")
            item = dict(e)
            if item.get("id") is None:
                item["id"] = new_key()
            out.append(item)
        ids = [str(x["id"]) for x in out]

        def parse(_status: int, body: Any) -> BatchResult:
            body = body or {}
            return BatchResult(
                room=str(body.get("room", room)),
                seqs=[int(s) for s in body.get("seqs") or []],
                duplicate=body.get("duplicate") is True,
                ids=ids,
            )

        return Call(
            "POST",
            self._publish_path(room),
            parse,
            body=dumps({"events": out}),
            headers=self._publish_headers(),
            auth=self._publish_auth(),
        )

    def _ephemeral_call(self, room: str, type: str, data: Any, key: str | None) -> Call[PublishResult]:
        event: dict[str, Any] = {"type": type, "data": data, "ephemeral": True}
        if key is not None:
            event["key"] = key

        def parse(_status: int, body: Any) -> PublishResult:
            body = body or {}
            return PublishResult(room=str(body.get("room", room)), seq=None, ephemeral=True)

        # No idempotency key exists for an ephemeral event: retried only when
        # the request surely never arrived (connect errors, 429, 503), and
        # only briefly: a partial transcript is stale within a second.
        return Call(
            "POST",
            self._publish_path(room),
            parse,
            body=dumps(event),
            headers=self._publish_headers(),
            auth=self._publish_auth(),
            idempotent=False,
            retry=EPHEMERAL_RETRY if self.retry is DEFAULT_RETRY else self.retry,
        )

    # -- reads -----------------------------------------------------------

    def _snapshot_call(self, room: str) -> Call[RoomSnapshot | None]:
        def parse(status: int, body: Any) -> RoomSnapshot | None:
            if status == 404 or not isinstance(body, dict):
                return None
            return RoomSnapshot.from_wire(body)

        return Call("GET", f"/v1/rooms/{room_path(room)}", parse, accept=frozenset({404}))

    def _rooms_call(self, status: str | None, limit: int | None, prefix: str | None = None) -> Call[list[RoomSnapshot]]:
        params: dict[str, str] = {}
        if status is not None:
            params["status"] = status
        if limit is not None:
            params["limit"] = str(int(limit))
        if prefix is not None:
            params["prefix"] = prefix

        def parse(_status: int, body: Any) -> list[RoomSnapshot]:
            rooms = (body or {}).get("rooms") or []
            return [RoomSnapshot.from_wire(r) for r in rooms if isinstance(r, dict)]

        return Call("GET", "/v1/rooms", parse, params=params)

    def _latest_call(self, room: str, since: int, limit: int | None = None) -> Call[LatestPage]:
        params = {"since": str(int(since)), "view": "latest"}
        if limit is not None:
            params["limit"] = str(int(limit))

        def parse(_status: int, body: Any) -> LatestPage:
            return LatestPage.from_wire(room, since, body if isinstance(body, dict) else {})

        return Call("GET", f"/v1/rooms/{room_path(room)}/events", parse, params=params)

    def _events_call(
        self,
        room: str,
        since: int | None,
        limit: int | None,
        wait: float | None,
        since_time: str | None,
        etag: int | None = None,
        source: str = "poll",
    ) -> Call[EventPage | None]:
        params: dict[str, str] = {}
        if since_time is not None:
            if since is not None:
                raise ValueError("events: give since or since_time, not both")
            params["since_time"] = since_time
        else:
            params["since"] = str(int(since or 0))
        if limit is not None:
            params["limit"] = str(int(limit))
        timeout = self.timeout
        if wait:
            w = max(0, min(30, int(wait)))
            if w:
                params["wait"] = str(w)
                timeout = self.timeout + w
        extra: Callable[[bytes | None], dict[str, str]] | None = None
        if etag is not None:
            tag = f'"{etag}"'

            def extra(_body: bytes | None) -> dict[str, str]:
                return {"If-None-Match": tag}

        def parse(status: int, body: Any) -> EventPage | None:
            if status == 304 or not isinstance(body, dict):
                return None
            return EventPage.from_wire(room, body, source)  # type: ignore[arg-type]

        return Call(
            "GET",
            f"/v1/rooms/{room_path(room)}/events",
            parse,
            params=params,
            headers=extra,
            timeout=timeout,
        )

    def _members_call(self, room: str, count_only: bool) -> Call[Presence]:
        params = {"count_only": "1"} if count_only else None

        def parse(_status: int, body: Any) -> Presence:
            return Presence.from_wire(room, body or {})

        return Call("GET", f"/v1/rooms/{room_path(room)}/presence", parse, params=params)


def _headers(call: Call[Any], token: str | None) -> dict[str, str]:
    h = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if call.body is not None:
        h["Content-Type"] = "application/json"
    if call.auth and token is not None:
        h["Authorization"] = f"Bearer {token}"
    if call.headers is not None:
        h.update(call.headers(call.body))
    return h


def _renews(token: object, e: RoomcastError, renewed: bool) -> bool:
    """A 401 with a token provider: ask it for a new token and try once
    more (a provider that caches, such as :class:`roomcast.SecretTokens`, is
    told to mint anew). A fixed token string is never retried."""
    if renewed or e.status != 401 or token is None or isinstance(token, str):
        return False
    invalidate = getattr(token, "invalidate", None)
    if callable(invalidate):
        invalidate()
    return True


class SyncRunner(Ops):
    """Sends calls with ``httpx.Client`` and the retry loop."""

    def __init__(
        self,
        base_url: str,
        token: SyncToken | None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, retry=retry, timeout=timeout)
        self._token = token
        self._own_http = http_client is None
        # trust_env: HTTP(S)_PROXY, NO_PROXY and SSL_CERT_FILE apply, as
        # for any httpx (and requests) user.
        self._http = http_client or httpx.Client(timeout=timeout)

    def _renew_after(self, e: RoomcastError, renewed: bool) -> bool:
        return _renews(self._token, e, renewed)

    def _token_now(self) -> str | None:
        t = self._token
        if t is None or isinstance(t, str):
            return t
        v = t()
        if not isinstance(v, str):
            raise TypeError("the token callable must return a str (use AsyncProducer for async providers)")
        return v

    def _execute(self, call: Call[T]) -> T:
        tries = Attempts(call, call.retry or self.retry)
        while True:
            try:
                headers = _headers(call, self._token_now() if call.auth else None)
                resp = self._http.request(
                    call.method,
                    self.base_url + call.path,
                    params=call.params,
                    content=call.body,
                    headers=headers,
                    timeout=call.timeout or self.timeout,
                )
                return interpret(call, resp)
            except (httpx.TransportError, RoomcastError) as e:
                delay = tries.failed(e, self._renew_after)
            if delay is not None:
                self.retries += 1
                time.sleep(delay)

    def close(self) -> None:
        """Closes the HTTP connections (unless the http_client was given)."""
        if self._own_http:
            self._http.close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRunner(Ops):
    """Sends calls with ``httpx.AsyncClient`` and the retry loop."""

    def __init__(
        self,
        base_url: str,
        token: AsyncToken | None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, retry=retry, timeout=timeout)
        self._token = token
        self._own_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout)

    def _renew_after(self, e: RoomcastError, renewed: bool) -> bool:
        return _renews(self._token, e, renewed)

    async def _token_now(self) -> str | None:
        t = self._token
        if t is None or isinstance(t, str):
            return t
        v = t()
        if inspect.isawaitable(v):
            v = await v
        if not isinstance(v, str):
            raise TypeError("the token callable must return (or resolve to) a str")
        return v

    async def _execute(self, call: Call[T]) -> T:
        tries = Attempts(call, call.retry or self.retry)
        while True:
            try:
                headers = _headers(call, await self._token_now() if call.auth else None)
                resp = await self._http.request(
                    call.method,
                    self.base_url + call.path,
                    params=call.params,
                    content=call.body,
                    headers=headers,
                    timeout=call.timeout or self.timeout,
                )
                return interpret(call, resp)
            except (httpx.TransportError, RoomcastError) as e:
                delay = tries.failed(e, self._renew_after)
            if delay is not None:
                self.retries += 1
                await asyncio.sleep(delay)

    async def aclose(self) -> None:
        """Closes the HTTP connections (unless the http_client was given)."""
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self: Any) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
