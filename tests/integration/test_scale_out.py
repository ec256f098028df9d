"""Several bridge replicas sharing one Redis, and a Keycloak that really stops and starts again."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import httpx2
import pytest

from tests.conftest import Stack, running_bridge, start_bridge_process
from tests.integration.test_exchange import linked_users, verified_claims

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devstack.threaded import ThreadedServer
    from devstack.tiktok_emulator import TikTokEmulator

EXCHANGE = {
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
}


@pytest.fixture
def replicas(stack: Stack, tiktok_server: ThreadedServer, flushed_redis: None) -> Iterator[list[str]]:
    """Three `bridge serve` processes on one Redis, rate limits off (all load comes from one IP)."""
    started = [
        start_bridge_process(
            stack,
            BRIDGE_TIKTOK_API_URL=tiktok_server.url,
            BRIDGE_RATE_LIMIT_ENABLED="false",
            BRIDGE_LOG_LEVEL="WARNING",
        )
        for _ in range(3)
    ]
    processes = [process for process, _ in started]
    urls = [url for _, url in started]
    try:
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.communicate(timeout=30)  # drains the stderr pipe while waiting


async def test_hundred_simultaneous_first_sign_ins_over_three_replicas_create_one_user(
    stack: Stack, emulator: TikTokEmulator, replicas: list[str]
) -> None:
    """100 concurrent first sign-ins of one TikTok user, spread over 3 processes: one user, 100 tokens."""
    user = emulator.create_user()
    tokens = [emulator.issue_access_token(user.open_id) for _ in range(100)]
    async with httpx2.AsyncClient(timeout=60, limits=httpx2.Limits(max_connections=100)) as http:
        responses = await asyncio.gather(
            *(
                http.post(f"{replicas[i % 3]}/token", data={**EXCHANGE, "subject_token": token})
                for i, token in enumerate(tokens)
            )
        )

    assert [r.status_code for r in responses] == [200] * 100, {
        r.text for r in responses if r.status_code != 200
    }
    (linked,) = linked_users(stack, user.open_id)
    subjects = {verified_claims(stack, r.json()["access_token"])["sub"] for r in responses}
    assert subjects == {linked["id"]}


async def test_rate_limit_is_shared_by_replicas(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """Two replicas on one Redis share one per-IP budget: the third request is refused wherever it lands."""
    settings = stack.settings(rate_limit_per_ip="2/minute")
    bridges = [running_bridge(settings, emulator), running_bridge(settings, emulator)]
    first, second = [await anext(b) for b in bridges]
    try:
        user = emulator.create_user()
        a = await first.exchange(emulator.issue_access_token(user.open_id))
        b = await second.exchange(emulator.issue_access_token(user.open_id))
        c = await first.exchange(emulator.issue_access_token(user.open_id))
    finally:
        for bridge in bridges:
            await bridge.aclose()
    assert (a.status_code, b.status_code) == (200, 200)
    assert c.status_code == 429
    assert c.json()["error"] == "temporarily_unavailable"
    assert int(c.headers["retry-after"]) >= 1


async def test_keycloak_stopped_and_restarted_fails_fast_then_recovers(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """Keycloak really stopped: 503 with Retry-After, soon without even trying (breaker); after a restart
    the same bridge signs users in again, with no restart of its own."""
    user = emulator.create_user()
    async for bridge in running_bridge(stack.settings(http_timeout=2.0), emulator):
        assert (await bridge.exchange(emulator.issue_access_token(user.open_id))).status_code == 200
        stack.keycloak.stop()
        try:
            down = [await bridge.exchange(emulator.issue_access_token(user.open_id)) for _ in range(6)]
            started = time.perf_counter()
            fast = await bridge.exchange(emulator.issue_access_token(user.open_id))
            fast_seconds = time.perf_counter() - started
        finally:
            stack.keycloak.start(stack.java_home)
            stack.keycloak.wait_ready()
        # The realm is imported afresh (in-memory database), so the user is provisioned again.
        deadline = time.monotonic() + 60
        while True:
            recovered = await bridge.exchange(emulator.issue_access_token(user.open_id))
            if recovered.status_code == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)

    assert {r.status_code for r in down} == {503}
    assert all(r.json()["error"] == "temporarily_unavailable" for r in down)
    assert all(int(r.headers["retry-after"]) >= 1 for r in down)
    assert fast.status_code == 503
    assert fast_seconds < 0.5  # the breaker answered without waiting on a dead Keycloak
    assert recovered.status_code == 200, recovered.text
