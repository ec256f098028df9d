"""CPU per call of the bridge's one hot outbound request, for each HTTP client worth considering.

The request is shaped like `KeycloakClient.issue_token`: a keep-alive HTTP/1.1 POST of a ~580-byte form
(grant_type, a JWT assertion, scope) with HTTP Basic client authentication, answered by a fixed ~1.5 KB
JSON body that is read whole and parsed. The upstream is `bench.stub_upstream` in its own process on the
other core; this process runs pinned to one core, so `time.process_time()` over a batch of calls is the
client's CPU per call, event loop included. Variants run in turns, a different order each round, and
each round is one sample: the table shows the median and the spread (min-max) of the rounds.

    .venv/bin/python -m bench.outbound_clients [--rounds 5] [--calls 3000] [--concurrency 16]

Needs the bench extra (`uv sync --extra dev --extra bench`; `scripts/bench` installs it).
"httpx2 over AiohttpTransport" is the bridge's own client (`Resources.http`): httpx2 over
`bridge.aiohttp_transport` (a sketch of it, reading bodies whole, was measured here before it was built).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import aiohttp
import aiosonic  # type: ignore[import-untyped]
import httpcore2
import httpx2
import pyreqwest.client
import yarl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stub_upstream import DEFAULT_ANSWER
from bridge.factory import HTTP_LIMITS
from bridge.outbound.aiohttp_transport import AiohttpTransport
from devstack.keycloak import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

CLIENT_ID, CLIENT_SECRET = "tiktok-bridge", "bench-client-secret"
# An ES256 assertion of the bridge is about 520 characters; the form around it brings the body to ~580.
FORM = {
    "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "assertion": "eyJhbGciOiJFUzI1NiIsImtpZCI6ImJlbmNoIn0." + "a" * 365 + "." + "b" * 86,
    "scope": "openid",
}
BODY = urlencode(FORM).encode()
BASIC = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
USER_AGENT = "tiktok-keycloak-bridge/0.1"


# --------------------------------------------------------------------------------------- variants

Call = Callable[[], Awaitable[bytes]]


@dataclass
class Variant:
    name: str
    note: str
    # An async context manager yielding the call: the client is made and closed inside the loop.
    open: Callable[[str], contextlib.AbstractAsyncContextManager[Call]]
    cpu_us: list[float] = field(default_factory=list)
    per_second: list[float] = field(default_factory=list)


def _httpx2_client(transport: httpx2.AsyncBaseTransport | None = None) -> httpx2.AsyncClient:
    # As bridge/factory.py builds it.
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(5.0, connect=2.0),
        limits=httpx2.Limits(max_connections=200, max_keepalive_connections=50),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
        transport=transport,
    )


@contextlib.asynccontextmanager
async def httpx2_as_today(url: str) -> AsyncIterator[Call]:
    async with _httpx2_client() as client:

        async def call() -> bytes:
            return (await client.post(url, data=FORM, auth=(CLIENT_ID, CLIENT_SECRET))).content

        yield call


@contextlib.asynccontextmanager
async def httpx2_prebuilt(url: str) -> AsyncIterator[Call]:
    """httpx2 with the body and Authorization made once: what tuning the call itself can save."""
    async with _httpx2_client() as client:
        headers = {"Authorization": BASIC, "Content-Type": "application/x-www-form-urlencoded"}

        async def call() -> bytes:
            return (await client.post(url, content=BODY, headers=headers)).content

        yield call


@contextlib.asynccontextmanager
async def httpcore2_pool(url: str) -> AsyncIterator[Call]:
    """httpx2's own transport layer without the client above it: where httpx2's cost lies."""
    async with httpcore2.AsyncConnectionPool(max_connections=200, max_keepalive_connections=50) as pool:
        headers = [
            (b"Host", yarl.URL(url).raw_authority.encode()),
            (b"User-Agent", USER_AGENT.encode()),
            (b"Authorization", BASIC.encode()),
            (b"Content-Type", b"application/x-www-form-urlencoded"),
            (b"Content-Length", str(len(BODY)).encode()),
        ]

        async def call() -> bytes:
            answer = await pool.request("POST", url, headers=headers, content=BODY)
            return answer.content

        yield call


@contextlib.asynccontextmanager
async def httpx2_over_aiohttp(url: str) -> AsyncIterator[Call]:
    async with _httpx2_client(AiohttpTransport(limits=HTTP_LIMITS)) as client:

        async def call() -> bytes:
            return (await client.post(url, data=FORM, auth=(CLIENT_ID, CLIENT_SECRET))).content

        yield call


@contextlib.asynccontextmanager
async def aiohttp_session(url: str) -> AsyncIterator[Call]:
    connector = aiohttp.TCPConnector(limit=200, keepalive_timeout=15)
    async with aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": USER_AGENT},
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=5),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        # aiohttp 3.14 deprecates `auth=BasicAuth(...)` in favour of a header it encodes once.
        headers = {"Authorization": aiohttp.encode_basic_auth(CLIENT_ID, CLIENT_SECRET)}

        async def call() -> bytes:
            async with session.post(url, data=FORM, headers=headers, allow_redirects=False) as answer:
                return await answer.read()

        yield call


@contextlib.asynccontextmanager
async def pyreqwest_client(url: str) -> AsyncIterator[Call]:
    from datetime import timedelta  # noqa: PLC0415

    builder = (
        pyreqwest.client.ClientBuilder()
        .user_agent(USER_AGENT)
        .follow_redirects(enable=False)
        .connect_timeout(timedelta(seconds=2))
        .timeout(timedelta(seconds=5))
        .http1_only()
    )
    async with builder.build() as client:

        async def call() -> bytes:
            request = client.post(url).basic_auth(CLIENT_ID, CLIENT_SECRET).form(FORM).build()
            answer = await request.send()
            return bytes(await answer.bytes())

        yield call


@contextlib.asynccontextmanager
async def aiosonic_client(url: str) -> AsyncIterator[Call]:
    async with aiosonic.HTTPClient() as client:

        async def call() -> bytes:
            answer = await client.post(
                url, data=FORM, auth=(CLIENT_ID, CLIENT_SECRET), headers={"User-Agent": USER_AGENT}
            )
            content: bytes = await answer.content()
            return content

        yield call


class _RawConnection(asyncio.Protocol):
    """One keep-alive connection that sends a fixed request and reads a Content-Length answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._waiter is None:
            return
        head = bytes(self._buffer[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
        if len(self._buffer) >= end + 4 + length:
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            self._waiter.set_result(body)

    async def exchange(self, request: bytes) -> bytes:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._waiter


@contextlib.asynccontextmanager
async def raw_asyncio(url: str) -> AsyncIterator[Call]:
    """No client library: the floor of this request in Python on asyncio (not a candidate)."""
    parsed = yarl.URL(url)
    host, port = parsed.raw_host or "127.0.0.1", parsed.port or 80
    request = (
        f"POST {parsed.raw_path} HTTP/1.1\r\nHost: {parsed.raw_authority}\r\n"
        f"User-Agent: {USER_AGENT}\r\nAuthorization: {BASIC}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    loop = asyncio.get_running_loop()
    idle: list[_RawConnection] = []
    opened: list[_RawConnection] = []

    async def call() -> bytes:
        if idle:
            connection = idle.pop()
        else:
            _, connection = await loop.create_connection(_RawConnection, host, port)
            opened.append(connection)
        try:
            return await connection.exchange(request)
        finally:
            idle.append(connection)

    try:
        yield call
    finally:
        for connection in opened:
            if connection.transport is not None:
                connection.transport.close()


VARIANTS = [
    Variant("httpx2.AsyncClient (as today)", "data=dict, auth=tuple", httpx2_as_today),
    Variant("httpx2.AsyncClient, prebuilt body+auth", "content=bytes, headers", httpx2_prebuilt),
    Variant("httpcore2.AsyncConnectionPool alone", "httpx2's transport", httpcore2_pool),
    Variant("httpx2 over AiohttpTransport", "bridge.outbound.aiohttp_transport", httpx2_over_aiohttp),
    Variant("aiohttp.ClientSession", "data=dict, Basic header", aiohttp_session),
    Variant("pyreqwest Client (Rust reqwest)", "form, basic_auth", pyreqwest_client),
    Variant("aiosonic HTTPClient", "data=dict, auth=tuple", aiosonic_client),
    Variant("raw asyncio.Protocol (floor)", "no library", raw_asyncio),
]


# -------------------------------------------------------------------------------------- measuring


async def batch(call: Call, calls: int, concurrency: int, time_limit: float) -> int:
    """Up to `calls` requests from `concurrency` tasks, stopping early at `time_limit` seconds (a slow
    client on a busy machine then gives a smaller sample, not an error); each answer is checked and parsed
    as the bridge does. Returns the calls made."""
    per_task = calls // concurrency
    deadline = time.monotonic() + time_limit
    done = 0

    async def worker() -> None:
        nonlocal done
        for _ in range(per_task):
            if time.monotonic() > deadline:
                return
            body = await call()
            if len(body) != len(DEFAULT_ANSWER):
                raise RuntimeError(f"unexpected answer of {len(body)} bytes")
            json.loads(body)
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def measure(variant: Variant, url: str, calls: int, concurrency: int, time_limit: float) -> None:
    async with variant.open(url) as call:
        await batch(call, max(concurrency, calls // 10), concurrency, time_limit)
        cpu, wall = time.process_time(), time.perf_counter()
        done = await batch(call, calls, concurrency, time_limit)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
    variant.cpu_us.append(cpu * 1e6 / done)
    variant.per_second.append(done / wall)
    print(
        f"  {variant.name:<40} {variant.cpu_us[-1]:7.0f} us CPU/call, {done} calls in {wall:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def stub_connections(url: str) -> int:
    stats = httpx2.get(str(yarl.URL(url).origin()) + "/_stub/stats", timeout=5).json()
    return int(stats["connections"])


def pin(cpu: int) -> list[str]:
    """`taskset` arguments that put a child on `cpu`, when this machine has more than one."""
    return ["taskset", "-c", str(cpu)] if (os.cpu_count() or 1) > 1 else []


def run(args: argparse.Namespace) -> list[tuple[Variant, int]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/realms/app/protocol/openid-connect/token"
    stub = subprocess.Popen(
        [*pin(0), sys.executable, "-m", "bench.stub_upstream", "--port", str(port)],
        cwd=ROOT,
    )
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # this process on the other core than the upstream
    connections: list[tuple[Variant, int]] = []
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                stub_connections(url)
                break
            except httpx2.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        chosen = [v for v in VARIANTS if not args.only or any(o in v.name for o in args.only)]
        for round_number in range(args.rounds):
            # Rotate the order so no variant always runs first or right after the same neighbour.
            shift = round_number % len(chosen)
            order = chosen[shift:] + chosen[:shift]
            print(f"round {round_number + 1}/{args.rounds}", file=sys.stderr, flush=True)
            for variant in order:
                before = stub_connections(url)
                asyncio.run(measure(variant, url, args.calls, args.concurrency, args.time_limit))
                if round_number == 0:
                    connections.append((variant, stub_connections(url) - before - 1))
    finally:
        stub.terminate()
        stub.wait(timeout=10)
    return connections


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="samples per variant")
    parser.add_argument("--calls", type=int, default=3000, help="measured calls per variant and round")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight at once")
    parser.add_argument("--time-limit", type=float, default=20.0, help="seconds one batch may take at most")
    parser.add_argument("--only", action="append", help="run only variants whose name contains this")
    args = parser.parse_args()
    connections = {v.name: n for v, n in run(args)}
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("httpx2", "httpcore2", "aiohttp", "pyreqwest", "aiosonic")
    )
    print()
    print(
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, Python {platform.python_version()}; {versions}"
    )
    print(
        f"POST of {len(BODY)} bytes with Basic auth, answer {len(DEFAULT_ANSWER)} bytes read and parsed; "
        f"{args.rounds} rounds x {args.calls} calls, {args.concurrency} in flight"
    )
    print()
    print(f"{'client':<40} {'CPU us/call median (spread)':>28} {'calls/s median':>15} {'connections':>12}")
    for variant in VARIANTS:
        if not variant.cpu_us:
            continue
        cpu = f"{statistics.median(variant.cpu_us):.0f} ({min(variant.cpu_us):.0f}-{max(variant.cpu_us):.0f})"
        print(
            f"{variant.name:<40} {cpu:>28} {statistics.median(variant.per_second):>15.0f} "
            f"{connections.get(variant.name, -1):>12}"
        )


if __name__ == "__main__":
    main()
