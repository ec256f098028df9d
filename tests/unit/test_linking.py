"""The linking use case with in-memory fakes: who may link, one identity per user, what is forgotten."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from bridge.domain.errors import IdentityLinkedElsewhere, InvalidToken, OtherIdentityLinked
from bridge.domain.model import ExternalIdentity, VerifiedBearer
from bridge.providers.tiktok.attributes import ATTRIBUTES
from bridge.services.identity import IdentityService
from bridge.services.linking import LinkingService, LinkPolicy
from bridge.storage import keys
from bridge.storage.cache import MemoryCache
from bridge.storage.identities import IdentityStore
from bridge.storage.profiles import ProfileStore
from tests.unit.fakes import FakeKeycloak, FakeTikTok, make_policy

if TYPE_CHECKING:
    from bridge.services.ports import BearerVerifier, IdentitySessions

ALICE = ExternalIdentity(open_id="-alice", union_id="u-a", display_name="Alice", username="alice")
MALLORY = ExternalIdentity(open_id="-mallory", union_id="u-m", display_name="Mallory")


@dataclass
class FakeBearers:
    """Bearer token -> (subject, azp); anything else is refused like a bad signature."""

    tokens: dict[str, VerifiedBearer] = field(default_factory=dict)

    async def verify(self, token: str) -> VerifiedBearer:
        try:
            return self.tokens[token]
        except KeyError:
            raise InvalidToken(detail="unknown") from None


@dataclass
class FakeSessions:
    ended: list[str] = field(default_factory=list)

    async def end_identity(self, open_id: str) -> None:
        self.ended.append(open_id)


_ports: tuple[BearerVerifier, IdentitySessions] = (FakeBearers(), FakeSessions())


@pytest.fixture
def keycloak() -> FakeKeycloak:
    kc = FakeKeycloak()
    for user_id in ("kc-alice", "kc-bob"):
        kc.users[user_id] = {"id": user_id, "username": user_id, "enabled": True, "attributes": {"x": ["1"]}}
    kc.users["kc-off"] = {"id": "kc-off", "username": "off", "enabled": False}
    return kc


@pytest.fixture
def cache() -> MemoryCache:
    return MemoryCache()


@pytest.fixture
def sessions() -> FakeSessions:
    return FakeSessions()


@pytest.fixture
def linking(keycloak: FakeKeycloak, cache: MemoryCache, sessions: FakeSessions) -> LinkingService:
    bearers = FakeBearers(
        {
            "alice": VerifiedBearer("kc-alice", "account-app"),
            "bob": VerifiedBearer("kc-bob", "account-app"),
            "off": VerifiedBearer("kc-off", "account-app"),
            "gone": VerifiedBearer("kc-gone", "account-app"),
            "other-client": VerifiedBearer("kc-alice", "some-other-app"),
        }
    )
    proofs = IdentityService(
        provider=FakeTikTok(), profiles=ProfileStore.from_policy(cache, make_policy()), policy=make_policy()
    )
    return LinkingService(
        keycloak=keycloak,
        bearer=bearers,
        proofs=proofs,
        identities=IdentityStore.from_policy(cache, make_policy()),
        policy=LinkPolicy(idp_alias="tiktok", link_clients=frozenset({"account-app"}), attributes=ATTRIBUTES),
        sessions=sessions,
    )


@pytest.mark.parametrize("token", ["forged", "off", "gone", "other-client"])
async def test_only_enabled_users_of_allowed_clients_are_signed_in(
    linking: LinkingService, token: str
) -> None:
    """A bad token, a disabled or deleted user, or a client not allowed to link: all invalid_token."""
    with pytest.raises(InvalidToken):
        await linking.signed_in_user(token)


async def test_link_attaches_identity_and_attributes_and_forgets_the_cached_user(
    linking: LinkingService, keycloak: FakeKeycloak, cache: MemoryCache
) -> None:
    """Linking writes the federated link and the tiktok_* attributes (others kept), drops the cached
    user id of the identity, and linking again changes nothing."""
    await cache.set(keys.linked_user("tiktok", ALICE.open_id), json.dumps({"id": "old"}).encode(), 60)
    alice = await linking.signed_in_user("alice")

    state = await linking.link(alice, ALICE)
    again = await linking.link(alice, ALICE)

    assert state == again
    assert state.to_json("tiktok")["linked"] is True
    rep = keycloak.users["kc-alice"]
    assert rep["federatedIdentities"] == [
        {"identityProvider": "tiktok", "userId": "-alice", "userName": "alice"}
    ]
    assert rep["attributes"]["x"] == ["1"]
    assert rep["attributes"]["tiktok_open_id"] == ["-alice"]
    assert keycloak.calls["link"] == 1
    assert await cache.get(keys.linked_user("tiktok", ALICE.open_id)) is None


async def test_conflicting_links_are_refused_and_change_nothing(
    linking: LinkingService, keycloak: FakeKeycloak
) -> None:
    """An identity of another user, or a second identity for one user, is a 409 and writes nothing."""
    alice, bob = await linking.signed_in_user("alice"), await linking.signed_in_user("bob")
    await linking.link(alice, ALICE)
    before = {k: dict(v) for k, v in keycloak.users.items()}
    writes = keycloak.calls["link"] + keycloak.calls["update"]

    with pytest.raises(IdentityLinkedElsewhere):
        await linking.link(bob, ALICE)
    with pytest.raises(OtherIdentityLinked):
        await linking.link(alice, MALLORY)

    assert keycloak.users == before
    assert keycloak.calls["link"] + keycloak.calls["update"] == writes


async def test_linking_and_relinking_end_the_identitys_earlier_sessions(
    linking: LinkingService, sessions: FakeSessions
) -> None:
    """A link, and a relink of the same pair, end the identity's sessions started before it: they were
    issued for the account the identity had then."""
    alice = await linking.signed_in_user("alice")

    await linking.link(alice, ALICE)
    await linking.link(alice, ALICE)

    assert sessions.ended == ["-alice", "-alice"]


async def test_unlink_removes_link_and_attributes_and_ends_the_sessions(
    linking: LinkingService, keycloak: FakeKeycloak, sessions: FakeSessions
) -> None:
    """Unlinking removes the link and every tiktok_* attribute, ends the identity's sessions, and a
    second unlink answers the same without doing anything."""
    alice = await linking.signed_in_user("alice")
    await linking.link(alice, ALICE)
    sessions.ended.clear()

    state = await linking.unlink(alice)
    again = await linking.unlink(alice)

    assert state == again
    assert state.open_id is None
    assert keycloak.users["kc-alice"]["federatedIdentities"] == []
    assert keycloak.users["kc-alice"]["attributes"] == {"x": ["1"]}
    assert sessions.ended == ["-alice"]
    assert (await linking.state(alice)).open_id is None
