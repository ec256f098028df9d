"""The Strapi identifiers an import keeps are declared admin-only: a user can neither read nor change them."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import httpx2

from bridge.domain.strapi import STRAPI_ATTRIBUTES
from bridge.keycloak import realm_spec

if TYPE_CHECKING:
    from tests.conftest import Stack


def test_the_realm_file_declares_them_as_apply_does(stack: Stack) -> None:
    """keycloak-config/ declares strapi_id, strapi_document_id and strapi_created_at exactly as
    `bridge keycloak apply` does: admin-only view and edit."""
    with stack.admin() as admin:
        profile = admin.get("/users/profile").json()
    declared = {a["name"]: a for a in profile["attributes"]}
    for name in STRAPI_ATTRIBUTES:
        wanted = realm_spec.profile_attribute(name)
        assert wanted["permissions"] == {"view": ["admin"], "edit": ["admin"]}
        assert {k: declared[name].get(k) for k in wanted} == wanted
    assert set(STRAPI_ATTRIBUTES) <= set(realm_spec.ATTRIBUTES)


def test_a_user_can_neither_see_nor_forge_them(stack: Stack, account_app: str) -> None:
    """Through Keycloak's account API a user with an imported strapi_id sees no Strapi attribute (nor its
    declaration), and an update naming one is refused as read-only, the administrator's value kept."""
    username, password = f"imported-{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    with stack.admin() as admin:
        made = admin.post(
            "/users",
            json={
                "username": username,
                "enabled": True,
                "firstName": "Imported",
                "lastName": "User",
                "email": f"{username}@example.com",
                "emailVerified": True,
                "credentials": [{"type": "password", "value": password, "temporary": False}],
                "attributes": {"strapi_id": ["41"], "strapi_document_id": ["doc41"]},
            },
        )
        assert made.status_code == 201, made.text
        user_id = made.headers["Location"].rsplit("/", 1)[1]
    token = httpx2.post(
        f"{stack.keycloak.url}/realms/{stack.realm}/protocol/openid-connect/token",
        data={"grant_type": "password", "client_id": account_app, "username": username, "password": password},
    ).json()["access_token"]
    account_url = f"{stack.keycloak.url}/realms/{stack.realm}/account/"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    mine = httpx2.get(account_url, headers=headers)
    assert mine.status_code == 200, mine.text
    body: dict[str, Any] = mine.json()
    assert body["username"] == username
    assert not set(body.get("attributes") or {}) & set(STRAPI_ATTRIBUTES)
    shown = {a["name"] for a in body["userProfileMetadata"]["attributes"]}
    assert "tiktok_union_id" in shown
    assert not shown & set(STRAPI_ATTRIBUTES)
    forged = {**body, "attributes": {**(body.get("attributes") or {}), "strapi_id": ["1"]}}
    answer = httpx2.post(account_url, headers=headers, json=forged)
    assert answer.status_code == 400
    assert answer.json()["errorMessage"] == "error-user-attribute-read-only"
    with stack.admin() as admin:
        kept = admin.get(f"/users/{user_id}").json()["attributes"]
        admin.delete(f"/users/{user_id}")
    assert kept["strapi_id"] == ["41"]
    assert kept["strapi_document_id"] == ["doc41"]
