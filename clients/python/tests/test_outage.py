"""Required (2): publishes retried through a database outage, none stored twice."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from _support import TcpProxy, take, wait_until

from roomcast import AsyncProducer, Client, Producer, RetryPolicy

PATIENT = RetryPolicy(max_attempts=1000, base=0.05, cap=0.5, deadline=60)


async def test_publishes_survive_a_database_outage_exactly_once(pg, database, make_server, token) -> None:
    host, port = pg.address()
    db_gate = await TcpProxy(host, port).start()
    server = make_server(
        database_url=pg.db_url(database, host="127.0.0.1", port=db_gate.port),
        env={"ROOMCAST_STATEMENT_TIMEOUT_MS": "3000"},
        start=False,
    )
    # The proxy runs on this event loop: start the server from a thread.
    await asyncio.to_thread(server.start)

    room = "outage"
    per_worker = 15
    results: dict[str, int] = {}
    tok = token(publish=True)

    async def async_worker(p: AsyncProducer, w: int) -> None:
        for i in range(per_worker):
            marker = f"a{w}-{i}"
            r = await p.publish(room, "tick", {"marker": marker})
            assert r.seq is not None
            results[marker] = r.seq

    def sync_worker(p: Producer) -> None:
        for i in range(per_worker):
            marker = f"s-{i}"
            r = p.publish(room, "tick", {"marker": marker})
            assert r.seq is not None
            results[marker] = r.seq

    async with (
        AsyncProducer(server.url, tok, retry=PATIENT) as ap,
        Client(server.url, token=token(), mode="realtime", backoff_base=0.05, backoff_max=0.5) as client,
    ):
        sub = client.room(room, since=0)  # a subscriber watches through the outage
        await sub.wait_ready(10)
        with Producer(server.url, tok, retry=PATIENT) as sp:
            workers = [asyncio.create_task(async_worker(ap, w)) for w in range(3)]
            workers.append(asyncio.create_task(asyncio.to_thread(sync_worker, sp)))
            await wait_until(lambda: len(results) >= 8, 30, "the first publishes")

            # The outage: every database connection cut, new ones refused.
            await db_gate.refuse()
            cut_at = time.monotonic()
            await wait_until(lambda: ap.retries + sp.retries >= 6, 30, "publishes failing and retrying")
            during = len(results)
            await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - cut_at)))  # at least 2 s down
            await db_gate.restore()

            await asyncio.wait_for(asyncio.gather(*workers), 60)  # every publish call succeeded
            retries = ap.retries + sp.retries

        total = 4 * per_worker
        assert len(results) == total and during < total
        assert retries >= 6

        page = await ap.events(room, since=0, limit=1000)
        delivered = await take(sub, 4 * per_worker)
        assert [e.seq for e in delivered] == list(range(1, 4 * per_worker + 1)) and sub._queue.empty()
    markers = Counter(e.data["marker"] for e in page.events)
    assert len(page.events) == total, f"{len(page.events)} stored for {total} publishes"
    assert all(n == 1 for n in markers.values()) and set(markers) == set(results)
    assert [e.seq for e in page.events] == list(range(1, total + 1))
    by_seq = {e.seq: e.data["marker"] for e in page.events}
    assert all(by_seq[seq] == marker for marker, seq in results.items())  # each call got its own seq
    await db_gate.close()
