"""The served bridge's memory under a flood of large, slow bodies (SECURITY.md, "Memory without bound").

The outside test pushed one worker from 85 MB to 1.53 GB with 10,000 connections each sending 65,000
of a declared 65,500 body bytes, unsigned, to the webhook. Here 2,000 loopback connections do the same to
the webhook and to `/token` at once, and the worker's peak resident set (VmHWM, which no sampling can
miss) must stay under 200 MB. Every answer that arrives must be one of the bridge's JSON errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx2
import pytest

from tests.conftest import start_bridge_process

if TYPE_CHECKING:
    from tests.conftest import Stack

CONNECTIONS = 2_000
DECLARED = 65_500
SENT = 65_000  # then nothing more: the body never completes
RSS_BOUND_KB = 200 * 1024
BODY_TIMEOUT = 3.0
# Each connection waits at most this long for an answer; the whole flood is bounded by FLOOD_DEADLINE.
ANSWER_WAIT = 15.0
FLOOD_DEADLINE = 30.0
# Connections the clients gave up on may still wait in the listen backlog: the worker accepts and
# answers them before a new request's turn comes.
RECOVERY = 20.0
PATHS = ("/webhooks/tiktok", "/token")
JSON_ERRORS = {"invalid_request", "temporarily_unavailable"}


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def _enough_open_files(needed: int) -> None:
    """Raise this process's open-file limit (inherited by the bridge it starts) if it is below `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"open-file limit {hard} is below the {needed} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def _slow_body(host: str, port: int, path: str) -> bytes | None:
    """Send headers and most of a large body, never the rest; return what the server answered (None if
    the connection was refused or reset before any answer)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {DECLARED}\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    received = b""
    # A bare socket, created before any await and closed in `finally`: a stream cancelled while it
    # connects would be left to the garbage collector, which warns once the loop is closed.
    sock = socket.socket()
    sock.settimeout(0)  # non-blocking, as the event loop needs
    try:
        async with asyncio.timeout(ANSWER_WAIT):
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, head + b"a" * SENT)
            while chunk := await loop.sock_recv(sock, 65536):  # until the server closes
                received += chunk
    except (OSError, TimeoutError):
        pass
    finally:
        sock.close()
    return received or None


def _serving_again(base: str) -> float:
    """Seconds until /healthz answers 200 again; fails past RECOVERY."""
    started = time.monotonic()
    while time.monotonic() - started < RECOVERY:
        with contextlib.suppress(httpx2.TransportError):
            if httpx2.get(f"{base}/healthz", timeout=2).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"not serving {RECOVERY} s after the flood")


def _answers_of(raw: list[bytes | None]) -> dict[str, int]:
    """Count answers by status and check that each is one of the bridge's JSON errors."""
    counts: dict[str, int] = {}
    for received in raw:
        if not received:
            counts["no answer"] = counts.get("no answer", 0) + 1
            continue
        head, _, body = received.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode()
        counts[status] = counts.get(status, 0) + 1
        assert b"content-type: application/json" in head.lower(), head
        assert json.loads(body)["error"] in JSON_ERRORS, body
    return counts


def test_a_flood_of_large_slow_bodies_keeps_the_worker_under_200_mb(stack: Stack, tmp_path: Path) -> None:
    """2,000 concurrent connections each sending 65,000 of 65,500 body bytes to the webhook and /token keep
    one worker's peak RSS under 200 MB, and the bridge serves normally afterwards."""
    _enough_open_files(CONNECTIONS * 2 + 256)
    # A log file, not the pipe: thousands of log lines would fill it and block the server.
    process, base = start_bridge_process(
        stack,
        tmp_path / "bridge.log",
        BRIDGE_CLIENT_BODY_TIMEOUT=str(BODY_TIMEOUT),
        BRIDGE_RATE_LIMIT_ENABLED="false",
    )
    parts = urlsplit(base)
    assert parts.hostname is not None
    assert parts.port is not None
    host, port = parts.hostname, parts.port
    try:
        before = peak_rss_kb(process.pid)

        async def flood() -> list[bytes | None]:
            async with asyncio.timeout(FLOOD_DEADLINE):
                return await asyncio.gather(
                    *(_slow_body(host, port, PATHS[i % len(PATHS)]) for i in range(CONNECTIONS))
                )

        started = time.monotonic()
        answers = _answers_of(asyncio.run(flood()))
        took = time.monotonic() - started
        recovered = _serving_again(base)
        peak = peak_rss_kb(process.pid)
        print(  # noqa: T201 - the figures SECURITY.md quotes
            f"\npeak RSS {before // 1024} MB -> {peak // 1024} MB over {CONNECTIONS} connections "
            f"in {took:.1f} s, serving again {recovered:.1f} s later; answers {answers}"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            process.communicate(timeout=30)
    assert peak < RSS_BOUND_KB, f"peak RSS {peak // 1024} MB"
    # Not all refused: the bridge did its work for those it took (408 once the body timed out).
    assert answers.get("408", 0) + answers.get("413", 0) + answers.get("401", 0) > 0, answers


def test_past_the_concurrency_limit_a_request_gets_the_json_503_and_the_limit_frees_up(stack: Stack) -> None:
    """With `--limit-concurrency 4` and four connections held open, the next request is answered the
    bridge's JSON 503 (Retry-After, Connection: close), not uvicorn's plain text; once they close it is
    served again."""
    process, base = start_bridge_process(stack, args=["--limit-concurrency", "4"])
    parts = urlsplit(base)
    address = (parts.hostname or "", parts.port or 0)
    try:
        held = [socket.create_connection(address, timeout=10) for _ in range(4)]
        time.sleep(0.2)  # accepted by the server
        with socket.create_connection(address, timeout=10) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
            received = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := extra.recv(65536):
                    received += chunk
        for sock in held:
            sock.close()
        time.sleep(0.2)
        after = httpx2.get(f"{base}/healthz", timeout=10)
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            process.communicate(timeout=30)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), head
    assert b"connection: close" in head.lower()
    assert b"retry-after: 1" in head.lower()
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == {
        "error": "temporarily_unavailable",
        "error_description": "The server is busy; retry later.",
    }
    assert after.status_code == 200
