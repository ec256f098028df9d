"""A fake of Keycloak's token endpoint for the JWT grant, which the bridge sends through aiohttp.

respx serves the httpx2 calls without a socket; for aiohttp the unit tests run this fake on a loopback
port instead (aioresponses, the usual mock, builds responses aiohttp 3.14 no longer accepts), and the
bridge's token session reaches it through `LoopbackResolver`, the seam `create_app(token_resolver=...)`
takes: the URLs stay `http://kc.test/...`, and the whole client runs as in production (connection pool,
keep-alive, timeouts, tracing hooks). The fake answers what a test queued, a token otherwise, records
what the bridge sent and counts the TCP connections the bridge opened.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

if TYPE_CHECKING:
    from collections.abc import Mapping

# Keycloak's answer to a JWT grant, shortened (not a JWT: `subject` stays None).
TOKEN: dict[str, Any] = {
    "access_token": "kc.jwt.token",
    "expires_in": 300,
    "scope": "profile email",
    "token_type": "Bearer",
}


@dataclass(frozen=True)
class Answer:
    """One answer of the fake: a status and a JSON (or raw) body, after `delay` seconds; or, with
    `drop`, the connection closed without an answer."""

    status: int = 200
    json: Any = None
    body: bytes | None = None
    delay: float = 0.0
    drop: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sent:
    """A request as the fake received it."""

    method: str
    path: str
    headers: Mapping[str, str]
    form: dict[str, str]


class LoopbackResolver(AbstractResolver):
    """Resolves each named host to a port on 127.0.0.1; any other name fails as a DNS failure would."""

    def __init__(self, ports: Mapping[str, int]) -> None:
        self.ports = dict(ports)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.ports:
            raise OSError(f"{host}: not a host of this test")
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": self.ports[host],
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


class FakeTokenEndpoint:
    """Keycloak's token endpoint, as far as the JWT grant goes, on a loopback port."""

    def __init__(self, host: str = "kc.test") -> None:
        self.host = host
        self.queued: deque[Answer] = deque()
        self.requests: list[Sent] = []
        self._transports: set[asyncio.BaseTransport] = set()  # kept: distinct objects, distinct sockets
        # For each connection, as it appeared: the request it first carried (its index, peer and
        # User-Agent), so a wrong connection count says where the extra one came from.
        self.opened: list[tuple[int, object, str]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def answer(self, *answers: Answer) -> None:
        """Queue answers for the next requests, in order; once they are used up, a token again."""
        self.queued.extend(answers)

    @property
    def connections(self) -> int:
        """TCP connections the bridge opened to the fake so far."""
        return len(self._transports)

    @property
    def resolver(self) -> LoopbackResolver:
        return LoopbackResolver({self.host: self.port})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.transport is not None and request.transport not in self._transports:
            self._transports.add(request.transport)
            peer = request.transport.get_extra_info("peername")
            self.opened.append((len(self.requests), peer, request.headers.get("User-Agent", "")))
        body = await request.read()
        self.requests.append(
            Sent(request.method, request.path, dict(request.headers), dict(parse_qsl(body.decode())))
        )
        answer = self.queued.popleft() if self.queued else Answer(json=TOKEN)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if answer.drop:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)  # never reaches the bridge: the connection is gone
        payload = answer.body if answer.body is not None else json.dumps(answer.json).encode()
        return web.Response(
            status=answer.status,
            body=payload,
            content_type="application/json",
            headers=dict(answer.headers),
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        # A handler still delaying its answer when the test ends is cancelled, not waited for.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.05)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
