"""A returning identity with a session asked for: minted first, then checked with the session's write.

Every rule of the exchange is run here on that path (the other tests of the use case ask for no session,
so they take the path that reads the cache first): a tombstone refuses, a disabled or unlinked user is
refused or re-provisioned, a changed profile is synced, a moved link is followed, and the cache's and
the session's Redis work is one round trip.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from bridge.domain.errors import AccountDisabled, SubjectTokenRejected, UpstreamUnavailable
from bridge.domain.model import IdentityState
from bridge.services.exchange import SessionOrder
from bridge.services.provisioning import deterministic_username
from bridge.services.sessions import SessionPolicy, SessionService
from bridge.storage import keys
from bridge.storage.cache import MemoryCache
from bridge.storage.engine import EntryCheck
from bridge.storage.recent_profiles import RecentProfiles
from bridge.storage.sealing import Sealer, new_key
from bridge.storage.sessions import SessionStore
from tests.unit.exchange_support import PROFILE, request
from tests.unit.fakes import (
    FakeKeycloak,
    FakeTikTok,
    RecordingStore,
    UseCases,
    assert_save_unless_ended_outcomes,
    assert_set_if_current_outcomes,
    make_policy,
    use_cases,
)
from tests.unit.test_sessions import FakeMinter as SessionsMinter
from tests.unit.test_sessions import FakeTikTokGrants


@pytest.fixture
def tiktok() -> FakeTikTok:
    fresh = replace(PROFILE, verified_at=time.time())
    return FakeTikTok(profiles={"act.one": fresh})


@pytest.fixture
def keycloak() -> FakeKeycloak:
    return FakeKeycloak()


@pytest.fixture
def store() -> RecordingStore:
    # The exchange's cache and the session store in one place, as with Redis (or the embedded default).
    return RecordingStore()


def sessions_over(store: RecordingStore) -> SessionService:
    return SessionService(
        store=SessionStore(store, idp_alias="tiktok", max_lifetime=86400 * 30),
        minter=SessionsMinter(),
        provider=FakeTikTokGrants(),
        sealer=Sealer.from_keys([new_key()]),
        policy=SessionPolicy(
            idle_timeout=86400,
            max_lifetime=86400 * 30,
            reuse_grace=5.0,
            provider_recheck=False,
            provider_recheck_interval=86400,
        ),
    )


def bridge_over(
    tiktok: FakeTikTok, keycloak: FakeKeycloak, store: RecordingStore, **policy: object
) -> tuple[UseCases, SessionOrder]:
    bridge = use_cases(
        tiktok=tiktok,
        keycloak=keycloak,
        cache=store,
        policy=make_policy(**policy),
        recent=RecentProfiles(100, 300),  # the profile from memory: the store sees the identity's work only
    )
    return bridge, SessionOrder(sessions_over(store), jkt=None, client_id="app")


def session_writes(store: RecordingStore) -> list[str]:
    return [op for op in store.operations if op.endswith(" session")]


def identity_work(store: RecordingStore) -> list[str]:
    """The operations on the identity's and the session's keys (not the TikTok token's profile)."""
    return [op for op in store.operations if op.split()[1] not in {"profile", "proven"}]


async def test_a_returning_identity_costs_one_round_trip_and_one_token_call(
    tiktok: FakeTikTok, keycloak: FakeKeycloak, store: RecordingStore
) -> None:
    """The first sign-in reads the cache before Keycloak (it cannot know the user yet) and writes the
    session apart; the next reads the tombstone and the user entry with the session's write, after
    the one token call."""
    bridge, order = bridge_over(tiktok, keycloak, store)
    first = await bridge.exchange.exchange(request(), session=order)
    assert identity_work(store)[0] == "get_many user revoked"
    assert identity_work(store)[-1] == "set session"
    store.operations.clear()
    keycloak.calls.clear()

    again = await bridge.exchange.exchange(request(), session=order)

    assert store.operations == ["set_if_current revoked user session"]
    assert keycloak.calls == {"token": 1}
    assert again.user_id == first.user_id
    assert again.issued.subject == first.user_id
    assert again.session is not None
    assert again.session.refresh_token != (first.session.refresh_token if first.session else None)
    stored = await store.memory.get(keys.session(again.session.refresh_token.split(".")[1]))
    assert stored is not None
    assert b'"client_id":"app"' in stored


async def test_without_a_session_asked_the_cache_is_read_before_keycloak(
    tiktok: FakeTikTok, keycloak: FakeKeycloak, store: RecordingStore
) -> None:
    """No session, nothing to join the check with: the token is minted only after the cache said yes."""
    bridge, _ = bridge_over(tiktok, keycloak, store)
    await bridge.exchange.exchange(request())
    store.operations.clear()

    await bridge.exchange.exchange(request())

    assert store.operations == ["get_many user revoked"]


@pytest.mark.parametrize("policy", ["record", "disable", "unlink"])
async def test_a_tombstone_refuses_the_minted_sign_in_and_starts_no_session(
    tiktok: FakeTikTok, keycloak: FakeKeycloak, store: RecordingStore, policy: str
) -> None:
    """Deauthorized after its profile was verified: refused, though Keycloak was asked first (with
    `record` it even minted: that token is dropped), and no session is written."""
    bridge, order = bridge_over(tiktok, keycloak, store, deauthorization=policy)
    await bridge.exchange.exchange(request(), session=order)
    await bridge.deauthorization.deauthorize(PROFILE.open_id)
    store.operations.clear()

    with pytest.raises(SubjectTokenRejected):
        await bridge.exchange.exchange(request(), session=order)

    assert "set session" not in store.operations
    store.operations.clear()
    keycloak.calls.clear()
    with pytest.raises(SubjectTokenRejected):
        await bridge.exchange.exchange(request(), session=order)
    # A retry is refused from the cache, before Keycloak: the revoked identity is no longer guessed.
    assert identity_work(store) == ["get_many user revoked"]
    assert keycloak.calls["token"] == 0


async def test_the_memory_store_checks_and_writes_as_redis_does() -> None:
    await assert_set_if_current_outcomes(MemoryCache())
    await assert_save_unless_ended_outcomes(MemoryCache())


async def test_a_profile_verified_at_the_tombstones_very_time_is_refused(store: RecordingStore) -> None:
    """`<=`, as the path that reads first compares: the same float on both sides refuses."""
    now = time.time()
    await store.set(keys.deauthorized("tiktok", "o"), repr(now).encode(), 60)
    await store.set(keys.linked_user("tiktok", "o"), b"entry", 60)
    check = EntryCheck(
        user_key=keys.linked_user("tiktok", "o"),
        revoked_key=keys.deauthorized("tiktok", "o"),
        entry=b"entry",
        verified_at=now,
    )
    session = keys.session("s")
    assert await store.set_if_current(check, session, b"v", 60) is IdentityState.REVOKED
    assert await store.memory.get(session) is None
    assert await store.set_if_current(replace(check, verified_at=now + 0.001), session, b"v", 60) is (
        IdentityState.CURRENT
    )
    assert await store.memory.get(session) == b"v"


async def test_a_user_disabled_in_keycloak_is_refused_at_the_grant(
    tiktok: FakeTikTok, keycloak: FakeKeycloak, store: RecordingStore
) -> None:
    """Refused, with the same error as on the path that reads the cache first."""
    bridge, order = bridge_over(tiktok, keycloak, store)
    user_id = (await bridge.exchange.exchange(request(), session=order)).user_id
    keycloak.users[user_id]["enabled"] = False
    store.operations.clear()

    with pytest.raises(AccountDisabled):
        await bridge.exchange.exchange(request(), session=order)
    assert session_writes(store) == []


async def test_a_changed_profile_is_synced_before_the_token_it_is_answered_with(
    tiktok: FakeTikTok, keycloak: FakeKeycloak, store: RecordingStore
) -> None:
    """The entry's fingerprint differs: the token minted first is dropped, the attributes are synced,
    and the answer's token is minted after the sync (a mapper may put them in it)."""
    bridge, order = bridge_over(tiktok, keycloak, store)
    user_id = (await bridge.exchange.exchange(request(), session=order)).user_id
    tiktok.profiles["act.renamed"] = replace(PROFILE, display_name="New Name", verified_at=time.time())
    keycloak.calls.clear()

    renamed = await bridge.exchange.exchange(request("act.renamed"), session=order)

    assert keycloak.users[user_id]["attributes"]["tiktok_display_name"] == ["New Name"]
    assert keycloak.calls["update"] == 1
    assert keycloak.calls["token"] == 2  # the first dropped, the second after the update
    assert renamed.session is not None
    keycloak.calls.clear()
    store.operations.clear()
    await bridge.exchange.exchange(request("act.renamed"), session=order)
    assert keycloak.calls == {"token": 1}
    assert store.operations == ["set_if_current revoked user session"]


async def test_a_removed_link_is_provisioned_afresh(
    tiktok: FakeTikTok, keycloak: FakeKeycloak, store: RecordingStore
) -> None:
    bridge, order = bridge_over(tiktok, keycloak, store)
    old_id = (await bridge.exchange.exchange(request(), session=order)).user_id
    keycloak.users[old_id]["federatedIdentities"] = []

    result = await bridge.exchange.exchange(request(), session=order)

    assert result.user_id != old_id
    assert result.created
    assert keycloak.users[result.user_id]["username"] == deterministic_username("tiktok_", PROFILE.open_id, 1)
    assert result.session is not None


async def test_a_link_moved_by_an_admin_is_followed_at_once(
    tiktok: FakeTikTok, keycloak: FakeKeycloak, store: RecordingStore
) -> None:
    """Keycloak's token names D while the cache names C: the session is D's, never C's."""
    bridge, order = bridge_over(tiktok, keycloak, store)
    c = (await bridge.exchange.exchange(request(), session=order)).user_id
    link = keycloak.users[c].pop("federatedIdentities")
    d = await keycloak.create_user({"username": "someone-else", "enabled": True, "federatedIdentities": link})

    moved = await bridge.exchange.exchange(request(), session=order)
    again = await bridge.exchange.exchange(request(), session=order)

    assert (moved.user_id, again.user_id) == (d, d)
    for exchanged in (moved, again):
        assert exchanged.session is not None
        stored = await store.memory.get(keys.session(exchanged.session.refresh_token.split(".")[1]))
        assert stored is not None
        assert f'"user_id":"{d}"'.encode() in stored


def stale_guesses() -> float:
    return REGISTRY.get_sample_value("bridge_cache_lookups_total", {"kind": "user", "result": "stale"}) or 0.0


async def test_each_wasted_grant_is_counted_for_operators(
    tiktok: FakeTikTok, keycloak: FakeKeycloak, store: RecordingStore
) -> None:
    """`bridge_cache_lookups_total{kind="user", result="stale"}`: one per grant asked before the cache
    said no (entry gone, Keycloak refusing), none for a sign-in whose guess was right."""
    bridge, order = bridge_over(tiktok, keycloak, store)
    user_id = (await bridge.exchange.exchange(request(), session=order)).user_id
    before = stale_guesses()
    await bridge.exchange.exchange(request(), session=order)
    assert stale_guesses() == before

    await store.memory.delete(keys.linked_user("tiktok", PROFILE.open_id))
    await bridge.exchange.exchange(request(), session=order)
    keycloak.users[user_id]["enabled"] = False
    with pytest.raises(AccountDisabled):
        await bridge.exchange.exchange(request(), session=order)

    assert stale_guesses() == before + 2


async def test_an_expired_user_entry_is_looked_up_again(
    tiktok: FakeTikTok, keycloak: FakeKeycloak, store: RecordingStore
) -> None:
    """The cache forgot the user (its TTL, or Redis lost it): the check finds no entry, and the sign-in
    goes by Keycloak's search, which caches the user again for the next one."""
    bridge, order = bridge_over(tiktok, keycloak, store)
    await bridge.exchange.exchange(request(), session=order)
    await store.memory.delete(keys.linked_user("tiktok", PROFILE.open_id))
    keycloak.calls.clear()

    result = await bridge.exchange.exchange(request(), session=order)

    assert keycloak.calls == {"token": 2, "find": 1}
    assert result.session is not None
    assert await store.memory.get(keys.linked_user("tiktok", PROFILE.open_id)) is not None


async def test_an_identity_known_longer_than_the_user_ttl_is_read_first_again(
    tiktok: FakeTikTok, keycloak: FakeKeycloak, store: RecordingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This process expects the entry it relied on to last the user TTL at most; after that it does not
    spend a token call on a guess."""
    bridge, order = bridge_over(tiktok, keycloak, store, user_ttl=60)
    await bridge.exchange.exchange(request(), session=order)
    later = time.time() + 61
    monkeypatch.setattr("bridge.services.exchange.time.time", lambda: later)
    store.operations.clear()

    await bridge.exchange.exchange(request(), session=order)

    assert identity_work(store)[0] == "get_many user revoked"


class StoreGoingAway(RecordingStore):
    """Redis answering the cache's reads but failing the session's write (it went away in between)."""

    async def set_if_current(self, check: EntryCheck, key: str, value: bytes, ttl: float) -> IdentityState:
        raise UpstreamUnavailable("cache", "set_if_current failed: ConnectionError")


async def test_a_store_failing_at_the_check_answers_without_a_session_and_keeps_the_rules(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """The token already minted is answered (no second token call) once the cache confirms the identity;
    a tombstone still refuses."""
    store = StoreGoingAway()
    bridge, order = bridge_over(tiktok, keycloak, store)
    first = await bridge.exchange.exchange(request(), session=order)
    keycloak.calls.clear()

    again = await bridge.exchange.exchange(request(), session=order)

    assert again.session is None
    assert again.user_id == first.user_id
    assert keycloak.calls == {"token": 1}
    await bridge.deauthorization.deauthorize(PROFILE.open_id)
    with pytest.raises(SubjectTokenRejected):
        await bridge.exchange.exchange(request(), session=order)
