"""Keycloak and Redis failing mid-test: Keycloak outages are 503 with Retry-After (never 500), a Redis
outage is served from process memory; both recover by themselves."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from bridge.storage import keys
from devstack.redis import RedisServer
from tests.conftest import Stack, forget_abandoned_sockets, running_bridge

# The in-process bridge's admin listener (Settings.admin_port by default): the detailed readiness.
ADMIN = "http://bridge.test:9000"

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from devstack.tiktok_emulator import TikTokEmulator


@pytest.fixture(scope="module", autouse=True)
def _servers_killed_under_clients() -> Iterator[None]:
    """This module kills Redis servers under live clients; what they abandon is collected here."""
    yield
    forget_abandoned_sockets()


async def test_keycloak_frozen_mid_test_yields_503_then_recovers(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """With Keycloak frozen (SIGSTOP) calls time out into 503; after SIGCONT exchanges work again."""
    user = emulator.create_user()
    async for bridge in running_bridge(stack.settings(http_timeout=1.0), emulator):
        assert (await bridge.exchange(emulator.issue_access_token(user.open_id))).status_code == 200
        stack.keycloak.pause()
        try:
            frozen = await bridge.exchange(emulator.issue_access_token(user.open_id))
            ready = await bridge.http.get(f"{ADMIN}/readyz")
        finally:
            stack.keycloak.resume()
        recovered = await bridge.exchange(emulator.issue_access_token(user.open_id))

    assert frozen.status_code == 503
    assert frozen.json() == {
        "error": "temporarily_unavailable",
        "error_description": "Keycloak is unavailable; retry later.",
    }
    assert int(frozen.headers["retry-after"]) > 0
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"keycloak": "unavailable", "cache": "ok"}
    assert recovered.status_code == 200, recovered.text


async def test_keycloak_unreachable_yields_503(stack: Stack, emulator: TikTokEmulator) -> None:
    """A Keycloak that refuses connections (nothing listening) is a 503, not a 500."""
    user = emulator.create_user()
    settings = stack.settings(keycloak_url="http://127.0.0.1:9", redis_url=None)
    async for bridge in running_bridge(settings, emulator):
        response = await bridge.exchange(emulator.issue_access_token(user.open_id))
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"


async def test_redis_stopped_mid_test_keeps_serving_and_recovers(
    stack: Stack, emulator: TikTokEmulator, tmp_path: Path
) -> None:
    """Redis stopped under a running bridge: exchanges go on uncached, readiness says degraded, and once
    redis-server is back the cache is used again without restarting the bridge."""
    redis = RedisServer(work_dir=tmp_path)
    redis.start()
    user = emulator.create_user()
    settings = stack.settings(redis_url=redis.url, redis_retry_interval=0.3, readiness_cache_ttl=0)
    try:
        async for bridge in running_bridge(settings, emulator):
            assert (await bridge.exchange(emulator.issue_access_token(user.open_id))).status_code == 200
            redis.stop()
            during = await bridge.exchange(emulator.issue_access_token(user.open_id))
            ready_during = await bridge.http.get(f"{ADMIN}/readyz")

            redis = RedisServer(work_dir=tmp_path, port=redis.port)
            redis.start()
            await asyncio.sleep(0.4)  # past the retry interval
            token = emulator.issue_access_token(user.open_id)
            after = await bridge.exchange(token)
            ready_after = await bridge.http.get(f"{ADMIN}/readyz")
            client = aioredis.Redis.from_url(redis.url)
            cached_after = await client.exists(keys.profile(token))
            await client.aclose()
    finally:
        redis.stop()

    assert during.status_code == 200, during.text
    assert ready_during.status_code == 200
    assert ready_during.json() == {"status": "degraded", "checks": {"keycloak": "ok", "cache": "degraded"}}
    assert after.status_code == 200
    assert ready_after.json()["status"] == "ready"
    assert cached_after == 1


async def test_redis_unreachable_from_the_start_still_serves(stack: Stack, emulator: TikTokEmulator) -> None:
    """A bridge whose Redis never answered works from process memory."""
    user = emulator.create_user()
    settings = stack.settings(redis_url="redis://127.0.0.1:9/0")
    async for bridge in running_bridge(settings, emulator):
        token = emulator.issue_access_token(user.open_id)
        first = await bridge.exchange(token)
        second = await bridge.exchange(token)
    assert (first.status_code, second.status_code) == (200, 200)
    assert emulator.calls["user_info"] == 1  # the memory fallback cached the profile
