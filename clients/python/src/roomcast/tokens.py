"""HS256 JWTs for roomcast (signed and read with PyJWT).

:func:`mint_token` is for backends that hold ``ROOMCAST_JWT_SECRET`` and hand
short-lived tokens to their clients. :func:`token_expiry` reads ``exp`` from
a token *without verifying it* (a client only needs to know when to renew).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt

__all__ = ["SecretTokens", "mint_token", "token_claims", "token_expiry"]


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def mint_token(
    secret: str | bytes,
    *,
    org: str,
    sub: str,
    ttl: float = 3600,
    rooms: Sequence[str] | None = None,
    publish: bool = False,
    info: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A roomcast client token (HS256 JWT signed with ``secret``).

    Args:
        secret: the server's ``ROOMCAST_JWT_SECRET``.
        org: the tenant; the token sees nothing of any other org.
        sub: who the caller is (the presence member, when presence exists).
        ttl: seconds until ``exp``.
        rooms: room ids, or prefixes ending in ``*``, the token may use;
            ``None`` means every room of the org.
        publish: adds ``"pub": true`` (may publish through the REST API).
        info: a JSON object shown to other presence members (display name,
            avatar, role); at most 1 KiB serialized.
        now: the clock to count ``ttl`` from (unix seconds; tests).
    """
    if not org or not sub:
        raise ValueError("mint_token: org and sub must not be empty")
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": sub, "org": org, "exp": int(issued + ttl)}
    if rooms is not None:
        if isinstance(rooms, str):
            raise TypeError("mint_token: rooms must be a list of room ids or prefixes, not a string")
        claims["rooms"] = list(rooms)
    if publish:
        claims["pub"] = True
    if info is not None:
        if len(_compact(dict(info))) > 1024:
            raise ValueError("mint_token: info is over 1 KiB serialized")
        claims["info"] = dict(info)
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return jwt.encode(claims, key, algorithm="HS256")


def token_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded WITHOUT verifying its signature."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError as e:
        raise ValueError(f"not a JWT: {e}") from e
    if not isinstance(claims, dict):
        raise ValueError("the JWT payload is not a JSON object")
    return claims


def token_expiry(token: str) -> float | None:
    """``exp`` of a JWT (unix seconds), unverified; ``None`` if absent or unreadable."""
    try:
        exp = token_claims(token).get("exp")
    except ValueError:
        return None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)


class SecretTokens:
    """A token provider for a backend that holds the secret: mints a short
    token and mints the next one before it expires (when less than a fifth
    of ``ttl`` is left), so a long-running producer (a worker, a webhook
    handler in a server process) never publishes with an expired token.

    Pass it where a token callable goes (``Producer(url, SecretTokens(...))``)
    or use :meth:`roomcast.Producer.from_secret`. Thread-safe. A 401 makes
    the producers call :meth:`invalidate` and retry once with a new token
    (the server's clock may be ahead of this one).
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        org: str,
        sub: str = "producer",
        ttl: float = 300,
        rooms: Sequence[str] | None = None,
        publish: bool = True,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        if ttl < 2:
            raise ValueError("SecretTokens: ttl must be 2 seconds or more")
        def mint(now: float) -> str:
            return mint_token(secret, org=org, sub=sub, ttl=ttl, rooms=rooms, publish=publish, info=info, now=now)

        self._mint = mint
        self._ttl = ttl
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        #: how many tokens were minted (for tests and logs)
        self.minted = 0
        self._mint(time.time())  # bad arguments fail now, not at the first publish

    def __call__(self) -> str:
        now = time.time()
        with self._lock:
            if self._token is None or now >= self._renew_at:
                self._token = self._mint(now)
                self._renew_at = now + self._ttl * 0.8
                self.minted += 1
            return self._token

    def invalidate(self) -> None:
        """The next call mints a new token."""
        with self._lock:
            self._token = None
