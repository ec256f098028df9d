"""A linking client whose Keycloak access tokens are lightweight can never link (SECURITY.md, finding 7):
what the real Keycloak leaves out of such a token, and the bridge's answer to it."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from tests.conftest import served_bridge
from tests.integration.test_linking import LINKS, access_token_form, password_grant, password_user

if TYPE_CHECKING:
    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import Stack

LIGHTWEIGHT_APP = "lightweight-app"
LIGHTWEIGHT_WITH_SUB = "lightweight-app-with-sub"


def lightweight_client(stack: Stack, client_id: str, mappers: list[dict[str, Any]]) -> None:
    """A public client with direct access grants whose access tokens are always lightweight."""
    with stack.admin() as admin:
        created = admin.post(
            "/clients",
            json={
                "clientId": client_id,
                "publicClient": True,
                "directAccessGrantsEnabled": True,
                "standardFlowEnabled": False,
                "attributes": {"client.use.lightweight.access.token.enabled": "true"},
                "protocolMappers": mappers,
            },
        )
        assert created.status_code in {201, 409}, created.text


def payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


async def test_a_client_issuing_lightweight_access_tokens_cannot_link(
    stack: Stack, emulator: TikTokEmulator
) -> None:
    """Keycloak's "Always use lightweight access token" leaves the user's `sub` out of the access token,
    so the bridge cannot tell whose account would be linked: 401 invalid_token, nothing linked, however
    the client is allowed in BRIDGE_LINK_CLIENT_IDS."""
    lightweight_client(stack, LIGHTWEIGHT_APP, [])
    user_id, username, password = password_user(stack)
    token = password_grant(stack, username, password, LIGHTWEIGHT_APP)["access_token"]
    claims = payload(token)
    assert "sub" not in claims, sorted(claims)
    assert (claims["typ"], claims["azp"]) == ("Bearer", LIGHTWEIGHT_APP)

    settings = stack.settings(link_client_ids=(LIGHTWEIGHT_APP,))
    async with served_bridge(settings, emulator) as bridge:
        tiktok = emulator.create_user()
        refused = await bridge.http.post(
            LINKS,
            data=access_token_form(emulator, tiktok.open_id),
            headers={"Authorization": f"Bearer {token}"},
        )
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"] == "invalid_token"
    with stack.admin() as admin:
        assert admin.get(f"/users/{user_id}/federated-identity").json() == []


async def test_a_lightweight_client_with_a_sub_mapper_for_lightweight_tokens_links(
    stack: Stack, emulator: TikTokEmulator
) -> None:
    """The way out, measured: a `sub` mapper on the client with "Add to lightweight access token" on puts
    the subject back, and the same link then succeeds."""
    sub_mapper = {
        "name": "sub in lightweight tokens",
        "protocol": "openid-connect",
        "protocolMapper": "oidc-sub-mapper",
        "config": {"access.token.claim": "true", "lightweight.claim": "true"},
    }
    lightweight_client(stack, LIGHTWEIGHT_WITH_SUB, [sub_mapper])
    user_id, username, password = password_user(stack)
    token = password_grant(stack, username, password, LIGHTWEIGHT_WITH_SUB)["access_token"]
    assert payload(token)["sub"] == user_id

    settings = stack.settings(link_client_ids=(LIGHTWEIGHT_WITH_SUB,))
    async with served_bridge(settings, emulator) as bridge:
        tiktok = emulator.create_user()
        linked = await bridge.http.post(
            LINKS,
            data=access_token_form(emulator, tiktok.open_id),
            headers={"Authorization": f"Bearer {token}"},
        )
    assert linked.status_code == 200, linked.text
    assert linked.json()["user_id"] == user_id
