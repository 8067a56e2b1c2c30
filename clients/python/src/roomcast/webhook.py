"""Signed webhooks: producers without a JWT publish with a shared secret.

``POST /v1/hooks/{org}/rooms/{room}/events`` with the header
``Roomcast-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">``
keyed with one of the server's ``ROOMCAST_WEBHOOK_SECRET`` values. The
server refuses (401) a wrong signature or a ``t`` more than 300 s from its
clock. Replays inside that window are made harmless by idempotency keys,
which :class:`WebhookProducer` sends with every event.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx

from ._core import room_path
from .producer import _AsyncPublishing, _SyncPublishing
from .retry import RetryPolicy

__all__ = ["SIGNATURE_HEADER", "sign_webhook", "verify_webhook", "WebhookProducer", "AsyncWebhookProducer"]

SIGNATURE_HEADER = "Roomcast-Signature"
WINDOW_SECONDS = 300


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign_webhook(secret: str | bytes, body: bytes, t: int | None = None) -> str:
    """The ``Roomcast-Signature`` header value for ``body``: ``t=<unix>,v1=<hex>``.

    ``body`` must be the exact bytes sent. ``t`` defaults to now.
    """
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError("sign_webhook: body must be the raw bytes that are sent")
    ts = int(time.time()) if t is None else int(t)
    mac = hmac.new(_key(secret), f"{ts}.".encode("ascii") + bytes(body), hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify_webhook(
    secrets: str | bytes | list[str | bytes],
    body: bytes,
    header: str | None,
    *,
    tolerance: float = WINDOW_SECONDS,
    now: float | None = None,
) -> bool:
    """Checks a ``Roomcast-Signature`` header as the server does (constant time,
    any of several ``v1=`` values against any of several secrets)."""
    if not header:
        return False
    keys = [secrets] if isinstance(secrets, (str, bytes)) else list(secrets)
    t: int | None = None
    sigs: list[str] = []
    for part in header.split(","):
        k, sep, v = part.strip().partition("=")
        if not sep:
            return False
        if k.strip() == "t":
            try:
                t = int(v.strip())
            except ValueError:
                return False
        elif k.strip() == "v1":
            sigs.append(v.strip().lower())
    if t is None or not sigs:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    signed = f"{t}.".encode("ascii") + bytes(body)
    ok = False
    for key in keys:
        expected = hmac.new(_key(key), signed, hashlib.sha256).hexdigest()
        for s in sigs:
            ok |= hmac.compare_digest(expected, s)
    return ok


class _WebhookMixin:
    _org: str
    _secret: bytes

    def _publish_path(self, room: str) -> str:
        return f"/v1/hooks/{quote(self._org, safe='')}/rooms/{room_path(room)}/events"

    def _publish_auth(self) -> bool:
        return False

    def _publish_headers(self) -> Callable[[bytes | None], dict[str, str]]:
        secret = self._secret

        def sign(body: bytes | None) -> dict[str, str]:
            # Signed again at every attempt: a retry after a long outage
            # still carries a fresh ``t``.
            return {SIGNATURE_HEADER: sign_webhook(secret, body or b"")}

        return sign


class WebhookProducer(_WebhookMixin, _SyncPublishing):
    """Publishes through the signed-webhook endpoint of ``org`` (blocking).

    Same methods as :class:`~roomcast.Producer`'s publishing half
    (``publish``, ``publish_batch``, ``set_state``, ``complete``, ``fail``,
    ``ephemeral``), with the same idempotency keys and retries.
    """

    def __init__(
        self,
        base_url: str,
        org: str,
        secret: str | bytes,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, None, retry=retry, timeout=timeout, http_client=http_client)
        self._org = org
        self._secret = _key(secret)


class AsyncWebhookProducer(_WebhookMixin, _AsyncPublishing):
    """The asyncio form of :class:`WebhookProducer`."""

    def __init__(
        self,
        base_url: str,
        org: str,
        secret: str | bytes,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, None, retry=retry, timeout=timeout, http_client=http_client)
        self._org = org
        self._secret = _key(secret)
