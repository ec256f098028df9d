"""The realm the project ships (keycloak-config/app-realm.json) as the pinned Keycloak imports it."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import httpx2

if TYPE_CHECKING:
    from tests.conftest import Stack


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_the_admin_client_names_kc_admin_api_and_keycloak_without_it_imports_the_realm_all_the_same(
    stack: Stack,
) -> None:
    """The admin client lists Keycloak 26.8.2's kc-admin-api among its default scopes. Where the realm
    has no such scope (26.7), Keycloak warns and skips the name, and the import goes on; the listed
    scopes replace the realm's defaults, so the service account's token still carries what the bridge
    reads from it (its subject and its realm-management role) and nothing it does not need."""
    with stack.admin() as admin:
        (client,) = admin.get("/clients", params={"clientId": stack.admin_client_id}).json()
        defaults = {s["name"] for s in admin.get(f"/clients/{client['id']}/default-client-scopes").json()}
        realm_has_it = any(s["name"] == "kc-admin-api" for s in admin.get("/client-scopes").json())
    token = httpx2.post(
        f"{stack.keycloak.url}/realms/{stack.realm}/protocol/openid-connect/token",
        data={"grant_type": "client_credentials"},
        auth=(stack.admin_client_id, stack.admin_client_secret),
        timeout=30,
    )

    wanted = {"basic", "roles"}
    if realm_has_it:
        assert defaults == {*wanted, "kc-admin-api"}
    else:
        assert defaults == wanted
        log = stack.keycloak.log_file.read_text(errors="replace")
        assert "Referenced client scope 'kc-admin-api' doesn't exist. Ignoring" in log
    assert token.status_code == 200, token.text
    claims = _claims(token.json()["access_token"])
    assert claims["sub"]
    assert claims["resource_access"]["realm-management"]["roles"] == ["query-users"]
    assert "email" not in claims
    assert "preferred_username" not in claims
