"""Typed errors carrying the contract's error codes.

Every error answer of the server has the shape
``{"error": {"code": "<code>", "message": "..."}}``; it is raised as the
subclass of :class:`RoomcastError` named after its code. A failure to reach
the server at all (after the retries) is :class:`ConnectionFailed`, a kind
of :class:`Unavailable`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RoomcastError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "RoomClosed",
    "BadTarget",
    "PayloadTooLarge",
    "RateLimited",
    "Unavailable",
    "ConnectionFailed",
    "error_for",
]


class RoomcastError(Exception):
    """An error answer of the server (or a failure to reach it).

    Attributes:
        code: the contract's error code (``bad_request``, ``unauthorized``,
            ``forbidden``, ``not_found``, ``room_closed``,
            ``payload_too_large``, ``rate_limited``, ``unavailable``), or
            ``http_<status>`` for an answer without the error shape.
        message: what the server said.
        status: the HTTP status, or ``None`` (WebSocket ``error`` frames,
            connection failures).
        retry_after: the ``Retry-After`` the server sent, in seconds.
        room: the room the error is about, when known.
    """

    code: str = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        room: str | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.room = room

    def __str__(self) -> str:
        where = f" (room {self.room})" if self.room else ""
        return f"{self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, status={self.status!r})"


class BadRequest(RoomcastError):
    """400 ``bad_request``: the request was malformed; nothing was stored."""

    code = "bad_request"


class Unauthorized(RoomcastError):
    """401 ``unauthorized``: missing, invalid or expired token (or webhook signature)."""

    code = "unauthorized"


class Forbidden(RoomcastError):
    """403 ``forbidden``: the token may not do this (no ``pub``, ``rooms`` claim)."""

    code = "forbidden"


class NotFound(RoomcastError):
    """404 ``not_found`` (also another org's room)."""

    code = "not_found"


class RoomClosed(RoomcastError):
    """409 ``room_closed``: the room is ``completed`` or ``failed``; nothing more is stored."""

    code = "room_closed"


class BadTarget(RoomcastError):
    """409 ``bad_target``: a change (``updates``, ``appends``, ``deletes``)
    names an event it cannot change: missing or pruned, deleted, itself a
    change, or no ``data.text`` to append to. Nothing was stored."""

    code = "bad_target"


class PayloadTooLarge(RoomcastError):
    """413 ``payload_too_large``: ``data`` over 64 KiB (7 KiB ephemeral) or body over 1 MiB."""

    code = "payload_too_large"


class RateLimited(RoomcastError):
    """429 ``rate_limited`` (retried by the producers, honouring ``Retry-After``)."""

    code = "rate_limited"


class Unavailable(RoomcastError):
    """503 ``unavailable``: the database cannot be reached (retried by the producers)."""

    code = "unavailable"


class ConnectionFailed(Unavailable):
    """The server could not be reached (connection refused, reset, timed out)."""

    code = "unavailable"


_BY_CODE: dict[str, type[RoomcastError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        RoomClosed,
        BadTarget,
        PayloadTooLarge,
        RateLimited,
        Unavailable,
    )
}

_BY_STATUS: dict[int, type[RoomcastError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: RoomClosed,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
}


def error_for(
    code: str | None,
    message: str,
    *,
    status: int | None = None,
    retry_after: float | None = None,
    room: str | None = None,
) -> RoomcastError:
    """The typed error for a contract error code (or, failing that, an HTTP status)."""
    cls: type[RoomcastError] | None = _BY_CODE.get(code or "")
    if cls is None and status is not None:
        cls = _BY_STATUS.get(status)
    if cls is None:
        cls = RoomcastError
    return cls(
        message,
        code=code or (f"http_{status}" if status is not None else None),
        status=status,
        retry_after=retry_after,
        room=room,
    )


def parse_error_body(body: Any) -> tuple[str | None, str | None]:
    """(code, message) from an error body, if it has the contract's shape."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            msg = err.get("message")
            return (code if isinstance(code, str) else None, msg if isinstance(msg, str) else None)
    return None, None
