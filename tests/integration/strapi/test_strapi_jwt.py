"""Old app builds against the real thing: users imported from the real Strapi are answered with their
Strapi fields and `strapi_id` claim by the Strapi-compatible endpoint, and the jwts the real Strapi
signed are exchanged at /token for a session (or refused): by the TikTok identity of an imported user
who signed in with TikTok since the move, by the Strapi jwt provider for every other one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.operations.operator import end_sessions
from bridge.providers.strapi.tokens import TOKEN_TYPE_STRAPI_JWT
from tests.conftest import served_bridge
from tests.integration.strapi.test_strapi_import import (  # the import, run as operators run it
    delete_imported,
    imported,
    strapi_import,
)
from tests.integration.test_exchange import verified_claims
from tests.integration.test_webhook import deliver, removed_event

if TYPE_CHECKING:
    from devstack.strapi import StrapiServer
    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import BridgeClient, Stack
    from tests.integration.strapi.conftest import StrapiUser, StrapiUsers

STRAPI_JWT_IDP = "tiktok-strapi-jwt"


def link_to_tiktok(stack: Stack, keycloak_user_id: str, open_id: str) -> None:
    """What the user's first TikTok sign-in through the bridge leaves: a link to the TikTok identity."""
    with stack.admin() as admin:
        linked = admin.post(
            f"/users/{keycloak_user_id}/federated-identity/tiktok",
            json={"identityProvider": "tiktok", "userId": open_id, "userName": open_id},
        )
        assert linked.status_code == 204, linked.text


def links(stack: Stack, keycloak_user_id: str) -> dict[str, str]:
    """The user's federated identities: provider alias -> the identity's user id there."""
    with stack.admin() as admin:
        found: list[dict[str, Any]] = admin.get(f"/users/{keycloak_user_id}/federated-identity").json()
    return {link["identityProvider"]: link["userId"] for link in found}


def set_enabled(stack: Stack, keycloak_user_id: str, *, enabled: bool) -> None:
    with stack.admin() as admin:
        user = admin.get(f"/users/{keycloak_user_id}").json()
        assert admin.put(f"/users/{keycloak_user_id}", json={**user, "enabled": enabled}).status_code == 204


def imported_user(stack: Stack, seeded: StrapiUser) -> dict[str, Any]:
    [user] = imported(stack, seeded.id)
    return user


async def exchanged_jwt(bridge: BridgeClient, seeded: StrapiUser) -> dict[str, Any]:
    """The bridge's answer to the Strapi jwt exchange of the jwt Strapi signed for `seeded`."""
    answer = await bridge.exchange(seeded.jwt, subject_token_type=TOKEN_TYPE_STRAPI_JWT)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def refused(bridge: BridgeClient, refresh_token: str) -> bool:
    """Whether a refresh is invalid_grant (the session is over)."""
    answer = await bridge.refresh(refresh_token)
    return (answer.status_code, answer.json().get("error")) == (400, "invalid_grant")


async def test_imported_users_keep_their_strapi_answer_and_exchange_strapis_jwt(
    stack: Stack,
    strapi: StrapiServer,
    strapi_users: StrapiUsers,
    emulator: TikTokEmulator,
    flushed_redis: None,
) -> None:
    """The Strapi endpoint answers an imported user's Strapi id, documentId, createdAt and username with a
    `strapi_id` claim; Strapi's own jwt for it is exchanged for a Keycloak token and a refresh token by
    its TikTok identity (no Strapi jwt link made); a tampered jwt, a blocked user's and a user's that
    was not imported are invalid_request without a token."""
    delete_imported(stack)
    try:
        done = strapi_import(stack, f"sqlite://{strapi.database_file}")
        assert done.returncode == 0, done.stderr
        alice = strapi_users.tiktok[0]
        alice_kc = imported_user(stack, alice)
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

            body = await exchanged_jwt(bridge, alice)
            claims = verified_claims(stack, body["access_token"])
            assert (claims["sub"], claims["tiktok_open_id"]) == (alice_kc["id"], tiktok_user.open_id)
            assert (await bridge.refresh(body["refresh_token"])).status_code == 200
            assert links(stack, alice_kc["id"]) == {"tiktok": tiktok_user.open_id}

            header, payload, signature = alice.jwt.split(".")
            tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
            for jwt in (tampered, strapi_users.blocked[0].jwt, strapi_users.local[0].jwt):
                answer = await bridge.exchange(jwt, subject_token_type=TOKEN_TYPE_STRAPI_JWT)
                assert answer.status_code == 400, answer.text
                assert answer.json()["error"] == "invalid_request"
                assert "access_token" not in answer.json()
            assert STRAPI_JWT_IDP not in links(stack, imported_user(stack, strapi_users.blocked[0])["id"])
    finally:
        delete_imported(stack)


async def test_an_imported_user_who_never_signed_in_with_tiktok_gets_a_session_that_refreshes_and_ends(
    stack: Stack,
    strapi: StrapiServer,
    strapi_users: StrapiUsers,
    emulator: TikTokEmulator,
    flushed_redis: None,
) -> None:
    """Right after the move nobody has a TikTok link: the jwt is exchanged for a Keycloak token of the
    imported account and a refresh token that refreshes; a second exchange reuses the one Strapi jwt
    link; `bridge sessions end --user` ends both sessions (a later exchange works); a user disabled in
    Keycloak is refused at the next refresh, and stays signed out once enabled again."""
    delete_imported(stack)
    try:
        done = strapi_import(stack, f"sqlite://{strapi.database_file}")
        assert done.returncode == 0, done.stderr
        bob, carol = strapi_users.tiktok[1], strapi_users.tiktok[2]
        bob_kc, carol_kc = imported_user(stack, bob), imported_user(stack, carol)
        assert links(stack, bob_kc["id"]) == {}
        settings = stack.settings(strapi_jwt_secret=strapi.jwt_secret)
        async with served_bridge(settings, emulator) as bridge:
            first = await exchanged_jwt(bridge, bob)
            claims = verified_claims(stack, first["access_token"])
            assert (claims["sub"], claims["azp"]) == (bob_kc["id"], stack.client_id)
            assert "tiktok_open_id" not in claims
            refreshed = await bridge.refresh(first["refresh_token"])
            assert refreshed.status_code == 200, refreshed.text
            assert verified_claims(stack, refreshed.json()["access_token"])["sub"] == bob_kc["id"]
            second = await exchanged_jwt(bridge, bob)
            assert verified_claims(stack, second["access_token"])["sub"] == bob_kc["id"]
            assert links(stack, bob_kc["id"]) == {STRAPI_JWT_IDP: bob_kc["id"]}

            assert await end_sessions(settings, user_id=bob_kc["id"], open_id=None) == 0
            assert await refused(bridge, refreshed.json()["refresh_token"])
            assert await refused(bridge, second["refresh_token"])
            after = await exchanged_jwt(bridge, bob)
            assert (await bridge.refresh(after["refresh_token"])).status_code == 200

            session = await exchanged_jwt(bridge, carol)
            set_enabled(stack, carol_kc["id"], enabled=False)
            assert await refused(bridge, session["refresh_token"])
            set_enabled(stack, carol_kc["id"], enabled=True)
            assert await refused(bridge, session["refresh_token"])
    finally:
        delete_imported(stack)


async def test_a_later_tiktok_sign_in_reaches_the_same_account_and_its_deauthorization_ends_every_session(
    stack: Stack,
    strapi: StrapiServer,
    strapi_users: StrapiUsers,
    emulator: TikTokEmulator,
    flushed_redis: None,
) -> None:
    """After a Strapi jwt exchange, the same person's first TikTok sign-in is adopted by union_id into
    the same account (the Strapi jwt link stands in no way); the jwt then signs in by that TikTok
    identity; TikTok's deauthorization ends the identity's sessions and the account's Strapi jwt
    session alike (the record policy: the account itself stays enabled)."""
    delete_imported(stack)
    try:
        done = strapi_import(stack, f"sqlite://{strapi.database_file}")
        assert done.returncode == 0, done.stderr
        bob = strapi_users.tiktok[1]
        bob_kc = imported_user(stack, bob)
        settings = stack.settings(strapi_jwt_secret=strapi.jwt_secret, deauthorization_policy="record")
        async with served_bridge(settings, emulator) as bridge:
            by_account = await exchanged_jwt(bridge, bob)

            tiktok_user = emulator.create_user(union_id=bob.union_id)
            signed_in = await bridge.exchange(emulator.issue_access_token(tiktok_user.open_id))
            assert signed_in.status_code == 200, signed_in.text
            assert verified_claims(stack, signed_in.json()["access_token"])["sub"] == bob_kc["id"]
            assert links(stack, bob_kc["id"]) == {"tiktok": tiktok_user.open_id, STRAPI_JWT_IDP: bob_kc["id"]}
            by_tiktok = await exchanged_jwt(bridge, bob)
            claims = verified_claims(stack, by_tiktok["access_token"])
            assert (claims["sub"], claims["tiktok_open_id"]) == (bob_kc["id"], tiktok_user.open_id)
            by_account = (await bridge.refresh(by_account["refresh_token"])).json()

            removed = await deliver(bridge, removed_event(tiktok_user.open_id))
            assert removed.status_code == 200, removed.text
            for session in (by_account, by_tiktok, signed_in.json()):
                assert await refused(bridge, session["refresh_token"])
            with stack.admin() as admin:
                assert admin.get(f"/users/{bob_kc['id']}").json()["enabled"] is True
    finally:
        delete_imported(stack)
