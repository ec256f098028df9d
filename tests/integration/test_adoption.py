"""Adoption against the real Keycloak: users as `bridge strapi import` makes them, and accounts of a
union_id-keyed web sign-in provider, linked at their identity's first sign-in through /token, the
Strapi-compatible endpoint or linking; once under a race; ambiguity and strangers refused.

The bridge runs as in production: its admin calls come from the least-privileged service account, which
sees the members of its group only, and the realm is set up for the web sign-in by `bridge keycloak
apply` (the `applied` fixture), which the bridge needs before it gives anyone a new account."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING, Any

import pytest

from bridge.domain.errors import (
    AccountLinkedToOther,
    AccountsAmbiguous,
    EmailTaken,
    IdentityLinkedElsewhere,
)
from bridge.domain.strapi import StrapiUser
from bridge.factory import policy_from_settings
from bridge.keycloak import realm_spec as spec
from bridge.keycloak.realm_setup import apply
from bridge.services.strapi_import import StrapiImport
from tests.integration.test_exchange import linked_users, verified_claims
from tests.integration.test_least_privilege import as_service_account
from tests.integration.test_linking import LINKS, access_token_form, password_token, tiktok_links

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx2

    from bridge.settings import Settings
    from devstack.tiktok_emulator import EmulatedUser, TikTokEmulator
    from tests.conftest import BridgeClient, Stack

WEB = "tiktok-web"
STRAPI = "/api/tiktok-auth-mobile/connect"
GROUP = "/tiktok-users"


@pytest.fixture(scope="module")
def web_provider(stack: Stack) -> str:
    """An identity provider standing for the community extension's TikTok web sign-in (any type will
    do: the bridge only reads its links, keyed by the union_id)."""
    oidc_provider(stack, WEB)
    return WEB


def oidc_provider(stack: Stack, alias: str) -> None:
    """An identity provider of the realm standing for a web sign-in (its type does not matter here)."""
    with stack.admin() as admin:
        created = admin.post(
            "/identity-provider/instances",
            json={
                "alias": alias,
                "providerId": "oidc",
                "enabled": True,
                "config": {
                    "authorizationUrl": "https://web.example/auth",
                    "tokenUrl": "https://web.example/token",
                    "clientId": "web",
                    "clientSecret": "web-secret",
                    "clientAuthMethod": "client_secret_post",
                },
            },
        )
        assert created.status_code in {201, 409}, created.text


def run_apply(stack: Stack, settings: Settings) -> list[str]:
    """`bridge keycloak apply` with the realm's administrator, as an operator runs it."""
    lines: list[str] = []
    keycloak = stack.keycloak
    done = apply(
        settings, admin_user=keycloak.admin_username, admin_password=keycloak.admin_password, out=lines.append
    )
    assert done, lines
    return lines


@pytest.fixture(scope="module")
def applied(stack: Stack, web_provider: str) -> str:
    """The realm after `bridge keycloak apply` with the web provider named in the settings: its group
    mapper, its accounts in the bridge's group, and the group's record of it."""
    run_apply(stack, stack.settings(union_id_idp_aliases=(web_provider,)))
    return web_provider


@pytest.fixture
def bridge_settings(stack: Stack, account_app: str, applied: str) -> Settings:
    return stack.settings(
        link_client_ids=(account_app,),
        union_id_idp_aliases=(applied,),
        strapi_keycloak_client_id="tiktok-bridge-strapi",
        strapi_keycloak_client_secret=stack.strapi_client_secret,
    )


_strapi_ids = iter(range(int(time.time()) % 1_000_000 * 100, 10**9))


def import_strapi_user(stack: Stack, union_id: str, **changes: Any) -> str:  # noqa: ANN401
    """A Keycloak user exactly as `bridge strapi import` makes one from a plugin user whose pseudo-email
    holds `union_id` (lowercased, as the plugin stored it); its id."""
    strapi_id = next(_strapi_ids)
    row = StrapiUser(
        id=strapi_id,
        username="Old Name",
        email=f"{union_id.lower()}@tiktok.com",
        blocked=False,
        document_id=f"doc{strapi_id}",
        created_at="2024-01-02T03:04:05.000Z",
    )
    importer = StrapiImport(
        source=None,  # type: ignore[arg-type]
        keycloak=None,  # type: ignore[arg-type]
        mark=None,  # type: ignore[arg-type]
        policy=policy_from_settings(stack.settings()),
    )
    with stack.admin() as admin:
        created = admin.post("/users", json={**importer.representation(row), **changes})
        assert created.status_code == 201, created.text
        return str(created.headers["Location"].rsplit("/", 1)[1])


def web_account(
    stack: Stack,
    union_id: str,
    *,
    in_group: bool = True,
    alias: str = WEB,
    **changes: Any,  # noqa: ANN401
) -> str:
    """An account of the realm's TikTok web sign-in as the extension makes it: linked to the web provider
    by the union_id, named by the TikTok username, e-mail `<username>@tiktok.com`; in the bridge's group
    as the provider's group mapper leaves it (`in_group=False`: an account from before the mapper)."""
    username = f"webby{secrets.token_hex(4)}"
    with stack.admin() as admin:
        created = admin.post(
            "/users",
            json={
                "username": username,
                "enabled": True,
                "email": f"{username}@tiktok.com",
                "groups": [GROUP] if in_group else [],
                "federatedIdentities": [
                    {"identityProvider": alias, "userId": union_id, "userName": username}
                ],
                **changes,
            },
        )
        assert created.status_code == 201, created.text
        return str(created.headers["Location"].rsplit("/", 1)[1])


def tiktok_user(emulator: TikTokEmulator) -> EmulatedUser:
    """A TikTok user with a mixed-case union_id, as TikTok's are."""
    return emulator.create_user(union_id=f"UnionId{secrets.token_hex(6)}X", display_name="Tik Toker")


def user(stack: Stack, user_id: str) -> dict[str, Any]:
    with stack.admin() as admin:
        found: dict[str, Any] = admin.get(f"/users/{user_id}").json()
        return found


def refused(response: httpx2.Response, error: type[Exception]) -> None:
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "invalid_request", "error_description": error.default_description}  # type: ignore[attr-defined]


@pytest.fixture
def new_users(stack: Stack) -> Callable[[], int]:
    """How many users the realm gained since the test's start (made by the test included)."""

    def count() -> int:
        with stack.admin() as admin:
            return int(admin.get("/users/count").json())

    before = count()
    return lambda: count() - before


async def test_an_imported_user_is_adopted_through_token(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """The first exchange of an imported user's TikTok identity links that user to the open_id, keeps
    its Strapi attributes, and answers a token for it; the next exchange is a returning user's."""
    tiktok = tiktok_user(emulator)
    imported_id = import_strapi_user(stack, tiktok.union_id or "")

    response = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))

    assert response.status_code == 200, response.text
    assert verified_claims(stack, response.json()["access_token"])["sub"] == imported_id
    assert [u["id"] for u in linked_users(stack, tiktok.open_id)] == [imported_id]
    attributes = user(stack, imported_id)["attributes"]
    assert attributes["strapi_document_id"][0].startswith("doc")
    assert attributes["tiktok_open_id"] == [tiktok.open_id]
    assert attributes["tiktok_union_id"] == [tiktok.union_id]  # synced back to TikTok's own case
    again = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))
    assert verified_claims(stack, again.json()["access_token"])["sub"] == imported_id


async def test_an_imported_user_is_adopted_through_the_strapi_endpoint(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """An old app build signing in through the plugin's endpoint reaches the imported account."""
    tiktok = tiktok_user(emulator)
    imported_id = import_strapi_user(stack, tiktok.union_id or "")

    response = await bridge.http.post(
        STRAPI, json={"access_token": emulator.issue_access_token(tiktok.open_id)}
    )

    assert response.status_code == 200, response.text
    assert verified_claims(stack, response.json()["jwt"])["sub"] == imported_id
    assert [u["id"] for u in linked_users(stack, tiktok.open_id)] == [imported_id]


async def test_linking_adopts_into_the_imported_account_only(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """Linking the identity to another signed-in account is refused while the imported account holds its
    union_id; signed in as the imported account (given a password here), linking adopts it."""
    tiktok = tiktok_user(emulator)
    password = secrets.token_urlsafe(12)
    imported_id = import_strapi_user(
        stack,
        tiktok.union_id or "",
        credentials=[{"type": "password", "value": password, "temporary": False}],
    )
    other_password = secrets.token_urlsafe(12)
    other_id = web_account(
        stack,
        "unrelated",
        credentials=[{"type": "password", "value": other_password, "temporary": False}],
        federatedIdentities=[],
    )

    other = password_token(stack, user(stack, other_id)["username"], other_password)
    taken = await bridge.http.post(
        LINKS, data=access_token_form(emulator, tiktok.open_id), headers={"Authorization": f"Bearer {other}"}
    )
    assert taken.status_code == 409, taken.text
    assert taken.json()["error_description"] == IdentityLinkedElsewhere.default_description
    assert tiktok_links(stack, other_id) == []

    own = password_token(stack, user(stack, imported_id)["username"], password)
    linked = await bridge.http.post(
        LINKS, data=access_token_form(emulator, tiktok.open_id), headers={"Authorization": f"Bearer {own}"}
    )

    assert linked.status_code == 200, linked.text
    assert [link["userId"] for link in tiktok_links(stack, imported_id)] == [tiktok.open_id]


async def test_a_racing_pair_of_first_sign_ins_adopts_once(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient, new_users: Callable[[], int]
) -> None:
    """Simultaneous first sign-ins of an imported user (both endpoints) get the one imported account."""
    tiktok = tiktok_user(emulator)
    imported_id = import_strapi_user(stack, tiktok.union_id or "")

    token, strapi = await asyncio.gather(
        bridge.exchange(emulator.issue_access_token(tiktok.open_id)),
        bridge.http.post(STRAPI, json={"access_token": emulator.issue_access_token(tiktok.open_id)}),
    )

    assert token.status_code == strapi.status_code == 200, (token.text, strapi.text)
    assert verified_claims(stack, token.json()["access_token"])["sub"] == imported_id
    assert verified_claims(stack, strapi.json()["jwt"])["sub"] == imported_id
    assert [link["userId"] for link in tiktok_links(stack, imported_id)] == [tiktok.open_id]
    assert new_users() == 1  # the imported one, no other


async def test_an_account_with_only_the_pseudo_email_is_still_refused(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None, applied: str
) -> None:
    """An account that merely holds the pseudo-email (no Strapi id) is not adopted: the sign-in is
    refused as the e-mail's, and the account stays unlinked."""
    from tests.conftest import served_bridge  # noqa: PLC0415

    tiktok = tiktok_user(emulator)
    with stack.admin() as admin:
        created = admin.post(
            "/users",
            json={
                "username": f"lookalike-{secrets.token_hex(4)}",
                "enabled": True,
                "email": f"{(tiktok.union_id or '').lower()}@tiktok.com",
                "groups": [GROUP],
                "attributes": {"tiktok_union_id": [(tiktok.union_id or "").lower()]},
            },
        )
        assert created.status_code == 201, created.text
        lookalike = created.headers["Location"].rsplit("/", 1)[1]
    settings = stack.settings(email_template="{union_id}@tiktok.com", union_id_idp_aliases=(applied,))

    async with served_bridge(settings, emulator) as bridge:
        response = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))

    refused(response, EmailTaken)
    assert tiktok_links(stack, lookalike) == []
    assert linked_users(stack, tiktok.open_id) == []


@pytest.mark.parametrize(
    "kind", ["two imported", "imported and web", "two web", "web linked to another open_id"]
)
async def test_ambiguous_candidates_are_refused_and_nothing_changes(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient, new_users: Callable[[], int], kind: str
) -> None:
    """Two accounts with the identity's union_id (imported or web), or one already linked to another
    TikTok identity for the bridge: a clear invalid_request, no link, no new account."""
    tiktok = tiktok_user(emulator)
    union_id = tiktok.union_id or ""
    other_app = f"other-app-{secrets.token_hex(4)}"
    if kind == "two imported":
        made = [import_strapi_user(stack, union_id), import_strapi_user(stack, union_id)]
    elif kind == "imported and web":
        made = [import_strapi_user(stack, union_id), web_account(stack, union_id)]
    elif kind == "two web":
        made = [web_account(stack, union_id), web_account(stack, union_id)]
    else:
        links = [
            {"identityProvider": WEB, "userId": union_id},
            {"identityProvider": "tiktok", "userId": other_app},
        ]
        made = [web_account(stack, union_id, federatedIdentities=links)]

    response = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))

    refused(response, AccountsAmbiguous if len(made) == 2 else AccountLinkedToOther)
    assert linked_users(stack, tiktok.open_id) == []
    for user_id in made:
        assert user_id not in {u["id"] for u in linked_users(stack, tiktok.open_id)}
        bridge_links = [link for link in tiktok_links(stack, user_id) if link["identityProvider"] == "tiktok"]
        assert [link["userId"] for link in bridge_links] == ([] if len(made) == 2 else [other_app])
    assert new_users() == len(made)  # no account beyond the test's own


async def test_a_web_sign_in_account_is_linked_for_the_bridge(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """The account the web provider linked by the union_id gets the bridge's link too (its web link
    kept), and the mobile sign-in reaches it."""
    tiktok = tiktok_user(emulator)
    web_id = web_account(stack, tiktok.union_id or "")

    response = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))

    assert response.status_code == 200, response.text
    assert verified_claims(stack, response.json()["access_token"])["sub"] == web_id
    with stack.admin() as admin:
        links = admin.get(f"/users/{web_id}/federated-identity").json()
    assert {(link["identityProvider"], link["userId"]) for link in links} == {
        (WEB, tiktok.union_id),
        ("tiktok", tiktok.open_id),
    }


LATE = "tiktok-web-late"


async def test_a_web_sign_in_account_out_of_sight_gets_no_second_account_and_apply_brings_it_in(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None, applied: str, new_users: Callable[[], int]
) -> None:
    """Measured with the least-privileged service account: an account of a web sign-in provider that
    apply has not handled yet lies outside the bridge's group, and the service account's search does
    not see it (Keycloak leaves it out, no 403). So the first mobile sign-in is refused, with no account
    made, rather than given a second one; after `bridge keycloak apply` the same sign-in reaches it."""
    from tests.conftest import served_bridge  # noqa: PLC0415

    oidc_provider(stack, LATE)
    tiktok = tiktok_user(emulator)
    web_id = web_account(stack, tiktok.union_id or "", in_group=False, alias=LATE)
    settings = stack.settings(union_id_idp_aliases=(applied, LATE))
    with as_service_account(stack) as confined:
        unseen = confined.get("/users", params={"idpAlias": LATE, "idpUserId": tiktok.union_id})

    async with served_bridge(settings, emulator) as bridge:
        refused = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))
    made_before_apply = new_users()
    lines = run_apply(stack, settings)
    with as_service_account(stack) as confined:
        seen = confined.get("/users", params={"idpAlias": LATE, "idpUserId": tiktok.union_id})
    async with served_bridge(settings, emulator) as bridge:
        response = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))

    assert (unseen.status_code, unseen.json()) == (200, [])
    assert refused.status_code == 500, refused.text
    assert refused.json()["error"] == "server_error"
    assert made_before_apply == 1  # the web account, no second one
    assert f"accounts of provider '{LATE}' in group '{GROUP}': create" in lines
    assert [u["id"] for u in seen.json()] == [web_id]
    assert response.status_code == 200, response.text
    assert verified_claims(stack, response.json()["access_token"])["sub"] == web_id
    assert new_users() == 1


async def test_a_new_web_sign_in_is_in_reach_through_the_providers_group_mapper(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient, applied: str, new_users: Callable[[], int]
) -> None:
    """apply gave the web provider a hardcoded-group mapper for the bridge's group, synced at every
    sign-in; an account its first web sign-in makes (here made as the mapper leaves it: in the group,
    since a browser sign-in through TikTok cannot run here) is reached by the first mobile sign-in."""
    with stack.admin() as admin:
        mappers = admin.get(f"/identity-provider/instances/{applied}/mappers").json()
    tiktok = tiktok_user(emulator)
    web_id = web_account(stack, tiktok.union_id or "")

    response = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))

    assert [(m["name"], m["identityProviderMapper"], m["config"]) for m in mappers] == [
        (spec.GROUP_MAPPER_NAME, "oidc-hardcoded-group-idp-mapper", {"group": GROUP, "syncMode": "FORCE"})
    ]
    assert response.status_code == 200, response.text
    assert verified_claims(stack, response.json()["access_token"])["sub"] == web_id
    assert new_users() == 1


def test_the_searches_cost_of_a_first_sign_in(stack: Stack, applied: str) -> None:
    """Measured, not asserted beyond sanity: the Admin API searches adoption adds to a first sign-in,
    as the bridge's confined service account makes them (printed with -s)."""
    union_id = f"UnionId{secrets.token_hex(6)}X"
    import_strapi_user(stack, union_id)
    searches = {
        "attribute": {
            "q": f"tiktok_union_id:{union_id.lower()}",
            "exact": "true",
            "briefRepresentation": "false",
        },
        "idp link": {"idpAlias": WEB, "idpUserId": union_id, "briefRepresentation": "false"},
        "bridge link": {"idpAlias": "tiktok", "idpUserId": "nobody", "briefRepresentation": "false"},
    }
    with as_service_account(stack) as admin:
        for name, params in searches.items():
            admin.get("/users", params=params)  # warm
            started = time.perf_counter()
            rounds = 10
            for _ in range(rounds):
                assert admin.get("/users", params=params).status_code == 200
            print(f"{name} search: {(time.perf_counter() - started) / rounds * 1000:.0f} ms")  # noqa: T201
