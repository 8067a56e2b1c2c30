"""Fixtures: a fresh database and the real server per test."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import JWT_SECRET, ORG, Postgres, Server, server_binary  # noqa: E402

from roomcast import mint_token  # noqa: E402


@pytest.fixture(scope="session")
def binary() -> Path:
    path = server_binary()
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"the roomcast binary is missing at {path}: build it (cargo build) or set ROOMCAST_BIN", pytrace=False)
    return path


@pytest.fixture(scope="session")
def pg() -> Iterator[Postgres]:
    p = Postgres()
    yield p
    p.close()


@pytest.fixture
def database(pg: Postgres) -> Iterator[str]:
    """A fresh database's name (rc_py_<uuid hex>), dropped after the test."""
    name = pg.create_db()
    yield name
    pg.drop_db(name)


@pytest.fixture
def make_server(binary: Path, pg: Postgres, database: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Starts servers on the test's database (stopped at the end)."""
    servers: list[Server] = []

    def make(env: dict[str, str] | None = None, database_url: str | None = None, start: bool = True) -> Server:
        s = Server(binary, database_url or pg.db_url(database), env, log_dir=tmp_path)
        servers.append(s)
        if start:
            s.start()
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


@pytest.fixture
def token() -> Callable[..., str]:
    """token(sub="...", publish=False, ttl=3600, rooms=None, info=None) for org acme."""

    def make(
        sub: str = "tester",
        publish: bool = False,
        ttl: float = 3600,
        rooms: list[str] | None = None,
        org: str = ORG,
        info: dict[str, Any] | None = None,
    ) -> str:
        return mint_token(JWT_SECRET, org=org, sub=sub, ttl=ttl, rooms=rooms, publish=publish, info=info)

    return make
