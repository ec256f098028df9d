"""The user the Strapi-compatible endpoint answers: as Strapi knew an imported user, as the plugin would
have made any other."""

from __future__ import annotations

from bridge.domain.model import KeycloakUser
from bridge.web.strapi import strapi_user


def test_an_imported_user_is_answered_with_strapis_own_fields() -> None:
    """Strapi's id (a number), document id, creation time and username, not Keycloak's."""
    user = KeycloakUser(
        id="6b3c0c6e-kc",
        username="tiktok_strapi-4",
        enabled=True,
        attributes={
            "strapi_id": ["4"],
            "strapi_document_id": ["abcdefghijklmnopqrstuvwx"],
            "strapi_created_at": ["2025-03-01T10:00:00.123Z"],
            "strapi_username": ["Alice A."],
            "tiktok_display_name": ["Alice, renamed since"],
        },
        created_timestamp=1_767_225_600_000,
    )
    assert strapi_user(user, "Alice, renamed since") == {
        "id": 4,
        "documentId": "abcdefghijklmnopqrstuvwx",
        "username": "Alice A.",
        "email": None,
        "provider": "tiktok",
        "confirmed": True,
        "blocked": False,
        "createdAt": "2025-03-01T10:00:00.123Z",
        "updatedAt": "2025-03-01T10:00:00.123Z",
        "publishedAt": "2025-03-01T10:00:00.123Z",
    }


def test_a_user_made_by_the_bridge_is_named_by_its_display_name_never_its_keycloak_username() -> None:
    """Its allocated Strapi id, the Keycloak id as documentId, the TikTok display name as username."""
    user = KeycloakUser(
        id="0f9e-kc",
        username="tiktok_abcdefghijklmnopqrst",
        enabled=False,
        attributes={"strapi_id": ["100001"]},
        created_timestamp=1_767_225_600_000,
    )
    answer = strapi_user(user, "Carol")
    assert (answer["id"], answer["documentId"], answer["username"], answer["blocked"]) == (
        100001,
        "0f9e-kc",
        "Carol",
        True,
    )
    assert answer["createdAt"] == "2026-01-01T00:00:00.000Z"
