"""Required (3): the helper's signatures are accepted (201), bad ones refused (401)."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from _support import HOOK_SECRET, ORG

from roomcast import AsyncWebhookProducer, Producer, Unauthorized, WebhookProducer, sign_webhook, verify_webhook


def _post(url: str, org: str, room: str, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if signature is not None:
        headers["Roomcast-Signature"] = signature
    return httpx.post(f"{url}/v1/hooks/{org}/rooms/{room}/events", content=body, headers=headers, timeout=10)


def test_signed_webhooks_accepted_and_bad_ones_refused(server, token) -> None:
    body = json.dumps({"type": "call.transcript", "data": {"text": "hi"}, "id": "hook-1"}).encode()

    ok = _post(server.url, ORG, "call-7", body, sign_webhook(HOOK_SECRET, body))
    assert ok.status_code == 201 and ok.json() == {"room": "call-7", "seq": 1}
    # The same signed delivery replayed: stored once.
    again = _post(server.url, ORG, "call-7", body, sign_webhook(HOOK_SECRET, body))
    assert again.status_code == 200 and again.json()["duplicate"] is True

    refused = [
        _post(server.url, ORG, "call-7", body, sign_webhook("wrong-secret", body)),
        _post(server.url, ORG, "call-7", body.replace(b"hi", b"ho"), sign_webhook(HOOK_SECRET, body)),  # body changed
        _post(server.url, ORG, "call-7", body, sign_webhook(HOOK_SECRET, body, t=int(time.time()) - 1000)),  # stale
        _post(server.url, ORG, "call-7", body, None),
    ]
    for r in refused:
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"

    with WebhookProducer(server.url, ORG, HOOK_SECRET) as hooks:
        r = hooks.publish("call-7", "call.transcript", {"text": "second"}, state={"stage": "live"})
        assert (r.seq, r.duplicate) == (2, False)
        b = hooks.publish_batch("call-7", [{"type": "a"}, {"type": "b"}])
        assert b.seqs == [3, 4]
        assert hooks.complete("call-7", "call.ended").seq == 5
    with WebhookProducer(server.url, ORG, "wrong-secret") as bad, pytest.raises(Unauthorized) as ei:
        bad.publish("call-7", "x")
    assert ei.value.status == 401 and bad.retries == 0

    with Producer(server.url, token()) as reader:
        page = reader.events("call-7", since=0)
    assert [e.type for e in page.events] == ["call.transcript", "call.transcript", "a", "b", "call.ended"]
    assert page.status == "completed" and page.state == {"stage": "live"}


async def test_async_webhook_producer(server) -> None:
    async with AsyncWebhookProducer(server.url, ORG, HOOK_SECRET) as hooks:
        r = await hooks.publish("call-8", "call.transcript", {"text": "hi"}, id="k1")
        assert r.seq == 1
        assert (await hooks.publish("call-8", "call.transcript", {"text": "hi"}, id="k1")).duplicate


def test_sign_and_verify() -> None:
    body = b'{"type":"x"}'
    header = sign_webhook("s", body, t=1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify_webhook("s", body, header, now=1_700_000_100)
    assert not verify_webhook("s", body, header, now=1_700_000_400)  # outside 300 s
    assert not verify_webhook("other", body, header, now=1_700_000_000)
    assert verify_webhook(["new", "s"], body, header, now=1_700_000_000)  # rotation
    assert not verify_webhook("s", body + b" ", header, now=1_700_000_000)
