"""Publishing (and reading rooms) over REST: :class:`Producer` and :class:`AsyncProducer`.

Every event gets an idempotency key (``id``, a uuid4 unless given), so a
publish that failed in an unknown way (503 after an ambiguous commit, a
connection reset) is retried safely: the server stores the key once and
answers a repeat with 200 ``duplicate`` and the original seq.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from ._core import AsyncRunner, AsyncToken, SyncRunner, SyncToken
from .models import BatchResult, EventPage, LatestPage, Presence, PublishResult, RoomSnapshot
from .retry import RetryPolicy
from .tokens import SecretTokens

__all__ = ["Producer", "AsyncProducer"]


class _SyncPublishing(SyncRunner):
    def publish(
        self,
        room: str,
        type: str,
        data: Any = None,
        *,
        id: str | None = None,
        state: Mapping[str, Any] | None = None,
        status: str | None = None,
        updates: int | None = None,
        appends: int | None = None,
        deletes: int | None = None,
    ) -> PublishResult:
        """Publishes one event; answers its seq once it is committed.

        Args:
            room: the room id (created on first publish).
            type: the event type (``^[a-z][a-z0-9_.-]{0,63}$``).
            data: any JSON value, at most 64 KiB serialized.
            id: the idempotency key; a uuid4 is generated when absent.
            state: a JSON merge patch (RFC 7396) applied to the room's state
                in the same transaction.
            status: ``"completed"`` or ``"failed"`` closes the room with this
                event (later publishes raise :class:`~roomcast.RoomClosed`).
            updates, appends, deletes: a message version: this event's
                ``data`` replaces event S's, its ``data["text"]`` is appended
                to S's, or S is deleted (one of them; :class:`~roomcast.BadTarget`
                when S cannot take it).
        """
        return self._execute(
            self._publish_call(
                room, type, data, id=id, state=state, status=status, updates=updates, appends=appends, deletes=deletes
            )
        )

    def publish_batch(self, room: str, events: Sequence[Mapping[str, Any]]) -> BatchResult:
        """Publishes 1 to 1000 events, all or nothing, consecutive seqs.

        Each event is a mapping with ``type`` and optionally ``data``, ``id``,
        ``state``, ``status``; events without ``id`` get a uuid4.
        """
        return self._execute(self._batch_call(room, events))

    def set_state(
        self,
        room: str,
        patch: Mapping[str, Any],
        *,
        type: str = "state",
        data: Any = None,
        id: str | None = None,
    ) -> PublishResult:
        """Publishes an event (``type``, default ``"state"``) carrying a state merge patch."""
        return self.publish(room, type, data, id=id, state=patch)

    def complete(
        self,
        room: str,
        type: str = "completed",
        data: Any = None,
        *,
        id: str | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> PublishResult:
        """Publishes the room's last event with status ``completed``."""
        return self.publish(room, type, data, id=id, state=state, status="completed")

    def fail(
        self,
        room: str,
        type: str = "failed",
        data: Any = None,
        *,
        id: str | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> PublishResult:
        """Publishes the room's last event with status ``failed``."""
        return self.publish(room, type, data, id=id, state=state, status="failed")

    def ephemeral(self, room: str, type: str, data: Any = None, *, key: str | None = None) -> PublishResult:
        """Pushes an ephemeral event (never stored, no seq; data at most 7 KiB)
        to the room's current subscribers, coalesced by ``key`` for slow ones."""
        return self._execute(self._ephemeral_call(room, type, data, key))


class _AsyncPublishing(AsyncRunner):
    async def publish(
        self,
        room: str,
        type: str,
        data: Any = None,
        *,
        id: str | None = None,
        state: Mapping[str, Any] | None = None,
        status: str | None = None,
        updates: int | None = None,
        appends: int | None = None,
        deletes: int | None = None,
    ) -> PublishResult:
        """Publishes one event; see :meth:`Producer.publish`."""
        return await self._execute(
            self._publish_call(
                room, type, data, id=id, state=state, status=status, updates=updates, appends=appends, deletes=deletes
            )
        )

    async def publish_batch(self, room: str, events: Sequence[Mapping[str, Any]]) -> BatchResult:
        """Publishes 1 to 1000 events, all or nothing; see :meth:`Producer.publish_batch`."""
        return await self._execute(self._batch_call(room, events))

    async def set_state(
        self,
        room: str,
        patch: Mapping[str, Any],
        *,
        type: str = "state",
        data: Any = None,
        id: str | None = None,
    ) -> PublishResult:
        """Publishes an event carrying a state merge patch."""
        return await self.publish(room, type, data, id=id, state=patch)

    async def complete(
        self,
        room: str,
        type: str = "completed",
        data: Any = None,
        *,
        id: str | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> PublishResult:
        """Publishes the room's last event with status ``completed``."""
        return await self.publish(room, type, data, id=id, state=state, status="completed")

    async def fail(
        self,
        room: str,
        type: str = "failed",
        data: Any = None,
        *,
        id: str | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> PublishResult:
        """Publishes the room's last event with status ``failed``."""
        return await self.publish(room, type, data, id=id, state=state, status="failed")

    async def ephemeral(self, room: str, type: str, data: Any = None, *, key: str | None = None) -> PublishResult:
        """Pushes an ephemeral event; see :meth:`Producer.ephemeral`."""
        return await self._execute(self._ephemeral_call(room, type, data, key))


class Producer(_SyncPublishing):
    """Publishes events and reads rooms with a JWT (blocking; thread-safe as httpx.Client is).

    ``token`` is a JWT with ``"pub": true`` to publish (see
    :func:`roomcast.mint_token`), or a callable returning one, called before
    every request (cache it yourself if minting is costly).

    >>> with Producer("http://127.0.0.1:8080", token) as p:
    ...     p.publish("meeting-42", "transcript.segment", {"text": "hi"}, state={"stage": "transcription"})
    """

    def __init__(
        self,
        base_url: str,
        token: SyncToken,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, token, retry=retry, timeout=timeout, http_client=http_client)

    @classmethod
    def from_secret(
        cls,
        base_url: str,
        secret: str | bytes,
        *,
        org: str,
        sub: str = "producer",
        ttl: float = 300,
        rooms: Sequence[str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        http_client: httpx.Client | None = None,
    ) -> Producer:
        """A producer for a backend that holds ``ROOMCAST_JWT_SECRET``: it
        mints its own short tokens (``ttl`` seconds, publishing) and renews
        them before they expire, so it keeps working for as long as the
        process runs (:class:`~roomcast.SecretTokens`).

        >>> p = Producer.from_secret("http://127.0.0.1:8080", os.environ["ROOMCAST_JWT_SECRET"], org="acme")
        """
        tokens = SecretTokens(secret, org=org, sub=sub, ttl=ttl, rooms=rooms, publish=True)
        return cls(base_url, tokens, retry=retry, timeout=timeout, http_client=http_client)

    def snapshot(self, room: str) -> RoomSnapshot | None:
        """``GET /v1/rooms/{room}``; ``None`` for a room never published to (404)."""
        return self._execute(self._snapshot_call(room))

    def rooms(self, status: str | None = None, limit: int | None = None) -> list[RoomSnapshot]:
        """The org's rooms, newest activity first (only those the token's ``rooms`` claim covers)."""
        return self._execute(self._rooms_call(status, limit))

    def events(
        self,
        room: str,
        since: int | None = None,
        limit: int | None = None,
        *,
        wait: float | None = None,
        since_time: str | None = None,
    ) -> EventPage:
        """One page of events after ``since`` (``GET /v1/rooms/{room}/events``).

        Page on with ``since`` = the last seq received. ``since_time`` (RFC
        3339) finds the first page only (several events share a ``ts``).
        ``wait`` (seconds, at most 30) holds the request until an event comes.
        """
        page = self._execute(self._events_call(room, since, limit, wait, since_time))
        assert page is not None
        return page

    def latest(self, room: str, since: int = 0, limit: int | None = None) -> LatestPage:
        """One page of the room as it stands (``view=latest``): messages
        created or changed after ``since``, versions applied; go on with
        ``since=page.cursor`` while ``page.more``."""
        return self._execute(self._latest_call(room, since, limit))

    def members(self, room: str, *, count_only: bool = False) -> Presence:
        """``GET /v1/rooms/{room}/presence`` (PROTOCOL.md, Additions)."""
        return self._execute(self._members_call(room, count_only))


class AsyncProducer(_AsyncPublishing):
    """The asyncio form of :class:`Producer`.

    ``token`` may be a JWT, or a callable returning one or an awaitable of one.

    >>> async with AsyncProducer("http://127.0.0.1:8080", token) as p:
    ...     await p.publish("meeting-42", "transcript.segment", {"text": "hi"})
    """

    def __init__(
        self,
        base_url: str,
        token: AsyncToken,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, token, retry=retry, timeout=timeout, http_client=http_client)

    @classmethod
    def from_secret(
        cls,
        base_url: str,
        secret: str | bytes,
        *,
        org: str,
        sub: str = "producer",
        ttl: float = 300,
        rooms: Sequence[str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> AsyncProducer:
        """An async producer minting and renewing its own short tokens; see
        :meth:`Producer.from_secret`."""
        tokens = SecretTokens(secret, org=org, sub=sub, ttl=ttl, rooms=rooms, publish=True)
        return cls(base_url, tokens, retry=retry, timeout=timeout, http_client=http_client)

    async def snapshot(self, room: str) -> RoomSnapshot | None:
        """``GET /v1/rooms/{room}``; ``None`` for a room never published to (404)."""
        return await self._execute(self._snapshot_call(room))

    async def rooms(self, status: str | None = None, limit: int | None = None) -> list[RoomSnapshot]:
        """The org's rooms, newest activity first."""
        return await self._execute(self._rooms_call(status, limit))

    async def events(
        self,
        room: str,
        since: int | None = None,
        limit: int | None = None,
        *,
        wait: float | None = None,
        since_time: str | None = None,
    ) -> EventPage:
        """One page of events after ``since``; see :meth:`Producer.events`."""
        page = await self._execute(self._events_call(room, since, limit, wait, since_time))
        assert page is not None
        return page

    async def latest(self, room: str, since: int = 0, limit: int | None = None) -> LatestPage:
        """One page of the room as it stands; see :meth:`Producer.latest`."""
        return await self._execute(self._latest_call(room, since, limit))

    async def members(self, room: str, *, count_only: bool = False) -> Presence:
        """``GET /v1/rooms/{room}/presence`` (PROTOCOL.md, Additions)."""
        return await self._execute(self._members_call(room, count_only))
