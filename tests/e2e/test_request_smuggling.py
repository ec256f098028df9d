"""Request shapes that let a front proxy and the bridge disagree on where a request ends (request
smuggling, RFC 9112 sections 2.2, 5.2 and 6.1), sent over raw sockets to `python -m bridge serve`.

h11, the parser before llhttp, accepted all of them: it let Transfer-Encoding win over
Content-Length and kept the connection open, read a bare LF as a line end, and unfolded obs-fold
continuation lines. llhttp (httptools) refuses most of them itself but reads Transfer-Encoding on HTTP/1.0
as chunked. A proxy that reads any of them otherwise would forward a request of its own choosing hidden
in the body or in a header. The bridge refuses each with its JSON 400 and closes the connection, so
nothing pipelined after it is ever read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import httpx2
import pytest

from devstack.keycloak import free_port
from tests.e2e.test_connection_limits import connect, read_until_closed, still_serving

if TYPE_CHECKING:
    from collections.abc import Iterator

# Pipelined after every hostile request: if the server ever reads it, a second response comes back.
FOLLOWER = b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n"
REFUSED = {"error": "invalid_request", "error_description": "The request is not valid HTTP/1.1."}
AMBIGUOUS = {
    "error": "invalid_request",
    "error_description": "The request's length is ambiguous (Content-Length with Transfer-Encoding).",
}
# A chunked body that, read by Content-Length instead, leaves `GET /metrics` as the next request.
SMUGGLED_BODY = b"0\r\n\r\nGET /metrics HTTP/1.1\r\nHost: bridge\r\n\r\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`bridge serve` with nothing upstream: framing is judged before any route, and the one request that
    reaches the app is refused before TikTok or Keycloak would be called, so no stack is needed."""
    port = free_port()
    env = {
        **os.environ,
        "BRIDGE_TIKTOK_CLIENT_KEY": "framing-key",
        "BRIDGE_TIKTOK_CLIENT_SECRET": "framing-secret",
        "BRIDGE_KEYCLOAK_URL": "http://127.0.0.1:9",
        "BRIDGE_KEYCLOAK_REALM": "app",
        "BRIDGE_KEYCLOAK_CLIENT_ID": "tiktok-bridge",
        "BRIDGE_KEYCLOAK_CLIENT_SECRET": "framing-client-secret",
        "BRIDGE_ISSUER": f"http://127.0.0.1:{port}",
        "BRIDGE_DATA_DIR": str(tmp_path_factory.mktemp("framing")),
        "BRIDGE_RATE_LIMIT_ENABLED": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx2.get(f"{base}/healthz").status_code == 200:
                break
        except httpx2.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"bridge did not start: {process.communicate()[1].decode()[-2000:]}")
        time.sleep(0.1)
    yield base
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)


def exchange_raw(base: str, data: bytes) -> list[tuple[bytes, bytes]]:
    """Send `data` at once and return every (head, body) the server answers before it closes."""
    with connect(base) as sock:
        sock.sendall(data)
        received, _ = read_until_closed(sock)
    responses = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        length = next(
            (int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")),
            0,
        )
        responses.append((head, rest[:length]))
        received = rest[length:]
    return responses


def assert_refused_and_closed(responses: list[tuple[bytes, bytes]], expected: dict[str, str]) -> None:
    assert len(responses) == 1, [head.split(b"\r\n")[0] for head, _ in responses]
    head, body = responses[0]
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"connection: close" in head.lower()
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == expected


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n",
    ],
    ids=["cl-then-te", "te-then-cl"],
)
def test_content_length_with_transfer_encoding_is_refused_and_closed(served: str, framing: bytes) -> None:
    """Both length headers on one request: 400 and the connection closed, so the `GET /metrics` hidden in
    the body (by Content-Length's reading) and the pipelined request after it are never answered."""
    head = b"POST /token HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    request = head + framing % len(SMUGGLED_BODY) + b"\r\n" + SMUGGLED_BODY
    assert_refused_and_closed(exchange_raw(served, request + FOLLOWER), AMBIGUOUS)
    assert still_serving(served)


def test_transfer_encoding_on_http_1_0_is_refused_and_closed(served: str) -> None:
    """RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing; refused, closed."""
    request = b"POST /token HTTP/1.0\r\nHost: bridge\r\nTransfer-Encoding: chunked\r\n\r\n" + SMUGGLED_BODY
    assert_refused_and_closed(exchange_raw(served, request + FOLLOWER), AMBIGUOUS)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\nHost: bridge\n\n",
        b"GET /healthz HTTP/1.1\r\nHost: bridge\nX-Hidden: 1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nX-Last: 1\n\r\n",
    ],
    ids=["all-bare-lf", "one-bare-lf", "bare-lf-before-blank-line"],
)
def test_bare_lf_line_endings_are_refused_and_closed(served: str, request_bytes: bytes) -> None:
    """A header block with any line ended by LF alone is refused: a proxy that splits lines on CRLF only
    sees one header where the bridge would see two."""
    assert_refused_and_closed(exchange_raw(served, request_bytes + FOLLOWER), REFUSED)
    assert still_serving(served)


@pytest.mark.parametrize("fold", [b" ", b"\t"], ids=["space", "tab"])
def test_obs_fold_header_lines_are_refused_and_closed(served: str, fold: bytes) -> None:
    """RFC 9112 section 5.2: a server must reject obs-fold (a header line starting with white space)
    unless it is in a message/http body; the bridge answers 400 and closes."""
    request = b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nX-A: 1\r\n" + fold + b"Transfer-Encoding: x\r\n\r\n"
    assert_refused_and_closed(exchange_raw(served, request + FOLLOWER), REFUSED)


def test_well_formed_pipelined_requests_are_still_answered(served: str) -> None:
    """The checks refuse only the hostile shapes: a CRLF request with a Content-Length body and a
    request pipelined after it on the same connection are both answered, and the connection stays open
    until the client's `Connection: close`."""
    form = b"grant_type=x"
    first = (
        b"POST /token HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(form), form)
    )
    last = b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nConnection: close\r\n\r\n"
    responses = exchange_raw(served, first + last)
    assert [head.split(b"\r\n")[0] for head, _ in responses] == [
        b"HTTP/1.1 400 Bad Request",  # unsupported_grant_type: the app read the request
        b"HTTP/1.1 200 OK",
    ]
    assert json.loads(responses[0][1])["error"] == "unsupported_grant_type"


def test_an_upgrade_request_is_answered_as_http_1_1_and_closed(served: str) -> None:
    """No protocol is switched to (the bridge has no WebSockets or h2c): a request asking to upgrade, as
    curl's `--http2` does over cleartext, is answered as plain HTTP/1.1 and the connection closed after
    it, since the parser reads nothing more from a connection asking to switch. What was sent behind it
    is never answered."""
    request = (
        b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
    )
    responses = exchange_raw(served, request + FOLLOWER)
    assert len(responses) == 1, [head.split(b"\r\n")[0] for head, _ in responses]
    head, body = responses[0]
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"connection: close" in head.lower()
    assert json.loads(body)["status"] == "ok"
    assert still_serving(served)


def test_an_upgrade_request_with_a_body_is_refused_and_closed(served: str) -> None:
    """The parser would hand the body of a request asking to upgrade to the new protocol and end the
    message at its headers: served, a token request would reach the app without its form. Refused
    instead, with a reason, and closed."""
    form = b"grant_type=x"
    request = (
        b"POST /token HTTP/1.1\r\nHost: bridge\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(form), form)
    )
    assert_refused_and_closed(
        exchange_raw(served, request + FOLLOWER),
        {
            "error": "invalid_request",
            "error_description": (
                "A request asking to switch protocols cannot carry a body here (no upgrade is served)."
            ),
        },
    )
    assert still_serving(served)
