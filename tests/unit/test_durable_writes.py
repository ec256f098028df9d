"""Ending writes are asked to be confirmed by the Redis replicas (`durable`), the others are not; and a
write the replicas did not confirm is a 503 for its caller, never a switch to process memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from pydantic import ValidationError

from bridge.domain.errors import NotReplicated, TemporarilyUnavailable, to_oauth_error
from bridge.services.deauthorization import DeauthorizationService
from bridge.settings import Settings
from bridge.storage.cache import FallbackCache, MemoryCache
from bridge.storage.deauthorizations import DeauthorizationQueue
from bridge.storage.identities import IdentityStore
from tests.conftest import Clock
from tests.unit.fakes import FakeKeycloak, RecordingStore, make_policy
from tests.unit.test_sessions import FakeMinter, FakeTikTokGrants, make_sessions, start

if TYPE_CHECKING:
    from bridge.storage.engine import Store


async def test_revocation_and_reuse_are_durable_and_idle_expiry_is_not() -> None:
    """A revoked or reused session must not come back with a failover; an idle one ends by itself."""
    clock = Clock()
    store = RecordingStore()
    sessions = make_sessions(store, FakeMinter(), FakeTikTokGrants(), clock)

    revoked = await start(sessions)
    assert await sessions.revoke(revoked)
    assert store.durable == [("delete", "session")]

    store.durable.clear()
    first = await start(sessions)
    await sessions.refresh(first, ())
    clock.now += 6  # past the reuse grace
    with pytest.raises(Exception, match="retired"):
        await sessions.refresh(first, ())
    assert store.durable == [("delete", "session")]

    store.durable.clear()
    idle = await start(sessions)
    clock.now += 31 * 24 * 3600
    with pytest.raises(Exception, match="idle"):
        await sessions.refresh(idle, ())
    assert store.durable == []


async def test_ending_an_identity_is_durable() -> None:
    """The not-before time of an identity's sessions (webhook, `sessions end`) is confirmed."""
    store = RecordingStore()
    sessions = make_sessions(store, FakeMinter(), FakeTikTokGrants(), Clock())
    await sessions.end_identity("-000a")
    assert store.durable == [("set", "sessions-not-before")]


@pytest.mark.parametrize(("policy", "expected"), [("record", 1), ("disable", 2)])
async def test_a_deauthorization_is_recorded_durably(policy: str, expected: int) -> None:
    """The tombstone, and the queued deauthorization unless the policy only records it."""
    store = RecordingStore()
    settings = make_policy(deauthorization=policy)
    service = DeauthorizationService(
        keycloak=FakeKeycloak(),
        identities=IdentityStore.from_policy(store, settings),
        queue=DeauthorizationQueue.from_policy(store, settings),
        policy=settings,
    )
    assert await service.record("-000a") is (policy != "record")
    assert [operation for operation, _ in store.durable] == ["set", "schedule"][:expected]


class UnconfirmedRedis(MemoryCache):
    """Redis that takes every write but whose replicas never confirm a durable one."""

    def __init__(self) -> None:
        super().__init__()
        self.pings = 0

    async def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:
        await super().set(key, value, ttl)
        if durable:
            raise NotReplicated("set: 0 of 1 replicas confirmed")


async def test_an_unconfirmed_write_is_a_503_and_not_an_outage() -> None:
    """The fallback cache passes NotReplicated on (a retryable 503) and keeps using Redis: memory is no
    place for a write that must outlive a failover, and Redis did answer."""
    primary: Store = UnconfirmedRedis()
    cache = FallbackCache(primary, MemoryCache(), retry_interval=60)
    with pytest.raises(NotReplicated) as raised:
        await cache.set("tombstone", b"1", 60, durable=True)
    assert not cache.degraded
    answer = to_oauth_error(raised.value)
    assert isinstance(answer, TemporarilyUnavailable)
    assert answer.headers()["Retry-After"] == "1"
    await cache.set("profile", b"1", 60)
    assert await primary.get("profile") == b"1"  # still Redis, not memory


def test_the_wait_defaults_below_a_short_redis_timeout_and_no_longer_one_is_taken(
    settings: Settings,
) -> None:
    """A short BRIDGE_REDIS_TIMEOUT alone still starts (the wait follows it); a wait as long as the
    timeout is refused, since a lagging replica would then read as an outage."""
    values = settings.model_dump()

    assert Settings(**{**values, "redis_timeout": 0.2}).wait_timeout == pytest.approx(0.1)
    assert settings.wait_timeout == pytest.approx(0.2)
    with pytest.raises(ValidationError, match="redis_wait_timeout"):
        Settings(**{**values, "redis_timeout": 0.5, "redis_wait_timeout": 0.5})
