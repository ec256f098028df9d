"""Numeric Strapi ids for users the bridge made, over fakes: one per user, stable, never repeated, never
shared, whatever the counter in Redis does."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from bridge.domain.errors import TemporarilyUnavailable, UpstreamUnavailable, to_oauth_error
from bridge.domain.strapi import ATTR_STRAPI_ID, ATTR_STRAPI_ID_HIGH_WATER, HIGH_WATER_USERNAME
from bridge.keycloak.client import user_from_representation
from bridge.services.strapi_ids import MARGIN, MAX_CANDIDATES, HighWaterMark, StrapiIds, strapi_id_of
from bridge.storage.cache import FallbackCache, MemoryCache
from bridge.storage.identities import IdentityStore
from bridge.storage.strapi_ids import StrapiIdCounter
from tests.unit.fakes import FakeKeycloak, make_policy

if TYPE_CHECKING:
    from collections.abc import Callable

    from bridge.domain.model import KeycloakUser

GROUP = "/tiktok-users"


class YieldingKeycloak(FakeKeycloak):
    """The fake Keycloak, letting other tasks run before each call is carried out (as a real round trip
    would), so that racing allocations interleave step by step."""

    async def get_user(self, user_id: str) -> KeycloakUser | None:
        await asyncio.sleep(0)
        return await super().get_user(user_id)

    async def user_named(self, username: str) -> KeycloakUser | None:
        await asyncio.sleep(0)
        return await super().user_named(username)

    async def create_user(self, representation: dict[str, Any]) -> str:
        await asyncio.sleep(0)
        return await super().create_user(representation)

    async def update_user(self, user_id: str, representation: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        await super().update_user(user_id, representation)

    async def users_with_attribute(self, name: str, value: str) -> list[KeycloakUser]:
        await asyncio.sleep(0)
        return await super().users_with_attribute(name, value)


class ClaimsFirstKeycloak(YieldingKeycloak):
    """Holds every search back until two users have claimed a number: both racers claim before either
    asks who holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0
        self.claimed = asyncio.Event()

    async def update_user(self, user_id: str, representation: dict[str, Any]) -> None:
        await super().update_user(user_id, representation)
        if ATTR_STRAPI_ID in representation.get("attributes", {}):
            self.claims += 1
            if self.claims >= 2:
                self.claimed.set()

    async def users_with_attribute(self, name: str, value: str) -> list[KeycloakUser]:
        async with asyncio.timeout(5):
            await self.claimed.wait()
        return await super().users_with_attribute(name, value)


class CrowdedKeycloak(FakeKeycloak):
    """Every number searched for is held by some other account as well (the account is never listed
    among the users, only in the search's answer)."""

    async def users_with_attribute(self, name: str, value: str) -> list[KeycloakUser]:
        found = await super().users_with_attribute(name, value)
        other = {"id": "someone-else", "username": "someone", "enabled": True, "attributes": {name: [value]}}
        return [*found, user_from_representation(other)]


def allocator(
    keycloak: FakeKeycloak,
    counter: MemoryCache | None = None,
    *,
    randbelow: Callable[[int], int] = lambda _: 0,
    locks: MemoryCache | None = None,
) -> StrapiIds:
    """An allocator of one replica: its counter (Redis, or its memory) and its locks."""
    return StrapiIds(
        keycloak=keycloak,
        counter=StrapiIdCounter(MemoryCache() if counter is None else counter),
        mark=HighWaterMark(keycloak, groups=(GROUP,)),
        identities=IdentityStore.from_policy(MemoryCache() if locks is None else locks, make_policy()),
        randbelow=randbelow,
    )


async def new_user(keycloak: FakeKeycloak, name: str, **attributes: list[str]) -> KeycloakUser:
    user_id = await keycloak.create_user(
        {"username": name, "enabled": True, "attributes": dict(attributes), "groups": [GROUP]}
    )
    user = await keycloak.get_user(user_id)
    assert user is not None
    return user


def mark_of(keycloak: FakeKeycloak) -> int:
    (marker,) = [u for u in keycloak.users.values() if u["username"] == HIGH_WATER_USERNAME]
    return int(marker["attributes"][ATTR_STRAPI_ID_HIGH_WATER][0])


def holders(keycloak: FakeKeycloak, number: int) -> list[str]:
    return [
        user_id
        for user_id, rep in keycloak.users.items()
        if rep.get("attributes", {}).get(ATTR_STRAPI_ID) == [str(number)]
    ]


async def test_a_new_user_is_numbered_once_and_keeps_its_number() -> None:
    """The first number of an empty realm is 1, kept on the user and on the high-water mark; the next
    sign-in (with the number read back, or with a stale copy of the user) allocates nothing."""
    keycloak = FakeKeycloak()
    ids = allocator(keycloak)
    user = await new_user(keycloak, "tiktok_a")

    numbered = await ids.numbered(user, "open-a")

    assert strapi_id_of(numbered) == 1
    assert keycloak.users[user.id]["attributes"] == {ATTR_STRAPI_ID: ["1"]}
    assert mark_of(keycloak) == 1
    updates = keycloak.calls["update"]
    assert await ids.numbered(numbered, "open-a") is numbered
    assert strapi_id_of(await ids.numbered(user, "open-a")) == 1
    assert keycloak.calls["update"] == updates


async def test_the_marker_is_a_disabled_member_of_the_bridges_group() -> None:
    """The mark lives on one disabled account in the bridge's group, which the service account may
    create and update; nobody signs in as it."""
    keycloak = FakeKeycloak()
    await allocator(keycloak).numbered(await new_user(keycloak, "tiktok_a"), "open-a")
    (marker,) = [u for u in keycloak.users.values() if u["username"] == HIGH_WATER_USERNAME]
    assert marker["enabled"] is False
    assert marker["groups"] == [GROUP]
    assert marker["attributes"] == {ATTR_STRAPI_ID_HIGH_WATER: ["1"]}


async def test_numbers_follow_the_shared_counter() -> None:
    """Users numbered one after another through one counter get consecutive numbers."""
    keycloak, counter = FakeKeycloak(), MemoryCache()
    numbers = [
        strapi_id_of(await allocator(keycloak, counter).numbered(await new_user(keycloak, f"u{i}"), f"o{i}"))
        for i in range(3)
    ]
    assert numbers == [1, 2, 3]
    assert mark_of(keycloak) == 3


async def test_a_counter_behind_the_mark_jumps_past_it_by_the_margin() -> None:
    """After an import raised the mark to 500, the counter (at 0) restarts at 501 plus the margin and
    its random spread, and counts on from there."""
    keycloak, counter = FakeKeycloak(), MemoryCache()
    await HighWaterMark(keycloak, groups=(GROUP,)).raise_to(500)
    ids = allocator(keycloak, counter, randbelow=lambda _: 7)

    first = await ids.numbered(await new_user(keycloak, "a"), "oa")
    second = await ids.numbered(await new_user(keycloak, "b"), "ob")

    assert strapi_id_of(first) == 501 + MARGIN + 7
    assert strapi_id_of(second) == 501 + MARGIN + 8
    assert mark_of(keycloak) == 501 + MARGIN + 8


async def test_a_lost_counter_never_repeats_a_number_even_of_a_deleted_user() -> None:
    """Redis emptied between allocations: the next number lies above every number handed out, also
    after the user holding the highest one was deleted."""
    keycloak = FakeKeycloak()
    handed: list[int] = []
    for i in range(3):
        # Each allocation through a new counter: Redis lost everything in between.
        user = await allocator(keycloak, MemoryCache()).numbered(await new_user(keycloak, f"u{i}"), f"o{i}")
        number = strapi_id_of(user)
        assert number is not None
        assert number > max(handed, default=0)
        handed.append(number)
        await keycloak.delete_user(user.id)
    assert handed[1] > handed[0] + MARGIN


async def test_a_mark_lowered_by_a_lost_race_stays_above_what_was_handed_out() -> None:
    """Two max-merge writes that raced can leave the mark below a number handed out (here 1 instead of
    5); with the counter lost too and the top holders deleted, the margin still keeps every new number
    above 5."""
    keycloak = FakeKeycloak()
    counter = MemoryCache()
    users = [
        await allocator(keycloak, counter).numbered(await new_user(keycloak, f"u{i}"), f"o{i}")
        for i in range(5)
    ]
    assert [strapi_id_of(u) for u in users] == [1, 2, 3, 4, 5]
    (marker_id,) = [i for i, u in keycloak.users.items() if u["username"] == HIGH_WATER_USERNAME]
    keycloak.users[marker_id]["attributes"] = {ATTR_STRAPI_ID_HIGH_WATER: ["1"]}
    for user in users[1:]:
        await keycloak.delete_user(user.id)

    late = await allocator(keycloak, MemoryCache()).numbered(await new_user(keycloak, "late"), "late")

    number = strapi_id_of(late)
    assert number is not None
    assert number > 5


async def test_a_number_held_by_another_user_is_passed_over() -> None:
    """A user given strapi_id 1 outside the bridge (the mark knows nothing of it) keeps it; the new user
    sees it after claiming 1 and moves on to a number of its own."""
    keycloak = FakeKeycloak()
    other = await new_user(keycloak, "by-hand", **{ATTR_STRAPI_ID: ["1"]})

    numbered = await allocator(keycloak).numbered(await new_user(keycloak, "new"), "o")

    number = strapi_id_of(numbered)
    assert number is not None
    assert number > 1
    assert holders(keycloak, 1) == [other.id]
    assert holders(keycloak, number) == [numbered.id]


async def test_racing_claims_of_one_number_both_move_on() -> None:
    """Two replicas counting in their own memory (Redis out) draw 1 for two users at once: both claim
    it, each sees the other and moves on, so 1 ends held by nobody and the two numbers differ. (Were
    the lower Keycloak id to keep it, a racer whose search ran before the other's claim would keep it
    too.)"""
    keycloak = ClaimsFirstKeycloak()
    first, second = await new_user(keycloak, "a"), await new_user(keycloak, "b")
    replica_a = allocator(keycloak, MemoryCache(), randbelow=lambda _: 0)
    replica_b = allocator(keycloak, MemoryCache(), randbelow=lambda _: 5)

    a, b = await asyncio.gather(replica_a.numbered(first, "oa"), replica_b.numbered(second, "ob"))

    assert keycloak.calls["find_by_attribute"] == 4
    assert holders(keycloak, 1) == []
    assert strapi_id_of(a) != strapi_id_of(b)
    for user in (a, b):
        number = strapi_id_of(user)
        assert number is not None
        assert holders(keycloak, number) == [user.id]


async def test_concurrent_first_sign_ins_of_one_user_give_it_one_number() -> None:
    """Five first sign-ins of one user at once (one replica's lock) number it once."""
    keycloak, locks = YieldingKeycloak(), MemoryCache()
    user = await new_user(keycloak, "a")
    ids = allocator(keycloak, locks=locks)

    answers = await asyncio.gather(*(ids.numbered(user, "oa") for _ in range(5)))

    assert {strapi_id_of(answer) for answer in answers} == {1}
    assert keycloak.calls["find_by_attribute"] == 1
    assert strapi_id_of(await ids.numbered(await new_user(keycloak, "b"), "ob")) == 2


async def test_exhausted_candidates_are_a_503_and_leave_no_claim() -> None:
    """When every candidate is held by someone else, the sign-in is answered 503 after MAX_CANDIDATES
    tries and the user is left without a strapi_id (it would otherwise read a shared number back)."""
    keycloak = CrowdedKeycloak()
    user = await new_user(keycloak, "a")

    with pytest.raises(UpstreamUnavailable) as raised:
        await allocator(keycloak).numbered(user, "oa")

    assert keycloak.calls["find_by_attribute"] == MAX_CANDIDATES
    assert isinstance(to_oauth_error(raised.value), TemporarilyUnavailable)
    assert ATTR_STRAPI_ID not in keycloak.users[user.id]["attributes"]


async def test_the_lock_not_taken_in_time_is_a_503() -> None:
    """A user whose provisioning lock another sign-in holds past the wait is answered 503, unnumbered."""
    keycloak, locks = FakeKeycloak(), MemoryCache()
    user = await new_user(keycloak, "a")
    policy = make_policy()
    async with IdentityStore.from_policy(locks, policy).lock("oa", ttl=30, wait=1):
        ids = allocator(keycloak, locks=locks)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("bridge.services.strapi_ids.PROVISIONING_LOCK_WAIT", 0.01)
            with pytest.raises(TemporarilyUnavailable):
                await ids.numbered(user, "oa")
    assert ATTR_STRAPI_ID not in keycloak.users[user.id]["attributes"]


async def test_a_disabled_user_is_not_numbered() -> None:
    """A disabled account's sign-in is refused at the grant: no number is spent on it."""
    keycloak = FakeKeycloak()
    user = await new_user(keycloak, "a")
    keycloak.users[user.id]["enabled"] = False
    disabled = await keycloak.get_user(user.id)
    assert disabled is not None
    assert strapi_id_of(await allocator(keycloak).numbered(disabled, "oa")) is None
    assert keycloak.calls["update"] == 0


async def test_the_mark_is_only_ever_raised_and_found_by_every_replica() -> None:
    """A lower value never overwrites the mark; another replica finds the marker by its username and a
    deleted marker is made again at the next raise."""
    keycloak = FakeKeycloak()
    mark = HighWaterMark(keycloak, groups=(GROUP,))
    await mark.raise_to(10)
    await mark.raise_to(5)
    assert mark_of(keycloak) == 10
    other = HighWaterMark(keycloak, groups=(GROUP,))
    assert (await other.read()).value == 10
    await other.raise_to(12)
    assert (await mark.read()).value == 12
    (marker_id,) = [i for i, u in keycloak.users.items() if u["username"] == HIGH_WATER_USERNAME]
    await keycloak.delete_user(marker_id)
    assert (await mark.read()).value == 0
    await mark.raise_to(3)
    assert mark_of(keycloak) == 3


async def test_two_replicas_making_the_marker_at_once_keep_one() -> None:
    """Both find no marker and create it; the second create is Keycloak's 409, and it merges into the
    marker the first made instead."""
    keycloak = YieldingKeycloak()
    await asyncio.gather(
        HighWaterMark(keycloak, groups=(GROUP,)).raise_to(7),
        HighWaterMark(keycloak, groups=(GROUP,)).raise_to(9),
    )
    assert mark_of(keycloak) == 9


async def test_the_memory_counter_counts_and_jumps_past_a_floor() -> None:
    """count_up adds one, and a value below the floor becomes floor + jump, which the counter keeps."""
    cache = MemoryCache()
    assert await cache.count_up("k", floor=0, jump=100) == 1
    assert await cache.count_up("k", floor=2, jump=100) == 2
    assert await cache.count_up("k", floor=10, jump=100) == 110
    assert await cache.count_up("k", floor=10, jump=100) == 111


async def test_a_user_keycloak_no_longer_has_is_left_to_the_sign_in() -> None:
    """A cached id whose user an administrator deleted gives no user to number (the sign-in provisions
    anew), and nothing is written; an existing one is numbered."""
    keycloak = FakeKeycloak()
    ids = allocator(keycloak)
    assert await ids.numbered_by_id("user-gone", "o") is None
    assert keycloak.calls["update"] == keycloak.calls["create"] == 0
    user = await new_user(keycloak, "a")
    numbered = await ids.numbered_by_id(user.id, "oa")
    assert numbered is not None
    assert strapi_id_of(numbered) == 1


class DownCache(MemoryCache):
    """A primary cache whose counter does not answer, like a Redis that went away."""

    async def count_up(self, key: str, *, floor: int, jump: int) -> int:
        raise UpstreamUnavailable("cache", "down")


async def test_with_redis_out_the_counter_counts_in_memory_above_the_floor() -> None:
    """The fallback cache counts in this process's memory while Redis is out: from 0, so the first number
    jumps past the floor it is given, and the next ones follow it."""
    cache = FallbackCache(DownCache(), MemoryCache())
    assert await cache.count_up("k", floor=501, jump=1000) == 1501
    assert cache.degraded
    assert await cache.count_up("k", floor=501, jump=1000) == 1502
