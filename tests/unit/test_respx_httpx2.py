"""The test seam itself (tests/unit/respx_httpx2.py): respx routes serve httpx2 clients over the bridge's
transport, and leave mounted transports and passed-through requests to the transport they were for."""

from __future__ import annotations

import gzip
from typing import TYPE_CHECKING

import httpx
import httpx2
import pytest

from bridge.outbound.aiohttp_transport import AiohttpTransport
from tests.unit.scripted_upstream import ScriptedUpstream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import respx


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(transport=AiohttpTransport(), timeout=1) as client:
        yield client


async def test_routes_serve_a_client_over_the_aiohttp_transport(
    http: httpx2.AsyncClient, httpx2_mock: respx.Router
) -> None:
    """A route answers instead of the network, and sees the request as the client built it."""
    route = httpx2_mock.post("http://kc.test/admin/realms/app/users").respond(
        201, headers={"Location": "/u/1"}
    )
    response = await http.post("http://kc.test/admin/realms/app/users", json={"username": "x"})
    assert response.status_code == 201
    assert response.headers["Location"] == "/u/1"
    assert route.calls.last.request.content == b'{"username":"x"}'


async def test_an_encoded_body_is_decoded_once(http: httpx2.AsyncClient, httpx2_mock: respx.Router) -> None:
    """A route's gzip body reaches httpx2 still encoded, as over the wire, and is decoded there."""
    httpx2_mock.get("http://kc.test/x").respond(
        content=gzip.compress(b"plain"), headers={"Content-Encoding": "gzip"}
    )
    assert (await http.get("http://kc.test/x")).content == b"plain"


async def test_a_route_exception_comes_from_the_transport(
    http: httpx2.AsyncClient, httpx2_mock: respx.Router
) -> None:
    """An httpx2 exception a route raises reaches the caller carrying the request, as a real one does."""
    httpx2_mock.get("http://kc.test/x").mock(side_effect=httpx2.ConnectError("refused"))
    with pytest.raises(httpx2.ConnectError) as caught:
        await http.get("http://kc.test/x")
    assert caught.value.request.url == "http://kc.test/x"


async def test_mounted_transports_are_left_alone(httpx2_mock: respx.Router) -> None:
    """A transport a test mounts (the TikTok emulator, say) answers its calls; the routes never see them."""
    mounted = httpx2.MockTransport(lambda _request: httpx2.Response(200, text="emulator"))
    async with httpx2.AsyncClient(
        transport=AiohttpTransport(), mounts={"https://tiktok.test": mounted}
    ) as http:
        assert (await http.get("https://tiktok.test/v2/user/info/")).text == "emulator"
    assert not httpx2_mock.calls


async def test_a_passed_through_request_reaches_the_network(httpx2_mock: respx.Router) -> None:
    """A route passing a request through sends it over the client's own transport."""
    upstream = ScriptedUpstream()
    await upstream.start()
    try:
        httpx2_mock.get(upstream.url).pass_through()
        async with httpx2.AsyncClient(transport=AiohttpTransport()) as http:
            assert (await http.get(upstream.url)).text == "ok"
    finally:
        await upstream.stop()
    assert len(upstream.requests) == 1


def test_a_synchronous_client_is_served_too(httpx2_mock: respx.Router) -> None:
    """httpx2.Client (httpx2's default transport) gets the same routes."""
    httpx2_mock.get("http://kc.test/x").mock(return_value=httpx.Response(204))
    with httpx2.Client() as http:
        assert http.get("http://kc.test/x").status_code == 204
