"""The token vault against the real Keycloak, a real redis-server and the TikTok emulator set to
TikTok's current lifetimes (2-hour access tokens, 180-day refresh tokens, strict rotation): a backend
swaps a user's Keycloak token for that user's TikTok token; 20 concurrent requests over 3 replicas at
expiry make one TikTok refresh; every refusal; deauthorization, unlinking and the operator end it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
from typing import TYPE_CHECKING

import httpx2
import pytest
from pydantic import SecretStr

from bridge.operations.operator import end_sessions
from bridge.providers.tiktok.tokens import TOKEN_TYPE_TIKTOK_ACCESS_TOKEN
from tests.conftest import Clock, Stack, served_bridge
from tests.integration.test_linking import LINKS, password_grant, password_token, password_user
from tests.integration.test_webhook import deliver, removed_event

if TYPE_CHECKING:
    from bridge.settings import Settings
    from devstack.tiktok_emulator import EmulatedUser, TikTokEmulator
    from tests.conftest import BridgeClient

REDIRECT = "https://app.example/callback"
CODE_TYPE = "urn:tiktok-keycloak-bridge:params:oauth:token-type:tiktok-authorization-code"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SCOPES = ("user.info.basic", "video.list")
# Where a test reaches an access token's expiry by moving the bridges' clock, TikTok's access tokens
# live this long instead of 2 hours: the realm's own tokens (5 minutes) are judged by that clock too.
SHORT_ACCESS = 120
HOUR = 3600
DAY = 86400
BACKEND = ("backend", "b-secret")
NOTHING_HELD = (
    "No TikTok grant is held for this user: the user must sign in with TikTok "
    "(Login Kit, with an authorization code) first."
)
NOT_OF_THE_REALM = "The subject_token is not a valid access token of the realm."


@pytest.fixture
def emulator(emulator: TikTokEmulator) -> TikTokEmulator:
    """TikTok as its documentation of November 2026 says: access 2 h, refresh 180 days, rotated."""
    emulator.access_token_ttl = 2 * HOUR
    emulator.refresh_token_ttl = 180 * DAY
    return emulator


@pytest.fixture
def bridge_settings(stack: Stack, account_app: str) -> Settings:
    return stack.settings(
        public_client_ids=("mobile",),
        confidential_clients=SecretStr("backend=b-secret,other=o-secret"),
        vault_client_ids=("backend",),
        link_client_ids=(account_app,),
        tiktok_redirect_uris=(REDIRECT,),
        rate_limit_enabled=False,
    )


@pytest.fixture
def bridge_clock(clock: Clock) -> Clock:
    """The vault judges expiry (and realm tokens) by it: a test moves it to an access token's expiry."""
    return clock


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def ask_vault(
    bridge: BridgeClient, keycloak_token: str, client: tuple[str, str] | None = BACKEND, **form: str
) -> httpx2.Response:
    """The backend's request: the user's Keycloak access token for the user's TikTok access token."""
    data = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": keycloak_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "requested_token_type": TOKEN_TYPE_TIKTOK_ACCESS_TOKEN,
        **form,
    }
    return await bridge.http.post("/token", data=data, headers=_basic(*client) if client else {})


def code_for(emulator: TikTokEmulator, user: EmulatedUser) -> dict[str, str]:
    """A Login Kit code with its PKCE verifier, as the form of /token or of a link carries it."""
    verifier = secrets.token_urlsafe(48)
    code = emulator.issue_authorization_code(
        user.open_id,
        redirect_uri=REDIRECT,
        code_challenge=hashlib.sha256(verifier.encode()).hexdigest(),
        scopes=SCOPES,
    )
    return {
        "subject_token": code,
        "subject_token_type": CODE_TYPE,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT,
    }


async def signed_in_with_a_code(bridge: BridgeClient, emulator: TikTokEmulator) -> tuple[EmulatedUser, str]:
    """A fresh TikTok user's sign-in by code in the mobile app: (the user, its Keycloak access token)."""
    user = emulator.create_user()
    form = code_for(emulator, user)
    started = await bridge.exchange(form.pop("subject_token"), client_id="mobile", **form)
    assert started.status_code == 200, started.text
    token: str = started.json()["access_token"]
    return user, token


async def tiktok_open_id(emulator: TikTokEmulator, access_token: str) -> str:
    """Whose TikTok access token this is, by the emulator's user-info (what a backend would call)."""
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=emulator.app), base_url="https://open.tiktokapis.com"
    ) as tiktok:
        answer = await tiktok.get(
            "/v2/user/info/",
            params={"fields": "open_id"},
            headers={"Authorization": f"Bearer {access_token}"},
        )
    assert answer.status_code == 200, answer.text
    open_id: str = answer.json()["data"]["user"]["open_id"]
    return open_id


def assert_refused(
    response: httpx2.Response, status: int, error: str, description: str | None = None
) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert "access_token" not in body
    assert body["error"] == error
    if description is not None:
        assert body["error_description"] == description
    assert response.headers["cache-control"] == "no-store"


async def test_a_backend_gets_a_working_tiktok_token_for_the_signed_in_user(
    emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """The token a code sign-in gave is handed to the backend: it reads that user at TikTok, with
    TikTok's lifetime and scopes; a second request within its life costs TikTok nothing."""
    user, keycloak_token = await signed_in_with_a_code(bridge, emulator)
    calls = dict(emulator.calls)

    answer = await ask_vault(bridge, keycloak_token, scope="video.list")

    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body.keys() == {"access_token", "issued_token_type", "token_type", "expires_in", "scope"}
    assert (body["issued_token_type"], body["token_type"]) == (TOKEN_TYPE_TIKTOK_ACCESS_TOKEN, "Bearer")
    assert 2 * HOUR - 5 <= body["expires_in"] <= 2 * HOUR
    assert body["scope"] == "user.info.basic video.list"
    assert await tiktok_open_id(emulator, body["access_token"]) == user.open_id
    again = await ask_vault(bridge, keycloak_token)
    assert again.json()["access_token"] == body["access_token"]
    assert emulator.calls["token"] == calls["token"]


async def test_twenty_concurrent_requests_over_three_replicas_at_expiry_make_one_refresh(
    stack: Stack, bridge_settings: Settings, emulator: TikTokEmulator, clock: Clock, flushed_redis: None
) -> None:
    """Three replicas on one Redis; at the access token's expiry 20 backends ask at once: TikTok sees
    exactly one refresh (strict rotation would refuse a second one), and all 20 get its working token."""
    emulator.access_token_ttl = SHORT_ACCESS
    async with contextlib.AsyncExitStack() as replicas:
        bridges = [
            await replicas.enter_async_context(served_bridge(bridge_settings, emulator, clock))
            for _ in range(3)
        ]
        user, keycloak_token = await signed_in_with_a_code(bridges[0], emulator)
        first = (await ask_vault(bridges[1], keycloak_token)).json()["access_token"]
        refreshes_before = emulator.calls["token"]
        clock.now += SHORT_ACCESS  # the bridges' view: TikTok's access token has expired

        answers = await asyncio.gather(*(ask_vault(bridges[i % 3], keycloak_token) for i in range(20)))

    assert [a.status_code for a in answers] == [200] * 20, {a.text for a in answers if a.status_code != 200}
    assert emulator.calls["token"] == refreshes_before + 1
    (token,) = {a.json()["access_token"] for a in answers}
    assert token != first
    assert await tiktok_open_id(emulator, token) == user.open_id


async def test_a_realm_token_expired_tampered_or_of_another_realm_is_invalid_request(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient, clock: Clock
) -> None:
    """RFC 8693 §2.2.2: a subject token the realm did not issue, altered, or expired is invalid_request."""
    _user, keycloak_token = await signed_in_with_a_code(bridge, emulator)
    header, payload, signature = keycloak_token.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    master = password_grant(stack, "admin", "admin", "admin-cli", realm="master")["access_token"]

    for subject in (tampered, master, "not-a-jwt"):
        assert_refused(await ask_vault(bridge, subject), 400, "invalid_request", NOT_OF_THE_REALM)
    clock.now += HOUR
    assert_refused(await ask_vault(bridge, keycloak_token), 400, "invalid_request", NOT_OF_THE_REALM)


async def test_clients_without_authentication_or_the_vault_are_refused(
    emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """No client authentication: 401 invalid_client; a confidential client outside the vault, or the
    mobile app itself: refused, with no token."""
    _user, keycloak_token = await signed_in_with_a_code(bridge, emulator)
    assert_refused(await ask_vault(bridge, keycloak_token, client=None), 401, "invalid_client")
    assert_refused(
        await ask_vault(bridge, keycloak_token, client_id="mobile", client=None), 401, "invalid_client"
    )
    assert_refused(
        await ask_vault(bridge, keycloak_token, client=("other", "o-secret")),
        400,
        "unauthorized_client",
        "This client may not receive TikTok access tokens.",
    )


async def test_a_user_who_signed_in_with_an_access_token_only_is_told_to_sign_in_with_a_code(
    emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """A bare TikTok access token gives the bridge no refresh token: nothing held, and the answer says so."""
    user = emulator.create_user()
    signed_in = await bridge.exchange(emulator.issue_access_token(user.open_id), client_id="mobile")
    assert signed_in.status_code == 200, signed_in.text
    assert_refused(
        await ask_vault(bridge, signed_in.json()["access_token"]), 400, "invalid_request", NOTHING_HELD
    )


async def test_a_grant_tiktok_no_longer_honours_is_refused_and_forgotten(
    emulator: TikTokEmulator, bridge: BridgeClient, clock: Clock
) -> None:
    """The user removed the app at TikTok (no webhook came): at expiry TikTok refuses the refresh, the
    backend is told to have the user sign in again, and the grant is gone."""
    emulator.access_token_ttl = SHORT_ACCESS
    user, keycloak_token = await signed_in_with_a_code(bridge, emulator)
    emulator.deauthorize(user.open_id)
    clock.now += SHORT_ACCESS

    ended = await ask_vault(bridge, keycloak_token)

    assert_refused(ended, 400, "invalid_request")
    assert "sign in with TikTok" in ended.json()["error_description"]
    assert "again" in ended.json()["error_description"]
    assert_refused(await ask_vault(bridge, keycloak_token), 400, "invalid_request", NOTHING_HELD)


async def test_a_disabled_user_is_refused_and_the_grant_forgotten(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """Disabled in Keycloak: refused; enabled again, nothing is held until the user signs in anew."""
    user, keycloak_token = await signed_in_with_a_code(bridge, emulator)
    with stack.admin() as admin:
        (kc_user,) = admin.get("/users", params={"idpAlias": "tiktok", "idpUserId": user.open_id}).json()
        admin.put(f"/users/{kc_user['id']}", json={**kc_user, "enabled": False}).raise_for_status()
        assert_refused(
            await ask_vault(bridge, keycloak_token), 400, "invalid_request", "The account is disabled."
        )
        admin.put(f"/users/{kc_user['id']}", json={**kc_user, "enabled": True}).raise_for_status()
    assert_refused(await ask_vault(bridge, keycloak_token), 400, "invalid_request", NOTHING_HELD)


async def test_the_deauthorization_webhook_ends_the_grant(
    emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """TikTok's authorization.removed: the next vault request finds nothing held."""
    user, keycloak_token = await signed_in_with_a_code(bridge, emulator)
    assert (await ask_vault(bridge, keycloak_token)).status_code == 200

    assert (await deliver(bridge, removed_event(user.open_id))).status_code == 200

    assert_refused(await ask_vault(bridge, keycloak_token), 400, "invalid_request", NOTHING_HELD)


async def test_a_link_made_with_a_code_feeds_the_vault_and_unlinking_ends_it(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient, account_app: str
) -> None:
    """A password user links TikTok with a code: a backend gets TikTok's token with that user's own
    Keycloak token (another app's azp); once unlinked, nothing is held."""
    _user_id, username, password = password_user(stack)
    keycloak_token = password_token(stack, username, password)
    tiktok = emulator.create_user()
    bearer = {"Authorization": f"Bearer {keycloak_token}"}
    linked = await bridge.http.post(LINKS, data=code_for(emulator, tiktok), headers=bearer)
    assert linked.status_code == 200, linked.text

    answer = await ask_vault(bridge, keycloak_token)
    assert answer.status_code == 200, answer.text
    assert await tiktok_open_id(emulator, answer.json()["access_token"]) == tiktok.open_id

    assert (await bridge.http.delete(LINKS, headers=bearer)).status_code == 200
    assert_refused(await ask_vault(bridge, keycloak_token), 400, "invalid_request", NOTHING_HELD)


async def test_an_operator_ending_the_users_sessions_ends_the_grant(
    stack: Stack, bridge_settings: Settings, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """`bridge sessions end --user`: the vault holds nothing for the user afterwards."""
    user, keycloak_token = await signed_in_with_a_code(bridge, emulator)
    with stack.admin() as admin:
        (kc_user,) = admin.get("/users", params={"idpAlias": "tiktok", "idpUserId": user.open_id}).json()

    assert await end_sessions(bridge_settings, user_id=kc_user["id"], open_id=None) == 0

    assert_refused(await ask_vault(bridge, keycloak_token), 400, "invalid_request", NOTHING_HELD)


async def test_signing_out_a_code_started_session_ends_the_grant(
    emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """A sign-out (RFC 7009 /revoke of the session's refresh token) revokes at TikTok, and the vault,
    holding a copy of that grant, hands nothing out after it."""
    user = emulator.create_user()
    form = code_for(emulator, user)
    started = await bridge.exchange(form.pop("subject_token"), client_id="mobile", **form)
    assert started.status_code == 200, started.text
    keycloak_token, refresh_token = started.json()["access_token"], started.json()["refresh_token"]
    assert (await ask_vault(bridge, keycloak_token)).status_code == 200
    revocations = emulator.calls["revoke"]

    signed_out = await bridge.http.post("/revoke", data={"token": refresh_token, "client_id": "mobile"})

    assert signed_out.status_code == 200, signed_out.text
    assert emulator.calls["revoke"] == revocations + 1
    assert_refused(await ask_vault(bridge, keycloak_token), 400, "invalid_request", NOTHING_HELD)
