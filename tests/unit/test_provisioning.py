"""Provisioning with in-memory fakes: the Keycloak user of a verified identity, found or created, its
cached entry, the provisioning lock, attribute sync, and what a new user gets."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from bridge.domain.errors import (
    AccountDisabled,
    EmailTaken,
    RegistrationClosed,
    ServerError,
    UpstreamUnavailable,
)
from bridge.domain.model import ExternalIdentity
from bridge.services.provisioning import deterministic_username
from bridge.storage import keys
from tests.unit.exchange_support import PROFILE, request, service
from tests.unit.fakes import FakeKeycloak, FakeTikTok, RecordingStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from bridge.domain.model import KeycloakUser


async def test_first_exchange_creates_a_linked_user_with_tiktok_attributes(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """The create call carries the link, the deterministic username and the TikTok attributes, no e-mail."""
    result = await service(tiktok, keycloak).exchange.exchange(request())

    assert result.created
    assert result.issued.access_token == f"kc-token-for:{result.user_id}"
    rep = keycloak.users[result.user_id]
    assert rep["username"] == deterministic_username("tiktok_", PROFILE.open_id)
    assert rep["federatedIdentities"] == [
        {"identityProvider": "tiktok", "userId": "-000AbC", "userName": "-000AbC"}
    ]
    assert rep["attributes"] == {
        "tiktok_open_id": ["-000AbC"],
        "tiktok_union_id": ["u-1"],
        "tiktok_display_name": ["Tik Toker"],
    }
    assert "email" not in rep
    # The new user joins the bridge's group, which confines the service account's permissions.
    assert rep["groups"] == ["/tiktok-users"]
    assert keycloak.calls["create"] == 1
    # One search, one create, and the process's one check that the groups exist: nothing more when the
    # lock is free.
    assert keycloak.admin_calls() == 3
    assert keycloak.calls["token"] == 1


async def test_disabled_user_is_refused_on_every_path(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """Disabled users are refused whether found by search (cold) or through the cached id (warm)."""
    bridge = service(tiktok, keycloak)
    user_id = (await bridge.exchange.exchange(request())).user_id
    keycloak.users[user_id]["enabled"] = False
    with pytest.raises(AccountDisabled):
        await bridge.exchange.exchange(request())  # warm: the grant refuses
    keycloak.calls.clear()
    with pytest.raises(AccountDisabled):
        await service(tiktok, keycloak).exchange.exchange(request())  # cold: the search result refuses
    assert keycloak.calls["token"] == 0  # no token was asked for on the cold path


async def test_registration_closed_refuses_new_users_only(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """With registration closed, an existing linked user signs in and a new one is refused."""
    await service(tiktok, keycloak).exchange.exchange(request())
    closed = service(tiktok, keycloak, registration_open=False)
    assert (await closed.exchange.exchange(request())).created is False
    tiktok.profiles["act.new"] = ExternalIdentity(open_id="-000New", union_id=None, display_name=None)
    with pytest.raises(RegistrationClosed):
        await closed.exchange.exchange(request("act.new"))


async def test_email_template_and_collision(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """The template fills an unverified e-mail; a second identity mapping to the same address is refused."""
    bridge = service(tiktok, keycloak, email_template="{union_id}@tiktok.invalid")
    user_id = (await bridge.exchange.exchange(request())).user_id
    assert keycloak.users[user_id]["email"] == "u-1@tiktok.invalid"
    assert keycloak.users[user_id]["emailVerified"] is False
    tiktok.profiles["act.other"] = replace(PROFILE, open_id="-000Other")
    with pytest.raises(EmailTaken):
        await bridge.exchange.exchange(request("act.other"))


async def test_no_email_when_template_needs_a_missing_union_id(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """TikTok sometimes omits union_id; then no address is made up."""
    tiktok.profiles["act.nounion"] = replace(PROFILE, union_id=None)
    bridge = service(tiktok, keycloak, email_template="{union_id}@tiktok.invalid")
    user_id = (await bridge.exchange.exchange(request("act.nounion"))).user_id
    assert "email" not in keycloak.users[user_id]


async def test_profile_change_is_synced_once(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """A changed display name updates the user once; unchanged profiles cause no admin call."""
    bridge = service(tiktok, keycloak)
    user_id = (await bridge.exchange.exchange(request())).user_id
    tiktok.profiles["act.renamed"] = replace(PROFILE, display_name="New Name")
    keycloak.calls.clear()

    await bridge.exchange.exchange(request("act.renamed"))
    await bridge.exchange.exchange(request("act.renamed"))

    assert keycloak.users[user_id]["attributes"]["tiktok_display_name"] == ["New Name"]
    assert keycloak.calls["update"] == 1
    assert keycloak.calls["token"] == 2


async def test_concurrent_first_exchanges_create_one_user(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """Single-flight: twenty simultaneous first sign-ins of one identity create exactly one user; the
    nineteen that waited for the lock read the winner's id from the cache instead of creating."""
    bridge = service(tiktok, keycloak)
    results = await asyncio.gather(*(bridge.exchange.exchange(request()) for _ in range(20)))
    assert len(keycloak.users) == 1
    assert {r.user_id for r in results} == set(keycloak.users)
    assert keycloak.calls["create"] == 1
    assert [r.created for r in results].count(True) == 1


async def test_a_first_sign_in_reads_its_user_entry_with_the_lock_and_caches_it_with_the_release(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """Three round trips on the identity's keys (Redis: MGET, then one script each way): the user entry
    with the tombstone; the lock with the entry (a holder that finished meanwhile left the id there);
    the new user's id with the lock's release. Four before: lock, write, release as commands of their
    own."""
    shared = RecordingStore()
    bridge = service(tiktok, keycloak, cache=shared)
    first = await bridge.exchange.exchange(request("act.one"))
    assert first.created
    identity = [op for op in shared.operations if op.split(" ")[1] in {"user", "revoked", "lock"}]
    assert identity == ["get_many user revoked", "locked_entry user", "save_and_release user"]
    assert await shared.key_lock_is_free(keys.provisioning_lock("tiktok", PROFILE.open_id))

    shared.operations.clear()
    again = await bridge.exchange.exchange(request("act.one"))
    assert again.user_id == first.user_id
    assert [op for op in shared.operations if "user" in op] == ["get_many user revoked"]


class LateSearchKeycloak(FakeKeycloak):
    """Its next search misses a user that exists: one created by a holder that finished between that
    search and our taking the lock (`after_missed_search`: what that holder did then)."""

    def __init__(self) -> None:
        super().__init__()
        self.miss_next_search = False
        self.after_missed_search: Callable[[], Awaitable[None]] | None = None

    async def find_linked_user(self, idp_alias: str, idp_user_id: str) -> KeycloakUser | None:
        if self.miss_next_search:
            self.miss_next_search = False
            self.calls["find"] += 1
            if self.after_missed_search is not None:
                await self.after_missed_search()
            return None
        return await super().find_linked_user(idp_alias, idp_user_id)


async def test_a_user_created_just_before_the_lock_is_found_by_the_409(tiktok: FakeTikTok) -> None:
    """The lock taken at once spares the re-read of the cache; a user that appeared between the search
    and the lock is still found (Keycloak refuses the same username), so there is still one user."""
    keycloak = LateSearchKeycloak()
    bridge = service(tiktok, keycloak)
    first = await bridge.exchange.exchange(request("act.one"))
    await bridge.cache.delete(keys.linked_user("tiktok", PROFILE.open_id))
    keycloak.miss_next_search = True

    again = await bridge.exchange.exchange(request("act.two"))
    assert again.user_id == first.user_id
    assert again.created is False  # found through the 409, not created: logs and answers say so
    assert len(keycloak.users) == 1
    assert keycloak.calls["create"] == 2  # the second one met the 409


async def test_sign_ins_racing_for_an_uncached_identity_search_keycloak_once(tiktok: FakeTikTok) -> None:
    """Ten sign-ins of a linked identity whose cache entry is gone take turns at the identity's lock:
    the first searches Keycloak and caches the id as it lets go, the nine behind it read that entry
    with the lock (a search is the dearest admin call under fine-grained permissions)."""
    keycloak = LateSearchKeycloak()
    bridge = service(tiktok, keycloak)
    first = await bridge.exchange.exchange(request("act.one"))
    await bridge.cache.delete(keys.linked_user("tiktok", PROFILE.open_id))
    searches = keycloak.calls["find"]

    racing = await asyncio.gather(*(bridge.exchange.exchange(request("act.two")) for _ in range(10)))

    assert {r.user_id for r in racing} == {first.user_id}
    assert not any(r.created for r in racing)
    assert keycloak.calls["find"] - searches == 1
    assert keycloak.calls["create"] == 1  # only the first sign-in's


def test_deterministic_username_is_stable_and_valid() -> None:
    """Usernames depend only on the open_id and use characters Keycloak accepts."""
    name = deterministic_username("tiktok_", "-000Ab/C:d e")
    assert name == deterministic_username("tiktok_", "-000Ab/C:d e")
    assert name != deterministic_username("tiktok_", "-000Ab/C:d E")
    assert name.startswith("tiktok_")
    assert len(name) == len("tiktok_") + 20
    assert name == name.lower()
    assert name.replace("_", "").isalnum()


async def test_new_users_join_the_default_groups(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """Configured groups that exist are named in the create call; they are checked once per process."""
    keycloak.groups = {"/tiktok-users"}
    bridge = service(tiktok, keycloak, default_groups=("/tiktok-users",))
    user_id = (await bridge.exchange.exchange(request())).user_id
    tiktok.profiles["act.other"] = replace(PROFILE, open_id="-000Other")
    await bridge.exchange.exchange(request("act.other"))

    assert keycloak.users[user_id]["groups"] == ["/tiktok-users"]
    assert keycloak.calls["groups"] == 1


async def test_a_missing_default_group_is_a_configuration_error(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """A group that does not exist is the operator's mistake: a server error, and no user created."""
    with pytest.raises(ServerError) as refused:
        await service(tiktok, keycloak, default_groups=("/nope",)).exchange.exchange(request())
    assert "/nope" in refused.value.detail
    assert not keycloak.users


async def test_new_users_get_the_default_realm_roles(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """Default realm roles are mapped to a new user right after it is created."""
    keycloak.realm_roles = {"tiktok-user"}
    user_id = (
        await service(tiktok, keycloak, default_realm_roles=("tiktok-user",)).exchange.exchange(request())
    ).user_id
    assert keycloak.users[user_id]["realmRoles"] == ["tiktok-user"]


async def test_a_failed_role_mapping_removes_the_new_user(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """No half-provisioned users: without its roles the account is deleted and the sign-in fails; the
    next sign-in provisions it afresh."""
    keycloak.realm_roles = {"tiktok-user"}
    keycloak.fail_role_mapping = True
    bridge = service(tiktok, keycloak, default_realm_roles=("tiktok-user",))
    with pytest.raises(UpstreamUnavailable):
        await bridge.exchange.exchange(request())
    assert not keycloak.users

    keycloak.fail_role_mapping = False
    result = await bridge.exchange.exchange(request())
    assert result.created
    assert keycloak.users[result.user_id]["realmRoles"] == ["tiktok-user"]
