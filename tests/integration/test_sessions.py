"""Bridge sessions against a real Keycloak, a real redis-server and the TikTok emulator."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import TYPE_CHECKING, Any

import httpx2
import pytest
import redis.asyncio as aioredis
from oauthlib.oauth2 import WebApplicationClient

from bridge.services.sessions import parse_token
from bridge.storage import keys
from tests.conftest import BridgeClient, Clock, Stack, running_bridge, served_bridge
from tests.integration.test_exchange import linked_users, verified_claims
from tests.integration.test_session_store import redis_commands, timed_redis_operations

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from bridge.settings import Settings
    from devstack.tiktok_emulator import EmulatedUser, TikTokEmulator

DAY = 86400.0
REDIRECT = "https://app.example/callback"


@pytest.fixture
def bridge_settings(stack: Stack) -> Settings:
    return stack.settings(session_reuse_grace=5.0, tiktok_redirect_uris=(REDIRECT,))


@pytest.fixture
def bridge_clock(clock: Clock) -> Clock:
    return clock


async def signed_in(bridge: BridgeClient, emulator: TikTokEmulator) -> tuple[str, dict[str, Any]]:
    """(open_id, token answer) of a fresh TikTok user's first exchange."""
    user = emulator.create_user()
    response = await bridge.exchange(emulator.issue_access_token(user.open_id), scope="openid")
    assert response.status_code == 200, response.text
    return user.open_id, response.json()


async def signed_in_with_a_code(
    bridge: BridgeClient, emulator: TikTokEmulator
) -> tuple[EmulatedUser, httpx2.Response]:
    """A fresh TikTok user's sign-in by Login Kit code with PKCE: (the user, the bridge's 200 answer)."""
    user = emulator.create_user()
    verifier = secrets.token_urlsafe(48)
    code = emulator.issue_authorization_code(
        user.open_id, redirect_uri=REDIRECT, code_challenge=hashlib.sha256(verifier.encode()).hexdigest()
    )
    started = await bridge.exchange(
        code,
        subject_token_type="urn:tiktok-keycloak-bridge:params:oauth:token-type:tiktok-authorization-code",
        code_verifier=verifier,
        redirect_uri=REDIRECT,
    )
    assert started.status_code == 200, started.text
    return user, started


async def test_a_session_refreshes_into_fresh_keycloak_tokens_for_the_same_user(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """The exchange answers a refresh token; refreshing it answers a new Keycloak token for the same
    user (verified with the realm's keys), a new refresh token, and refresh_expires_in; TikTok is not
    asked again."""
    open_id, first = await signed_in(bridge, emulator)
    assert first["refresh_expires_in"] == int(30 * DAY)
    calls = dict(emulator.calls)

    response = await bridge.refresh(first["refresh_token"])

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) >= {"access_token", "token_type", "expires_in", "refresh_token", "refresh_expires_in"}
    assert body["refresh_token"] != first["refresh_token"]
    (user,) = linked_users(stack, open_id)
    assert verified_claims(stack, body["access_token"])["sub"] == user["id"]
    assert "id_token" in body  # the session keeps the scope it started with (openid)
    assert emulator.calls == calls


async def test_reuse_after_the_grace_revokes_the_family(
    bridge: BridgeClient, emulator: TikTokEmulator, clock: Clock
) -> None:
    """A retry within the grace window gets the same successor; the same old token later is theft:
    refused, and the newest token stops working too."""
    _, first = await signed_in(bridge, emulator)
    answer = (await bridge.refresh(first["refresh_token"])).json()
    clock.now += 2
    retry = await bridge.refresh(first["refresh_token"])
    assert retry.status_code == 200
    assert retry.json()["refresh_token"] == answer["refresh_token"]

    clock.now += 10
    reused = await bridge.refresh(first["refresh_token"])
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")
    newest = await bridge.refresh(answer["refresh_token"])
    assert (newest.status_code, newest.json()["error"]) == (400, "invalid_grant")


async def test_idle_and_absolute_lifetimes(
    bridge: BridgeClient, emulator: TikTokEmulator, clock: Clock
) -> None:
    """Refreshed within the idle timeout a session lives on, up to its absolute maximum; idle for
    longer, it is over."""
    _, first = await signed_in(bridge, emulator)
    token = first["refresh_token"]
    for _ in range(4):
        clock.now += 20 * DAY
        response = await bridge.refresh(token)
        assert response.status_code == 200, response.text
        token = response.json()["refresh_token"]
    assert response.json()["refresh_expires_in"] == int(10 * DAY)
    clock.now += 10 * DAY
    assert (await bridge.refresh(token)).json()["error"] == "invalid_grant"

    _, other = await signed_in(bridge, emulator)
    clock.now += 30 * DAY + 1
    assert (await bridge.refresh(other["refresh_token"])).json()["error"] == "invalid_grant"


async def test_rfc7009_revocation_ends_the_session(bridge: BridgeClient, emulator: TikTokEmulator) -> None:
    """Revoking answers 200 with no body, also for unknown or garbage tokens, and the session is over."""
    _, first = await signed_in(bridge, emulator)
    for token in (first["refresh_token"], first["refresh_token"], "garbage", first["access_token"]):
        response = await bridge.revoke(token, token_type_hint="refresh_token")
        assert (response.status_code, response.content) == (200, b"")
        assert response.headers["cache-control"] == "no-store"
    assert (await bridge.refresh(first["refresh_token"])).json()["error"] == "invalid_grant"


@pytest.mark.parametrize("change", ["disable", "unlink", "delete"])
async def test_keycloak_refusing_the_user_ends_the_session(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient, change: str
) -> None:
    """A user disabled, unlinked or deleted in Keycloak is refused at the next refresh, for good."""
    open_id, first = await signed_in(bridge, emulator)
    (user,) = linked_users(stack, open_id)
    with stack.admin() as admin:
        if change == "disable":
            admin.put(f"/users/{user['id']}", json={**user, "enabled": False}).raise_for_status()
        elif change == "unlink":
            admin.delete(f"/users/{user['id']}/federated-identity/tiktok").raise_for_status()
        else:
            admin.delete(f"/users/{user['id']}").raise_for_status()

    response = await bridge.refresh(first["refresh_token"])
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")
    if change == "disable":
        with stack.admin() as admin:
            admin.put(f"/users/{user['id']}", json={**user, "enabled": True}).raise_for_status()
    assert (await bridge.refresh(first["refresh_token"])).json()["error"] == "invalid_grant"


async def test_the_deauthorization_webhook_ends_every_session_of_the_user(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """TikTok's authorization.removed ends both sessions of the user at once; another user's lives on."""
    user = emulator.create_user()
    sessions = [
        (await bridge.exchange(emulator.issue_access_token(user.open_id))).json()["refresh_token"]
        for _ in range(2)
    ]
    _, bystander = await signed_in(bridge, emulator)
    body, signature = emulator.deauthorization_event(user.open_id)
    delivered = await bridge.http.post(
        "/webhooks/tiktok",
        content=body,
        headers={"TikTok-Signature": signature, "Content-Type": "application/json"},
    )
    assert delivered.status_code == 200, delivered.text

    for token in sessions:
        assert (await bridge.refresh(token)).json()["error"] == "invalid_grant"
    assert (await bridge.refresh(bystander["refresh_token"])).status_code == 200


async def test_a_session_started_from_a_code_ends_when_tiktok_refuses_the_recheck(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient, clock: Clock
) -> None:
    """A code-started session re-checks TikTok after a day (rotating TikTok's refresh token); once the
    user removed the app at TikTok, the next re-check ends the session."""
    user, started = await signed_in_with_a_code(bridge, emulator)
    token = started.json()["refresh_token"]
    token_calls = emulator.calls["token"]

    clock.now += DAY
    response = await bridge.refresh(token)
    assert response.status_code == 200, response.text
    assert emulator.calls["token"] == token_calls + 1  # one refresh at TikTok, rotation kept
    token = response.json()["refresh_token"]
    clock.now += DAY
    response = await bridge.refresh(token)
    assert response.status_code == 200, response.text  # the rotated TikTok refresh token worked
    token = response.json()["refresh_token"]

    emulator.deauthorize(user.open_id)
    clock.now += DAY
    refused = await bridge.refresh(token)
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")


async def test_concurrent_refreshes_on_three_replicas_yield_one_live_successor(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """The same token refreshed at once on three replicas (one Redis): every success names the same
    successor, which is live; nothing else is."""
    settings = stack.settings(session_reuse_grace=30.0)
    replicas = [running_bridge(settings, emulator) for _ in range(3)]
    clients = [await anext(r) for r in replicas]
    try:
        _, first = await signed_in(clients[0], emulator)
        answers = await asyncio.gather(*(clients[i % 3].refresh(first["refresh_token"]) for i in range(9)))
        successors = {a.json()["refresh_token"] for a in answers if a.status_code == 200}
        assert len(successors) == 1, [a.text for a in answers]
        (successor,) = successors
        assert (await clients[1].refresh(successor)).status_code == 200
    finally:
        for replica in replicas:
            await replica.aclose()


def session_commands(redis_url: str) -> AbstractAsyncContextManager[list[str]]:
    """The commands redis-server receives on session keys while the block runs (`redis_commands`)."""
    return redis_commands(redis_url, SESSION_KEY_KINDS)


SESSION_KEY_KINDS = ("session", "lock:session", "sessions-not-before")


async def test_a_refresh_with_its_lock_free_makes_two_redis_round_trips(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """Counted by Redis (MONITOR) and by the bridge's timed operations (what the bench reads): the lock
    with the record, then the rotated record with the lock's release in a script that reads the
    identity's not-before time too. Five at first (lock, GET, GET, SET, unlock), three before this."""
    _, first = await signed_in(bridge, emulator)
    token = (await bridge.refresh(first["refresh_token"])).json()["refresh_token"]  # the scripts loaded
    before = timed_redis_operations()
    async with session_commands(stack.redis.url) as received:
        response = await bridge.refresh(token)
    assert response.status_code == 200, response.text
    assert received == ["EVALSHA", "EVALSHA"]
    after = timed_redis_operations()
    spent = {name: after[name] - before.get(name, 0.0) for name in after if after[name] != before.get(name)}
    spent.pop("due", None)  # the pending-deauthorization poller's, every 5 s, if it ran meanwhile
    assert spent.pop("sliding_window") == 1  # the per-address rate limit in front of the endpoint
    assert spent == {"lock_and_get": 1, "set_unless_ended_and_unlock": 1}
    parsed = parse_token(token)
    assert parsed is not None
    redis = aioredis.Redis.from_url(stack.redis.url)
    try:
        assert not await redis.exists(keys.session_lock(parsed[0]))  # the lock went with the write
    finally:
        await redis.aclose()


async def test_redis_restarted_empty_signs_users_out_and_revives_nothing(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """Redis losing its data (a restart without persistence): live sessions end (invalid_grant, sign in
    with TikTok again), and a session revoked before stays revoked."""
    _, live = await signed_in(bridge, emulator)
    _, revoked = await signed_in(bridge, emulator)
    assert (await bridge.revoke(revoked["refresh_token"])).status_code == 200

    # A real restart of a Redis without persistence: it comes back empty, on the same address.
    await asyncio.to_thread(stack.redis.stop)
    await asyncio.to_thread(stack.redis.start)

    for token in (live["refresh_token"], revoked["refresh_token"]):
        # The first calls after the restart may meet the old connection's error (503) while the pool
        # reconnects; then the answer is the session's fate.
        for _ in range(20):
            refused = await bridge.refresh(token)
            if refused.status_code != 503:
                break
            await asyncio.sleep(0.25)
        assert refused.json()["error"] == "invalid_grant"
    assert (
        await bridge.exchange(emulator.issue_access_token(emulator.create_user().open_id))
    ).status_code == 200


async def test_refresh_answers_503_while_redis_is_unreachable(stack: Stack, emulator: TikTokEmulator) -> None:
    """No guessing from one replica's memory: with the session store unreachable, refresh is 503 with
    Retry-After; sign-ins still work (served from memory), without a refresh token."""
    settings = stack.settings(redis_url="redis://127.0.0.1:1/0", redis_timeout=0.2)
    async with served_bridge(settings, emulator) as bridge:
        user = emulator.create_user()
        response = await bridge.exchange(emulator.issue_access_token(user.open_id))
        assert response.status_code == 200, response.text
        assert "refresh_token" not in response.json()
        refreshed = await bridge.refresh("tkb1." + "a" * 22 + "." + "b" * 43)
        assert refreshed.status_code == 503
        assert int(refreshed.headers["retry-after"]) >= 1


async def test_a_standard_oauth_library_refreshes_and_revokes_from_the_metadata(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """oauthlib, knowing only the RFC 8414 metadata, builds the refresh and revocation requests and
    accepts the answers (it validates token_type, scope and expiry fields)."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the test bridge's issuer is loopback http
    metadata = (await bridge.http.get("/.well-known/oauth-authorization-server")).json()
    assert "refresh_token" in metadata["grant_types_supported"]
    _, first = await signed_in(bridge, emulator)
    client = WebApplicationClient("mobile-app")
    client.parse_request_body_response(httpx2.Response(200, json=first).text)

    body = client.prepare_refresh_body(refresh_token=first["refresh_token"])
    token_path = metadata["token_endpoint"].removeprefix(stack.issuer)
    response = await bridge.http.post(
        token_path, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    token = client.parse_request_body_response(response.text)
    assert token["refresh_token"] != first["refresh_token"]
    assert client.access_token == token["access_token"]

    url, headers, body = client.prepare_token_revocation_request(
        metadata["revocation_endpoint"], token["refresh_token"], token_type_hint="refresh_token"
    )
    revoked = await bridge.http.post(url.removeprefix(stack.issuer), content=body, headers=headers)
    assert revoked.status_code == 200
    assert (await bridge.refresh(token["refresh_token"])).json()["error"] == "invalid_grant"


async def test_the_strapi_endpoint_mints_thirty_day_tokens_with_its_own_client(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """With the compat client configured, the plugin-shaped answer carries a Keycloak token that lives
    as long as the plugin's JWT (30 days), names that client, and comes with a refresh token; every
    field of the plugin's example user is there."""
    settings = stack.settings(
        strapi_keycloak_client_id="tiktok-bridge-strapi",
        strapi_keycloak_client_secret=stack.strapi_client_secret,
    )
    async with served_bridge(settings, emulator) as bridge:
        user = emulator.create_user()
        response = await bridge.http.post(
            "/api/tiktok-auth-mobile/connect",
            json={"access_token": emulator.issue_access_token(user.open_id)},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        claims = verified_claims(stack, body["jwt"])
        assert claims["exp"] - claims["iat"] == int(30 * DAY)
        assert claims["azp"] == "tiktok-bridge-strapi"
        assert set(body["user"]) == {
            "id",
            "documentId",
            "username",
            "email",
            "provider",
            "confirmed",
            "blocked",
            "createdAt",
            "updatedAt",
            "publishedAt",
        }
        assert body["user"]["documentId"] == claims["sub"]
        # A user the bridge made gets a number, which the compat client's tokens carry as a claim.
        assert isinstance(body["user"]["id"], int)
        assert claims["strapi_id"] == body["user"]["id"]
        assert (await bridge.refresh(body["refresh_token"])).status_code == 200


async def test_a_dpop_bound_session_refreshes_only_with_a_proof_of_its_key(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """An exchange carrying a DPoP proof binds the session: a refresh without a proof, or with another
    key's, is invalid_grant and consumes nothing; with a fresh proof of the same key it works."""
    from joserfc.jwk import ECKey  # noqa: PLC0415

    from tests.unit.test_dpop import proof  # noqa: PLC0415

    key, other = ECKey.generate_key("P-256"), ECKey.generate_key("P-256")
    url = f"{stack.issuer}/token"
    user = emulator.create_user()
    started = await bridge.http.post(
        "/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": emulator.issue_access_token(user.open_id),
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        },
        headers={"DPoP": proof(key, htu=url)},
    )
    assert started.status_code == 200, started.text
    token = started.json()["refresh_token"]

    assert (await bridge.refresh(token)).json()["error"] == "invalid_grant"
    stolen = await bridge.http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": token},
        headers={"DPoP": proof(other, htu=url)},
    )
    assert stolen.json()["error"] == "invalid_grant"
    owned = await bridge.http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": token},
        headers={"DPoP": proof(key, htu=url)},
    )
    assert owned.status_code == 200, owned.text


async def test_a_dpop_bound_refresh_token_is_revoked_without_a_proof(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """Decided (SECURITY.md, "credentials and sessions", finding 7): revocation needs no DPoP proof, as RFC
    9449 asks none at RFC 7009's endpoint. A holder of a copy without the key can end the session (the user
    signs in again), never use it; an app whose key is gone (reinstalled, keystore wiped) can still sign its
    user out."""
    from joserfc.jwk import ECKey  # noqa: PLC0415

    from tests.unit.test_dpop import proof  # noqa: PLC0415

    key = ECKey.generate_key("P-256")
    url = f"{stack.issuer}/token"
    user = emulator.create_user()
    started = await bridge.http.post(
        "/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": emulator.issue_access_token(user.open_id),
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        },
        headers={"DPoP": proof(key, htu=url)},
    )
    assert started.status_code == 200, started.text
    token = started.json()["refresh_token"]

    assert (await bridge.revoke(token)).status_code == 200
    after = await bridge.http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": token},
        headers={"DPoP": proof(key, htu=url)},
    )
    assert after.json()["error"] == "invalid_grant"


async def test_logging_out_revokes_the_tiktok_grant_too(
    emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """Revoking a code-started session also revokes the app's grant at TikTok (POST /v2/oauth/revoke/)."""
    _, started = await signed_in_with_a_code(bridge, emulator)
    revocations = emulator.calls["revoke"]
    assert (await bridge.revoke(started.json()["refresh_token"])).status_code == 200
    assert emulator.calls["revoke"] == revocations + 1


async def test_a_session_is_refreshed_and_revoked_only_by_the_client_it_was_issued_to(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """With the client allow-list on, app-b cannot revoke app-a's refresh token nor app-a a confidential
    client's (400 unauthorized_client, and the sessions go on); the Strapi endpoint's session is bound to
    `tiktok-auth-mobile`, which alone may refresh and revoke it."""
    settings = stack.settings(public_client_ids=("app-a", "app-b"), confidential_clients="conf-c=conf-secret")
    async with served_bridge(settings, emulator) as bridge:
        user = emulator.create_user()
        of_a = await bridge.exchange(emulator.issue_access_token(user.open_id), client_id="app-a")
        of_c = await bridge.exchange(
            emulator.issue_access_token(user.open_id), client_id="conf-c", client_secret="conf-secret"
        )
        of_strapi = await bridge.http.post(
            "/api/tiktok-auth-mobile/connect",
            json={"access_token": emulator.issue_access_token(user.open_id)},
        )
        a, c, strapi = (r.json()["refresh_token"] for r in (of_a, of_c, of_strapi))

        refused = [
            await bridge.revoke(a, client_id="app-b"),
            await bridge.revoke(c, client_id="app-a"),
            await bridge.revoke(strapi, client_id="app-b"),
        ]
        strangers = [
            await bridge.refresh(strapi, client_id="app-b"),
            await bridge.refresh(strapi, client_id="conf-c", client_secret="conf-secret"),
        ]
        kept = [
            await bridge.refresh(a, client_id="app-a"),
            await bridge.refresh(c, client_id="conf-c", client_secret="conf-secret"),
            await bridge.refresh(strapi, client_id="tiktok-auth-mobile"),
        ]
        newest = kept[2].json()["refresh_token"]
        revoked = await bridge.revoke(newest, client_id="tiktok-auth-mobile")
        after = await bridge.refresh(newest, client_id="tiktok-auth-mobile")

    assert [(r.status_code, r.json()["error"]) for r in refused] == [(400, "unauthorized_client")] * 3
    assert [r.json()["error"] for r in strangers] == ["invalid_grant"] * 2
    assert [r.status_code for r in kept] == [200] * 3
    assert revoked.status_code == 200
    assert after.json()["error"] == "invalid_grant"
