"""The README's examples run as written, against the real server.

Each ```python block of README.md is run in a fresh process on a fresh database
with only what a reader changes: the server's URL and secret (the README says
``http://127.0.0.1:8080`` and ``change-me``), and the two helpers it leaves to
the reader (``fetch_token``: where the app gets its viewers' tokens;
``rebuild_from``: what it does with a snapshot).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
from _support import JWT_SECRET, ORG, PKG_ROOT

README = (PKG_ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)

PRELUDE = textwrap.dedent(
    f"""
    from roomcast import mint_token

    async def fetch_token() -> str:
        return mint_token({JWT_SECRET!r}, org={ORG!r}, sub="reader", ttl=600)

    def rebuild_from(state: object) -> None:
        print("rebuilt from", state)
    """
)


def _run(block: str, url: str, epilogue: str = "", timeout: float = 60, until: str | None = None) -> str:
    code = block.replace("http://127.0.0.1:8080", url).replace('"change-me"', repr(JWT_SECRET))
    script = PRELUDE + "\n" + code + "\n" + epilogue
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PKG_ROOT)
    if until is None:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"the README block failed:\n{code}\n{err}"
        return out
    # A block that follows a room for ever: read until `until` shows, then stop it.
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if until in line:
                break
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert any(until in line for line in lines), f"never printed {until!r}:\n{''.join(lines)}\n{err}"
    return "".join(lines)


def test_the_readme_has_its_three_examples() -> None:
    assert len(BLOCKS) == 3, [b.splitlines()[0] for b in BLOCKS]


def test_publish_example(server) -> None:
    out = _run(BLOCKS[0], server.url)
    assert "status=<RoomStatus.COMPLETED" in out or "completed" in out, out
    assert "head=5" in out, out


def test_messages_example(server) -> None:
    out = _run(BLOCKS[1], server.url, "import asyncio\nasyncio.run(show())")
    assert out.split("\n")[:2] == ["1 notes by me (edited)", "3 Ship it. (edited)"], out


def test_subscribe_example(server) -> None:
    # Something to follow first: the publish example's room.
    _run(BLOCKS[0], server.url)
    out = _run(BLOCKS[2], server.url, until="meeting.completed")
    lines = [line.split()[:2] for line in out.splitlines()]
    assert lines == [["1", "transcript.segment"], ["2", "summary.chunk"], ["3", "summary.chunk"], ["4", "summary.chunk"], ["5", "meeting.completed"]], out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
