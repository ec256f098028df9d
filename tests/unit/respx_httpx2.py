"""respx routes serving httpx2 calls at the client, whatever transport carries them.

pytest-httpx2's mocker patches httpcore2's connection pool, which only httpx2's default transport uses;
the bridge's client goes through `AiohttpTransport`, so its calls would pass that pool by. This mocker
(`using="httpx2"`, the `httpx2_mock` fixture's default in tests/unit/conftest.py) patches
`_transport_for_url` of httpx2's clients instead, as respx's own "httpx" mocker does for httpx: a request
bound for the network (an `AiohttpTransport`, or httpx2's default transport) is offered to the routes
first, and goes on to that transport when a route passes it through. Transports a test mounts (the
TikTok emulator over `ASGITransport`, a `MockTransport`) and the tests' own client of the app are left
alone, as the httpcore2 mocker left them.

Everything above the transport runs as in production: the client's headers, auth, timeouts and
response handling. What the mocked calls skip is the transport itself (tested on its own against a
loopback server, tests/unit/test_aiohttp_transport.py) and the tracing wrapper around it. respx
speaks httpx, so requests are handed to the routes as `httpx.Request`s and answers come back as
`httpx2.Response`s, their bodies as the route gave them (still encoded, for httpx2 to decode). A route
raising an exception raises it from the transport: it should be an httpx2 one (`httpx2.ReadTimeout`,
`httpx2.ConnectError`), as a real transport raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import httpx2
from respx.mocks import Mocker
from respx.models import PassThrough

from bridge.outbound.aiohttp_transport import AiohttpTransport

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


def _to_httpx(request: httpx2.Request, content: bytes) -> httpx.Request:
    return httpx.Request(
        request.method,
        str(request.url),
        headers=request.headers.raw,
        content=content,
        extensions=request.extensions,
    )


def _to_httpx2(response: httpx.Response, body: bytes) -> httpx2.Response:
    return httpx2.Response(
        response.status_code,
        headers=response.headers.raw,
        stream=httpx2.ByteStream(body),
        extensions=dict(response.extensions),
    )


class _AsyncRoutes(httpx2.AsyncBaseTransport):
    """The routes first, then (a route passing the request through) the transport they stand in for."""

    def __init__(
        self,
        handler: Callable[[httpx.Request], Awaitable[httpx.Response]],
        transport: httpx2.AsyncBaseTransport,
    ) -> None:
        self._handler = handler
        self._transport = transport

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            answer = await self._handler(_to_httpx(request, await request.aread()))
        except PassThrough:
            return await self._transport.handle_async_request(request)
        # The raw stream, not `.content`: a Content-Encoding the route set is httpx2's to decode.
        stream: Any = answer.stream
        return _to_httpx2(answer, b"".join([chunk async for chunk in stream]))


class _SyncRoutes(httpx2.BaseTransport):
    """`_AsyncRoutes` for a synchronous client."""

    def __init__(
        self, handler: Callable[[httpx.Request], httpx.Response], transport: httpx2.BaseTransport
    ) -> None:
        self._handler = handler
        self._transport = transport

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            answer = self._handler(_to_httpx(request, request.read()))
        except PassThrough:
            return self._transport.handle_request(request)
        stream: Any = answer.stream
        return _to_httpx2(answer, b"".join(stream))


class HTTPX2Mocker(Mocker):
    """Registered with respx under its `name` when this module is imported."""

    name = "httpx2"
    targets: ClassVar[list[str]] = ["httpx2.Client", "httpx2.AsyncClient"]
    target_methods: ClassVar[list[str]] = ["_transport_for_url"]

    @classmethod
    def mock(cls, spec: Callable[..., Any]) -> Callable[..., Any]:
        def _transport_for_url(self: httpx2.Client | httpx2.AsyncClient, url: httpx2.URL) -> Any:  # noqa: ANN401
            transport = spec(self, url)
            if isinstance(transport, (AiohttpTransport, httpx2.AsyncHTTPTransport)):
                return _AsyncRoutes(cls.async_handler, transport)
            if isinstance(transport, httpx2.HTTPTransport):
                return _SyncRoutes(cls.handler, transport)
            return transport

        return _transport_for_url
