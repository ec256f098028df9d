"""The httpx2 transport over aiohttp (`bridge.aiohttp_transport`) against a real HTTP server on a loopback
port: what goes on the wire (byte for byte what httpx2's own transport sends), what comes back (status,
repeated headers, a streamed and still-encoded body), and every failure as the httpx2 exception the
TikTok and Keycloak clients map."""

from __future__ import annotations

import asyncio
import gc
import gzip
import socket
import warnings
from typing import TYPE_CHECKING

import httpx2
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bridge.domain.errors import BridgeError
from bridge.factory import Resources
from bridge.outbound.aiohttp_transport import AiohttpTransport, _client_timeout
from bridge.web.app import create_app
from devstack.keycloak import free_port
from tests.unit.scripted_upstream import Script, ScriptedUpstream, answer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from bridge.settings import Settings
    from tests.unit.fake_token_endpoint import FakeTokenEndpoint

USER_AGENT = "tiktok-keycloak-bridge/0.1"
TIMEOUT = httpx2.Timeout(0.5)


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    """A client shaped like the bridge's (`Resources.http`) over the transport under test."""
    async with httpx2.AsyncClient(
        transport=AiohttpTransport(), headers={"User-Agent": USER_AGENT}, timeout=TIMEOUT
    ) as client:
        yield client


async def test_status_headers_and_body_come_back_as_sent(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """Status, reason, HTTP version, every header in order (repeated ones too) and the body reach httpx2."""
    headers = (("Content-Type", "application/json"), ("X-Multi", "a"), ("X-Multi", "b"), ("Location", "/u/1"))
    upstream.scripts["/users"] = Script(parts=(answer("201 Created", b'{"id": "u-1"}', headers),))

    response = await http.post(f"{upstream.url}/users", json={"username": "x"})

    assert response.status_code == 201
    assert response.reason_phrase == "Created"
    assert response.http_version == "HTTP/1.1"
    assert response.headers.get_list("X-Multi") == ["a", "b"]
    assert response.headers.raw == [
        (b"Content-Type", b"application/json"),
        (b"X-Multi", b"a"),
        (b"X-Multi", b"b"),
        (b"Location", b"/u/1"),
        (b"Content-Length", b"13"),
    ]
    assert response.json() == {"id": "u-1"}


REQUESTS: dict[str, Callable[[httpx2.AsyncClient, str], Awaitable[httpx2.Response]]] = {
    "GET with a query and a bearer token": lambda c, url: c.get(
        f"{url}/v2/user/info/",
        params={"fields": "open_id,union_id"},
        headers={"Authorization": "Bearer act.x"},
    ),
    "POST of a form": lambda c, url: c.post(
        f"{url}/v2/oauth/token/", data={"code": "c/ü", "grant_type": "authorization_code"}
    ),
    "POST of JSON": lambda c, url: c.post(
        f"{url}/admin/users", json={"username": "tiktok_x", "enabled": True}
    ),
    "PUT of bytes": lambda c, url: c.put(f"{url}/admin/users/u-1", content=b"{}"),
    "POST without a body": lambda c, url: c.post(f"{url}/logout"),
    "a repeated header": lambda c, url: c.get(
        url, headers=[("X-Forwarded-For", "a"), ("X-Forwarded-For", "b")]
    ),
    "an encoded path": lambda c, url: c.get(f"{url}/users/a%2Fb/x%20y?q=%C3%BC"),
}


@pytest.mark.parametrize("send", REQUESTS.values(), ids=REQUESTS.keys())
async def test_requests_go_out_byte_for_byte_as_over_httpx2s_own_transport(
    send: Callable[[httpx2.AsyncClient, str], Awaitable[httpx2.Response]],
    http: httpx2.AsyncClient,
    upstream: ScriptedUpstream,
) -> None:
    """Request line, headers (httpx2's, in its order and case, none added by aiohttp) and body are the
    bytes httpx2's default transport (httpcore2) sends for the same request."""
    reference = ScriptedUpstream()
    await reference.start()
    try:
        async with httpx2.AsyncClient(headers={"User-Agent": USER_AGENT}, timeout=TIMEOUT) as default:
            await send(default, reference.url)
        await send(http, upstream.url)
    finally:
        await reference.stop()
    assert upstream.heads() == reference.heads()
    assert len(upstream.requests) == 1


async def test_a_bodyless_delete_is_the_one_difference_on_the_wire(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """aiohttp announces an empty body on a DELETE (`Content-Length: 0`) where httpx2 sends no length;
    the rest is the same."""
    await http.delete(f"{upstream.url}/admin/users/u-1")
    head = upstream.heads()[0]
    assert head == (
        b"DELETE /admin/users/u-1 HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nAccept: */*\r\n"
        b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
        b"User-Agent: tiktok-keycloak-bridge/0.1\r\nContent-Length: 0\r\n\r\n"
    )


async def test_headers_a_request_drops_are_not_added_back(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """A request without User-Agent, Accept or Accept-Encoding goes without them: aiohttp adds none."""
    request = http.build_request("POST", f"{upstream.url}/x", content=b"raw")
    for name in ("User-Agent", "Accept", "Accept-Encoding"):
        del request.headers[name]
    await http.send(request)
    assert upstream.heads() == [
        b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nraw"
    ]


async def test_a_body_of_unknown_length_goes_with_its_length(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """A streamed request body (announced by httpx2 as chunked) is read whole and sent with its length."""

    async def parts() -> AsyncIterator[bytes]:
        yield b"a=1"
        yield b"&b=2"

    await http.post(f"{upstream.url}/form", content=parts())
    head, _, body = upstream.requests[0].partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head
    assert b"\r\nContent-Length: 7" in head
    assert body == b"a=1&b=2"


async def test_the_body_streams_and_an_early_close_gives_up_the_connection(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """The first chunk of a body reaches the reader while the rest is still to come (a size cap can stop
    reading there); closing the response then closes its connection rather than pool one with unread
    bytes on it, and the next call opens a fresh one."""
    rest = asyncio.Event()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n"
    upstream.scripts["/big"] = Script(parts=(head + b"x" * 1000, b"x" * 199_000), pause=rest)

    async with asyncio.timeout(2), http.stream("GET", f"{upstream.url}/big") as response:
        # A transport reading bodies whole would still be waiting for the rest here.
        first = await anext(aiter(response.aiter_raw()))
    assert first == b"x" * 1000
    assert response.is_closed

    rest.set()
    assert (await http.get(upstream.url)).text == "ok"
    assert upstream.connections == 2


async def test_a_body_read_to_its_end_leaves_the_connection_for_the_next_call(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """A streamed body read to its end hands its connection back to the pool."""
    upstream.scripts["/big"] = Script(parts=(answer("200 OK", b"y" * 300_000),))
    async with http.stream("GET", f"{upstream.url}/big") as response:
        size = sum([len(chunk) async for chunk in response.aiter_bytes()])
    assert size == 300_000
    await http.get(upstream.url)
    assert upstream.connections == 1


async def test_a_gzip_body_is_decoded_once_by_httpx2(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """A gzip-encoded answer reaches httpx2 still encoded (its raw bytes are the gzip stream) and is
    decoded there, once."""
    text = b'{"data": {"user": {"open_id": "-000a"}}}' * 20
    packed = gzip.compress(text)
    headers = (("Content-Encoding", "gzip"), ("Content-Type", "application/json"))
    upstream.scripts["/gz"] = Script(parts=(answer("200 OK", packed, headers),))

    async with http.stream("GET", f"{upstream.url}/gz") as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert raw == packed
    assert (await http.get(f"{upstream.url}/gz")).content == text


async def test_redirects_are_returned_not_followed(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """A 302 comes back as the answer; its Location is not requested."""
    upstream.scripts["/old"] = Script(parts=(answer("302 Found", headers=(("Location", "/new"),)),))
    response = await http.get(f"{upstream.url}/old")
    assert response.status_code == 302
    assert response.headers["Location"] == "/new"
    assert len(upstream.requests) == 1


async def test_the_transport_keeps_no_cookies(upstream: ScriptedUpstream) -> None:
    """A cookie set in one answer is not sent with the next request: the transport has no jar."""
    upstream.scripts["/login"] = Script(
        parts=(answer("200 OK", headers=(("Set-Cookie", "AFFINITY=a; Path=/"),)),)
    )
    transport = AiohttpTransport()
    try:
        for path in ("/login", "/next"):
            response = await transport.handle_async_request(httpx2.Request("GET", f"{upstream.url}{path}"))
            await response.aread()
    finally:
        await transport.aclose()
    assert [b"Cookie" in request for request in upstream.requests] == [False, False]


async def test_connections_are_kept_alive_and_reused(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """Calls one after another share one connection; 8 at once open at most 8, which the next rounds of
    8 reuse."""
    for _ in range(20):
        await http.get(upstream.url)
    assert upstream.connections == 1

    await asyncio.gather(*(http.get(upstream.url) for _ in range(8)))
    opened = upstream.connections
    for _ in range(3):
        await asyncio.gather(*(http.get(upstream.url) for _ in range(8)))
    assert opened <= 8
    assert upstream.connections == opened
    assert len(upstream.requests) == 20 + 4 * 8


async def test_a_refused_connection_is_a_connect_error(http: httpx2.AsyncClient) -> None:
    """Nothing listening: httpx2.ConnectError (the clients' one retryable failure), carrying the request."""
    url = f"http://127.0.0.1:{free_port()}/users"
    with pytest.raises(httpx2.ConnectError) as caught:
        await http.get(url)
    assert str(caught.value.request.url) == url


async def test_an_unanswered_connect_is_a_connect_timeout() -> None:
    """A listener whose accept queue is full drops the handshake: httpx2.ConnectTimeout after `connect`."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        with socket.create_connection(listener.getsockname()):  # fills the queue of one
            async with httpx2.AsyncClient(
                transport=AiohttpTransport(), timeout=httpx2.Timeout(5.0, connect=0.2)
            ) as http:
                started = asyncio.get_running_loop().time()
                with pytest.raises(httpx2.ConnectTimeout):
                    await http.get(f"http://127.0.0.1:{listener.getsockname()[1]}/")
                assert asyncio.get_running_loop().time() - started < 2


async def test_a_full_pool_is_a_pool_timeout(upstream: ScriptedUpstream) -> None:
    """With every connection taken for longer than `pool`, a call ends as httpx2.PoolTimeout."""
    upstream.scripts["/hold"] = Script(
        parts=(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nxx", b"xx"), pause=asyncio.Event()
    )
    transport = AiohttpTransport(limits=httpx2.Limits(max_connections=1))
    async with (
        httpx2.AsyncClient(transport=transport, timeout=httpx2.Timeout(2.0, pool=0.2)) as http,
        http.stream("GET", f"{upstream.url}/hold"),
    ):
        with pytest.raises(httpx2.PoolTimeout):
            await http.get(upstream.url)


@pytest.mark.parametrize(
    ("pool", "connect", "read", "expected"),
    [
        (5.0, 2.0, 5.0, (7.0, 2.0, 5.0)),  # the bridge's: Timeout(5, connect=2)
        (None, 2.0, 5.0, (None, 2.0, 5.0)),  # no pool timeout: the wait is unbounded, as in httpx2
        (5.0, None, None, (5.0, None, None)),
    ],
)
def test_httpx2_timeouts_map_onto_aiohttps(
    pool: float | None,
    connect: float | None,
    read: float | None,
    expected: tuple[float | None, float | None, float | None],
) -> None:
    """Getting a connection is bounded by pool + connect, the TCP connect by connect, each read by read;
    nothing bounds the whole call (httpx2 has no such timeout)."""
    timeout = _client_timeout(pool, connect, read)
    assert (timeout.connect, timeout.sock_connect, timeout.sock_read) == expected
    assert timeout.total is None


async def test_a_slow_answer_is_a_read_timeout(http: httpx2.AsyncClient, upstream: ScriptedUpstream) -> None:
    """No answer within `read`: httpx2.ReadTimeout (never repeated by the clients), carrying the request."""
    upstream.scripts["/slow"] = Script(delay=2.0)
    with pytest.raises(httpx2.ReadTimeout) as caught:
        await http.get(f"{upstream.url}/slow", timeout=0.2)
    assert caught.value.request.url.path == "/slow"


async def test_a_body_that_stops_coming_is_a_read_timeout(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """A body stalling midway past `read` ends the read with httpx2.ReadTimeout."""
    upstream.scripts["/stall"] = Script(
        parts=(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nxxxxx", b"xxxxx"), pause=asyncio.Event()
    )
    with pytest.raises(httpx2.ReadTimeout):
        await http.get(f"{upstream.url}/stall", timeout=0.2)


async def test_a_connection_closed_without_an_answer(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """A connection closed instead of an answer is httpx2.RemoteProtocolError. A POST is sent once;
    aiohttp sends an idempotent GET a second time first (RFC 9112 9.3.1: the usual cause is a kept-alive
    connection the server closed just then), which httpx2's own transport does not."""
    upstream.scripts["/gone"] = Script(drop=True)
    with pytest.raises(httpx2.RemoteProtocolError):
        await http.post(f"{upstream.url}/gone", data={"code": "single-use"})
    assert len(upstream.requests) == 1
    with pytest.raises(httpx2.RemoteProtocolError):
        await http.get(f"{upstream.url}/gone")
    assert len(upstream.requests) == 3


async def test_a_malformed_answer_is_a_remote_protocol_error(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """An answer that is not HTTP is httpx2.RemoteProtocolError."""
    upstream.scripts["/junk"] = Script(parts=(b"SSH-2.0-OpenSSH_9.6\r\n\r\n",))
    with pytest.raises(httpx2.RemoteProtocolError):
        await http.post(f"{upstream.url}/junk")


async def test_a_truncated_body_is_a_remote_protocol_error(
    http: httpx2.AsyncClient, upstream: ScriptedUpstream
) -> None:
    """A connection closed before the announced length arrived is httpx2.RemoteProtocolError."""
    upstream.scripts["/short"] = Script(
        parts=(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nxxx",), close=True
    )
    with pytest.raises(httpx2.RemoteProtocolError):
        await http.post(f"{upstream.url}/short")


async def test_the_proxy_variables_lead_calls_through_the_proxy(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY sends a call through the proxy (absolute-form target), NO_PROXY exempts a host: as
    httpx2's own transport reads them."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", upstream.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with httpx2.AsyncClient(transport=AiohttpTransport(), timeout=TIMEOUT) as http:
        await http.get("http://proxied.test/v2/user/info/?fields=open_id")
        await http.get(f"{upstream.url}/direct")
    assert upstream.requests[0].startswith(
        b"GET http://proxied.test/v2/user/info/?fields=open_id HTTP/1.1\r\n"
    )
    assert upstream.requests[1].startswith(b"GET /direct HTTP/1.1\r\n")


async def test_closing_the_client_closes_the_session() -> None:
    """The client's `aclose` closes the transport's aiohttp session (no "unclosed" warning later)."""
    transport = AiohttpTransport()
    async with httpx2.AsyncClient(transport=transport):
        assert not transport.closed
    assert transport.closed


async def test_the_apps_outbound_client_runs_over_it_and_is_closed_at_shutdown(
    settings: Settings, token_endpoint: FakeTokenEndpoint
) -> None:
    """The lifespan puts the bridge's httpx2 client (TikTok, Keycloak's admin API) over one transport
    for the process, and closes its session when the app stops."""
    app = create_app(settings, token_resolver=token_endpoint.resolver)
    async with app.router.lifespan_context(app):
        transport = app.state.resources.http._transport
        assert isinstance(transport, AiohttpTransport)
        assert not transport.closed
    assert transport.closed


async def _refused(settings: Settings) -> None:
    with pytest.raises(BridgeError):
        Resources.from_settings(settings)


async def test_a_setting_refused_while_the_clients_are_built_leaves_no_session_open(
    settings: Settings, tmp_path: Path
) -> None:
    """A setting refused midway (an unreadable signing key) drops the sessions already made without an
    "unclosed client session" warning: nothing was sent on them."""
    unreadable = settings.model_copy(update={"signing_key_file": tmp_path / "missing.pem"})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        await _refused(unreadable)
        gc.collect()
    assert [str(warning.message) for warning in seen if warning.category is ResourceWarning] == []


async def test_the_httpx2_instrumentation_traces_calls_through_it(upstream: ScriptedUpstream) -> None:
    """With tracing on (`Tracing.instrument_clients`), each call is a CLIENT span with its URL and
    status, and the upstream receives the span's W3C trace context."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    upstream.scripts["/missing"] = Script(parts=(answer("404 Not Found"),))
    async with httpx2.AsyncClient(transport=AiohttpTransport(), timeout=TIMEOUT) as http:
        HTTPX2ClientInstrumentor.instrument_client(http, tracer_provider=provider)  # type: ignore[arg-type]
        await http.get(f"{upstream.url}/users")
        await http.get(f"{upstream.url}/missing")

    spans = exporter.get_finished_spans()
    assert [(span.kind, span.attributes and span.attributes["http.url"]) for span in spans] == [
        (trace.SpanKind.CLIENT, f"{upstream.url}/users"),
        (trace.SpanKind.CLIENT, f"{upstream.url}/missing"),
    ]
    assert [span.attributes and span.attributes["http.status_code"] for span in spans] == [200, 404]
    assert [span.status.status_code for span in spans] == [trace.StatusCode.UNSET, trace.StatusCode.ERROR]
    for span, request in zip(spans, upstream.requests, strict=True):
        assert (
            f"traceparent: 00-{span.context.trace_id:032x}-{span.context.span_id:016x}-".encode() in request
        )
