"""Keycloak and Redis failing mid-test: the bridge answers 503 with Retry-After, never 500, and recovers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from devstack.redis import RedisServer
from tests.conftest import Stack, running_bridge

if TYPE_CHECKING:
    from pathlib import Path

    from devstack.tiktok_emulator import TikTokEmulator


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
            ready = await bridge.http.get("/readyz")
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


async def test_redis_stopped_mid_test_yields_503(
    stack: Stack, emulator: TikTokEmulator, tmp_path: Path
) -> None:
    """Stopping redis-server under a running bridge turns exchanges into 503 and readiness into 503."""
    redis = RedisServer(work_dir=tmp_path)
    redis.start()
    user = emulator.create_user()
    try:
        async for bridge in running_bridge(stack.settings(redis_url=redis.url, http_timeout=1.0), emulator):
            assert (await bridge.exchange(emulator.issue_access_token(user.open_id))).status_code == 200
            redis.stop()
            response = await bridge.exchange(emulator.issue_access_token(user.open_id))
            ready = await bridge.http.get("/readyz")
    finally:
        redis.stop()

    assert response.status_code == 503
    assert response.json() == {
        "error": "temporarily_unavailable",
        "error_description": "The cache is unavailable; retry later.",
    }
    assert ready.status_code == 503
    assert ready.json()["checks"]["cache"] == "unavailable"
