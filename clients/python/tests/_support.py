"""Test support: PostgreSQL databases, the real server binary, a TCP proxy.

PostgreSQL: ``ROOMCAST_TEST_ADMIN_URL`` (a ``postgres://`` URL) if set; else
the server on 127.0.0.1:5432 (user postgres, trust) if one answers; else a
private cluster started with initdb/pg_ctl under /var/tmp (as root through
``runuser -u postgres``). ``ROOMCAST_TEST_PRIVATE_PG=1`` forces the private
cluster. Every test gets a database ``rc_py_<uuid hex>``, dropped after.

The server: ``ROOMCAST_BIN`` (default ``../../target/debug/roomcast``
relative to clients/python), started as ``roomcast serve`` with
``ROOMCAST_BIND=127.0.0.1:0``; its port is read from the line
``roomcast listening on port N`` on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
PKG_ROOT = HERE.parent
REPO_ROOT = PKG_ROOT.parent.parent

JWT_SECRET = "py-test-secret-0123456789abcdef0123456789"
HOOK_SECRET = "py-hook-secret"
ORG = "acme"


# ------------------------------------------------------------- binary


def server_binary() -> Path:
    raw = os.environ.get("ROOMCAST_BIN")
    path = Path(raw) if raw else PKG_ROOT / "../../target/debug/roomcast"
    if not path.is_absolute():
        path = (PKG_ROOT / path) if not raw else (Path.cwd() / path)
    return path.resolve()


# ---------------------------------------------------------- PostgreSQL


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _pg_bindir() -> Path | None:
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d and (Path(d) / "pg_ctl").is_file() and (Path(d) / "initdb").is_file():
            return Path(d)
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    return Path(versions[-1]).parent if versions else None


def psql_path() -> str:
    found = shutil.which("psql")
    if found:
        return found
    bindir = _pg_bindir()
    if bindir and (bindir / "psql").is_file():
        return str(bindir / "psql")
    raise RuntimeError("psql is required by the tests (apt-get install postgresql-client)")


class PrivateCluster:
    """A PostgreSQL cluster of the tests' own, when none answers on 5432."""

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL answers on 127.0.0.1:5432 and initdb/pg_ctl are not installed")
        self.bindir = bindir
        tag = hashlib.sha1(str(REPO_ROOT).encode()).hexdigest()[:12]
        base = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())
        self.home = base / f"roomcast-py-pg-{tag}"
        self.pgdata = self.home / "pgdata"
        self.as_postgres = os.geteuid() == 0
        self.port = 0
        self.started_here = False

    def _tool(self, name: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / name), *args]
        return ["runuser", "-u", "postgres", "--", *cmd] if self.as_postgres else cmd

    def start(self) -> str:
        (self.home / "run").mkdir(parents=True, exist_ok=True)
        if self.as_postgres:
            subprocess.run(["chown", "-R", "postgres:postgres", str(self.home)], check=True)
        if not (self.pgdata / "PG_VERSION").is_file():
            subprocess.run(
                self._tool("initdb", "-D", str(self.pgdata), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-instructions"),
                check=True,
                stdout=subprocess.DEVNULL,
            )
        port_file = self.home / "port"
        running = subprocess.run(self._tool("pg_ctl", "-D", str(self.pgdata), "status"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        if running and port_file.is_file():
            self.port = int(port_file.read_text().strip())
            return self.url()
        for _ in range(3):
            self.port = free_port()
            port_file.write_text(str(self.port))
            opts = f"-p {self.port} -k {self.home / 'run'} -c listen_addresses=127.0.0.1 -c max_connections=200"
            r = subprocess.run(
                self._tool("pg_ctl", "-D", str(self.pgdata), "-l", str(self.home / "postgres.log"), "-w", "-t", "60", "-o", opts, "start"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if r.returncode == 0:
                self.started_here = True
                return self.url()
        raise RuntimeError(f"could not start PostgreSQL in {self.pgdata}; see {self.home / 'postgres.log'}")

    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if self.started_here:
            subprocess.run(self._tool("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "stop"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Postgres:
    """The admin connection of the tests and the databases they create."""

    def __init__(self) -> None:
        self.cluster: PrivateCluster | None = None
        url = os.environ.get("ROOMCAST_TEST_ADMIN_URL")
        if not url:
            if not os.environ.get("ROOMCAST_TEST_PRIVATE_PG") and _port_open("127.0.0.1", 5432):
                url = "postgres://postgres@127.0.0.1:5432/postgres"
            else:
                self.cluster = PrivateCluster()
                url = self.cluster.start()
        self.admin_url = url
        self.psql = psql_path()

    def run(self, sql: str, url: str | None = None) -> str:
        r = subprocess.run(
            [self.psql, url or self.admin_url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr.strip()}")
        return r.stdout

    def db_url(self, name: str, host: str | None = None, port: int | None = None) -> str:
        parts = urlsplit(self.admin_url)
        netloc = parts.netloc
        if host is not None or port is not None:
            userinfo, _, hostport = netloc.rpartition("@")
            h, _, p = hostport.rpartition(":")
            h = host or h
            p = str(port) if port is not None else p
            netloc = f"{userinfo + '@' if userinfo else ''}{h}:{p}"
        return urlunsplit((parts.scheme, netloc, "/" + name, parts.query, ""))

    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.admin_url)
        return parts.hostname or "127.0.0.1", parts.port or 5432

    def create_db(self) -> str:
        name = f"rc_py_{uuid.uuid4().hex}"
        self.run(f"CREATE DATABASE {name}")
        return name

    def drop_db(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- server


class Server:
    """The real roomcast binary, on a fresh database."""

    def __init__(self, binary: Path, database_url: str, env: dict[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.binary = binary
        self.database_url = database_url
        self.extra_env = dict(env or {})
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="rc-py-log-"))
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self, bind: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "ROOMCAST_BIND": bind,
                "ROOMCAST_JWT_SECRET": JWT_SECRET,
                "ROOMCAST_WEBHOOK_SECRET": HOOK_SECRET,
                "ROOMCAST_RATE_LIMITS": "off",
                "ROOMCAST_POLL_MS": "500",
                "ROOMCAST_WORKERS": "1",
                "ROOMCAST_DB_POOL": "6",
                "RUST_LOG": env.get("RUST_LOG", "info"),
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> None:
        """Starts the server (on its previous port after the first start)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._start_once(deadline)
                return
            except _BindFailed:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server could not bind port {self.port}") from None
                time.sleep(0.2)

    def _start_once(self, deadline: float) -> None:
        bind = f"127.0.0.1:{self.port}" if self.port else "127.0.0.1:0"
        self.starts += 1
        log = open(self.log_dir / f"server-{self.starts}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [str(self.binary), "serve"],
            env=self._env(bind),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        while True:
            left = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"the server did not say it listens; log: {self.log_dir}") from None
            if line is None:
                proc.wait()
                text = (self.log_dir / f"server-{self.starts}.log").read_text(errors="replace")
                if "in use" in text or "AddrInUse" in text:
                    raise _BindFailed()
                raise RuntimeError(f"the server exited ({proc.returncode}) before listening:\n{text[-3000:]}")
            if "listening on port" in line:
                self.port = int(line.rsplit(" ", 1)[1])
                self.proc = proc
                return

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        out = []
        for p in sorted(self.log_dir.glob("server-*.log")):
            out.append(p.read_text(errors="replace"))
        return "\n".join(out)


class _BindFailed(Exception):
    pass


# ----------------------------------------------------------------- proxy


class TcpProxy:
    """An asyncio TCP proxy run by a test: pass traffic, cut every live
    connection, refuse new ones (listener closed), or answer HTTP 503 to
    every new connection (a gateway refusing WebSocket upgrades)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode = "pass"  # pass | http503
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stalled: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.accepted = 0
        self.refused_http = 0

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port or 0, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "http503":
            self.refused_http += 1
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                await writer.drain()
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_w)
        self._pairs.add(pair)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    if pair in self._stalled:
                        continue  # a half-open connection: bytes vanish
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    w.close()

        t1 = asyncio.create_task(pipe(reader, up_w))
        t2 = asyncio.create_task(pipe(up_r, writer))
        self._tasks |= {t1, t2}
        try:
            await asyncio.gather(t1, t2, return_exceptions=True)
        finally:
            self._tasks -= {t1, t2}
            self._pairs.discard(pair)

    def cut(self) -> int:
        """Aborts every live connection (both sides see a reset); answers how many."""
        n = len(self._pairs)
        for a, b in list(self._pairs):
            a.transport.abort()
            b.transport.abort()
        self._pairs.clear()
        return n

    def stall(self) -> int:
        """Live connections stay open but carry nothing any more (a dead
        NAT mapping, a frozen peer); new connections pass."""
        self._stalled |= self._pairs
        return len(self._pairs)

    async def refuse(self) -> None:
        """Cuts every connection and closes the listener: connections are refused."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()

    async def restore(self) -> None:
        """Listens again on the same port."""
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.refuse()
        for t in list(self._tasks):
            t.cancel()


# --------------------------------------------------------------- helpers


async def wait_until(pred: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """For states that have no event to await (transport switched, ...)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def take(sub, n: int, timeout: float = 30.0) -> list:  # type: ignore[no-untyped-def]
    """The next ``n`` items of a subscription."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(out)} of {n} items: {[getattr(x, 'seq', x) for x in out]}")
        try:
            out.append(await sub.next(timeout=left))
        except TimeoutError:
            raise AssertionError(f"got {len(out)} of {n} items: {[getattr(x, 'seq', x) for x in out]}") from None
    return out


class HttpProxy:
    """A forward HTTP proxy run by a test, as a corporate proxy would be: it
    takes absolute-form requests (``GET http://host/path``, what httpx sends
    for ``http://`` through ``HTTP_PROXY``) and ``CONNECT host:port`` tunnels
    (what ``websockets`` asks of a proxy), and records each."""

    def __init__(self) -> None:
        self.port = 0
        self.seen: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> HttpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, _, rest = head.partition(b"\r\n")
            method, target, version = line.decode("latin-1").split(" ", 2)
            self.seen.append(f"{method} {target}")
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_r, up_w = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                u = urlsplit(target)
                up_r, up_w = await asyncio.open_connection(u.hostname, u.port or 80)
                path = u.path + (f"?{u.query}" if u.query else "")
                # One request per connection upstream: keep it simple.
                headers = b"\r\n".join(
                    h for h in rest.split(b"\r\n") if h and not h.lower().startswith((b"proxy-", b"connection:"))
                )
                up_w.write(f"{method} {path} {version}\r\n".encode("latin-1") + headers + b"\r\nConnection: close\r\n\r\n")
                await up_w.drain()

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(Exception):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                with contextlib.suppress(Exception):
                    dst.close()

            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        except Exception:
            with contextlib.suppress(Exception):
                writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
