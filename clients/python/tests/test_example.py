"""Required (7): the example app end to end, started with its documented command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
from _support import JWT_SECRET, ORG, PKG_ROOT, free_port, take

from roomcast import Client, Event

SECRET = "whsec-test"


def _start_example(roomcast_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "ROOMCAST_URL": roomcast_url,
        "ROOMCAST_JWT_SECRET": JWT_SECRET,  # the app mints its own publishing tokens
        "ROOMCAST_ORG": ORG,
        "TRANSCRIPTION_WEBHOOK_SECRET": SECRET,
    }
    # The README's command: uvicorn examples.transcription_webhook:app (from clients/python).
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.transcription_webhook:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=PKG_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


async def _ready(http: httpx.AsyncClient, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the example app exited"
        try:
            if (await http.get(f"{url}/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)  # nothing to await but the port opening
    raise AssertionError("the example app did not start")


async def test_transcription_webhook_reaches_a_subscriber(server, token) -> None:
    import importlib

    sys.path.insert(0, str(PKG_ROOT))
    example = importlib.import_module("examples.transcription_webhook")

    proc, url = _start_example(server.url)
    try:
        async with httpx.AsyncClient(timeout=15) as http, Client(server.url, token=token(), mode="realtime") as client:
            await _ready(http, url, proc)
            sub = client.room("meeting-42", since=0, ephemeral=True)
            await sub.wait_ready(10)

            async def deliver(event_id: str, kind: str, data: dict, secret: str = SECRET) -> httpx.Response:  # type: ignore[type-arg]
                body = json.dumps({"event_id": event_id, "type": kind, "data": data}).encode()
                sig = example.sign_provider_webhook(secret, body)
                return await http.post(f"{url}/webhooks/transcription", content=body, headers={"ElevenLabs-Signature": sig, "content-type": "application/json"})

            seg1 = {"meeting_id": "meeting-42", "conversation_id": "c9", "segment_index": 0, "speaker": "Ana", "text": "Morning all"}
            seg2 = {**seg1, "segment_index": 1, "speaker": "Ben", "text": "The build is green"}
            r1 = await deliver("evt_1", "transcript.segment", seg1)
            assert r1.status_code == 200 and r1.json() == {"room": "meeting-42", "seq": 1, "duplicate": False}
            # The provider delivers evt_1 again (a retry): stored once.
            again = await deliver("evt_1", "transcript.segment", seg1)
            assert again.json() == {"room": "meeting-42", "seq": 1, "duplicate": True}
            assert (await deliver("evt_x", "transcript.segment", seg2, secret="forged")).status_code == 401
            (first,) = await take(sub, 1)
            assert isinstance(first, Event) and (first.seq, first.type) == (1, "transcript.segment")
            assert first.data["text"] == "Morning all" and first.data["speaker"] == "Ana"

            partial = await deliver("evt_p", "transcript.partial", {**seg2, "text": "The bui"})
            assert partial.json() == {"room": "meeting-42", "ephemeral": True}
            assert (await deliver("evt_2", "transcript.segment", seg2)).json()["seq"] == 2
            assert (await deliver("evt_end", "conversation.ended", {"meeting_id": "meeting-42"})).json()["seq"] == 3

            items = await take(sub, 3)
            durable = [e for e in items if not e.ephemeral]
            assert [(e.seq, e.type) for e in durable] == [(2, "transcript.segment"), (3, "meeting.completed")]
            assert [e.data["text"] for e in items if e.ephemeral] == ["The bui"]

            late = await deliver("evt_late", "transcript.segment", {**seg2, "segment_index": 9})
            assert late.json() == {"room": "meeting-42", "ignored": "room_closed"}
            snap = await client.snapshot("meeting-42")
            assert snap is not None and (snap.head, snap.status, snap.state) == (3, "completed", {"stage": "completed"})
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_provider_signature_check() -> None:
    import importlib

    sys.path.insert(0, str(PKG_ROOT))
    example = importlib.import_module("examples.transcription_webhook")
    body = b'{"event_id":"e"}'
    header = example.sign_provider_webhook("s", body, t=1000)
    assert example.verify_provider_signature("s", body, header, 300, now=1100)
    assert not example.verify_provider_signature("s", body, header, 300, now=1400)
    assert not example.verify_provider_signature("s", body + b"x", header, 300, now=1000)
    assert not example.verify_provider_signature("s", body, None, 300, now=1000)
