"""A minimal stand-in for Keycloak's token endpoint: fixed answers over HTTP/1.1 keep-alive, nothing else.

Used where the figure must be the *bridge's* (or one HTTP client's) CPU alone: `bench/run.py`'s
bridge-only capacity run points the bridge at it instead of Keycloak, and `bench/outbound_clients.py`
times clients against it. It runs as its own process (pinned to the other core by the caller), so its
CPU is never charged to what is measured. It does little work per request: every POST gets a pre-made
token answer, every GET the discovery document.

    python -m bench.stub_upstream --port P [--answer-file token.json] [--users users.json] [--issuer URL]

`--users` maps each assertion subject (a TikTok open_id) to the Keycloak user id its token is for: the
answer to a JWT grant then carries that user's `sub`, as Keycloak's would. Without it every POST gets the
same answer, whose `sub` the bridge would take for a link moved to another account (it then forgets its
cached user id, and the next exchange of that user searches Keycloak's admin API, which this stub has
not): fine for one HTTP client timed alone, wrong for a bridge serving many users.

`GET /_stub/stats` answers the connections accepted and requests served, so a caller can check that
its client reused connections (a client opening one per request would show here, not in its CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import signal
from pathlib import Path
from urllib.parse import unquote_plus

# About the size of Keycloak 26's answer to the JWT grant with scope openid (access token, id token).
_FAKE_JWT = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." + "x" * 560 + "." + "s" * 342
DEFAULT_ANSWER = json.dumps(
    {
        "access_token": _FAKE_JWT,
        "expires_in": 300,
        "refresh_expires_in": 0,
        "token_type": "Bearer",
        "id_token": _FAKE_JWT[:400],
        "not-before-policy": 0,
        "scope": "openid profile email",
    },
    separators=(",", ":"),
).encode()
MAX_HEAD = 16 * 1024  # a request head bigger than this is not from a client we measure: drop it


def response(status: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n\r\n"
    )
    return head.encode() + body


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _with_subject(jwt: str, subject: str) -> str:
    """The same compact JWS with `sub` replaced (its signature no longer matches: nobody checks it)."""
    header, payload, signature = jwt.split(".")
    claims = {**json.loads(_b64decode(payload)), "sub": subject}
    encoded = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=")
    return f"{header}.{encoded.decode()}.{signature}"


def answers_by_subject(answer: bytes, users: dict[str, str]) -> dict[str, bytes]:
    """For each assertion subject, the token answer with its Keycloak user id as `sub`."""
    template = json.loads(answer)
    made = {}
    for open_id, user_id in users.items():
        one = dict(template)
        for name in ("access_token", "id_token"):
            if isinstance(one.get(name), str) and one[name].count(".") == 2:
                one[name] = _with_subject(one[name], user_id)
        made[open_id] = response("200 OK", json.dumps(one, separators=(",", ":")).encode())
    return made


def token_subject(jwt: str) -> str:
    """The `sub` of a compact JWS (read, not verified): whom a Keycloak token is for."""
    subject = json.loads(_b64decode(jwt.split(".")[1]))["sub"]
    assert isinstance(subject, str)
    return subject


def assertion_subject(body: bytes) -> str | None:
    """The `sub` of the form's `assertion` (read, not verified)."""
    start = body.find(b"assertion=")
    if start < 0:
        return None
    end = body.find(b"&", start)
    value = unquote_plus(body[start + 10 : end if end >= 0 else None].decode("ascii", "replace"))
    parts = value.split(".")
    if len(parts) != 3:  # not a compact JWS
        return None
    try:
        subject = json.loads(_b64decode(parts[1])).get("sub")
    except (ValueError, binascii.Error, AttributeError):
        return None
    return subject if isinstance(subject, str) else None


class Stats:
    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0


class StubProtocol(asyncio.Protocol):
    """Reads requests one after another from a keep-alive connection and answers each at once."""

    def __init__(self, answers: dict[bytes, bytes], stats: Stats, by_subject: dict[str, bytes]) -> None:
        self._answers = answers
        self._by_subject = by_subject
        self._stats = stats
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._stats.connections += 1

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        # Bounded: each pass consumes one whole request or stops; a buffer holds few requests.
        while self._transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._transport.close()
                return
            head = bytes(self._buffer[:end]).lower()
            length = 0
            if (at := head.find(b"\r\ncontent-length:")) >= 0:
                line_end = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : line_end if line_end >= 0 else None].strip())
            if len(self._buffer) < end + 4 + length:
                return  # the body is still arriving
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            self._stats.requests += 1
            method, target = head.split(b" ", 2)[:2]
            if target == b"/_stub/stats":
                body = json.dumps(
                    {"connections": self._stats.connections, "requests": self._stats.requests}
                ).encode()
                self._transport.write(response("200 OK", body))
            elif method == b"post":
                subject = assertion_subject(body) if self._by_subject else None
                self._transport.write(self._by_subject.get(subject or "", self._answers[b"POST"]))
            else:
                self._transport.write(self._answers[b"GET"])
            if b"\r\nconnection: close" in head:
                self._transport.close()
                return


async def serve(port: int, answer: bytes, issuer: str, users: dict[str, str] | None = None) -> None:
    stats = Stats()
    by_subject = answers_by_subject(answer, users or {})
    answers = {
        b"POST": response("200 OK", answer),
        b"GET": response("200 OK", json.dumps({"issuer": issuer}).encode()),
    }
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: StubProtocol(answers, stats, by_subject), "127.0.0.1", port, backlog=512
    )
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    async with server:
        await stopped.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--answer-file", type=Path, help="the token answer to serve (default: a synthetic one)"
    )
    parser.add_argument(
        "--users", type=Path, help="JSON object: assertion subject (open_id) -> Keycloak user id"
    )
    parser.add_argument(
        "--issuer", default="http://127.0.0.1/realms/app", help="issuer of the discovery document"
    )
    args = parser.parse_args()
    answer = args.answer_file.read_bytes() if args.answer_file else DEFAULT_ANSWER
    users = json.loads(args.users.read_text()) if args.users else None
    asyncio.run(serve(args.port, answer, args.issuer, users))


if __name__ == "__main__":
    main()
