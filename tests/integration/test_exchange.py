"""The core exchange against a real Keycloak, a real redis-server and the TikTok emulator."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import httpx2
import pytest
import redis.asyncio as aioredis
from joserfc import jwt
from joserfc.jwk import KeySet

from bridge.domain.errors import RateLimited
from bridge.services.provisioning import deterministic_username
from bridge.storage import keys
from bridge.storage.ratelimit import RateLimiter
from bridge.storage.redis_connection import RedisConnection
from tests.conftest import BridgeClient, Stack, running_bridge
from tests.integration.test_session_store import redis_commands, timed_redis_operations

if TYPE_CHECKING:
    from devstack.tiktok_emulator import TikTokEmulator

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def realm_keys(stack: Stack) -> KeySet:
    certs = httpx2.get(f"{stack.keycloak.url}/realms/{stack.realm}/protocol/openid-connect/certs").json()
    return KeySet.import_key_set(certs)


def verified_claims(stack: Stack, token: str) -> dict[str, Any]:
    """Verify a token's signature with the realm's published keys and return its claims."""
    decoded = jwt.decode(token, realm_keys(stack), algorithms=["RS256"])
    claims: dict[str, Any] = decoded.claims
    return claims


def linked_users(stack: Stack, open_id: str) -> list[dict[str, Any]]:
    with stack.admin() as admin:
        users: list[dict[str, Any]] = admin.get(
            "/users", params={"idpAlias": "tiktok", "idpUserId": open_id, "briefRepresentation": "false"}
        ).json()
        return users


async def test_first_login_creates_one_linked_user_and_returns_a_keycloak_token(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """A first exchange provisions exactly one linked user and answers with a realm-signed token for it."""
    user = emulator.create_user(display_name="Tik Toker", username="tiktoker")
    token = emulator.issue_access_token(user.open_id, ["user.info.basic"])

    response = await bridge.exchange(token)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "access_token",
        "issued_token_type",
        "token_type",
        "expires_in",
        "scope",
        "refresh_token",
        "refresh_expires_in",
    }
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] > 0

    users = linked_users(stack, user.open_id)
    assert len(users) == 1
    claims = verified_claims(stack, body["access_token"])
    assert claims["sub"] == users[0]["id"]
    assert claims["iss"] == f"{stack.keycloak.url}/realms/{stack.realm}"
    assert claims["azp"] == stack.client_id
    assert claims["tiktok_open_id"] == user.open_id
    assert users[0]["username"] == deterministic_username("tiktok_", user.open_id)
    assert users[0]["attributes"]["tiktok_display_name"] == ["Tik Toker"]
    assert users[0]["attributes"]["tiktok_union_id"] == [user.union_id]
    assert "email" not in users[0]


async def test_second_login_reuses_the_user_without_tiktok_or_admin_calls(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """A returning user gets a token for the same Keycloak user; a repeated token is not re-verified."""
    user = emulator.create_user()
    token = emulator.issue_access_token(user.open_id)

    first = await bridge.exchange(token)
    second = await bridge.exchange(token)
    fresh_token = emulator.issue_access_token(user.open_id)
    third = await bridge.exchange(fresh_token)

    assert [r.status_code for r in (first, second, third)] == [200, 200, 200]
    subjects = {verified_claims(stack, r.json()["access_token"])["sub"] for r in (first, second, third)}
    assert len(subjects) == 1
    assert len(linked_users(stack, user.open_id)) == 1
    # The second exchange used the cached profile; the third had a new token, so TikTok was asked again.
    assert emulator.calls["user_info"] == 2


async def test_a_returning_identitys_exchange_checks_it_and_starts_its_session_in_one_round_trip(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """Counted by redis-server (MONITOR) on the identity's and the sessions' keys: after the grant, one
    script reads the tombstone and the user entry and writes the session (an MGET before the grant and
    a SET after it before). The session it wrote refreshes."""
    user = emulator.create_user()
    token = emulator.issue_access_token(user.open_id)
    assert (await bridge.exchange(token)).status_code == 200  # signed in once: known to this process
    before = timed_redis_operations()
    async with redis_commands(stack.redis.url, ("user", "revoked", "session")) as received:
        response = await bridge.exchange(token)
    assert response.status_code == 200, response.text
    assert received == ["EVALSHA"]
    after = timed_redis_operations()
    spent = {name: after[name] - before.get(name, 0.0) for name in after if after[name] != before.get(name)}
    spent.pop("due", None)  # the pending-deauthorization poller's, every 5 s, if it ran meanwhile
    assert spent.pop("set_if_current") == 1
    assert "mget" not in spent
    assert "set" not in spent
    # The count of refused tokens per address is a cold-path cost only (SECURITY.md, "credentials and
    # sessions", finding 6).
    assert "counter" not in spent

    refreshed = await bridge.refresh(response.json()["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    first_sub = verified_claims(stack, response.json()["access_token"])["sub"]
    assert verified_claims(stack, refreshed.json()["access_token"])["sub"] == first_sub


async def test_a_first_sign_in_provisions_in_three_redis_round_trips_on_the_identitys_keys(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """Counted by redis-server (MONITOR) on the identity's keys: the user entry with the tombstone, the
    provisioning lock taken with the entry read (one script), the new user's id cached with the lock's
    release (one script). Four before: MGET, SET NX, SET, and the release. The bridge's own count (what
    the bench reads) includes every command sent, a lone release too."""
    warm_up = emulator.create_user()  # loads the scripts into this redis-server
    assert (await bridge.exchange(emulator.issue_access_token(warm_up.open_id))).status_code == 200
    user = emulator.create_user()
    before = timed_redis_operations()
    async with redis_commands(stack.redis.url, ("user", "revoked", "lock:provision")) as received:
        response = await bridge.exchange(emulator.issue_access_token(user.open_id))
    assert response.status_code == 200, response.text
    assert received == ["MGET", "EVALSHA", "EVALSHA"]
    after = timed_redis_operations()
    spent = {name: after[name] - before.get(name, 0.0) for name in after if after[name] != before.get(name)}
    assert spent["lock_and_get"] == spent["set_and_unlock"] == 1
    assert "lock" not in spent
    assert "unlock" not in spent
    # TikTok's user-info quota is `limits`' script in Redis, counted too: the share of every request,
    # and the unproven share first for an address that never signed in.
    assert spent["moving_window"] in (1, 2)
    # The address's count of refused tokens: the attempt counted before TikTok is asked, cleared once
    # TikTok vouched for the token.
    assert spent["counter"] == spent["counter_clear"] == 1

    subject = verified_claims(stack, response.json()["access_token"])["sub"]
    redis = aioredis.Redis.from_url(stack.redis.url)
    try:
        assert not await redis.exists(keys.provisioning_lock("tiktok", user.open_id))
        cached = await redis.get(keys.linked_user("tiktok", user.open_id))
        assert cached is not None
        assert json.loads(cached)["id"] == subject
    finally:
        await redis.aclose()


async def test_the_rate_limits_redis_scripts_are_counted_with_the_caches_commands(stack: Stack) -> None:
    """Each check of a limit is one script in Redis, timed like every other Redis command (dashboards
    and the bench count what is sent); the read behind a refusal's Retry-After too."""
    redis = RedisConnection.from_url(stack.redis.url, timeout=2)
    limiter = RateLimiter(redis.limits_storage, per_ip="2/minute", per_identity="1/minute")
    try:
        before = timed_redis_operations()
        await limiter.check_ip("192.0.2.10")
        await limiter.check_identity("-000counted")
        with pytest.raises(RateLimited):
            await limiter.check_identity("-000counted")
        after = timed_redis_operations()
    finally:
        await redis.aclose()
    spent = {name: after[name] - before.get(name, 0.0) for name in after if after[name] != before.get(name)}
    spent.pop("due", None)  # the pending-deauthorization poller's, if it ran meanwhile
    assert spent == {"sliding_window": 3, "sliding_window_read": 1}


async def test_openid_scope_adds_an_id_token(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """scope=openid is passed to Keycloak, which then issues an ID token for the same user."""
    user = emulator.create_user()
    response = await bridge.exchange(emulator.issue_access_token(user.open_id), scope="openid")

    assert response.status_code == 200, response.text
    body = response.json()
    assert "openid" in body["scope"].split()
    id_claims = verified_claims(stack, body["id_token"])
    assert id_claims["sub"] == verified_claims(stack, body["access_token"])["sub"]
    assert id_claims["aud"] == stack.client_id


async def test_requested_id_token_comes_back_as_the_issued_token(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """requested_token_type=id_token returns the ID token in access_token with token_type N_A (§2.2.1)."""
    user = emulator.create_user()
    response = await bridge.exchange(
        emulator.issue_access_token(user.open_id),
        requested_token_type="urn:ietf:params:oauth:token-type:id_token",
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:id_token"
    assert body["token_type"] == "N_A"
    assert verified_claims(stack, body["access_token"])["typ"] == "ID"


async def test_disabled_user_is_refused(stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient) -> None:
    """After an admin disables the user, the next exchange is refused even though the user id is cached."""
    user = emulator.create_user()
    token = emulator.issue_access_token(user.open_id)
    assert (await bridge.exchange(token)).status_code == 200
    (kc_user,) = linked_users(stack, user.open_id)
    with stack.admin() as admin:
        assert admin.put(f"/users/{kc_user['id']}", json={**kc_user, "enabled": False}).status_code == 204

    response = await bridge.exchange(token)

    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": "The account is disabled."}
    assert response.headers["cache-control"] == "no-store"


async def test_disabled_user_found_by_search_is_refused_without_a_token(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """A disabled user met on the admin-search path (cold cache) is refused before any token is minted."""
    user = emulator.create_user()
    async for bridge in running_bridge(stack.settings(), emulator):
        assert (await bridge.exchange(emulator.issue_access_token(user.open_id))).status_code == 200
    (kc_user,) = linked_users(stack, user.open_id)
    with stack.admin() as admin:
        admin.put(f"/users/{kc_user['id']}", json={**kc_user, "enabled": False})
    async for bridge in running_bridge(stack.settings(redis_url=None), emulator):
        response = await bridge.exchange(emulator.issue_access_token(user.open_id))
    assert response.status_code == 400
    assert response.json()["error_description"] == "The account is disabled."


async def test_invalid_tiktok_token_is_an_rfc_error_and_negatively_cached(
    emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """A token TikTok refuses gets invalid_request; a retry within the negative TTL does not reach TikTok."""
    first = await bridge.exchange("act.not-a-real-token!1234.va")
    second = await bridge.exchange("act.not-a-real-token!1234.va")

    for response in (first, second):
        assert response.status_code == 400
        assert response.json() == {
            "error": "invalid_request",
            "error_description": "The TikTok access token is invalid or expired.",
        }
    assert emulator.calls["user_info"] == 1


async def test_tiktok_outage_and_rate_limit_are_temporarily_unavailable(
    emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """TikTok's 500 and 429 become 503 temporarily_unavailable with a Retry-After, never a 500."""
    user = emulator.create_user()
    emulator.inject_fault("user_info", code="internal_error", http_status=500)
    outage = await bridge.exchange(emulator.issue_access_token(user.open_id))
    emulator.inject_fault("user_info", code="rate_limit_exceeded", http_status=429)
    limited = await bridge.exchange(emulator.issue_access_token(user.open_id))

    assert outage.status_code == 503
    assert outage.json()["error"] == "temporarily_unavailable"
    assert int(outage.headers["retry-after"]) > 0
    assert limited.status_code == 503
    assert int(limited.headers["retry-after"]) == 60


async def test_unlinked_account_holding_the_username_is_not_taken_over(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """If someone else already holds the deterministic username, the bridge picks the next one."""
    user = emulator.create_user()
    squatter = deterministic_username("tiktok_", user.open_id)
    with stack.admin() as admin:
        assert admin.post("/users", json={"username": squatter, "enabled": True}).status_code == 201

    response = await bridge.exchange(emulator.issue_access_token(user.open_id))

    assert response.status_code == 200, response.text
    (linked,) = linked_users(stack, user.open_id)
    assert linked["username"] == deterministic_username("tiktok_", user.open_id, attempt=1)
    assert verified_claims(stack, response.json()["access_token"])["sub"] == linked["id"]


async def test_concurrent_first_logins_create_one_user(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """Ten simultaneous first sign-ins of one TikTok user create one Keycloak user and all get tokens."""
    user = emulator.create_user()
    tokens = [emulator.issue_access_token(user.open_id) for _ in range(10)]

    responses = await asyncio.gather(*(bridge.exchange(t) for t in tokens))

    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
    (linked,) = linked_users(stack, user.open_id)
    assert {verified_claims(stack, r.json()["access_token"])["sub"] for r in responses} == {linked["id"]}


async def test_pseudo_email_is_set_unverified_and_collisions_are_refused(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """With an e-mail template the user gets that address unverified; another account's address is refused."""
    settings = stack.settings(email_template="{union_id}@tiktok.invalid")
    first = emulator.create_user()
    clash = emulator.create_user()
    with stack.admin() as admin:
        owner = {
            "username": f"owner-{clash.open_id[-8:].lower()}",
            "email": f"{clash.union_id}@tiktok.invalid",
        }
        assert admin.post("/users", json={**owner, "enabled": True}).status_code == 201

    async for bridge in running_bridge(settings, emulator):
        ok = await bridge.exchange(emulator.issue_access_token(first.open_id))
        refused = await bridge.exchange(emulator.issue_access_token(clash.open_id))

    assert ok.status_code == 200, ok.text
    (linked,) = linked_users(stack, first.open_id)
    assert linked["email"] == f"{first.union_id}@tiktok.invalid"
    assert linked["emailVerified"] is False
    assert refused.status_code == 400
    assert refused.json()["error_description"] == "The e-mail address is already used by another account."
    assert linked_users(stack, clash.open_id) == []


async def test_removed_link_is_noticed_and_the_user_provisioned_again(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """When an admin removes the TikTok link, the grant fails once inside the bridge, which re-provisions."""
    user = emulator.create_user()
    token = emulator.issue_access_token(user.open_id)
    assert (await bridge.exchange(token)).status_code == 200
    (old,) = linked_users(stack, user.open_id)
    with stack.admin() as admin:
        assert admin.delete(f"/users/{old['id']}/federated-identity/tiktok").status_code == 204

    response = await bridge.exchange(token)

    assert response.status_code == 200, response.text
    (new,) = linked_users(stack, user.open_id)
    assert new["id"] != old["id"]
    assert verified_claims(stack, response.json()["access_token"])["sub"] == new["id"]


async def test_allow_listed_clients_sign_in_and_others_do_not(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """With an allow-list, a known public client and a confidential client with its secret get tokens."""
    user = emulator.create_user()
    settings = stack.settings(public_client_ids=("ios-app",), confidential_clients="web-bff=bff-secret")
    async for bridge in running_bridge(settings, emulator):
        public = await bridge.exchange(emulator.issue_access_token(user.open_id), client_id="ios-app")
        confidential = await bridge.exchange(
            emulator.issue_access_token(user.open_id), client_id="web-bff", client_secret="bff-secret"
        )
        anonymous = await bridge.exchange(emulator.issue_access_token(user.open_id))
    assert (public.status_code, confidential.status_code) == (200, 200)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_client"
