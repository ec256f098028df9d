"""The count of bare access tokens TikTok refused per client address (SECURITY.md, "credentials and
sessions", finding 6): addresses
whose tokens TikTok keeps refusing stop spending TikTok's quota, and real users from new addresses
keep signing in during a spray of made-up tokens."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pytest
from limits.aio.storage import MemoryStorage
from limits.errors import StorageError

from bridge.domain.errors import (
    RateLimited,
    SubjectTokenRejected,
    TemporarilyUnavailable,
    UpstreamUnavailable,
)
from bridge.domain.model import Caller, ExternalIdentity
from bridge.services.identity import IdentityService
from bridge.storage.cache import MemoryCache
from bridge.storage.profiles import ProfileStore
from bridge.storage.ratelimit import ProfileQuota, RefusalCounts
from tests.unit.fakes import FakeTikTok, make_policy

if TYPE_CHECKING:
    from collections.abc import Iterable

    from bridge.services.ports import RefusalBudget, RefusalReservation


@dataclass
class SlowTikTok(FakeTikTok):
    """TikTok answering after a moment, so that concurrent requests are all in flight at once; it can
    also be down."""

    down: bool = False

    async def fetch_profile(
        self, access_token: str, scopes: Iterable[str] = ("user.info.basic",)
    ) -> ExternalIdentity:
        await asyncio.sleep(0.01)
        if self.down:
            self.calls.append(access_token)
            raise UpstreamUnavailable("tiktok", "down")
        return await super().fetch_profile(access_token, scopes)


class _DownStorage(MemoryStorage):
    """A counter store that cannot be reached."""

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        raise StorageError(ConnectionError("down"))


class CountingRefusals:
    """The refusal count, recording which addresses it was asked about."""

    def __init__(self, inner: RefusalCounts) -> None:
        self.inner = inner
        self.asked: list[str] = []

    async def reserve(self, address: str) -> RefusalReservation:
        self.asked.append(address)
        return await self.inner.reserve(address)


def profile(open_id: str) -> ExternalIdentity:
    return ExternalIdentity(open_id=open_id, union_id=None, display_name=None, verified_at=time.time())


def service(
    tiktok: FakeTikTok, refusals: RefusalBudget | None, quota: ProfileQuota | None = None
) -> IdentityService:
    return IdentityService(
        provider=tiktok,
        profiles=ProfileStore.from_policy(MemoryCache(), make_policy()),
        policy=make_policy(),
        quota=quota,
        refusals=refusals,
    )


async def outcome(bridge: IdentityService, token: str, address: str, *, trusted: bool = False) -> str:
    """What the caller got: ok, or the error class's name."""
    try:
        await bridge.verify_access_token(token, Caller(address=address, trusted=trusted))
    except (SubjectTokenRejected, RateLimited, TemporarilyUnavailable, UpstreamUnavailable) as exc:
        return type(exc).__name__
    return "ok"


async def test_an_address_is_cut_off_after_its_budget_of_refusals_in_a_row() -> None:
    """Ten refused attempts, then 429 with the rest of the hour as Retry-After; the refused eleventh is
    not counted (it gives its attempt back), so the address stays at exactly its budget."""
    refusals = RefusalCounts(MemoryStorage(), per_address="10/hour", upstream="tiktok")
    for _ in range(10):
        await refusals.reserve("203.0.113.1")  # kept: TikTok refused each
    for _ in range(3):
        with pytest.raises(RateLimited) as refused:
            await refusals.reserve("203.0.113.1")
        assert 3590 <= refused.value.retry_after <= 3600
    assert refused.value.status_code == 429
    assert refused.value.error == "temporarily_unavailable"
    await refusals.reserve("203.0.113.2")  # another address has its own count


async def test_an_accepted_token_starts_the_count_again_and_a_release_gives_the_attempt_back() -> None:
    """Nine refusals and an acceptance leave the address a whole budget; attempts that ended in an
    outage or a spent quota are not counted at all."""
    refusals = RefusalCounts(MemoryStorage(), per_address="10/hour", upstream="tiktok")
    for _ in range(9):
        await refusals.reserve("203.0.113.1")
    accepted: RefusalReservation = await refusals.reserve("203.0.113.1")
    await accepted.vouched()
    for _ in range(20):
        await (await refusals.reserve("203.0.113.1")).release()
    for _ in range(10):
        await refusals.reserve("203.0.113.1")
    with pytest.raises(RateLimited):
        await refusals.reserve("203.0.113.1")


async def test_without_its_store_the_count_is_kept_in_process_memory() -> None:
    """The shared store down: the address is still cut off, counted in this process (a Redis outage
    under a spray must not let the spray through whole)."""
    refusals = RefusalCounts(_DownStorage(), per_address="3/hour", upstream="tiktok")
    for _ in range(3):
        await refusals.reserve("203.0.113.1")
    with pytest.raises(RateLimited):
        await refusals.reserve("203.0.113.1")


async def test_a_burst_from_one_address_reaches_tiktok_only_its_budget_of_times() -> None:
    """60 made-up tokens at once from one address: each attempt is counted before TikTok answers, so 10
    reach TikTok and 50 are refused 429 without a call (counted after the answer, all 60 would pass)."""
    tiktok = SlowTikTok()
    bridge = service(tiktok, RefusalCounts(MemoryStorage(), per_address="10/hour", upstream="tiktok"))
    outcomes = await asyncio.gather(*(outcome(bridge, f"act.garbage-{i}", "203.0.113.1") for i in range(60)))
    assert sorted(set(outcomes)) == ["AccessTokenRejected", "RateLimited"]
    assert outcomes.count("AccessTokenRejected") == len(tiktok.calls) == 10


async def test_outages_cost_no_budget_and_confidential_clients_are_not_counted() -> None:
    """Attempts that end in a TikTok outage are given back, so a real user retrying through one is not
    cut off afterwards; a confidential client (one server for many users) is never counted."""
    tiktok = SlowTikTok(profiles={"act.real": profile("-000real")}, down=True)
    bridge = service(tiktok, RefusalCounts(MemoryStorage(), per_address="3/hour", upstream="tiktok"))
    for _ in range(5):
        assert await outcome(bridge, "act.real", "198.51.100.7") == "TemporarilyUnavailable"
    for i in range(5):
        assert (
            await outcome(bridge, f"act.garbage-{i}", "192.0.2.1", trusted=True) == "TemporarilyUnavailable"
        )
    tiktok.down = False
    assert await outcome(bridge, "act.real", "198.51.100.7") == "ok"
    for i in range(5):
        assert await outcome(bridge, f"act.garbage-{i}", "192.0.2.1", trusted=True) == "AccessTokenRejected"


async def test_a_cut_off_address_still_signs_in_with_a_token_already_verified() -> None:
    """The warm path is untouched: a profile in the cache answers without the counter being asked, so
    a real user behind a cut-off address keeps signing in with a token TikTok vouched for."""
    tiktok = SlowTikTok(profiles={"act.real": profile("-000real")})
    refusals = CountingRefusals(RefusalCounts(MemoryStorage(), per_address="2/hour", upstream="tiktok"))
    bridge = service(tiktok, refusals)
    assert await outcome(bridge, "act.real", "198.51.100.7") == "ok"  # from elsewhere: cached now
    for i in range(2):
        assert await outcome(bridge, f"act.garbage-{i}", "203.0.113.1") == "AccessTokenRejected"
    assert await outcome(bridge, "act.garbage-x", "203.0.113.1") == "RateLimited"
    refusals.asked.clear()
    assert await outcome(bridge, "act.real", "203.0.113.1") == "ok"
    assert refusals.asked == []


async def test_during_a_spray_from_13_addresses_5_of_5_new_real_users_sign_in() -> None:
    """Found under attack (SECURITY.md, "credentials and sessions", finding 6): 13
    addresses send 60 made-up bare tokens each at once (the per-address
    limit), 780 in all against an unproven share of 290 TikTok calls a minute. With the default budget
    only 130 reach TikTok, and 5 of 5 real users from addresses never seen before are verified; without
    it the share is spent and each of them gets 503."""
    real = {f"act.real-{n}": profile(f"-000real{n}") for n in range(5)}
    tiktok = SlowTikTok(profiles=dict(real))
    quota = ProfileQuota(
        MemoryStorage(), per_minute="580/minute", unproven_share=0.5, upstream="tiktok", name="TikTok"
    )
    bridge = service(tiktok, RefusalCounts(MemoryStorage(), per_address="10/hour", upstream="tiktok"), quota)
    spray = await asyncio.gather(
        *(outcome(bridge, f"act.garbage-{i}", f"203.0.113.{i % 13 + 1}") for i in range(13 * 60))
    )
    users = [await outcome(bridge, token, f"198.51.100.{10 + n}") for n, token in enumerate(real)]
    assert users == ["ok"] * 5
    assert spray.count("AccessTokenRejected") == 130
    assert spray.count("RateLimited") == 13 * 60 - 130

    without = service(
        replace(tiktok, calls=[]),
        None,
        ProfileQuota(
            MemoryStorage(), per_minute="580/minute", unproven_share=0.5, upstream="tiktok", name="TikTok"
        ),
    )
    await asyncio.gather(
        *(outcome(without, f"act.garbage-{i}", f"203.0.113.{i % 13 + 1}") for i in range(13 * 60))
    )
    assert [await outcome(without, t, f"198.51.100.{20 + n}") for n, t in enumerate(real)] == [
        "TemporarilyUnavailable"
    ] * 5
