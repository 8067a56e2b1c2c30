"""Producers against the real server: idempotency, batches, state, status, errors."""

from __future__ import annotations

import httpx
import pytest
from _support import ORG, HttpProxy, take

from roomcast import (
    AsyncProducer,
    BadRequest,
    BadTarget,
    Client,
    Forbidden,
    Producer,
    RetryPolicy,
    RoomClosed,
    Unauthorized,
    mint_token,
    token_claims,
    token_expiry,
)


def test_publish_batch_state_status_and_reads(server, token) -> None:
    with Producer(server.url, token(publish=True)) as p:
        r1 = p.publish("meeting-1", "transcript.segment", {"text": "hi"}, state={"stage": "transcription", "progress": 10})
        assert (r1.room, r1.seq, r1.duplicate) == ("meeting-1", 1, False)
        assert r1.id  # a generated idempotency key
        again = p.publish("meeting-1", "transcript.segment", {"text": "hi"}, id=r1.id)
        assert (again.seq, again.duplicate) == (1, True)

        b = p.publish_batch("meeting-1", [{"type": "a", "data": 1}, {"type": "b", "id": "k-b", "state": {"progress": 50}}])
        assert b.seqs == [2, 3] and not b.duplicate and b.ids[1] == "k-b" and len(b.ids) == 2

        snap = p.snapshot("meeting-1")
        assert snap is not None and snap.head == 3 and snap.status == "in_progress"
        assert snap.state == {"stage": "transcription", "progress": 50}  # merge patches
        assert p.snapshot("never-published") is None

        done = p.complete("meeting-1", "meeting.completed", {"duration_s": 5}, state={"stage": "completed"})
        assert done.seq == 4
        with pytest.raises(RoomClosed) as ei:
            p.publish("meeting-1", "late")
        assert ei.value.code == "room_closed" and ei.value.status == 409
        # A retried final event is a duplicate, not a 409.
        assert p.complete("meeting-1", "meeting.completed", id=done.id).duplicate

        page = p.events("meeting-1", since=0, limit=2)
        assert [e.seq for e in page.events] == [1, 2] and page.head == 4 and page.status == "completed"
        page = p.events("meeting-1", since=2)
        assert [e.type for e in page.events] == ["b", "meeting.completed"]

        p.publish("meeting-2", "x")
        p.fail("meeting-3", "job.failed", {"why": "boom"})
        assert {r.room for r in p.rooms()} == {"meeting-1", "meeting-2", "meeting-3"}
        assert [r.room for r in p.rooms(status="in_progress")] == ["meeting-2"]
        assert p.snapshot("meeting-3").status == "failed"  # type: ignore[union-attr]

        eph = p.ephemeral("meeting-2", "transcript.partial", {"text": "so the ne"}, key="spk-1")
        assert eph.ephemeral and eph.seq is None
        assert p.snapshot("meeting-2").head == 1  # type: ignore[union-attr]  # never stored


def test_typed_errors(server, token) -> None:
    with Producer(server.url, token(publish=False)) as p, pytest.raises(Forbidden) as ei:
        p.publish("r", "x")
    assert ei.value.code == "forbidden" and ei.value.status == 403
    with Producer(server.url, "not-a-jwt") as p, pytest.raises(Unauthorized):
        p.publish("r", "x")
    with Producer(server.url, token(publish=True)) as p:
        with pytest.raises(BadRequest) as bi:
            p.publish("r", "Not A Type")
        assert bi.value.code == "bad_request" and bi.value.message
        with pytest.raises(ValueError):
            p.publish_batch("r", [])
        with pytest.raises(ValueError):
            p.publish_batch("r", [{"type": "a"}] * 1001)
    # Errors are not retried unless retryable.
    with Producer(server.url, token(publish=True), retry=RetryPolicy(max_attempts=5)) as p:
        with pytest.raises(BadRequest):
            p.publish("r", "x", state=[1])  # type: ignore[arg-type]
        assert p.retries == 0


async def test_async_producer_and_token_callable(server, token) -> None:
    calls = 0

    async def provide() -> str:
        nonlocal calls
        calls += 1
        return token(publish=True)

    async with AsyncProducer(server.url, provide) as p:
        r = await p.publish("room-a", "x", {"n": 1})
        b = await p.publish_batch("room-a", [{"type": "y"}] * 3)
        assert r.seq == 1 and b.seqs == [2, 3, 4]
        assert (await p.snapshot("room-a")).head == 4  # type: ignore[union-attr]
        page = await p.events("room-a", since=1)
        assert [e.seq for e in page.events] == [2, 3, 4]
    assert calls == 4


def test_connection_refused_is_retried_then_raised() -> None:
    from roomcast import ConnectionFailed

    with Producer("http://127.0.0.1:9", "t", retry=RetryPolicy(max_attempts=3, base=0.01, cap=0.02)) as p:
        with pytest.raises(ConnectionFailed) as ei:
            p.publish("r", "x")
    assert ei.value.code == "unavailable" and p.retries == 2


def test_mint_token_claims() -> None:
    t = mint_token("s", org=ORG, sub="u", ttl=60, rooms=["meeting-*"], publish=True, info={"name": "Ana"}, now=1000)
    assert token_claims(t) == {"sub": "u", "org": ORG, "exp": 1060, "rooms": ["meeting-*"], "pub": True, "info": {"name": "Ana"}}
    assert token_expiry(t) == 1060
    assert "pub" not in token_claims(mint_token("s", org=ORG, sub="u"))


async def test_members_of_a_room_over_rest(server) -> None:
    """``members()``: who is in a room (presence), from the members' tokens."""
    import json

    import websockets

    from roomcast import mint_token as mint
    from _support import JWT_SECRET as SECRET

    ana = mint(SECRET, org=ORG, sub="ana", info={"name": "Ana"})
    ws_url = server.url.replace("http://", "ws://") + f"/v1/rooms/standup/ws?presence=1&token={ana}"
    async with websockets.connect(ws_url) as ws:
        while json.loads(await ws.recv())["op"] != "subscribed":
            pass
        backend = mint(SECRET, org=ORG, sub="backend")
        async with AsyncProducer(server.url, backend) as p:
            for _ in range(50):
                got = await p.members("standup")
                if got.count == 1:
                    break
                import asyncio

                await asyncio.sleep(0.1)
            assert got.count == 1 and got.members is not None
            assert (got.members[0].sub, got.members[0].info, got.members[0].connections) == ("ana", {"name": "Ana"}, 1)
            only = await p.members("standup", count_only=True)
            assert only.count == 1 and only.members is None


def test_a_producer_from_the_secret_outlives_its_tokens(server, token) -> None:
    """Issue 26, item 2: a producer made from the secret keeps publishing
    past its first token's expiry (it mints the next one before)."""
    import time

    from _support import JWT_SECRET

    fixed = token(publish=True, ttl=2)
    with Producer.from_secret(server.url, JWT_SECRET, org=ORG, ttl=2) as p, Producer(server.url, fixed) as q:
        assert p.publish("long-job", "stage", {"n": 1}).seq == 1
        assert q.publish("long-job", "stage", {"n": 2}).seq == 2
        time.sleep(7.5)  # both first tokens expired, and the server's 5 s leeway passed
        assert p.publish("long-job", "stage", {"n": 3}).seq == 3
        assert p._token.minted == 2  # type: ignore[attr-defined]


def test_a_401_asks_the_provider_for_a_new_token_once(server, token) -> None:
    """A token provider whose token the server refuses (expired, or a clock
    ahead) is asked again, once: a caching provider is told to renew."""

    class Provider:
        def __init__(self) -> None:
            self.calls = 0
            self.stale = True

        def __call__(self) -> str:
            self.calls += 1
            return token(publish=True, ttl=-60 if self.stale else 3600)

        def invalidate(self) -> None:
            self.stale = False

    provider = Provider()
    with Producer(server.url, provider, retry=RetryPolicy(max_attempts=1)) as p:
        assert p.publish("renewed", "x").seq == 1
    assert provider.calls == 2

    # Always refused: one retry, then the 401 is raised (no loop).
    calls = []

    def always_expired() -> str:
        calls.append(1)
        return token(publish=True, ttl=-60)

    with Producer(server.url, always_expired) as p, pytest.raises(Unauthorized):
        p.publish("renewed", "y")
    assert len(calls) == 2


@pytest.mark.asyncio
async def test_an_async_producer_from_the_secret_renews(server) -> None:
    import asyncio

    from _support import JWT_SECRET

    async with AsyncProducer.from_secret(server.url, JWT_SECRET, org=ORG, ttl=2) as p:
        assert (await p.publish("async-job", "a")).seq == 1
        await asyncio.sleep(2.5)
        assert (await p.publish("async-job", "b")).seq == 2


async def test_the_proxy_of_the_environment_is_used(server, token, monkeypatch) -> None:
    """Issue 26, item 5: ``HTTP(S)_PROXY`` applies to the producer's and the
    subscriber's requests and to the WebSocket (trust_env), as for any
    httpx or websockets user."""
    proxy = await HttpProxy().start()
    for k in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    try:
        async with AsyncProducer(server.url, token(publish=True)) as p:
            r = await p.publish("via-proxy", "x", {"n": 1})
            assert r.seq == 1
        assert f"POST {server.url}/v1/rooms/via-proxy/events" in proxy.seen, proxy.seen
        async with Client(server.url, token=token(), mode="realtime") as client:
            sub = client.room("via-proxy", since=0)
            (ev,) = await take(sub, 1)
            assert ev.seq == 1
        assert f"CONNECT 127.0.0.1:{server.port}" in proxy.seen, proxy.seen
    finally:
        await proxy.close()


def test_message_versions_updates_appends_deletes(server, token) -> None:
    """Issue 28: a producer corrects a segment, streams a summary as appends
    and deletes a line; a bad target raises BadTarget; the room as it stands
    reads in one page (view=latest)."""
    with Producer(server.url, token(publish=True)) as p:
        seg = p.publish("versions", "transcript.segment", {"speaker": "A", "text": "helo"}).seq
        p.publish("versions", "transcript.segment", {"speaker": "B", "text": "hello"}, updates=seg)
        summary = p.publish("versions", "summary", {"text": "The"}).seq
        for t in [" team", " agreed."]:
            p.publish("versions", "summary.delta", {"text": t}, appends=summary)
        gone = p.publish("versions", "transcript.segment", {"text": "uh"}).seq
        p.publish("versions", "transcript.deleted", deletes=gone)
        with pytest.raises(BadTarget):
            p.publish("versions", "summary.delta", {"text": "!"}, appends=gone)
        assert seg is not None and summary is not None
    body = httpx.get(
        f"{server.url}/v1/rooms/versions/events",
        params={"since": 0, "view": "latest"},
        headers={"authorization": f"Bearer {token()}"},
    ).json()
    assert [(m["seq"], m["data"]["text"], m.get("version")) for m in body["events"]] == [
        (1, "hello", 2),
        (3, "The team agreed.", 5),
    ]
    assert (body["cursor"], body["more"]) == (7, False)
