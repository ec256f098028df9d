"""Adoption with in-memory fakes: at an identity's first sign-in, the account it already has by its
union_id (imported from Strapi, or linked by a union_id-keyed web sign-in provider) is linked, once, and
anything ambiguous is refused."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from bridge.domain.errors import (
    AccountDisabled,
    AccountLinkedToOther,
    AccountNotEligible,
    AccountsAmbiguous,
    EmailTaken,
    IdentityLinkedElsewhere,
    ServerError,
)
from bridge.domain.model import ExternalIdentity, VerifiedBearer
from bridge.providers.tiktok.attributes import ATTRIBUTES
from bridge.services.adoption import ENROLLED_PROVIDERS, AdoptionPolicy, AdoptionService
from bridge.services.identity import IdentityService
from bridge.services.linking import LinkingService, LinkPolicy
from bridge.services.provisioning import ProvisioningService
from bridge.storage.cache import MemoryCache
from bridge.storage.identities import IdentityStore
from bridge.storage.profiles import ProfileStore
from tests.unit.fakes import FakeKeycloak, FakeTikTok, make_policy
from tests.unit.test_linking import FakeBearers, FakeSessions

if TYPE_CHECKING:
    from collections.abc import Callable

GROUP = "/tiktok-users"
# TikTok's union_ids are mixed-case; the import keeps them lowercased, as the Strapi plugin did.
PROFILE = ExternalIdentity(open_id="-open-1", union_id="UnionAbc1", display_name="Tik Toker", username="tt")
WEB = "tiktok-web"


def imported(keycloak: FakeKeycloak, user_id: str, union_id: str = "unionabc1", **extra: Any) -> str:  # noqa: ANN401
    """A user as `bridge strapi import` makes it: Strapi's ids, the lowercased union_id, the group."""
    keycloak.users[user_id] = {
        "id": user_id,
        "username": f"tiktok_strapi-{user_id}",
        "enabled": True,
        "attributes": {"strapi_id": ["7"], "tiktok_union_id": [union_id], "tiktok_display_name": ["Old"]},
        "groups": [GROUP],
        **extra,
    }
    return user_id


def web_account(keycloak: FakeKeycloak, user_id: str, union_id: str = "UnionAbc1", **extra: Any) -> str:  # noqa: ANN401
    """An account of the realm's TikTok web sign-in: linked to the union_id-keyed provider."""
    keycloak.users[user_id] = {
        "id": user_id,
        "username": f"web-{user_id}",
        "enabled": True,
        "attributes": {},
        "groups": [GROUP],
        "federatedIdentities": [{"identityProvider": WEB, "userId": union_id, "userName": "tt"}],
        **extra,
    }
    return user_id


def provisioning(
    keycloak: FakeKeycloak,
    *,
    imported_users: bool = True,
    aliases: tuple[str, ...] = (WEB,),
    recorded: tuple[str, ...] | None = None,
    **policy: Any,  # noqa: ANN401
) -> ProvisioningService:
    """`recorded`: the providers the group records as enrolled (`bridge keycloak apply`); all by default."""
    keycloak.group_attrs.setdefault(GROUP, {})[ENROLLED_PROVIDERS] = list(
        aliases if recorded is None else recorded
    )
    adoption = AdoptionService(
        keycloak=keycloak,
        policy=AdoptionPolicy(
            idp_alias="tiktok",
            union_id_attribute=ATTRIBUTES.union_id,
            imported=imported_users,
            union_id_idp_aliases=aliases,
            group=GROUP,
        ),
    )
    bridge_policy = make_policy(**policy)
    return ProvisioningService(
        keycloak=keycloak,
        identities=IdentityStore.from_policy(MemoryCache(), bridge_policy),
        policy=bridge_policy,
        adoption=adoption,
    )


def tiktok_link(keycloak: FakeKeycloak, user_id: str) -> list[str]:
    return [
        link["userId"]
        for link in keycloak.users[user_id].get("federatedIdentities", [])
        if link["identityProvider"] == "tiktok"
    ]


async def test_an_imported_user_is_linked_at_its_first_sign_in_and_kept(keycloak: FakeKeycloak) -> None:
    """The imported user whose lowercased union_id matches is linked to the open_id, its Strapi
    attributes kept and the TikTok ones synced, and no account is created."""
    imported(keycloak, "kc-7")
    service = provisioning(keycloak)

    user_id, created = await service.ensure_user(PROFILE)

    assert (user_id, created) == ("kc-7", False)
    assert tiktok_link(keycloak, "kc-7") == ["-open-1"]
    attributes = keycloak.users["kc-7"]["attributes"]
    assert attributes["strapi_id"] == ["7"]
    assert attributes["tiktok_open_id"] == ["-open-1"]
    assert attributes["tiktok_display_name"] == ["Tik Toker"]
    assert keycloak.calls["create"] == 0
    assert keycloak.calls["link"] == 1


async def test_the_search_is_made_on_the_first_sign_in_only(keycloak: FakeKeycloak) -> None:
    """Once linked, the identity is found by its link (or its cached entry): no attribute search, no
    provider-link search, whatever else is cached."""
    imported(keycloak, "kc-7")
    service = provisioning(keycloak)
    await service.ensure_user(PROFILE)
    searches = keycloak.calls["find_by_attribute"] + keycloak.calls["find_by_idp"]
    assert searches == 2  # one per kind of account, once

    await service.ensure_user(PROFILE)  # warm: the cached entry
    await provisioning(keycloak).ensure_user(PROFILE)  # another replica: found by its link

    assert keycloak.calls["find_by_attribute"] + keycloak.calls["find_by_idp"] == searches
    assert keycloak.calls["link"] == 1


async def test_a_racing_pair_of_first_sign_ins_adopts_once(keycloak: FakeKeycloak) -> None:
    """Two first sign-ins at once take the provisioning lock in turn: one link, one account, the same
    answer for both."""
    imported(keycloak, "kc-7")
    service = provisioning(keycloak)

    answers = await asyncio.gather(service.ensure_user(PROFILE), service.ensure_user(PROFILE))

    assert list(answers) == [("kc-7", False), ("kc-7", False)]
    assert keycloak.calls["link"] == 1
    assert keycloak.calls["create"] == 0
    assert len(keycloak.users) == 1


async def test_an_account_with_only_the_pseudo_email_is_not_adopted(keycloak: FakeKeycloak) -> None:
    """An account that merely has the union_id's pseudo-email (and even the attribute, without Strapi's
    id) is not taken over: the new account's e-mail collides, refused as before."""
    keycloak.users["kc-x"] = {
        "id": "kc-x",
        "username": "someone",
        "enabled": True,
        "email": "unionabc1@tiktok.com",
        "attributes": {"tiktok_union_id": ["unionabc1"]},
        "groups": [GROUP],
    }

    with pytest.raises(EmailTaken):
        await provisioning(keycloak, email_template="{union_id}@tiktok.com").ensure_user(PROFILE)

    assert keycloak.users["kc-x"].get("federatedIdentities") is None


@pytest.mark.parametrize(
    ("make", "refusal"),
    [
        pytest.param(
            lambda kc: (imported(kc, "kc-7"), imported(kc, "kc-8")), AccountsAmbiguous, id="two imported"
        ),
        pytest.param(
            lambda kc: (imported(kc, "kc-7"), web_account(kc, "kc-w")),
            AccountsAmbiguous,
            id="imported and web",
        ),
        pytest.param(
            lambda kc: (web_account(kc, "kc-w"), web_account(kc, "kc-v")), AccountsAmbiguous, id="two web"
        ),
        pytest.param(
            lambda kc: imported(
                kc, "kc-7", federatedIdentities=[{"identityProvider": "tiktok", "userId": "-other-app"}]
            ),
            AccountLinkedToOther,
            id="imported, linked to another open_id",
        ),
        pytest.param(
            lambda kc: web_account(
                kc,
                "kc-w",
                federatedIdentities=[
                    {"identityProvider": WEB, "userId": "UnionAbc1"},
                    {"identityProvider": "tiktok", "userId": "-other-app"},
                ],
            ),
            AccountLinkedToOther,
            id="web, linked to another open_id",
        ),
        pytest.param(lambda kc: imported(kc, "kc-7", groups=[]), AccountNotEligible, id="outside the group"),
        pytest.param(
            lambda kc: web_account(kc, "kc-w", groups=[]), AccountNotEligible, id="web, outside the group"
        ),
        pytest.param(lambda kc: imported(kc, "kc-7", enabled=False), AccountDisabled, id="blocked in Strapi"),
    ],
)
async def test_unclear_candidates_are_refused_and_nothing_is_written(
    keycloak: FakeKeycloak,
    make: Callable[[FakeKeycloak], object],
    refusal: type[Exception],
) -> None:
    """Two candidates, one linked to another TikTok identity, one outside the bridge's group, or a
    disabled one: refused, no link made and no account created."""
    make(keycloak)
    before = {k: dict(v) for k, v in keycloak.users.items()}

    with pytest.raises(refusal):
        await provisioning(keycloak).ensure_user(PROFILE)

    assert keycloak.users == before
    assert keycloak.calls["link"] + keycloak.calls["create"] + keycloak.calls["update"] == 0


async def test_a_web_sign_in_account_is_linked_by_the_exact_union_id(keycloak: FakeKeycloak) -> None:
    """The account linked to the union_id-keyed provider with the union_id as TikTok gives it is linked
    for the bridge, its web link kept; a link with another case of the union_id is not the same one."""
    web_account(keycloak, "kc-w")
    web_account(keycloak, "kc-lower", union_id="unionabc1")

    user_id, created = await provisioning(keycloak, imported_users=False).ensure_user(PROFILE)

    assert (user_id, created) == ("kc-w", False)
    links = keycloak.users["kc-w"]["federatedIdentities"]
    assert {(link["identityProvider"], link["userId"]) for link in links} == {
        (WEB, "UnionAbc1"),
        ("tiktok", "-open-1"),
    }
    assert keycloak.calls["find_by_attribute"] == 0


@pytest.mark.parametrize(
    ("imported_users", "aliases", "profile"),
    [
        pytest.param(False, (), PROFILE, id="adoption off"),
        pytest.param(
            True,
            (WEB,),
            ExternalIdentity(open_id="-open-1", union_id=None, display_name=None),
            id="no union_id",
        ),
    ],
)
async def test_no_search_when_nothing_can_be_adopted(
    keycloak: FakeKeycloak, imported_users: bool, aliases: tuple[str, ...], profile: ExternalIdentity
) -> None:
    """With adoption switched off, or a profile without union_id, a first sign-in searches nothing more
    and creates its account."""
    imported(keycloak, "kc-7")

    _, created = await provisioning(keycloak, imported_users=imported_users, aliases=aliases).ensure_user(
        profile
    )

    assert created
    assert keycloak.calls["find_by_attribute"] + keycloak.calls["find_by_idp"] == 0
    assert tiktok_link(keycloak, "kc-7") == []


async def test_no_new_account_while_the_web_accounts_may_be_out_of_sight(keycloak: FakeKeycloak) -> None:
    """While the group does not record a union_id-keyed provider (its accounts may lie outside the group,
    unseen), a first sign-in finding no account is refused rather than given one that could be the
    person's second; once `apply` has recorded it, the same sign-in makes the account."""
    with pytest.raises(ServerError) as refused:
        await provisioning(keycloak, recorded=()).ensure_user(PROFILE)

    assert "run `bridge keycloak apply`" in str(refused.value)
    assert keycloak.calls["create"] == 0
    assert keycloak.users == {}
    _, created = await provisioning(keycloak).ensure_user(PROFILE)
    assert created


async def test_an_account_found_needs_no_record_and_the_record_is_read_once(keycloak: FakeKeycloak) -> None:
    """A candidate the service account sees is adopted whatever the group records; the record itself
    is read once per process once it names every provider."""
    web_account(keycloak, "kc-w")
    assert await provisioning(keycloak, recorded=()).ensure_user(PROFILE) == ("kc-w", False)
    assert keycloak.calls["group_attributes"] == 0

    service = provisioning(keycloak)
    for open_id in ("-open-2", "-open-3"):
        await service.ensure_user(
            ExternalIdentity(open_id=open_id, union_id=f"U{open_id}", display_name=None)
        )

    assert keycloak.calls["group_attributes"] == 1


async def test_without_a_group_the_record_is_not_needed(keycloak: FakeKeycloak) -> None:
    """A bridge without a group (a service account that sees every account) needs no record: its search
    reaches the web accounts wherever they are."""
    adoption = AdoptionService(
        keycloak=keycloak,
        policy=AdoptionPolicy(
            idp_alias="tiktok",
            union_id_attribute=ATTRIBUTES.union_id,
            imported=False,
            union_id_idp_aliases=(WEB,),
        ),
    )

    assert await adoption.find(PROFILE) is None
    assert keycloak.calls["group_attributes"] == 0


def linking(keycloak: FakeKeycloak) -> LinkingService:
    cache = MemoryCache()
    policy = make_policy()
    return LinkingService(
        keycloak=keycloak,
        bearer=FakeBearers(
            {"seven": VerifiedBearer("kc-7", "account-app"), "other": VerifiedBearer("kc-o", "account-app")}
        ),
        proofs=IdentityService(
            provider=FakeTikTok(), profiles=ProfileStore.from_policy(cache, policy), policy=policy
        ),
        identities=IdentityStore.from_policy(cache, policy),
        policy=LinkPolicy(idp_alias="tiktok", link_clients=frozenset({"account-app"}), attributes=ATTRIBUTES),
        sessions=FakeSessions(),
        adoption=AdoptionService(
            keycloak=keycloak,
            policy=AdoptionPolicy(
                idp_alias="tiktok", union_id_attribute=ATTRIBUTES.union_id, imported=True, group=GROUP
            ),
        ),
    )


async def test_linking_adopts_the_identitys_own_account_and_refuses_another(keycloak: FakeKeycloak) -> None:
    """Linking the identity to another signed-in account, while an imported account holds its union_id,
    is refused (the person would have two accounts); linking it to that imported account is allowed."""
    imported(keycloak, "kc-7")
    keycloak.users["kc-o"] = {"id": "kc-o", "username": "other", "enabled": True, "groups": [GROUP]}
    service = linking(keycloak)

    with pytest.raises(IdentityLinkedElsewhere):
        await service.link(await service.signed_in_user("other"), PROFILE)
    assert keycloak.calls["link"] == 0

    state = await service.link(await service.signed_in_user("seven"), PROFILE)

    assert state.open_id == "-open-1"
    assert tiktok_link(keycloak, "kc-7") == ["-open-1"]
