"""Running the app under uvicorn: the settings of `bridge serve`, and what uvicorn's HTTP/1.1 protocol
lacks for a server on the public internet.

1. TCP_NODELAY. With `--workers N` uvicorn binds the listening socket itself as
   `socket.socket(family=...)`, whose protocol number is 0; asyncio only sets TCP_NODELAY on sockets whose
   protocol is IPPROTO_TCP, so every accepted connection keeps Nagle's algorithm. A response is written as
   headers, then body: the second write waits for the client's delayed ACK, and every request took 40 ms
   more (measured: 44 ms for a 405 with two workers, 0.17 ms with one).
2. A deadline for request headers. uvicorn's keep-alive timer is cancelled by any byte received, and a
   new connection has no timer at all, so a client trickling header bytes (slowloris) holds a connection
   for ever. Headers must now be complete within `header_timeout` of connecting or of the last response.
   (A slow body is bounded in the app: `endpoints.read_body` answers 408.)
3. JSON answers to what cannot be parsed. uvicorn answers a malformed request with a plain-text 400,
   and llhttp (httptools' parser, uvicorn's fast protocol) has no limit of its own on the size of a
   header block: it keeps a header arriving in pieces for as long as it grows. Here the bytes received
   while a request line and headers are awaited are counted, and past MAX_HEADER_BYTES the connection
   gets the JSON 431 and is closed; a block that arrives complete is checked by the app (431 too). What
   llhttp refuses gets the bridge's `invalid_request` 400 instead of uvicorn's text.
4. Request smuggling shapes, refused with that JSON 400, `Connection: close`, and nothing pipelined
   behind them read (RFC 9112 sections 2.2, 5.2, 6.1). llhttp in its strict default refuses
   Content-Length beside Transfer-Encoding, bare LF line ends and obs-fold lines; Transfer-Encoding on
   HTTP/1.0, which llhttp would read as chunked, is refused here (`on_headers_complete`). h11, the
   parser before it, accepted all four and needed a checking subclass; llhttp parses a request in C
   for about a tenth of the bridge's CPU per exchange less (bench/README.md). Mobile clients and
   proxies never send these shapes; `tests/e2e/test_request_smuggling.py` sends each. No protocol is
   ever switched to: a request asking to upgrade (h2c, say) is answered as HTTP/1.1 and the connection
   closed after it, and one that also carries a body is refused (llhttp would hand its body to the
   new protocol, and the app would see an empty form).
5. Bounded memory whatever clients send (without these bounds 10,000 connections with 65 KB bodies took
   one worker from 85 MB to 1.53 GB). Per connection uvicorn buffers up to 64 KiB of body before it stops
   reading, plus the whole of one `recv` (asyncio reads 256 KiB at a time), and nothing caps the connections.
   uvicorn's own `limit_concurrency` does not cap them either: every connection is accepted and its
   headers read, and only then is it answered a plain-text 503. Here each worker holds at most
   `limit_concurrency` connections (and as many running requests); the next ones, up to as many again,
   get the bridge's JSON 503 with `Connection: close` as soon as their request line and headers are in,
   their body never read, and beyond that a connection is closed at once, unread. Reads are 16 KiB at a
   time and a body stops being read past 16 KiB until the app asks for more, so a connection holds
   tens of KiB at most. Measured by `tests/e2e/test_memory_under_load.py`.
"""

from __future__ import annotations

import functools
import json
import socket
import sys
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors.multiprocess import Multiprocess

from bridge.domain.errors import HeadersTooLarge, InvalidRequest, Overloaded
from bridge.observability.metrics import OVERLOAD_REFUSALS
from bridge.web.app import MAX_HEADER_BYTES

if TYPE_CHECKING:
    import asyncio

    from starlette.types import ASGIApp, Receive, Scope, Send

    from bridge.domain.errors import OAuthError


# llhttp's own words when a request carries both Content-Length and Transfer-Encoding, in either order
# ("Content-Length can't be present with Transfer-Encoding", and the other way round).
_LENGTH_CONFLICT = "can't be present with"
UPGRADE_WITH_BODY = "A request asking to switch protocols cannot carry a body here (no upgrade is served)."
AMBIGUOUS_LENGTH = "The request's length is ambiguous (Content-Length with Transfer-Encoding)."
# Point 5. One worker sustains about 250 warm exchanges a second and saturates from 8 to 32 concurrent
# requests (bench/README.md): 256 in flight is already a second of queue, so more only holds memory.
DEFAULT_LIMIT_CONCURRENCY = 256
# Bytes read from a socket at once (asyncio's default is 256 KiB), and the body bytes buffered for a
# request before reading stops until the app asks for more (uvicorn's is 64 KiB). Every body the bridge
# accepts is at most 16 KiB (`rfc6749.MAX_BODY_BYTES`).
RECEIVE_CHUNK_BYTES = 16 * 1024
BODY_HIGH_WATER = 16 * 1024


class _CoalescingTransport:
    """The connection's transport for uvicorn's writes, joining the writes of one event-loop step into one.

    uvicorn writes an answer in two (the status line and headers, then the body), each a `send` system
    call, and a system call costs here about what a Redis command's Python side does: the second was 3 %
    of a warm exchange's CPU (py-spy, bench/README.md). Writes are kept until the end of the current
    loop step (`call_soon`), so what one step writes goes out at once and nothing waits longer than
    that: a `100 Continue`, written before the app reads the body, still leaves before the body is read.
    Closing or aborting writes (or drops) what is kept first; everything else is the transport's own.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._kept: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._kept:
            self._loop.call_soon(self._flush)
        self._kept.append(bytes(data))

    def _flush(self) -> None:
        if not self._kept:
            return
        data = self._kept[0] if len(self._kept) == 1 else b"".join(self._kept)
        self._kept.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._kept.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - whatever the transport has
        return getattr(self._transport, name)


class _Serving:
    """Requests this worker process is serving now (one event loop per process: no lock needed)."""

    count = 0


_serving = _Serving()


class BridgeHttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        *args: Any,  # noqa: ANN401 - uvicorn's own arguments
        header_timeout: float = 10.0,
        limit_concurrency: int | None = DEFAULT_LIMIT_CONCURRENCY,
        **kwargs: Any,  # noqa: ANN401
    ) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        # Point 3: bytes received while waiting for a request line and headers (llhttp has no limit).
        self._header_bytes = 0
        self._headers_in = False
        self._refusal: str | None = None
        # Point 5: uvicorn's check (and its plain-text 503) is replaced by ours, which also caps connections.
        self.limit_concurrency = None
        self._limit = limit_concurrency
        self._overloaded = False
        self._served_app: ASGIApp = self.app
        self.app = self._app_or_refusal

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in {socket.AF_INET, socket.AF_INET6}:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(transport, "max_size"):
            # asyncio's selector transport reads `max_size` bytes per recv (256 KiB): whole chunks stay
            # buffered per connection until the app reads them. uvloop (the loop `serve` uses where it
            # is installed) has no such attribute: it reads into one buffer shared by the loop and hands
            # over a copy of what arrived, so a connection keeps only what its client sent, and reading
            # stops past BODY_HIGH_WATER as below.
            transport.max_size = RECEIVE_CHUNK_BYTES
        super().connection_made(transport)
        if self._limit is not None and len(self.connections) > self._limit:
            if len(self.connections) > 2 * self._limit:
                # A flood: nothing of it is read or kept; its bytes stay in the kernel until the reset.
                OVERLOAD_REFUSALS.labels("closed").inc()
                transport.abort()
                return
            # Answered 503 once its headers are in (bounded by MAX_HEADER_BYTES and the header deadline).
            self._overloaded = True
        # Set after uvicorn's own set-up, which keeps the real transport for its flow control.
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        self._start_header_timer()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if not self._headers_in:
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol to switch to (no WebSockets here): the request is answered as plain HTTP/1.1,
            # and the connection closed after it, as llhttp reads nothing more from it.
            if self.cycle is not None:
                self.cycle.keep_alive = False
            return
        except httptools.HttpParserError as exc:
            self._refuse(self._refusal_for(exc))
            return
        if not self._headers_in and self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(HeadersTooLarge(detail=f"{self._header_bytes} bytes of incomplete headers"))
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and len(cycle.body) > BODY_HIGH_WATER:
            # uvicorn pauses only past 64 KiB; reading resumes when the app asks for the body.
            self.flow.pause_reading()

    def on_headers_complete(self) -> None:
        self._headers_in = True
        self._header_bytes = 0
        if self.parser.get_http_version() == "1.0" and any(
            name == b"transfer-encoding" for name, _ in self.headers
        ):
            # RFC 9112 section 6.1: faulty framing. llhttp would read it as chunked.
            self._refusal = AMBIGUOUS_LENGTH
            raise _FramingRefused
        if self.parser.should_upgrade() and _has_body(self.headers):
            # llhttp hands everything after the headers of an upgrade request to the new protocol, body
            # included, and ends the message there: served, it would reach the app as an empty body.
            self._refusal = UPGRADE_WITH_BODY
            raise _FramingRefused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._headers_in = False

    def _refusal_for(self, exc: httptools.HttpParserError) -> OAuthError:
        framing = self._refusal
        if framing is None and _LENGTH_CONFLICT in str(exc):
            framing = AMBIGUOUS_LENGTH
        if framing is not None:
            return InvalidRequest(framing)
        return InvalidRequest("The request is not valid HTTP/1.1.")

    async def _app_or_refusal(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Requests the app is serving, refusals not counted (uvicorn's `tasks` counts both, so a burst
        # of refusals made the connections within the limit refuse too).
        busy = self._limit is not None and _serving.count >= self._limit
        if not (self._overloaded or busy):
            _serving.count += 1
            try:
                await self._served_app(scope, receive, send)
            finally:
                _serving.count -= 1
            return
        OVERLOAD_REFUSALS.labels("answered").inc()
        refusal = Overloaded(retry_after=1)
        body = json.dumps(refusal.body()).encode()
        # `Connection: close` makes uvicorn close after the answer, leaving the body unread.
        await send(
            {"type": "http.response.start", "status": refusal.status_code, "headers": _headers(refusal, body)}
        )
        await send({"type": "http.response.body", "body": body})

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        self._cancel_header_timer()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self._header_timeout, self._headers_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _refuse(self, refusal: OAuthError) -> None:
        """Answer what cannot be served as a request with the bridge's own error shape, and close."""
        # The one error shape (errors.OAuthError), written by hand only because there is no app here yet.
        body = json.dumps(refusal.body()).encode()
        head = [
            b"HTTP/1.1 %d %s\r\n" % (refusal.status_code, HTTPStatus(refusal.status_code).phrase.encode())
        ]
        head.extend(name + b": " + value + b"\r\n" for name, value in _headers(refusal, body))
        self.transport.write(b"".join(head) + b"\r\n" + body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:  # noqa: ARG002 - uvicorn's fixed text, replaced
        self._refuse(InvalidRequest("The request is not valid HTTP/1.1."))

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        # A request in progress has its headers; only a connection waiting for (the rest of) a request
        # line and headers is closed. There is no request to answer, so nothing is sent.
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in {b"", b"0"})
        for name, value in headers
    )


class _FramingRefused(Exception):
    """Raised in a parser callback to stop parsing: llhttp reports it as an HttpParserError."""


def _headers(refusal: OAuthError, body: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of an error answered by the protocol itself; the connection is always closed."""
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(
            (name.lower().encode(), value.encode())
            for name, value in refusal.headers().items()
            if name.lower() != "connection"  # closed in every case
        ),
        (b"connection", b"close"),
    ]


def serve(
    *,
    host: str,
    port: int,
    workers: int,
    forwarded_allow_ips: str | None,
    header_timeout: float = 10.0,
    limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY,
    admin_port: int = 0,
) -> None:
    """Serve the public listener on `port` and, unless `admin_port` is 0, the admin listener (metrics,
    detailed readiness) on `admin_port`: both sockets go to every worker, and the app tells them apart by
    the local port (`app.ListenerMiddleware`)."""
    config = uvicorn.Config(
        "bridge.web.app:serve_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # A partial of a module-level class: it survives the pickling that starts worker processes.
        http=functools.partial(  # type: ignore[arg-type]
            BridgeHttpProtocol, header_timeout=header_timeout, limit_concurrency=limit_concurrency
        ),
        # No WebSockets here: an Upgrade request is answered as plain HTTP/1.1.
        ws="none",
        timeout_keep_alive=5,  # idle keep-alive connections (uvicorn's default, stated)
        # uvloop where it is installed (a dependency everywhere but Windows), else asyncio's own loop:
        # a warm exchange costs the bridge about 7 % less CPU on uvloop (bench/README.md).
        loop="auto",
        log_config=None,  # keep our JSON logging
        # X-Forwarded-For is believed only from proxies named by the operator; by default from nobody
        # (uvicorn trusts 127.0.0.1 by default, and a local proxy passing the header through would let
        # clients pick their own rate-limit bucket).
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        timeout_graceful_shutdown=20,
        # A new worker answers the supervisor's health ping only once it has imported the app. uvicorn's
        # 5 s was too short on a busy host: workers were killed and respawned in a loop and
        # `--workers 2` never served (found by the benchmark beside a test run).
        timeout_worker_healthcheck=60,
        server_header=False,
    )
    sockets = [config.bind_socket()]
    if admin_port:
        sockets.append(_bind(host, admin_port))
    if config.workers > 1:
        Multiprocess(config, sockets=sockets).run()
        return
    server = uvicorn.Server(config)
    server.run(sockets=sockets)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket for the admin listener, bound like uvicorn binds the public one."""
    sock = socket.socket(family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        sys.exit(f"cannot listen on {host}:{port} (admin listener): {exc.strerror}")
    sock.set_inheritable(True)
    return sock
