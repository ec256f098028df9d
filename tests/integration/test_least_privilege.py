"""What a leaked bridge credential reaches in the realm the project ships (keycloak-config/), against the
real Keycloak: the outside test's takeover, step by step, refused; tokens without administrative roles;
sessions that never follow their TikTok identity to another account; linking only for accounts the
realm's administrators let into the bridge's group."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import httpx2
import pytest

from tests.integration.test_exchange import linked_users, verified_claims
from tests.integration.test_linking import (
    LINKS,
    access_token_form,
    password_token,
    password_user,
    tiktok_links,
)

if TYPE_CHECKING:
    from bridge.settings import Settings
    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import BridgeClient, Stack

STRAPI = "/api/tiktok-auth-mobile/connect"


@pytest.fixture
def bridge_settings(stack: Stack, account_app: str) -> Settings:
    return stack.settings(
        link_client_ids=(account_app,),
        strapi_keycloak_client_id="tiktok-bridge-strapi",
        strapi_keycloak_client_secret=stack.strapi_client_secret,
    )


def administrator(stack: Stack) -> tuple[str, str, str]:
    """(id, username, password) of a staff account holding realm-admin, as organisations have them."""
    user_id, username, password = password_user(stack, may_link=False)
    with stack.admin() as admin:
        (management,) = admin.get("/clients", params={"clientId": "realm-management"}).json()
        realm_admin = admin.get(f"/clients/{management['id']}/roles/realm-admin").json()
        mapped = admin.post(f"/users/{user_id}/role-mappings/clients/{management['id']}", json=[realm_admin])
        assert mapped.status_code == 204, mapped.text
    return user_id, username, password


def service_account(stack: Stack, client_id: str, secret: str) -> httpx2.Response:
    return httpx2.post(
        f"{stack.keycloak.url}/realms/{stack.realm}/protocol/openid-connect/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
        timeout=30,
    )


def as_service_account(stack: Stack) -> httpx2.Client:
    """The Admin API with nothing but the bridge's admin client id and secret (what leaked)."""
    token = service_account(stack, stack.admin_client_id, stack.admin_client_secret).json()["access_token"]
    return httpx2.Client(
        base_url=f"{stack.keycloak.url}/admin/realms/{stack.realm}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def tiktok_group_id(stack: Stack) -> str:
    with stack.admin() as admin:
        group_id: str = admin.get("/group-by-path/tiktok-users").json()["id"]
        return group_id


async def test_the_client_secrets_alone_cannot_take_over_an_administrator(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """The outside test's takeover: with the bridge's client secrets the attacker links their own TikTok
    identity to a realm administrator, resets the password, or joins the account to the bridge's
    group; every step is refused, and the attacker's sign-ins reach an account of their own."""
    staff_id, staff_name, staff_password = administrator(stack)
    attacker = emulator.create_user()
    group = tiktok_group_id(stack)

    with as_service_account(stack) as leaked:
        link = leaked.post(
            f"/users/{staff_id}/federated-identity/tiktok",
            json={"identityProvider": "tiktok", "userId": attacker.open_id, "userName": "x"},
        )
        reset = leaked.put(
            f"/users/{staff_id}/reset-password",
            json={"type": "password", "value": "pwned", "temporary": False},
        )
        read = leaked.get(f"/users/{staff_id}")
        join = leaked.put(f"/users/{staff_id}/groups/{group}")
        found = leaked.get("/users", params={"username": staff_name, "exact": "true"})
        password_account = leaked.post(
            "/users",
            json={
                "username": f"planted-{secrets.token_hex(3)}",
                "enabled": True,
                "credentials": [{"type": "password", "value": "planted", "temporary": False}],
            },
        )
    minting = service_account(stack, stack.client_id, stack.client_secret)

    assert [r.status_code for r in (link, reset, read, join, password_account)] == [403] * 5
    assert (found.status_code, found.json()) == (200, [])
    assert minting.status_code in {400, 401}
    assert minting.json()["error"] == "unauthorized_client"  # the minting client has no service account
    assert tiktok_links(stack, staff_id) == []
    signed_in = await bridge.exchange(emulator.issue_access_token(attacker.open_id))
    strapi = await bridge.http.post(
        STRAPI, json={"access_token": emulator.issue_access_token(attacker.open_id)}
    )
    assert signed_in.status_code == strapi.status_code == 200
    subjects = {
        verified_claims(stack, signed_in.json()["access_token"])["sub"],
        verified_claims(stack, strapi.json()["jwt"])["sub"],
    }
    assert staff_id not in subjects
    assert subjects == {linked_users(stack, attacker.open_id)[0]["id"]}
    # The administrator's password still works: nothing of the account was touched.
    assert password_token(stack, staff_name, staff_password)


async def test_tokens_the_bridge_mints_carry_no_administrative_role(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """A TikTok user an administrator made realm-admin signs in: the token (and the Strapi endpoint's
    jwt) carries none of realm-management's roles, since the minting clients have no full scope."""
    user = emulator.create_user()
    first = await bridge.exchange(emulator.issue_access_token(user.open_id))
    assert first.status_code == 200, first.text
    (account,) = linked_users(stack, user.open_id)
    with stack.admin() as admin:
        (management,) = admin.get("/clients", params={"clientId": "realm-management"}).json()
        realm_admin = admin.get(f"/clients/{management['id']}/roles/realm-admin").json()
        mapped = admin.post(
            f"/users/{account['id']}/role-mappings/clients/{management['id']}", json=[realm_admin]
        )
        assert mapped.status_code == 204, mapped.text

    again = await bridge.exchange(emulator.issue_access_token(user.open_id))
    strapi = await bridge.http.post(STRAPI, json={"access_token": emulator.issue_access_token(user.open_id)})

    assert again.status_code == strapi.status_code == 200
    for token in (again.json()["access_token"], strapi.json()["jwt"]):
        claims = verified_claims(stack, token)
        assert claims["sub"] == account["id"]
        assert "realm-management" not in (claims.get("resource_access") or {})
        assert not {"realm-admin", "admin"} & set((claims.get("realm_access") or {}).get("roles", []))


async def test_a_session_never_follows_its_identity_to_another_account(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """The outside test's second finding: TikTok user D signs in (session S for account X); an
    administrator deletes X and links D to password user U through the Admin API (the bridge is not
    told); S's refresh is invalid_grant, never a token for U."""
    tiktok = emulator.create_user()
    signed_in = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))
    assert signed_in.status_code == 200, signed_in.text
    session = signed_in.json()["refresh_token"]
    (account,) = linked_users(stack, tiktok.open_id)
    other_id, _, _ = password_user(stack)
    with stack.admin() as admin:
        assert admin.delete(f"/users/{account['id']}").status_code == 204
        moved = admin.post(
            f"/users/{other_id}/federated-identity/tiktok",
            json={"identityProvider": "tiktok", "userId": tiktok.open_id, "userName": tiktok.open_id},
        )
        assert moved.status_code == 204, moved.text

    refreshed = await bridge.refresh(session)

    assert (refreshed.status_code, refreshed.json()["error"]) == (400, "invalid_grant")
    assert "access_token" not in refreshed.json()
    assert (await bridge.refresh(session)).json()["error"] == "invalid_grant"  # and it stays over


async def test_linking_ends_the_identitys_earlier_sessions(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """The same story through the bridge's own linking route: the link ends D's earlier session."""
    tiktok = emulator.create_user()
    signed_in = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))
    session = signed_in.json()["refresh_token"]
    (account,) = linked_users(stack, tiktok.open_id)
    user_id, username, password = password_user(stack)
    with stack.admin() as admin:
        assert admin.delete(f"/users/{account['id']}").status_code == 204

    linked = await bridge.http.post(
        LINKS,
        data=access_token_form(emulator, tiktok.open_id),
        headers={"Authorization": f"Bearer {password_token(stack, username, password)}"},
    )

    assert linked.status_code == 200, linked.text
    assert (await bridge.refresh(session)).json()["error"] == "invalid_grant"
    later = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))
    assert verified_claims(stack, later.json()["access_token"])["sub"] == user_id


async def test_an_account_outside_the_bridges_group_cannot_link(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """A password user the administrators did not put in the bridge's group is refused with 403
    access_denied (its own valid token is not enough), and nothing changes."""
    user_id, username, password = password_user(stack, may_link=False)
    tiktok = emulator.create_user()
    bearer = {"Authorization": f"Bearer {password_token(stack, username, password)}"}

    refused = await bridge.http.post(LINKS, data=access_token_form(emulator, tiktok.open_id), headers=bearer)
    shown = await bridge.http.get(LINKS, headers=bearer)

    body: dict[str, Any] = refused.json()
    assert (refused.status_code, body["error"]) == (403, "access_denied")
    assert "administrator" in body["error_description"]
    assert refused.headers["cache-control"] == "no-store"
    assert shown.status_code == 403
    assert tiktok_links(stack, user_id) == []
    assert linked_users(stack, tiktok.open_id) == []
