"""The subscriber against the real server: exactly once, in order, whatever happens."""

from __future__ import annotations

import asyncio
import time

import pytest
from _support import TcpProxy, take, wait_until

from roomcast import AsyncProducer, Client, Event, Forbidden, PresenceChange, Reset, RetryPolicy

FAST = RetryPolicy(max_attempts=200, base=0.05, cap=0.5, deadline=60)


def seqs(items: list) -> list:  # type: ignore[type-arg]
    return [getattr(x, "seq", x) for x in items]


async def publish_range(p: AsyncProducer, room: str, lo: int, hi: int) -> None:
    for i in range(lo, hi + 1):
        r = await p.publish(room, "tick", {"n": i}, id=f"{room}-{i}")
        assert r.seq == i


@pytest.mark.parametrize("mode", ["realtime", "polling"])
async def test_history_then_live_on_several_rooms(server, token, mode) -> None:
    async with AsyncProducer(server.url, token(publish=True)) as p, Client(server.url, token=token(), mode=mode) as client:
        await publish_range(p, "room-a", 1, 3)
        await p.publish("room-c", "old")
        a = client.room("room-a", since=0)
        b = client.room("room-b", since=0)
        now = client.room("room-c")  # from now: no history
        got = await take(a, 3)
        assert seqs(got) == [1, 2, 3] and all(isinstance(e, Event) for e in got)
        await asyncio.gather(b.wait_ready(10), now.wait_ready(10))
        assert now.cursor == 1
        await publish_range(p, "room-b", 1, 2)
        await publish_range(p, "room-a", 4, 5)
        await p.publish("room-c", "new", {"x": 1})
        assert seqs(await take(b, 2)) == [1, 2]
        assert seqs(await take(a, 2)) == [4, 5]
        (c2,) = await take(now, 1)
        assert (c2.seq, c2.type, c2.data) == (2, "new", {"x": 1})
        counts = client.counts
        assert counts.push + counts.catchup + counts.poll == 8
        if mode == "realtime":
            assert client.transport == "websocket" and client.connections == 1  # one socket, three rooms
            assert counts.push >= 1
        else:
            assert client.transport == "longpoll" and counts.poll == 8
        assert client.status == "live"
        await a.close()
        with pytest.raises(StopAsyncIteration):
            await a.__anext__()


async def test_exactly_once_across_socket_cut_and_kill9_restart(make_server, token) -> None:
    """Required (1): 1..N in order across a killed client socket, then across
    kill -9 of the server and a restart on the same port (events published
    through the restarted server while the client was still away)."""
    server = make_server()
    proxy = await TcpProxy("127.0.0.1", server.port).start()
    room = "meeting-42"
    got: list = []  # type: ignore[type-arg]
    async with (
        AsyncProducer(server.url, token(publish=True), retry=FAST) as p,
        Client(server.url, token=token(), mode="realtime", ws_url=proxy.url, backoff_base=0.05, backoff_max=1.0) as client,
    ):
        sub = client.room(room, since=0)
        await sub.wait_ready(10)
        publisher = asyncio.create_task(publish_range(p, room, 1, 40))
        got += await take(sub, 10)
        await proxy.refuse()  # the client's socket dies mid-stream; reconnects are refused
        await publisher
        await publish_range(p, room, 41, 45)  # surely missed: no socket can exist now
        await proxy.restore()
        got += await take(sub, 35)
        assert client.counts.reconnects == 1 and client.counts.catchup >= 5

        server.kill9()
        await asyncio.to_thread(server.start)  # same port, same database
        await publish_range(p, room, 46, 60)  # through the restarted server
        got += await take(sub, 15)
        assert client.counts.reconnects == 2
        assert sub._queue.empty()  # nothing more was delivered

    assert seqs(got) == list(range(1, 61))
    assert [e.data["n"] for e in got] == list(range(1, 61))
    c = client.counts
    assert c.push + c.catchup + c.poll == 60


async def test_fallback_to_long_poll_and_back(make_server, token) -> None:
    """Required (4): WebSocket refused (HTTP 503 at the upgrade) -> long-poll;
    upgrades allowed again -> back on WebSocket; exactly once throughout."""
    server = make_server()
    gate = await TcpProxy("127.0.0.1", server.port).start()
    gate.mode = "http503"
    room = "fallback"
    got: list = []  # type: ignore[type-arg]
    async with (
        AsyncProducer(server.url, token(publish=True)) as p,
        Client(
            server.url,
            token=token(),
            mode="auto",
            ws_url=gate.url,
            backoff_base=0.05,
            backoff_max=0.2,
            fallback_after=3,
            probe_interval=0.5,
        ) as client,
    ):
        await publish_range(p, room, 1, 5)
        sub = client.room(room, since=0)
        got += await take(sub, 5)
        assert client.transport == "longpoll" and gate.refused_http >= 3
        await publish_range(p, room, 6, 10)  # delivered by the held long-poll
        got += await take(sub, 5)
        assert client.counts.poll == 10

        gate.mode = "pass"
        await wait_until(lambda: client.transport == "websocket" and client.status == "live", 20, "the switch back to WebSocket")
        await publish_range(p, room, 11, 20)
        got += await take(sub, 10)
        assert client.counts.push >= 1

        # And back to long-poll when the socket dies and upgrades are refused again.
        gate.mode = "http503"
        gate.cut()
        await wait_until(lambda: client.transport == "longpoll", 20, "the second fallback")
        await publish_range(p, room, 21, 25)
        got += await take(sub, 5)
        assert sub._queue.empty()

    assert seqs(got) == list(range(1, 26))
    c = client.counts
    assert c.push + c.catchup + c.poll == 25


@pytest.mark.parametrize("mode", ["realtime", "polling"])
async def test_reset_when_since_is_beyond_head(server, token, mode) -> None:
    """Required (5): since beyond the head -> a Reset item, then events from the head."""
    async with AsyncProducer(server.url, token(publish=True)) as p, Client(server.url, token=token(), mode=mode) as client:
        await p.publish("r", "a", state={"stage": "upload"})
        await p.publish("r", "b", state={"stage": "transcription"})
        await p.publish("r", "c")
        sub = client.room("r", since=10)
        (reset,) = await take(sub, 1)
        assert isinstance(reset, Reset)
        assert (reset.room, reset.head, reset.cursor) == ("r", 3, 10)
        assert reset.state == {"stage": "transcription"}
        assert sub.cursor == 3
        await p.publish("r", "d")
        (ev,) = await take(sub, 1)
        assert (ev.seq, ev.type) == (4, "d")


async def test_token_renewal_keeps_the_connection(server, token) -> None:
    """Required (6): a 4 s token renewed with op auth 2.5 s before exp: the same
    WebSocket session goes on past the first token's expiry."""
    issued: list[str] = []

    async def provider() -> str:
        issued.append(token(ttl=4))
        return issued[-1]

    from roomcast import token_expiry

    async with (
        AsyncProducer(server.url, token(publish=True)) as p,
        Client(server.url, token_provider=provider, mode="realtime", renew_before=2.5) as client,
    ):
        sub = client.room("renewing", since=0)
        await sub.wait_ready(10)
        session = client.session
        first_exp = token_expiry(issued[0])
        assert session is not None and first_exp is not None
        await p.publish("renewing", "before")
        await take(sub, 1)
        # Past the first token's expiry (when the server would close with 4001).
        await wait_until(lambda: time.time() > first_exp + 1.0 and client.auth_renewals >= 2, 15, "two renewals past exp")
        await p.publish("renewing", "after")
        (ev,) = await take(sub, 1)
        assert (ev.seq, ev.type, ev.source) == (2, "after", "push")
        assert client.session == session and client.connections == 1
        assert client.counts.reconnects == 0 and len(issued) >= 3


async def test_watchdog_replaces_a_silent_socket(make_server, token) -> None:
    """A socket that stays open but carries nothing: the client's own ping
    goes unanswered, the socket is replaced, and nothing is lost."""
    server = make_server()
    proxy = await TcpProxy("127.0.0.1", server.port).start()
    async with (
        AsyncProducer(server.url, token(publish=True)) as p,
        Client(server.url, token=token(), mode="realtime", ws_url=proxy.url, ping_interval=0.3, pong_timeout=0.3, backoff_base=0.05) as client,
    ):
        sub = client.room("quiet", since=0)
        await publish_range(p, "quiet", 1, 3)
        got = await take(sub, 3)
        session = client.session
        assert proxy.stall() == 1
        await publish_range(p, "quiet", 4, 6)  # pushed into the void
        got += await take(sub, 3)
        assert client.session != session and client.counts.reconnects == 1
    assert seqs(got) == [1, 2, 3, 4, 5, 6]


async def test_gap_is_read_back_and_duplicates_dropped(server, token) -> None:
    """The delivery rule on its own: an event ahead of the cursor waits while
    the gap is read back over REST; events at or below the cursor are dropped."""
    async with AsyncProducer(server.url, token(publish=True)) as p:
        await publish_range(p, "gappy", 1, 4)
    # No transport gets through (closed port, no fallback): only REST works.
    async with Client(server.url, token=token(), mode="realtime", ws_url="ws://127.0.0.1:9", backoff_base=5) as client:
        sub = client.room("gappy", since=0)
        ahead = Event(room="gappy", seq=3, type="tick", data={"n": 3}, ts="", source="push")
        client._deliver(sub, ahead)  # 1 and 2 are missing: read back over REST
        got = await take(sub, 4)
        assert seqs(got) == [1, 2, 3, 4] and [e.data["n"] for e in got] == [1, 2, 3, 4]
        assert got[0].source == "catchup"
        client._deliver(sub, Event(room="gappy", seq=2, type="tick", data=None, ts="", source="push"))
        c = client.counts
        assert c.gaps == 1
        assert c.duplicates == 2  # the read-back's copy of 3, and the late 2
        assert c.push + c.catchup == 4 and sub._queue.empty()


async def test_forbidden_room_raises_typed_error(server, token) -> None:
    async with Client(server.url, token=token(rooms=["meeting-*"]), mode="realtime") as client:
        ok = client.room("meeting-1", since=0)
        bad = client.room("other-1", since=0)
        with pytest.raises(Forbidden) as ei:
            await bad.next(timeout=10)
        assert ei.value.code == "forbidden" and ei.value.room == "other-1"
        await ok.wait_ready(10)


@pytest.mark.parametrize("mode", ["realtime", "polling"])
async def test_state_follows_every_event_with_no_read(server, token, mode) -> None:
    """Issue 26, item 1: each event carries the state patch and status its
    publish applied; ``sub.state`` follows them in seq order, with no
    snapshot read, live and from history alike."""
    async with AsyncProducer(server.url, token(publish=True)) as p, Client(server.url, token=token(), mode=mode) as client:
        await p.publish("job", "stage", state={"stage": "upload", "progress": 0.0})
        live = client.room("job")  # from now
        await live.wait_ready(10)
        assert live.state == {"stage": "upload", "progress": 0.0}
        seen = []
        for i, stage in enumerate(["transcription", "diarization"], start=2):
            await p.publish("job", "stage", {"i": i}, state={"stage": stage, "progress": i / 4})
            (ev,) = await take(live, 1)
            assert ev.state == {"stage": stage, "progress": i / 4} and ev.status is None
            seen.append(dict(live.state))
        await p.publish("job", "note", {"plain": True})
        (plain,) = await take(live, 1)
        assert plain.state is None and plain.status is None
        await p.complete("job", "done", state={"stage": "done", "progress": None})
        (done,) = await take(live, 1)
        assert done.status == "completed"
        assert seen == [{"stage": "transcription", "progress": 0.5}, {"stage": "diarization", "progress": 0.75}]
        assert live.state == {"stage": "done"} and live.status == "completed"
        await live.close()
        # From history: the same state, event by event.
        past = client.room("job", since=0)
        got = await take(past, 5)
        assert [e.seq for e in got] == [1, 2, 3, 4, 5]
        assert [e.state is not None for e in got] == [True, True, True, False, True]
        assert past.state == {"stage": "done"} and past.status == "completed"


async def test_connecting_then_live_and_loading_until_subscribed(server, token) -> None:
    """Issue 26, item 3: ``connecting`` (not ``offline``) until the server is
    first heard, ``loading`` until the subscription is first answered."""
    async with AsyncProducer(server.url, token(publish=True)) as p, Client(server.url, token=token()) as client:
        await p.publish("load", "a")
        sub = client.room("load", since=0)
        assert sub.loading
        await sub.wait_ready(10)
        assert not sub.loading
        await take(sub, 1)
        await wait_until(lambda: client.status == "live", 10)
    # A server that never answers: connecting, not offline, for a while.
    async with Client("http://127.0.0.1:9", token=token(), retry=FAST) as nowhere:
        s = nowhere.room("load", since=0)
        await asyncio.sleep(1.0)
        assert nowhere.status == "connecting" and s.loading


@pytest.mark.parametrize("mode", ["realtime", "polling"])
async def test_presence_members_join_and_leave(server, token, mode) -> None:
    """Issue 26, item 4: the subscriber follows the room's members with their
    ``info`` (``presence=True``): joins and leaves are yielded in-band."""
    async with Client(server.url, token=token(sub="bob", info={"name": "Bob"})) as bob_client:
        bob = bob_client.room("call", presence=True)
        await bob.wait_ready(10)
        async with Client(server.url, token=token(sub="alice", info={"name": "Alice"}), mode=mode) as client:
            sub = client.room("call", presence=True)

            async def until_members(want: dict[str, str]) -> None:
                deadline = time.monotonic() + 15
                while {s: i.get("name") for s, i in sub.members.items()} != want:
                    item = await sub.next(max(0.1, deadline - time.monotonic()))
                    assert isinstance(item, PresenceChange), item

            # Realtime: alice is a member too; polling reads the members (not one).
            both = {"alice": "Alice", "bob": "Bob"} if mode == "realtime" else {"bob": "Bob"}
            await until_members(both)
            await bob.close()
            await until_members({"alice": "Alice"} if mode == "realtime" else {})


@pytest.mark.parametrize("mode", ["realtime", "polling"])
async def test_messages_as_they_stand_then_each_change_once(server, token, mode) -> None:
    """Issue 28: ``messages=True`` reads the room once with view=latest (not
    every change replayed), then applies each change as it comes, once,
    across a mode switch."""
    async with AsyncProducer(server.url, token(publish=True)) as p:
        seg = (await p.publish("notes", "segment", {"text": "helo"})).seq
        await p.publish("notes", "segment", {"text": "hello"}, updates=seg)
        summary = (await p.publish("notes", "summary", {"text": ""})).seq
        for i in range(50):
            await p.publish("notes", "summary.delta", {"text": f"{i} "}, appends=summary)
        async with Client(server.url, token=token(), mode=mode) as client:
            sub = client.room("notes", messages=True)
            await sub.wait_ready(10)
            texts = {s: m.data["text"] for s, m in sub.messages.items()}
            assert texts == {seg: "hello", summary: "".join(f"{i} " for i in range(50))}
            assert sub.messages[seg].edited and sub.cursor == 53
            assert client.counts.push + client.counts.catchup + client.counts.poll == 0, "no change replayed"
            await p.publish("notes", "summary.delta", {"text": "end."}, appends=summary)
            await p.publish("notes", "segment.deleted", deletes=seg)
            got = await take(sub, 2)
            assert [e.seq for e in got] == [54, 55]
            client.set_mode("polling" if mode == "realtime" else "realtime")
            new = (await p.publish("notes", "segment", {"text": "new"})).seq
            await take(sub, 1)
            assert {s: m.data["text"] for s, m in sub.messages.items()} == {
                summary: "".join(f"{i} " for i in range(50)) + "end.",
                new: "new",
            }
            assert client.counts.duplicates == 0


@pytest.mark.parametrize("mode", ["realtime", "polling"])
async def test_a_failover_gap_is_crossed_once_and_a_cursor_inside_it_is_reset(server, token, mode, pg, database) -> None:
    """Issue 25: on a new timeline the heads move past a gap (here PostgreSQL is told it is on
    a timeline roomcast has not followed yet, as after a promotion). A subscriber at the gap's
    start goes on past it with no reset, each event once; a cursor inside it is reset."""
    url = pg.db_url(database)
    async with AsyncProducer(server.url, token(publish=True)) as p, Client(server.url, token=token(), mode=mode) as client:
        await publish_range(p, "g", 1, 3)
        sub = client.room("g", since=0)
        assert seqs(await take(sub, 3)) == [1, 2, 3]
        pg.run("UPDATE roomcast_timeline SET tli = 0", url)
        # A SQL producer writes first: its publish moves the heads.
        seq = int(pg.run("""SELECT roomcast_publish('acme', 'g', 'tick', '{"n": 4}'::jsonb)""", url))
        assert seq == 1_000_004
        r = await p.publish("g", "tick", {"n": 5})
        assert r.seq == 1_000_005
        got = await take(sub, 2)
        assert [(type(x).__name__, getattr(x, "seq", None), getattr(x, "data", None)) for x in got] == [
            ("Event", 1_000_004, {"n": 4}),
            ("Event", 1_000_005, {"n": 5}),
        ]
        assert sub.cursor == 1_000_005
    async with Client(server.url, token=token(), mode=mode) as other:
        inside = other.room("g", since=500)
        (reset,) = await take(inside, 1)
        assert isinstance(reset, Reset) and reset.head == 1_000_005, reset
