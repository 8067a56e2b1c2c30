"""What the server answers, as small typed records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Source",
    "RoomStatus",
    "Event",
    "Reset",
    "PublishResult",
    "BatchResult",
    "RoomSnapshot",
    "EventPage",
    "Member",
    "Presence",
    "Counts",
]

Source = Literal["push", "catchup", "poll"]
"""How an event reached the subscriber: live push, catch-up (the server's
read-back on (re)subscribe, or a gap this client read back over REST), or a
long-poll / REST read."""

RoomStatus = Literal["in_progress", "completed", "failed"]


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a room.

    ``seq`` is ``None`` only for an ephemeral event (never stored, never
    advances the cursor). ``state`` is the state merge patch (RFC 7386) its
    publish applied and ``status`` the status it set, ``None`` when it
    applied none: the subscription applies them in seq order, so
    ``RoomSubscription.state`` follows every event with no read.
    """

    room: str
    seq: int | None
    type: str
    data: Any
    ts: str
    source: Source = "poll"
    ephemeral: bool = False
    key: str | None = None
    state: dict[str, Any] | None = None
    status: RoomStatus | None = None
    #: message versions: the earlier event this one changes, and how
    updates: int | None = None
    appends: int | None = None
    deletes: int | None = None

    @classmethod
    def from_wire(cls, room: str, m: dict[str, Any], source: Source) -> Event:
        seq = m.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int):
            seq = None
        key = m.get("key")
        state = m.get("state")
        status = m.get("status")
        return cls(
            room=room,
            seq=seq,
            type=str(m.get("type", "")),
            data=m.get("data"),
            ts=str(m.get("ts", "")),
            source=source,
            ephemeral=seq is None or m.get("ephemeral") is True,
            key=key if isinstance(key, str) else None,
            state=state if isinstance(state, dict) else None,
            status=status if status in ("in_progress", "completed", "failed") else None,
            updates=_seq(m.get("updates")),
            appends=_seq(m.get("appends")),
            deletes=_seq(m.get("deletes")),
        )


def _seq(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


@dataclass(frozen=True, slots=True)
class Message:
    """A message of a room as it stands: its original seq, type and time,
    its latest data (versions applied: updates replace it, appends extend
    its ``text``) and ``version``, the seq of the last change applied (its
    own seq when never changed)."""

    seq: int
    type: str
    data: Any
    ts: str
    version: int

    @property
    def edited(self) -> bool:
        """The message was changed after it was published."""
        return self.version != self.seq

    def changed_by(self, ev: Event) -> Message | None:
        """This message after change event ``ev`` (``None``: deleted)."""
        assert ev.seq is not None
        if ev.deletes == self.seq:
            return None
        if ev.updates == self.seq:
            return Message(self.seq, self.type, ev.data, self.ts, ev.seq)
        if ev.appends == self.seq and isinstance(self.data, dict) and isinstance(ev.data, dict):
            text = str(self.data.get("text", "")) + str(ev.data.get("text", ""))
            return Message(self.seq, self.type, {**self.data, "text": text}, self.ts, ev.seq)
        return self


@dataclass(frozen=True, slots=True)
class LatestPage:
    """A page of ``view=latest``: messages created or changed after
    ``since`` as they stand (``deleted`` holds the seqs deleted after it);
    go on from ``cursor`` while ``more``."""

    room: str
    head: int
    status: RoomStatus
    state: dict[str, Any]
    messages: list[Message]
    deleted: list[int]
    cursor: int
    more: bool
    reset: bool = False
    first: int | None = None

    @classmethod
    def from_wire(cls, room: str, since: int, m: dict[str, Any]) -> LatestPage:
        messages: list[Message] = []
        deleted: list[int] = []
        for e in m.get("events") or []:
            if not isinstance(e, dict) or not isinstance(e.get("seq"), int):
                continue
            if e.get("deleted") is True:
                deleted.append(e["seq"])
                continue
            v = e.get("version")
            messages.append(
                Message(
                    seq=e["seq"],
                    type=str(e.get("type", "")),
                    data=e.get("data"),
                    ts=str(e.get("ts", "")),
                    version=v if isinstance(v, int) else e["seq"],
                )
            )
        head = int(m.get("head", 0))
        cursor = m.get("cursor")
        first = m.get("first")
        return cls(
            room=str(m.get("room", room)),
            head=head,
            status=m.get("status", "in_progress"),
            state=m.get("state") or {},
            messages=messages,
            deleted=deleted,
            cursor=cursor if isinstance(cursor, int) else max(head, since),
            more=m.get("more") is True,
            reset=m.get("reset") is True,
            first=first if isinstance(first, int) else None,
        )


@dataclass(frozen=True, slots=True)
class Reset:
    """The events after ``cursor`` can no longer be replayed (``since`` was
    beyond the head, or they were pruned): resync from ``state``; the
    subscription goes on from ``head``.

    Yielded in-band by a room subscription, in its place in the stream.
    """

    room: str
    head: int
    state: dict[str, Any]
    cursor: int | None
    """The cursor the subscription had before the reset."""
    first: int | None = None
    """The lowest seq still stored, when the server says (retention)."""


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The answer to one publish: its ``seq`` (``None`` for an ephemeral
    event), and ``duplicate`` when the idempotency key was already stored
    (then ``seq`` is the original one and nothing new was stored)."""

    room: str
    seq: int | None
    duplicate: bool = False
    ephemeral: bool = False
    id: str | None = None
    """The idempotency key sent (generated unless given)."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The answer to a batch: one seq per event, in order."""

    room: str
    seqs: list[int]
    duplicate: bool = False
    ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    """``GET /v1/rooms/{room}``: the room's latest state."""

    room: str
    status: RoomStatus
    head: int
    state: dict[str, Any]
    created_at: str | None = None
    updated_at: str | None = None
    first: int | None = None

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> RoomSnapshot:
        first = m.get("first")
        return cls(
            room=str(m.get("room", "")),
            status=m.get("status", "in_progress"),
            head=int(m.get("head", 0)),
            state=m.get("state") or {},
            created_at=m.get("created_at"),
            updated_at=m.get("updated_at"),
            first=first if isinstance(first, int) else None,
        )


@dataclass(frozen=True, slots=True)
class EventPage:
    """A poll answer: at most ``limit`` events after ``since``, ascending,
    and the room's head, status and state read with them. ``reset`` is true
    when the server says the cursor can no longer be replayed."""

    room: str
    head: int
    status: RoomStatus
    state: dict[str, Any]
    events: list[Event]
    reset: bool = False
    first: int | None = None

    @classmethod
    def from_wire(cls, room: str, m: dict[str, Any], source: Source = "poll") -> EventPage:
        first = m.get("first")
        return cls(
            room=str(m.get("room", room)),
            head=int(m.get("head", 0)),
            status=m.get("status", "in_progress"),
            state=m.get("state") or {},
            events=[Event.from_wire(room, e, source) for e in m.get("events") or []],
            reset=m.get("reset") is True,
            first=first if isinstance(first, int) else None,
        )


@dataclass(frozen=True, slots=True)
class Member:
    """A presence member: the token's ``sub`` and ``info``."""

    sub: str
    info: dict[str, Any]
    connections: int | None = None


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """The room's members changed (a subscription with ``presence=True``):
    yielded in-band by the subscription, with everyone now and who joined
    and left since the last one."""

    room: str
    members: list[Member]
    joined: list[Member]
    left: list[str]


@dataclass(frozen=True, slots=True)
class Presence:
    """``GET /v1/rooms/{room}/presence``."""

    room: str
    count: int
    members: list[Member] | None

    @classmethod
    def from_wire(cls, room: str, m: dict[str, Any]) -> Presence:
        raw = m.get("members")
        members = None
        if isinstance(raw, list):
            members = [
                Member(
                    sub=str(x.get("sub", "")),
                    info=x.get("info") or {},
                    connections=x.get("connections") if isinstance(x.get("connections"), int) else None,
                )
                for x in raw
                if isinstance(x, dict)
            ]
        return cls(room=str(m.get("room", room)), count=int(m.get("count", 0)), members=members)


@dataclass(slots=True)
class Counts:
    """A subscriber's counters, for its whole life."""

    push: int = 0
    """events delivered by live push"""
    catchup: int = 0
    """events delivered by catch-up (server read-back, or a gap repaired here)"""
    poll: int = 0
    """events delivered by long-poll"""
    duplicates: int = 0
    """events dropped because their seq was already delivered"""
    gaps: int = 0
    """gaps repaired (an event arrived ahead of the cursor; the missing ones were read back)"""
    reconnects: int = 0
    """connections re-established after one was lost"""

    def copy(self) -> Counts:
        return Counts(self.push, self.catchup, self.poll, self.duplicates, self.gaps, self.reconnects)
