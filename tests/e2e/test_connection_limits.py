"""Limits of the served process against slow and oversized clients, over real sockets.

The bridge runs as `python -m bridge serve` with one-second header and body timeouts, so each case
takes about a second; the defaults are ten seconds.
"""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx2
import pytest

from tests.conftest import start_bridge_process

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devstack.threaded import ThreadedServer
    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import Stack

TIMEOUT = 1.0
FORM = (
    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
    "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&subject_token=act.x"
)


@pytest.fixture(scope="module")
def served(stack: Stack) -> Iterator[str]:
    process, base = start_bridge_process(
        stack,
        BRIDGE_CLIENT_HEADER_TIMEOUT=str(TIMEOUT),
        BRIDGE_CLIENT_BODY_TIMEOUT=str(TIMEOUT),
        BRIDGE_RATE_LIMIT_ENABLED="false",
    )
    yield base
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)


TOO_LARGE = {"error": "invalid_request", "error_description": "The request headers are too large."}


def connect(base: str) -> socket.socket:
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.settimeout(10)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started, received = time.monotonic(), b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - started


def read_response(sock: socket.socket) -> bytes:
    """One whole response (headers and Content-Length body) from a kept-alive connection."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))[15:]
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def still_serving(base: str) -> bool:
    return httpx2.get(f"{base}/healthz", timeout=5).status_code == 200


def test_a_connection_that_sends_nothing_is_closed(served: str) -> None:
    with connect(served) as sock:
        received, waited = read_until_closed(sock)
    assert received == b""
    assert TIMEOUT * 0.8 < waited < TIMEOUT + 3


def test_headers_trickled_byte_by_byte_are_cut_off(served: str) -> None:
    """Slowloris: a byte of header every 0.2 s would keep uvicorn's connection open for ever."""
    request = b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nX-Slow: " + b"a" * 40
    started = time.monotonic()
    with connect(served) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for byte in request:
                sock.send(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - started > TIMEOUT + 3:
                    break
        received, _ = read_until_closed(sock)
    assert received == b""
    assert time.monotonic() - started < TIMEOUT + 4
    assert still_serving(served)


def test_a_kept_alive_connection_may_idle_briefly_between_requests(served: str) -> None:
    """The header deadline restarts after each response: two requests with a pause both succeed."""
    with connect(served) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")
            time.sleep(TIMEOUT / 2)


def test_a_slow_body_is_answered_408_and_the_connection_closed(served: str) -> None:
    head = (
        "POST /token HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(FORM)}\r\n\r\n"
    )
    with connect(served) as sock:
        sock.sendall(head.encode() + FORM[:10].encode())  # then nothing more
        received, waited = read_until_closed(sock)
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    assert b"connection: close" in rest.lower()
    assert b'"error":"invalid_request"' in rest.replace(b" ", b"")
    assert waited < TIMEOUT + 3
    assert still_serving(served)


def test_oversized_headers_are_refused_and_the_server_keeps_serving(served: str) -> None:
    """Over 16 KiB of headers, or over 64 headers: the same JSON 431 whether the block arrives at once
    (checked by the app) or trickles in pieces (counted by `server.BridgeHttpProtocol`: llhttp has no
    limit of its own, and uvicorn's answer was a plain-text 400)."""
    response = httpx2.post(f"{served}/token", headers={"X-Big": "a" * 20_000}, timeout=10)
    assert response.status_code == 431
    assert response.json() == TOO_LARGE
    many = {f"X-H{i}": "1" for i in range(70)}
    assert httpx2.get(f"{served}/healthz", headers=many, timeout=10).status_code == 431
    assert httpx2.get(f"{served}/healthz", headers={"X-Fine": "a" * 8_000}, timeout=10).status_code == 200

    with connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n")
        pieces = 0
        # Header lines of 1 KiB in separate writes, never ending them, until the server answers.
        while pieces < 100 and not select.select([sock], [], [], 0.05)[0]:
            try:
                sock.sendall(b"X-Piece: " + b"a" * 1024 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            pieces += 1
        received, _ = read_until_closed(sock)
    assert 15 <= pieces < 40  # refused at about 16 KiB, not by the (later) header deadline
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), head
    assert json.loads(body) == TOO_LARGE
    assert still_serving(served)


def test_a_request_that_is_not_http_gets_a_json_400(served: str) -> None:
    """Bytes that are no HTTP/1.1 request get the bridge's error body, not uvicorn's plain text."""
    with connect(served) as sock:
        sock.sendall(b"HELLO THERE\r\n\r\n")
        received, _ = read_until_closed(sock)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == {
        "error": "invalid_request",
        "error_description": "The request is not valid HTTP/1.1.",
    }
    assert still_serving(served)


def test_a_slow_upstream_does_not_trip_the_client_timeouts(
    stack: Stack, emulator: TikTokEmulator, tiktok_server: ThreadedServer, flushed_redis: None
) -> None:
    """The deadlines bound the client's bytes, not the bridge's own work: an exchange that waits 2 s
    for TikTok (twice the timeouts) still answers."""
    process, base = start_bridge_process(
        stack,
        BRIDGE_TIKTOK_API_URL=tiktok_server.url,
        BRIDGE_CLIENT_HEADER_TIMEOUT=str(TIMEOUT),
        BRIDGE_CLIENT_BODY_TIMEOUT=str(TIMEOUT),
    )
    user = emulator.create_user()
    emulator.set_latency(2 * TIMEOUT)
    try:
        response = httpx2.post(
            f"{base}/token",
            content=FORM.replace("act.x", emulator.issue_access_token(user.open_id)),
            headers={"content-type": "application/x-www-form-urlencoded"},
            timeout=30,
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert response.status_code == 200, response.text
