"""Linking TikTok to an existing Keycloak user, one Keycloak client per app, and audiences, against the
real Keycloak, a real redis-server and the TikTok emulator."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import pytest
from joserfc import jwt
from joserfc.jwt import JWTClaimsRegistry

from bridge.domain.errors import IdentityLinkedElsewhere
from tests.conftest import BridgeClient, Clock, Stack, running_bridge
from tests.integration.conftest import ACCOUNT_APP
from tests.integration.test_exchange import linked_users, realm_keys, verified_claims

if TYPE_CHECKING:
    from bridge.settings import Settings
    from devstack.tiktok_emulator import TikTokEmulator

LINKS = "/account/links/tiktok"
REDIRECT = "https://app.example/callback"
CODE_TYPE = "urn:tiktok-keycloak-bridge:params:oauth:token-type:tiktok-authorization-code"
ORDERS = "https://orders.example"
CONFIG = Path(__file__).resolve().parents[2] / "keycloak-config"


@pytest.fixture(scope="module")
def orders_audience(stack: Stack) -> str:
    """keycloak-config/client-scopes/aud-orders-api.json created through the Admin API, as the
    keycloak-config README says, and made optional for the bridge's and the example app's clients."""
    representation = json.loads((CONFIG / "client-scopes" / "aud-orders-api.json").read_text())
    with stack.admin() as admin:
        created = admin.post("/client-scopes", json=representation)
        assert created.status_code in {201, 409}, created.text
        (scope,) = [s for s in admin.get("/client-scopes").json() if s["name"] == representation["name"]]
        for client_id in (stack.client_id, "tiktok-app-example"):
            (client,) = admin.get("/clients", params={"clientId": client_id}).json()
            assigned = admin.put(f"/clients/{client['id']}/optional-client-scopes/{scope['id']}")
            assert assigned.status_code == 204, assigned.text
    return ORDERS


def password_user(stack: Stack, *, may_link: bool = True) -> tuple[str, str, str]:
    """(user id, username, password) of a new enabled realm user with a password and no TikTok link;
    `may_link`: an administrator put it in the bridge's group, as accounts must be to link TikTok."""
    username, password = f"pw-{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    with stack.admin() as admin:
        created = admin.post(
            "/users",
            json={
                "username": username,
                "enabled": True,
                "credentials": [{"type": "password", "value": password, "temporary": False}],
                "groups": ["/tiktok-users"] if may_link else [],
            },
        )
        assert created.status_code == 201, created.text
        return created.headers["Location"].rsplit("/", 1)[1], username, password


def password_grant(
    stack: Stack,
    username: str,
    password: str,
    client_id: str = ACCOUNT_APP,
    *,
    realm: str | None = None,
    **form: str,
) -> dict[str, Any]:
    """Keycloak's answer to a password grant in `realm` (the app's realm unless named)."""
    answer = httpx2.post(
        f"{stack.keycloak.url}/realms/{realm or stack.realm}/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": client_id,
            "username": username,
            "password": password,
            **form,
        },
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def password_token(stack: Stack, username: str, password: str, client_id: str = ACCOUNT_APP) -> str:
    token: str = password_grant(stack, username, password, client_id)["access_token"]
    return token


def tiktok_links(stack: Stack, user_id: str) -> list[dict[str, Any]]:
    with stack.admin() as admin:
        links: list[dict[str, Any]] = admin.get(f"/users/{user_id}/federated-identity").json()
        return links


def access_token_form(emulator: TikTokEmulator, open_id: str) -> dict[str, str]:
    return {
        "subject_token": emulator.issue_access_token(open_id),
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
    }


@pytest.fixture
def bridge_settings(stack: Stack, account_app: str) -> Settings:
    return stack.settings(link_client_ids=(account_app,), tiktok_redirect_uris=(REDIRECT,))


@pytest.fixture
def bridge_clock(clock: Clock) -> Clock:
    """Bearer tokens are judged by it: a test moves it past a token's expiry."""
    return clock


async def test_a_password_user_links_tiktok_and_then_signs_in_with_it_as_themselves(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """Signed in with a password, the user links a TikTok identity (code with PKCE); a TikTok sign-in
    of that identity then yields a token for the same Keycloak user, and GET reports the link."""
    user_id, username, password = password_user(stack)
    bearer = {"Authorization": f"Bearer {password_token(stack, username, password)}"}
    tiktok = emulator.create_user(display_name="Pat", username="pat")
    verifier = secrets.token_urlsafe(48)
    code = emulator.issue_authorization_code(
        tiktok.open_id,
        redirect_uri=REDIRECT,
        code_challenge=hashlib.sha256(verifier.encode()).hexdigest(),
        scopes=("user.info.basic", "user.info.profile"),
    )
    before = await bridge.http.get(LINKS, headers=bearer)
    assert before.json()["linked"] is False

    linked = await bridge.http.post(
        LINKS,
        data={
            "subject_token": code,
            "subject_token_type": CODE_TYPE,
            "code_verifier": verifier,
            "redirect_uri": REDIRECT,
        },
        headers=bearer,
    )

    assert linked.status_code == 200, linked.text
    assert linked.headers["cache-control"] == "no-store"
    assert linked.json() == {
        "provider": "tiktok",
        "linked": True,
        "user_id": user_id,
        "open_id": tiktok.open_id,
        "tiktok_username": "pat",
        "tiktok_display_name": "Pat",
    }
    assert [u["id"] for u in linked_users(stack, tiktok.open_id)] == [user_id]
    assert (await bridge.http.get(LINKS, headers=bearer)).json() == linked.json()
    signed_in = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))
    assert signed_in.status_code == 200, signed_in.text
    assert verified_claims(stack, signed_in.json()["access_token"])["sub"] == user_id
    relinked = await bridge.http.post(LINKS, data=access_token_form(emulator, tiktok.open_id), headers=bearer)
    assert relinked.status_code == 200, relinked.text  # the same identity again: idempotent
    assert tiktok_links(stack, user_id) == [
        {"identityProvider": "tiktok", "userId": tiktok.open_id, "userName": "pat"}
    ]


async def test_a_code_with_the_wrong_verifier_links_nothing(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """The code path is bound to PKCE: an intercepted code without its verifier is refused at TikTok."""
    user_id, username, password = password_user(stack)
    tiktok = emulator.create_user()
    code = emulator.issue_authorization_code(
        tiktok.open_id, redirect_uri=REDIRECT, code_challenge=hashlib.sha256(b"x" * 43).hexdigest()
    )
    refused = await bridge.http.post(
        LINKS,
        data={
            "subject_token": code,
            "subject_token_type": CODE_TYPE,
            "code_verifier": "y" * 43,
            "redirect_uri": REDIRECT,
        },
        headers={"Authorization": f"Bearer {password_token(stack, username, password)}"},
    )
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_request")
    assert tiktok_links(stack, user_id) == []


async def test_linking_an_identity_linked_elsewhere_is_refused_and_changes_nothing(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """An identity that already has an account (it signed in before) cannot be pulled into another
    account, and a user with one TikTok identity cannot take a second: 409, nothing written."""
    tiktok = emulator.create_user()
    assert (await bridge.exchange(emulator.issue_access_token(tiktok.open_id))).status_code == 200
    (owner,) = linked_users(stack, tiktok.open_id)
    user_id, username, password = password_user(stack)
    bearer = {"Authorization": f"Bearer {password_token(stack, username, password)}"}

    taken = await bridge.http.post(LINKS, data=access_token_form(emulator, tiktok.open_id), headers=bearer)

    assert taken.status_code == 409
    assert taken.json() == {
        "error": "link_conflict",
        "error_description": IdentityLinkedElsewhere.default_description,
    }
    assert [u["id"] for u in linked_users(stack, tiktok.open_id)] == [owner["id"]]
    assert tiktok_links(stack, user_id) == []

    mine = emulator.create_user()
    assert (
        await bridge.http.post(LINKS, data=access_token_form(emulator, mine.open_id), headers=bearer)
    ).status_code == 200
    second = await bridge.http.post(
        LINKS, data=access_token_form(emulator, emulator.create_user().open_id), headers=bearer
    )
    assert (second.status_code, second.json()["error"]) == (409, "link_conflict")
    assert [link["userId"] for link in tiktok_links(stack, user_id)] == [mine.open_id]


@pytest.mark.parametrize("registration_open", [False, True])
async def test_after_unlinking_a_tiktok_sign_in_creates_a_new_account_only_if_registration_is_open(
    stack: Stack, emulator: TikTokEmulator, account_app: str, flushed_redis: None, registration_open: bool
) -> None:
    """Linking works with registration closed; after unlinking, the identity's session is over and its
    next sign-in is refused (closed) or gets a new account, never the password user's (open)."""
    settings = stack.settings(link_client_ids=(account_app,), registration_open=registration_open)
    async for bridge in running_bridge(settings, emulator):
        user_id, username, password = password_user(stack)
        bearer = {"Authorization": f"Bearer {password_token(stack, username, password)}"}
        tiktok = emulator.create_user()
        linked = await bridge.http.post(
            LINKS, data=access_token_form(emulator, tiktok.open_id), headers=bearer
        )
        assert linked.status_code == 200, linked.text
        session = (await bridge.exchange(emulator.issue_access_token(tiktok.open_id))).json()

        unlinked = await bridge.http.delete(LINKS, headers=bearer)

        assert unlinked.status_code == 200
        assert unlinked.json()["linked"] is False
        assert tiktok_links(stack, user_id) == []
        with stack.admin() as admin:
            attributes = admin.get(f"/users/{user_id}").json().get("attributes", {})
        assert not any(name.startswith("tiktok_") for name in attributes)
        assert (await bridge.refresh(session["refresh_token"])).json()["error"] == "invalid_grant"
        again = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))
        if registration_open:
            assert again.status_code == 200, again.text
            (new,) = linked_users(stack, tiktok.open_id)
            assert new["id"] != user_id
            assert verified_claims(stack, again.json()["access_token"])["sub"] == new["id"]
        else:
            assert again.json() == {
                "error": "invalid_request",
                "error_description": "Registration of new accounts is closed.",
            }
            assert linked_users(stack, tiktok.open_id) == []


def _tampered(token: str) -> str:
    """The same signature over claims naming another subject."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "00000000-0000-0000-0000-000000000000"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize(
    "case",
    ["missing", "expired", "tampered", "other-realm", "other-client", "id-token", "disabled", "deleted"],
)
async def test_bad_bearers_are_401_and_change_nothing(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient, clock: Clock, case: str
) -> None:
    """Every bearer the bridge must not act on gets 401 with an RFC 6750 challenge; no link is made."""
    user_id, username, password = password_user(stack)
    token = password_token(stack, username, password)
    headers = {"Authorization": f"Bearer {token}"}
    if case == "missing":
        headers = {}
    elif case == "expired":
        clock.now += 3600  # the token's exp (5 minutes) is long past by the bridge's clock
    elif case == "tampered":
        headers = {"Authorization": f"Bearer {_tampered(token)}"}
    elif case == "other-realm":
        keycloak = stack.keycloak
        master = password_grant(
            stack, keycloak.admin_username, keycloak.admin_password, "admin-cli", realm="master"
        )["access_token"]
        headers = {"Authorization": f"Bearer {master}"}
    elif case == "other-client":
        # admin-cli exists in every realm with direct access grants, and is not allowed to link.
        headers = {"Authorization": f"Bearer {password_token(stack, username, password, 'admin-cli')}"}
    elif case == "id-token":
        id_token = password_grant(stack, username, password, scope="openid")["id_token"]
        headers = {"Authorization": f"Bearer {id_token}"}
    else:
        with stack.admin() as admin:
            if case == "disabled":
                user = admin.get(f"/users/{user_id}").json()
                assert admin.put(f"/users/{user_id}", json={**user, "enabled": False}).status_code == 204
            else:
                assert admin.delete(f"/users/{user_id}").status_code == 204
    tiktok = emulator.create_user()

    for answer in (
        await bridge.http.post(LINKS, data=access_token_form(emulator, tiktok.open_id), headers=headers),
        await bridge.http.get(LINKS, headers=headers),
        await bridge.http.delete(LINKS, headers=headers),
    ):
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"] == "invalid_token"
        challenge = answer.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="bridge"')
        assert ('error="invalid_token"' in challenge) is (case != "missing")
    assert linked_users(stack, tiktok.open_id) == []
    assert emulator.calls["user_info"] == 0  # refused before TikTok was asked
    if case != "deleted":
        assert tiktok_links(stack, user_id) == []


async def test_linking_is_not_served_unless_link_clients_are_configured(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """With BRIDGE_LINK_CLIENT_IDS empty (the default) the route does not exist."""
    async for bridge in running_bridge(stack.settings(), emulator):
        assert (await bridge.http.get(LINKS)).status_code == 404
        spec = (await bridge.http.get("/openapi.json")).json()
        assert LINKS not in spec["paths"]


async def test_apps_mapped_to_their_own_keycloak_clients_get_tokens_naming_them(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """Three apps, two mapped to Keycloak clients of their own: each token's azp names the app's
    client, and a refresh mints with the same client."""
    settings = stack.settings(
        public_client_ids=("ios", "android", "web"),
        keycloak_clients=f"ios=tiktok-app-example:{stack.example_app_secret},"
        f"web=tiktok-bridge-strapi:{stack.strapi_client_secret}",
    )
    tiktok = emulator.create_user()
    async for bridge in running_bridge(settings, emulator):
        answers = {
            app: await bridge.exchange(emulator.issue_access_token(tiktok.open_id), client_id=app)
            for app in ("ios", "android", "web")
        }
        azp = {app: verified_claims(stack, a.json()["access_token"])["azp"] for app, a in answers.items()}
        refreshed = await bridge.refresh(answers["ios"].json()["refresh_token"], client_id="ios")
    assert azp == {"ios": "tiktok-app-example", "android": stack.client_id, "web": "tiktok-bridge-strapi"}
    assert refreshed.status_code == 200, refreshed.text
    assert verified_claims(stack, refreshed.json()["access_token"])["azp"] == "tiktok-app-example"
    subjects = {verified_claims(stack, a.json()["access_token"])["sub"] for a in answers.values()}
    assert len(subjects) == 1


def resource_server_accepts(stack: Stack, token: str, audience: str) -> bool:
    """What an API trusting Keycloak does: verify the signature with the realm's keys, then `aud`."""
    claims = jwt.decode(token, realm_keys(stack), algorithms=["RS256"]).claims
    registry = JWTClaimsRegistry(
        iss={"essential": True, "value": f"{stack.keycloak.url}/realms/{stack.realm}"},
        aud={"essential": True, "value": audience},
    )
    try:
        registry.validate(claims)
    except Exception:  # noqa: BLE001 - any refusal of joserfc's means "not for this API"
        return False
    return True


async def test_a_configured_audience_reaches_aud_and_others_are_invalid_target(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None, orders_audience: str
) -> None:
    """audience (or resource) names a configured API: the token's aud holds it and a resource server
    accepts it; without it the token is not for that API; another is invalid_target; a refresh keeps
    the audience, may drop it, and cannot widen it."""
    settings = stack.settings(audiences=(f"{ORDERS}=aud-orders-api",))
    tiktok = emulator.create_user()
    async for bridge in running_bridge(settings, emulator):
        plain = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))
        asked = await bridge.exchange(emulator.issue_access_token(tiktok.open_id), audience=ORDERS)
        resource = await bridge.exchange(emulator.issue_access_token(tiktok.open_id), resource=ORDERS)
        unknown = await bridge.exchange(
            emulator.issue_access_token(tiktok.open_id), audience="https://admin.example"
        )
        as_scope = await bridge.exchange(emulator.issue_access_token(tiktok.open_id), scope="aud-orders-api")
        kept = await bridge.refresh(asked.json()["refresh_token"])
        widened = await bridge.refresh(plain.json()["refresh_token"], audience=ORDERS)
        narrowed = await bridge.refresh(kept.json()["refresh_token"], audience=ORDERS)

    for answer in (plain, asked, resource, kept, narrowed):
        assert answer.status_code == 200, answer.text
    assert "aud-orders-api" not in asked.json()["scope"].split()  # the scope carries it, unseen
    assert resource_server_accepts(stack, asked.json()["access_token"], ORDERS)
    assert resource_server_accepts(stack, resource.json()["access_token"], ORDERS)
    assert resource_server_accepts(stack, kept.json()["access_token"], ORDERS)
    assert not resource_server_accepts(stack, plain.json()["access_token"], ORDERS)
    extra = set(_aud(verified_claims(stack, plain.json()["access_token"])))
    assert set(_aud(verified_claims(stack, asked.json()["access_token"]))) == extra | {ORDERS}
    assert (unknown.status_code, unknown.json()["error"]) == (400, "invalid_target")
    assert (as_scope.status_code, as_scope.json()["error"]) == (400, "invalid_scope")
    assert (widened.status_code, widened.json()["error"]) == (400, "invalid_target")


def _aud(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud", [])
    return [aud] if isinstance(aud, str) else list(aud)
