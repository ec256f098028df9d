"""Old app builds against the real thing: users imported from the real Strapi are answered with their
Strapi fields and `strapi_id` claim by the Strapi-compatible endpoint, and the jwts the real Strapi
signed are exchanged at /token for a session (or refused)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.providers.strapi.tokens import TOKEN_TYPE_STRAPI_JWT
from tests.conftest import served_bridge
from tests.integration.strapi.test_strapi_import import (  # the import, run as operators run it
    delete_imported,
    imported,
    strapi_import,
)
from tests.integration.test_exchange import verified_claims

if TYPE_CHECKING:
    from devstack.strapi import StrapiServer
    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import Stack
    from tests.integration.strapi.conftest import StrapiUsers


def link_to_tiktok(stack: Stack, keycloak_user_id: str, open_id: str) -> None:
    """What the user's first TikTok sign-in through the bridge leaves: a link to the TikTok identity."""
    with stack.admin() as admin:
        linked = admin.post(
            f"/users/{keycloak_user_id}/federated-identity/tiktok",
            json={"identityProvider": "tiktok", "userId": open_id, "userName": open_id},
        )
        assert linked.status_code == 204, linked.text


async def test_imported_users_keep_their_strapi_answer_and_exchange_strapis_jwt(
    stack: Stack,
    strapi: StrapiServer,
    strapi_users: StrapiUsers,
    emulator: TikTokEmulator,
    flushed_redis: None,
) -> None:
    """The Strapi endpoint answers an imported user's Strapi id, documentId, createdAt and username with a
    `strapi_id` claim; Strapi's own jwt for it is exchanged for a Keycloak token and a refresh token; a
    tampered jwt, a blocked user's and an unlinked user's are invalid_request without a token."""
    delete_imported(stack)
    try:
        done = strapi_import(stack, f"sqlite://{strapi.database_file}")
        assert done.returncode == 0, done.stderr
        alice, bob = strapi_users.tiktok[0], strapi_users.tiktok[1]
        [alice_kc] = imported(stack, alice.id)
        tiktok_user = emulator.create_user()
        link_to_tiktok(stack, alice_kc["id"], tiktok_user.open_id)
        settings = stack.settings(
            strapi_keycloak_client_id="tiktok-bridge-strapi",
            strapi_keycloak_client_secret=stack.strapi_client_secret,
            strapi_jwt_secret=strapi.jwt_secret,
        )
        async with served_bridge(settings, emulator) as bridge:
            connected = await bridge.http.post(
                "/api/tiktok-auth-mobile/connect",
                json={"access_token": emulator.issue_access_token(tiktok_user.open_id)},
            )
            assert connected.status_code == 200, connected.text
            user = connected.json()["user"]
            assert (user["id"], user["documentId"], user["createdAt"], user["username"]) == (
                alice.id,
                alice.user["documentId"],
                alice.user["createdAt"],
                alice.user["username"],
            )
            assert verified_claims(stack, connected.json()["jwt"])["strapi_id"] == alice.id

            exchanged = await bridge.exchange(alice.jwt, subject_token_type=TOKEN_TYPE_STRAPI_JWT)
            assert exchanged.status_code == 200, exchanged.text
            body = exchanged.json()
            assert verified_claims(stack, body["access_token"])["sub"] == alice_kc["id"]
            assert (await bridge.refresh(body["refresh_token"])).status_code == 200

            header, payload, signature = alice.jwt.split(".")
            tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
            for refused in (tampered, strapi_users.blocked[0].jwt, bob.jwt, strapi_users.local[0].jwt):
                answer = await bridge.exchange(refused, subject_token_type=TOKEN_TYPE_STRAPI_JWT)
                assert answer.status_code == 400, answer.text
                assert answer.json()["error"] == "invalid_request"
                assert "access_token" not in answer.json()
    finally:
        delete_imported(stack)
