"""A deauthorization that arrives while Keycloak is frozen is kept in Redis and applied once Keycloak is
back, by the same process or by a new one (TikTok does not deliver again after its 200)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from bridge.storage import keys
from tests.conftest import running_bridge
from tests.integration.test_exchange import linked_users
from tests.integration.test_webhook import deliver, removed_event

if TYPE_CHECKING:
    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import BridgeClient, Stack

# Short, so the test is: the defaults are a 5 s HTTP timeout and retries at most 300 s apart.
SETTINGS = {"deauthorization_policy": "disable", "http_timeout": 2.0, "deauthorization_retry_max_delay": 1.0}
# Keycloak's circuit breaker may be open when it comes back (10 s), then one retry a second at most.
APPLIED_WITHIN = 30.0


async def pending_attempts(stack: Stack, open_id: str) -> int | None:
    """The attempts recorded for the identity's pending deauthorization in Redis, None if none is."""
    client = aioredis.Redis.from_url(stack.redis.url)
    try:
        stored = await client.get(keys.pending_deauthorization("tiktok", open_id))
        queued = await client.zscore(keys.DEAUTHORIZATION_QUEUE, open_id)
    finally:
        await client.aclose()
    if stored is None:
        assert queued is None
        return None
    assert queued is not None
    attempts: int = json.loads(stored)["attempts"]
    return attempts


async def signed_in(bridge: BridgeClient, emulator: TikTokEmulator, open_id: str) -> None:
    """A first sign-in, tried a few times: Keycloak's first answers after its start can be slow here."""
    for _ in range(5):
        response = await bridge.exchange(emulator.issue_access_token(open_id))
        if response.status_code == 200:
            return
        await asyncio.sleep(1)
    raise AssertionError(response.text)


async def disabled_within(stack: Stack, open_id: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not (await asyncio.to_thread(linked_users, stack, open_id))[0]["enabled"]:
            return True
        await asyncio.sleep(0.5)
    return False


async def test_a_removal_delivered_while_keycloak_is_frozen_is_applied_once_it_is_back(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """Keycloak frozen: the webhook still answers 200 and the event waits in Redis, tried and failed;
    after Keycloak resumes the same process disables the user and the event leaves the queue."""
    user = emulator.create_user()
    async for bridge in running_bridge(stack.settings(**SETTINGS), emulator):
        await signed_in(bridge, emulator, user.open_id)
        stack.keycloak.pause()
        try:
            response = await deliver(bridge, removed_event(user.open_id))
            attempts_while_frozen = await pending_attempts(stack, user.open_id)
        finally:
            stack.keycloak.resume()
        disabled = await disabled_within(stack, user.open_id, APPLIED_WITHIN)
        left = await pending_attempts(stack, user.open_id)

    assert response.status_code == 200
    assert response.json() == {"status": "accepted"}
    assert attempts_while_frozen is not None
    assert attempts_while_frozen >= 1
    assert disabled
    assert left is None


async def test_a_pending_removal_survives_a_restart(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """The process that took the webhook stops while Keycloak is frozen; a new app instance, started
    after Keycloak is back, finds the event in Redis and disables the user."""
    user = emulator.create_user()
    async for first in running_bridge(stack.settings(**SETTINGS), emulator):
        await signed_in(first, emulator, user.open_id)
        stack.keycloak.pause()
        try:
            response = await deliver(first, removed_event(user.open_id))
        except BaseException:
            stack.keycloak.resume()
            raise
    try:
        kept = await pending_attempts(stack, user.open_id)  # the first process is gone
    finally:
        stack.keycloak.resume()
    assert (await asyncio.to_thread(linked_users, stack, user.open_id))[0]["enabled"] is True

    async for _second in running_bridge(stack.settings(**SETTINGS), emulator):
        disabled = await disabled_within(stack, user.open_id, APPLIED_WITHIN)
        left = await pending_attempts(stack, user.open_id)

    assert response.status_code == 200
    assert kept is not None
    assert disabled
    assert left is None
