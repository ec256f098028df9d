"""What mobile apps send: Login Kit codes with PKCE, the Strapi-plugin endpoint, and account policies."""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING, Any

import pytest

from bridge.domain.errors import SetupError
from bridge.keycloak.realm_setup import apply
from tests.conftest import Stack, running_bridge
from tests.integration.test_exchange import linked_users, verified_claims

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx2

    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import BridgeClient

CODE_TYPE = "urn:tiktok-keycloak-bridge:params:oauth:token-type:tiktok-authorization-code"
REDIRECT = "https://app.example/tiktok/callback"
STRAPI = "/api/tiktok-auth-mobile/connect"


def pkce(length: int = 43) -> tuple[str, str]:
    """A verifier and TikTok's challenge for it: lowercase hex SHA-256, not RFC 7636 base64url."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    verifier = "".join(secrets.choice(alphabet) for _ in range(length))
    return verifier, hashlib.sha256(verifier.encode()).hexdigest()


@pytest.fixture
async def code_bridge(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> AsyncIterator[BridgeClient]:
    settings = stack.settings(
        tiktok_redirect_uris=(REDIRECT,), tiktok_access_token_scopes=("user.info.basic", "user.info.profile")
    )
    async for client in running_bridge(settings, emulator):
        yield client


def login_kit_code(
    emulator: TikTokEmulator, open_id: str, scopes: tuple[str, ...] = ("user.info.basic",), length: int = 43
) -> tuple[str, str]:
    verifier, challenge = pkce(length)
    code = emulator.issue_authorization_code(
        open_id, redirect_uri=REDIRECT, code_challenge=challenge, scopes=scopes
    )
    return code, verifier


async def exchange_code(
    bridge: BridgeClient, code: str, verifier: str, redirect_uri: str = REDIRECT
) -> httpx2.Response:
    return await bridge.exchange(
        code, subject_token_type=CODE_TYPE, code_verifier=verifier, redirect_uri=redirect_uri
    )


async def test_ios_code_with_pkce_signs_the_user_in(
    stack: Stack, emulator: TikTokEmulator, code_bridge: BridgeClient
) -> None:
    """A 43-character iOS verifier: the code is redeemed with our secret and a Keycloak token returned."""
    user = emulator.create_user(username="ios_user", is_verified=True)
    code, verifier = login_kit_code(emulator, user.open_id, ("user.info.basic", "user.info.profile"))

    response = await exchange_code(code_bridge, code, verifier)

    assert response.status_code == 200, response.text
    (linked,) = linked_users(stack, user.open_id)
    assert verified_claims(stack, response.json()["access_token"])["sub"] == linked["id"]
    assert linked["attributes"]["tiktok_username"] == ["ios_user"]
    assert linked["attributes"]["tiktok_is_verified"] == ["true"]
    assert emulator.calls["token"] == 1


async def test_android_32_character_verifier_is_accepted(
    stack: Stack, emulator: TikTokEmulator, code_bridge: BridgeClient
) -> None:
    """TikTok's Android SDK makes 32-character verifiers, under RFC 7636's minimum; they must work."""
    user = emulator.create_user()
    code, verifier = login_kit_code(emulator, user.open_id, length=32)
    response = await exchange_code(code_bridge, code, verifier)
    assert response.status_code == 200, response.text


async def test_replayed_code_is_refused(emulator: TikTokEmulator, code_bridge: BridgeClient) -> None:
    """Codes are single-use: the second redemption gets TikTok's invalid_grant as a clean RFC error."""
    user = emulator.create_user()
    code, verifier = login_kit_code(emulator, user.open_id)
    assert (await exchange_code(code_bridge, code, verifier)).status_code == 200

    replay = await exchange_code(code_bridge, code, verifier)

    assert replay.status_code == 400
    assert replay.json() == {
        "error": "invalid_request",
        "error_description": "The TikTok authorization code is invalid, expired or already used.",
    }


async def test_pkce_mismatch_is_refused(emulator: TikTokEmulator, code_bridge: BridgeClient) -> None:
    """A verifier that does not hash to the code's challenge is refused by TikTok, and so by the bridge."""
    user = emulator.create_user()
    code, _ = login_kit_code(emulator, user.open_id)
    wrong_verifier, _ = pkce()
    response = await exchange_code(code_bridge, code, wrong_verifier)
    assert response.status_code == 400
    assert response.json()["error_description"] == "The code_verifier does not match the code."


async def test_redirect_uri_not_configured_is_refused_before_tiktok(
    emulator: TikTokEmulator, code_bridge: BridgeClient
) -> None:
    """A redirect URI outside BRIDGE_TIKTOK_REDIRECT_URIS is refused without calling TikTok."""
    user = emulator.create_user()
    code, verifier = login_kit_code(emulator, user.open_id)
    response = await exchange_code(code_bridge, code, verifier, redirect_uri="https://evil.example/cb")
    assert response.status_code == 400
    assert response.json()["error_description"] == "The redirect_uri is not allowed."
    assert emulator.calls["token"] == 0


async def test_redirect_uri_differing_from_the_codes_is_refused(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """An allowed redirect URI that is not the one the code was issued for is refused by TikTok."""
    other = "https://app.example/other"
    user = emulator.create_user()
    code, verifier = login_kit_code(emulator, user.open_id)
    async for bridge in running_bridge(stack.settings(tiktok_redirect_uris=(REDIRECT, other)), emulator):
        response = await exchange_code(bridge, code, verifier, redirect_uri=other)
    assert response.status_code == 400
    assert (
        response.json()["error_description"]
        == "The redirect_uri does not match the one used to obtain the code."
    )


async def test_code_without_basic_scope_is_a_clear_error(
    emulator: TikTokEmulator, code_bridge: BridgeClient
) -> None:
    """A user who granted only user.info.profile cannot be identified; the error names the scope."""
    user = emulator.create_user()
    code, verifier = login_kit_code(emulator, user.open_id, ("user.info.profile",))
    response = await exchange_code(code_bridge, code, verifier)
    assert response.status_code == 400
    assert response.json()["error_description"] == "The user did not grant the user.info.basic scope."
    assert emulator.calls["user_info"] == 0


async def test_partial_scopes_read_only_granted_fields(
    stack: Stack, emulator: TikTokEmulator, code_bridge: BridgeClient
) -> None:
    """With only user.info.basic granted, profile fields are not requested (TikTok would refuse them)."""
    user = emulator.create_user(username="hidden_name")
    code, verifier = login_kit_code(emulator, user.open_id, ("user.info.basic",))
    response = await exchange_code(code_bridge, code, verifier)
    assert response.status_code == 200, response.text
    (linked,) = linked_users(stack, user.open_id)
    assert "tiktok_username" not in linked["attributes"]


async def test_bare_token_with_fewer_scopes_falls_back_to_basic_fields(
    stack: Stack, emulator: TikTokEmulator, code_bridge: BridgeClient
) -> None:
    """A token granted fewer scopes than configured still signs in, with basic fields (two calls)."""
    user = emulator.create_user(username="basic_only")
    response = await code_bridge.exchange(emulator.issue_access_token(user.open_id, ["user.info.basic"]))
    assert response.status_code == 200, response.text
    assert emulator.calls["user_info"] == 2


async def test_missing_union_id_is_fine(
    stack: Stack, emulator: TikTokEmulator, code_bridge: BridgeClient
) -> None:
    """TikTok sometimes omits union_id; the user is provisioned without it."""
    user = emulator.create_user(union_id=None)
    code, verifier = login_kit_code(emulator, user.open_id)
    response = await exchange_code(code_bridge, code, verifier)
    assert response.status_code == 200, response.text
    (linked,) = linked_users(stack, user.open_id)
    assert "tiktok_union_id" not in linked["attributes"]


async def test_profile_change_at_tiktok_follows_on_next_sign_in(
    stack: Stack, emulator: TikTokEmulator, code_bridge: BridgeClient
) -> None:
    """A new display name, username or verification status at TikTok updates the Keycloak attributes."""
    user = emulator.create_user(display_name="Before", username="before", is_verified=False)
    scopes = ["user.info.basic", "user.info.profile"]
    assert (await code_bridge.exchange(emulator.issue_access_token(user.open_id, scopes))).status_code == 200
    emulator.update_user(user.open_id, display_name="After", username="after", is_verified=True)

    response = await code_bridge.exchange(emulator.issue_access_token(user.open_id, scopes))

    assert response.status_code == 200, response.text
    (linked,) = linked_users(stack, user.open_id)
    assert linked["attributes"]["tiktok_display_name"] == ["After"]
    assert linked["attributes"]["tiktok_username"] == ["after"]
    assert linked["attributes"]["tiktok_is_verified"] == ["true"]


async def test_registration_closed_refuses_new_but_admits_existing_users(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """Closed registration: a linked user still signs in, a new TikTok user gets a clear refusal."""
    known = emulator.create_user()
    newcomer = emulator.create_user()
    async for bridge in running_bridge(stack.settings(), emulator):
        assert (await bridge.exchange(emulator.issue_access_token(known.open_id))).status_code == 200
    async for bridge in running_bridge(stack.settings(registration_open=False), emulator):
        known_again = await bridge.exchange(emulator.issue_access_token(known.open_id))
        refused = await bridge.exchange(emulator.issue_access_token(newcomer.open_id))
    assert known_again.status_code == 200
    assert refused.status_code == 400
    assert refused.json()["error_description"] == "Registration of new accounts is closed."
    assert linked_users(stack, newcomer.open_id) == []


async def test_default_groups_and_roles_are_given_to_new_users(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """New users join the configured groups and get the configured realm roles, visible in their token:
    `bridge keycloak apply` maps the roles to the bridge's group, which new users join, and to the
    minting client's scope (full scope is off)."""
    user = emulator.create_user()
    settings = stack.settings(default_groups=("/tiktok-users",), default_realm_roles=("tiktok-user",))
    lines: list[str] = []
    assert apply(settings, admin_user="admin", admin_password="admin", out=lines.append), lines
    assert "realm roles of group '/tiktok-users': create" in lines
    async for bridge in running_bridge(settings, emulator):
        response = await bridge.exchange(emulator.issue_access_token(user.open_id))
    assert response.status_code == 200, response.text
    (linked,) = linked_users(stack, user.open_id)
    with stack.admin() as admin:
        groups = admin.get(f"/users/{linked['id']}/groups").json()
    assert [g["path"] for g in groups] == ["/tiktok-users"]
    claims = verified_claims(stack, response.json()["access_token"])
    assert "tiktok-user" in claims["realm_access"]["roles"]


async def test_unknown_default_group_is_a_configuration_error_not_a_half_user(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """A misspelt group is reported as server_error before any user is created."""
    user = emulator.create_user()
    async for bridge in running_bridge(stack.settings(default_groups=("/no-such-group",)), emulator):
        response = await bridge.exchange(emulator.issue_access_token(user.open_id))
    assert response.status_code == 500
    assert response.json()["error"] == "server_error"
    assert linked_users(stack, user.open_id) == []


async def test_an_unknown_default_role_stops_apply_and_sign_ins_never_map_roles(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """With the bridge's group, roles come through the group: `apply` refuses a role the realm lacks,
    naming it, and a sign-in maps no role itself (the service account may not), so it still works."""
    settings = stack.settings(default_realm_roles=("no-such-role",))
    with pytest.raises(SetupError, match="realm role 'no-such-role'"):
        apply(settings, admin_user="admin", admin_password="admin", out=lambda _line: None)
    user = emulator.create_user()
    async for bridge in running_bridge(settings, emulator):
        response = await bridge.exchange(emulator.issue_access_token(user.open_id))
    assert response.status_code == 200, response.text
    (linked,) = linked_users(stack, user.open_id)
    with stack.admin() as admin:
        roles = admin.get(f"/users/{linked['id']}/role-mappings/realm").json()
    assert "no-such-role" not in {role["name"] for role in roles}


# ------------------------------------------------------------------------------ Strapi endpoint


async def strapi_connect(bridge: BridgeClient, body: Any) -> httpx2.Response:  # noqa: ANN401
    return await bridge.http.post(STRAPI, json=body)


def strapi_error(message: str) -> dict[str, Any]:
    return {
        "data": None,
        "error": {"status": 400, "name": "ApplicationError", "message": message, "details": {}},
    }


async def test_strapi_connect_answers_jwt_and_user(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """The plugin's request shape gets {jwt, user} with a Keycloak token and Strapi's user fields."""
    user = emulator.create_user()
    response = await strapi_connect(bridge, {"access_token": emulator.issue_access_token(user.open_id)})

    assert response.status_code == 200, response.text
    body = response.json()
    (linked,) = linked_users(stack, user.open_id)
    assert verified_claims(stack, body["jwt"])["sub"] == linked["id"]
    assert body["user"] == {
        # The number allocated at this first sign-in, kept on the user (services/strapi_ids.py).
        "id": int(linked["attributes"]["strapi_id"][0]),
        "documentId": linked["id"],
        # The plugin's username: the TikTok display name, never Keycloak's `tiktok_…` one.
        "username": user.display_name,
        "email": None,
        "provider": "tiktok",
        "confirmed": True,
        "blocked": False,
        "createdAt": body["user"]["createdAt"],
        "updatedAt": body["user"]["createdAt"],
        "publishedAt": body["user"]["createdAt"],
    }
    assert body["user"]["createdAt"].endswith("Z")
    assert body["refresh_token"].startswith("tkb1.")  # an extra field the plugin's apps ignore


@pytest.mark.parametrize("body", [{}, {"access_token": ""}, {"access_token": 5}, [], "x", None])
async def test_strapi_connect_without_token(bridge: BridgeClient, body: Any) -> None:  # noqa: ANN401
    """Missing, empty or mistyped tokens get the plugin's "No access token provided." error."""
    response = await strapi_connect(bridge, body)
    assert response.status_code == 400
    assert response.json() == strapi_error("No access token provided.")


async def test_strapi_connect_error_messages(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """TikTok's 401 and messages, closed registration, taken e-mail, blocked users: the plugin's words."""
    blocked = emulator.create_user()
    clash = emulator.create_user()
    newcomer = emulator.create_user()
    settings = stack.settings(email_template="{union_id}@tiktok.invalid")
    async for bridge in running_bridge(settings, emulator):
        assert (
            await strapi_connect(bridge, {"access_token": emulator.issue_access_token(blocked.open_id)})
        ).status_code == 200
    (kc_user,) = linked_users(stack, blocked.open_id)
    with stack.admin() as admin:
        admin.put(f"/users/{kc_user['id']}", json={**kc_user, "enabled": False})
        admin.post(
            "/users",
            json={
                "username": f"mail-{clash.open_id[-6:].lower()}",
                "email": f"{clash.union_id}@tiktok.invalid",
                "enabled": True,
            },
        )

    async for bridge in running_bridge(settings, emulator):
        invalid = await strapi_connect(bridge, {"access_token": "act.unknown!0000.va"})
        emulator.inject_fault(
            "user_info", code="scope_not_authorized", http_status=200, message="Scope missing here."
        )
        passthrough = await strapi_connect(
            bridge, {"access_token": emulator.issue_access_token(newcomer.open_id)}
        )
        taken = await strapi_connect(bridge, {"access_token": emulator.issue_access_token(clash.open_id)})
        disabled = await strapi_connect(
            bridge, {"access_token": emulator.issue_access_token(blocked.open_id)}
        )
    async for bridge in running_bridge(stack.settings(registration_open=False, redis_url=None), emulator):
        closed = await strapi_connect(bridge, {"access_token": emulator.issue_access_token(newcomer.open_id)})

    assert invalid.json() == strapi_error("Failed to fetch TikTok user: Request failed with status code 401")
    assert passthrough.json() == strapi_error("Scope missing here.")
    assert taken.json() == strapi_error("Email is already taken.")
    assert disabled.json() == strapi_error("Your account has been blocked by an administrator")
    assert closed.json() == strapi_error("Register action is actually not available.")
    assert {r.status_code for r in (invalid, passthrough, taken, disabled, closed)} == {400}


async def test_strapi_connect_user_not_exist(emulator: TikTokEmulator, bridge: BridgeClient) -> None:
    """A TikTok success answer without a user maps to the plugin's "User not exist."."""
    user = emulator.create_user()
    emulator.inject_fault("user_info", code="ok", http_status=200)
    response = await strapi_connect(bridge, {"access_token": emulator.issue_access_token(user.open_id)})
    assert response.json() == strapi_error("User not exist.")


async def test_strapi_endpoint_can_be_switched_off(stack: Stack, emulator: TikTokEmulator) -> None:
    """With the compatibility endpoint disabled the path does not exist."""
    async for bridge in running_bridge(stack.settings(strapi_compat_enabled=False, redis_url=None), emulator):
        response = await strapi_connect(bridge, {"access_token": "act.x!1234.va"})
    assert response.status_code == 404


async def test_removed_link_with_registration_closed_is_refused(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """An admin removed the TikTok link and registration is closed: refused, and no new account appears."""
    user = emulator.create_user()
    async for bridge in running_bridge(stack.settings(), emulator):
        assert (await bridge.exchange(emulator.issue_access_token(user.open_id))).status_code == 200
    (old,) = linked_users(stack, user.open_id)
    with stack.admin() as admin:
        assert admin.delete(f"/users/{old['id']}/federated-identity/tiktok").status_code == 204
    async for bridge in running_bridge(stack.settings(registration_open=False), emulator):
        response = await bridge.exchange(emulator.issue_access_token(user.open_id))
    assert response.status_code == 400
    assert response.json()["error_description"] == "Registration of new accounts is closed."
    assert linked_users(stack, user.open_id) == []
    with stack.admin() as admin:
        assert admin.get(f"/users/{old['id']}").json()["enabled"] is True  # the old account is left alone
