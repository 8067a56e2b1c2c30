"""Transcription webhooks -> roomcast rooms: seed 000's service, done right.

Seed 000 received ElevenLabs transcription webhooks, stored them, pushed
them to WebSocket clients itself, tracked "last sequence sent" per connection
and polled its database every 5 s per connection as a safety net. With
roomcast all of that is one publish: roomcast stores the segment, numbers it,
pushes it, and every subscriber catches up by seq after any disconnect. The
provider's event id becomes the idempotency key, so a webhook the provider
delivers twice (it retries whenever we answer late or non-2xx) is stored
once.

The provider signs each delivery like ElevenLabs does:

    ElevenLabs-Signature: t=<unix seconds>,v0=<hex HMAC-SHA256 of "<t>.<raw body>">

keyed with a secret shared with the provider (TRANSCRIPTION_WEBHOOK_SECRET);
deliveries more than 300 s old (SIGNATURE_TOLERANCE_S) are refused. Body:

    {"event_id": "evt_123", "type": "transcript.segment",
     "data": {"meeting_id": "meeting-42", "conversation_id": "conv_9",
              "segment_index": 3, "speaker": "Ana", "text": "Morning all",
              "start": 1.2, "end": 3.4}}

Types: ``transcript.segment`` (stored, in order), ``transcript.partial``
(interim text: an ephemeral event keyed by speaker, never stored),
``conversation.ended`` (the meeting's last event: status ``completed``).
The room is ``data.meeting_id`` (else ``conv-<conversation_id>``).

Answers: 200 once roomcast has committed the event (or it was a duplicate);
401 bad signature; 400 bad payload; 503 when roomcast cannot be reached after
a few retries (the provider retries later; the idempotency key makes that
safe).

Run it (from clients/python, with the ``example`` extra installed):

    ROOMCAST_URL=http://127.0.0.1:8080 ROOMCAST_JWT_SECRET=change-me ROOMCAST_ORG=acme \\
    TRANSCRIPTION_WEBHOOK_SECRET=whsec-demo \\
    uvicorn examples.transcription_webhook:app --port 8000

With ROOMCAST_JWT_SECRET the app mints its own short publishing tokens and
renews them before they expire (:class:`roomcast.SecretTokens`); a fixed
ROOMCAST_TOKEN works too, until it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from roomcast import AsyncProducer, RetryPolicy, RoomClosed, RoomcastError, SecretTokens, Unavailable

SIGNATURE_HEADER = "ElevenLabs-Signature"
ROOM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True)
class Settings:
    roomcast_url: str
    webhook_secret: str
    roomcast_token: str | None = None
    jwt_secret: str | None = None
    org: str | None = None
    tolerance_s: float = 300.0

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        missing = [k for k in ("ROOMCAST_URL", "TRANSCRIPTION_WEBHOOK_SECRET") if not env.get(k)]
        if not env.get("ROOMCAST_TOKEN") and not (env.get("ROOMCAST_JWT_SECRET") and env.get("ROOMCAST_ORG")):
            missing.append("ROOMCAST_TOKEN (or ROOMCAST_JWT_SECRET and ROOMCAST_ORG)")
        if missing:
            raise RuntimeError("transcription_webhook: set " + ", ".join(missing))
        return cls(
            roomcast_url=env["ROOMCAST_URL"],
            webhook_secret=env["TRANSCRIPTION_WEBHOOK_SECRET"],
            roomcast_token=env.get("ROOMCAST_TOKEN") or None,
            jwt_secret=env.get("ROOMCAST_JWT_SECRET") or None,
            org=env.get("ROOMCAST_ORG") or None,
            tolerance_s=float(env.get("SIGNATURE_TOLERANCE_S", "300")),
        )


def sign_provider_webhook(secret: str, body: bytes, t: int | None = None) -> str:
    """The provider's side (for tests and local simulation): the header value."""
    ts = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v0={mac}"


def verify_provider_signature(secret: str, body: bytes, header: str | None, tolerance_s: float, now: float | None = None) -> bool:
    """Checks ``t=<unix>,v0=<hex>`` in constant time, within ``tolerance_s``."""
    if not header:
        return False
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        k, sep, v = part.strip().partition("=")
        if sep:
            fields.setdefault(k.strip(), []).append(v.strip())
    try:
        t = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, sig.lower()) for sig in fields.get("v0", []))


def _tokens(s: Settings) -> str | SecretTokens:
    """A fixed token, or short tokens minted here and renewed before they expire."""
    if s.roomcast_token:
        return s.roomcast_token
    assert s.jwt_secret and s.org
    return SecretTokens(s.jwt_secret, org=s.org, sub="transcription-webhook", ttl=300)


def _room_of(data: dict[str, Any]) -> str | None:
    room = data.get("meeting_id") or (f"conv-{data['conversation_id']}" if data.get("conversation_id") else None)
    return room if isinstance(room, str) and ROOM_ID.match(room) else None


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; settings from the environment (at startup) unless given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or Settings.from_env()
        app.state.settings = s
        # A provider waits ~10 s for an answer: retry roomcast for at most 8.
        retry = RetryPolicy(max_attempts=20, base=0.2, cap=2.0, deadline=8.0)
        async with AsyncProducer(s.roomcast_url, _tokens(s), retry=retry) as producer:
            app.state.producer = producer
            yield

    app = FastAPI(title="transcription webhook -> roomcast", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/webhooks/transcription")
    async def transcription(request: Request) -> JSONResponse:
        s: Settings = request.app.state.settings
        producer: AsyncProducer = request.app.state.producer
        body = await request.body()
        if not verify_provider_signature(s.webhook_secret, body, request.headers.get(SIGNATURE_HEADER), s.tolerance_s):
            return JSONResponse({"error": "bad or expired signature"}, status_code=401)
        try:
            payload = await request.json()
            event_id, kind, data = payload["event_id"], payload["type"], payload["data"]
            assert isinstance(event_id, str) and event_id and isinstance(kind, str) and isinstance(data, dict)
        except Exception:
            return JSONResponse({"error": "expected {event_id, type, data}"}, status_code=400)
        room = _room_of(data)
        if room is None:
            return JSONResponse({"error": "data.meeting_id (or conversation_id) is missing or not a valid room id"}, status_code=400)
        key = f"elevenlabs:{event_id}"  # a redelivery is the same event
        segment = {k: data[k] for k in ("speaker", "text", "start", "end", "segment_index", "conversation_id") if k in data}
        try:
            if kind == "transcript.segment":
                r = await producer.publish(room, "transcript.segment", segment, id=key, state={"stage": "transcription"})
            elif kind == "transcript.partial":
                await producer.ephemeral(room, "transcript.partial", segment, key=str(data.get("speaker") or "interim"))
                return JSONResponse({"room": room, "ephemeral": True})
            elif kind == "conversation.ended":
                r = await producer.complete(room, "meeting.completed", segment or None, id=key, state={"stage": "completed"})
            else:
                return JSONResponse({"room": room, "ignored": kind})
        except RoomClosed:
            # A new event for a meeting already over: nothing to do, and a
            # non-2xx would only make the provider retry it for hours.
            return JSONResponse({"room": room, "ignored": "room_closed"})
        except Unavailable as e:
            return JSONResponse({"error": f"roomcast unavailable: {e.message}"}, status_code=503, headers={"Retry-After": "5"})
        except RoomcastError as e:
            return JSONResponse({"error": str(e)}, status_code=400 if e.status in (400, 413) else 502)
        return JSONResponse({"room": room, "seq": r.seq, "duplicate": r.duplicate})

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")))
