"""TikTok's authorization.removed webhook against the real Keycloak."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from tests.conftest import CLIENT_KEY, CLIENT_SECRET, Stack, running_bridge
from tests.integration.test_exchange import linked_users
from tests.integration.test_session_store import timed_redis_operations
from tests.unit.test_webhook_signature import sign

if TYPE_CHECKING:
    import httpx2

    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import BridgeClient


def removed_event(open_id: str, *, reason: int = 1, client_key: str = CLIENT_KEY) -> bytes:
    content = json.dumps({"reason": reason})
    return json.dumps(
        {
            "client_key": client_key,
            "event": "authorization.removed",
            "create_time": int(time.time()),
            "user_openid": open_id,
            "content": content,
        }
    ).encode()


async def deliver(bridge: BridgeClient, body: bytes, header: str | None = None) -> httpx2.Response:
    headers = {
        "content-type": "application/json",
        "TikTok-Signature": header or sign(body, int(time.time()), CLIENT_SECRET),
    }
    return await bridge.http.post("/webhooks/tiktok", content=body, headers=headers)


async def linked_user_after(stack: Stack, open_id: str, check: str) -> list[dict[str, object]]:
    """The policy runs after the 200 went out: give it a moment."""
    for _ in range(50):
        users = linked_users(stack, open_id)
        if check == "disabled" and users and users[0]["enabled"] is False:
            return users
        if check == "unlinked" and not users:
            return users
        await asyncio.sleep(0.1)
    return linked_users(stack, open_id)


@pytest.mark.parametrize("policy", ["disable", "unlink", "record"])
async def test_signed_removal_applies_the_policy(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None, policy: str
) -> None:
    """A signed authorization.removed is answered 200 at once and the configured policy is applied."""
    user = emulator.create_user()
    async for bridge in running_bridge(stack.settings(deauthorization_policy=policy), emulator):
        assert (await bridge.exchange(emulator.issue_access_token(user.open_id))).status_code == 200
        (before,) = linked_users(stack, user.open_id)
        response = await deliver(bridge, removed_event(user.open_id))
        assert response.status_code == 200
        assert response.json() == {"status": "accepted"}
        if policy == "disable":
            (after,) = await linked_user_after(stack, user.open_id, "disabled")
            assert after["enabled"] is False
            refused = await bridge.exchange(emulator.issue_access_token(user.open_id))
            assert refused.json()["error_description"] == "The account is disabled."
        elif policy == "unlink":
            assert await linked_user_after(stack, user.open_id, "unlinked") == []
            with stack.admin() as admin:
                assert admin.get(f"/users/{before['id']}").json()["enabled"] is True  # account kept
        else:
            (after,) = linked_users(stack, user.open_id)
            assert after["enabled"] is True


async def test_duplicate_delivery_is_acknowledged_once(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """TikTok delivers at least once: the same event again is answered 200 "duplicate" and not re-applied."""
    user = emulator.create_user()
    body = removed_event(user.open_id)
    first = await deliver(bridge, body)
    again = await deliver(bridge, body)
    assert first.json() == {"status": "accepted"}
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate"}


async def test_bad_and_stale_signatures_are_refused(emulator: TikTokEmulator, bridge: BridgeClient) -> None:
    """A wrong signature or an old timestamp gets 401 and nothing happens."""
    body = removed_event(emulator.create_user().open_id)
    wrong = await deliver(bridge, body, sign(body, int(time.time()), "not-our-secret"))
    stale = await deliver(bridge, body, sign(body, int(time.time()) - 3600, CLIENT_SECRET))
    missing = await bridge.http.post(
        "/webhooks/tiktok", content=body, headers={"content-type": "application/json"}
    )
    for response in (wrong, stale, missing):
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_request"


async def test_other_apps_and_events_are_ignored(emulator: TikTokEmulator, bridge: BridgeClient) -> None:
    """Events for another client key or of another type are acknowledged and ignored."""
    open_id = emulator.create_user().open_id
    other_app = await deliver(bridge, removed_event(open_id, client_key="someone-else"))
    body = json.dumps(
        {"client_key": CLIENT_KEY, "event": "video.publish.completed", "user_openid": open_id}
    ).encode()
    other_event = await deliver(bridge, body)
    not_json = await deliver(bridge, b"not json")
    assert other_app.json() == {"status": "ignored"}
    assert other_event.json() == {"status": "ignored"}
    assert not_json.status_code == 400


@pytest.mark.parametrize("open_id", ["", "\ud800", "naïve", "a b", "x" * 257, 5, None])
async def test_signed_events_naming_no_possible_user_are_refused(
    bridge: BridgeClient, open_id: object
) -> None:
    """A signed event whose user_openid cannot be a TikTok open_id (a lone surrogate, valid in JSON, once
    failed deep in the policy task) is refused with 400 before anything is applied."""
    body = json.dumps(
        {"client_key": CLIENT_KEY, "event": "authorization.removed", "user_openid": open_id}
    ).encode()  # ASCII-escaped JSON, as TikTok sends it
    response = await deliver(bridge, body)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": "Not a TikTok event."}


async def test_a_returning_users_cached_token_is_refused_after_removal_and_starts_no_session(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """Policy `record`: Keycloak still accepts the user, so the tombstone alone refuses. The bridge has
    signed this identity in, so it asks Keycloak first and reads the tombstone in the script that
    would write the session: the same refusal as before the change, and no session written."""
    user = emulator.create_user()
    token = emulator.issue_access_token(user.open_id)
    redis = aioredis.Redis.from_url(stack.redis.url)
    try:
        async for bridge in running_bridge(stack.settings(deauthorization_policy="record"), emulator):
            assert (await bridge.exchange(token)).status_code == 200
            assert (await deliver(bridge, removed_event(user.open_id))).status_code == 200
            sessions = [key async for key in redis.scan_iter(match="tkb:v1:session:*")]
            before = timed_redis_operations()

            refused = await bridge.exchange(token)

            assert refused.status_code == 400, refused.text
            assert refused.json()["error_description"] == "The TikTok access token is invalid or expired."
            after = timed_redis_operations()
            assert after["set_if_current"] - before.get("set_if_current", 0.0) == 1  # the path taken
            assert [key async for key in redis.scan_iter(match="tkb:v1:session:*")] == sessions
    finally:
        await redis.aclose()
