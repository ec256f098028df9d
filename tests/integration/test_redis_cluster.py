"""Redis Cluster for real: three masters of Debian's redis-server with every slot assigned, used by the
cache and the rate limits as a `redis+cluster://` deployment would use them."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
from redis.crc import key_slot

from bridge.domain.errors import RateLimited, SubjectTokenRejected, UpstreamUnavailable
from bridge.storage.cache import FallbackCache, MemoryCache, RedisCache
from bridge.storage.ratelimit import RateLimiter
from bridge.storage.redis_connection import RedisConnection
from devstack.redis import RedisClusterNodes
from tests.conftest import forget_abandoned_sockets
from tests.unit.exchange_support import PROFILE, request
from tests.unit.fakes import FakeKeycloak, FakeTikTok, assert_lock_outcomes, make_policy, use_cases

if TYPE_CHECKING:
    from collections.abc import Iterator


def start_cluster(tmp_path_factory: pytest.TempPathFactory) -> RedisClusterNodes:
    nodes = RedisClusterNodes(work_dir=tmp_path_factory.mktemp("redis-cluster"))
    try:
        nodes.start()
    except BaseException:
        nodes.stop()
        raise
    return nodes


@pytest.fixture(scope="module", autouse=True)
def _servers_killed_under_clients() -> Iterator[None]:
    """This module kills Redis servers under live clients; what they abandon is collected here."""
    yield
    forget_abandoned_sockets()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    nodes = start_cluster(tmp_path_factory)
    yield nodes
    nodes.stop()


async def test_sign_in_and_deauthorization_work_through_a_cluster(cluster: RedisClusterNodes) -> None:
    """The user id and the tombstone are read together (one MGET, one hash slot): a returning user needs
    no Keycloak look-up, and a revoked token is refused."""
    redis = RedisConnection.from_url(cluster.url, timeout=2)
    cache = RedisCache(redis.client)
    keycloak = FakeKeycloak()
    bridge = use_cases(
        tiktok=FakeTikTok(profiles={"act.one": PROFILE}),
        keycloak=keycloak,
        cache=cache,
        policy=make_policy(deauthorization="record"),
    )
    try:
        first = await bridge.exchange.exchange(request("act.one"))
        keycloak.calls.clear()
        again = await bridge.exchange.exchange(request("act.one"))
        assert (again.user_id, again.created) == (first.user_id, False)
        assert "find" not in keycloak.calls  # the cached id came back through the cluster

        await bridge.deauthorization.deauthorize(PROFILE.open_id)
        with pytest.raises(SubjectTokenRejected):
            await bridge.exchange.exchange(request("act.one"))
    finally:
        await redis.aclose()


async def test_keys_of_different_slots_fail_as_a_cache_error(cluster: RedisClusterNodes) -> None:
    """What the shared hash tag avoids: the cluster refuses MGET across slots (CROSSSLOT), and that
    failure is the cache's UpstreamUnavailable, never an exception of the Redis client."""
    keys = ("tkb:v1:a", "tkb:v1:b")
    assert key_slot(keys[0].encode()) != key_slot(keys[1].encode())
    redis = RedisConnection.from_url(cluster.url, timeout=2)
    try:
        with pytest.raises(UpstreamUnavailable):
            await RedisCache(redis.client).get_many(*keys)
    finally:
        await redis.aclose()


async def test_a_cluster_outage_is_served_from_memory_and_limits_fail_open(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Every node stopped: the cache serves from process memory (degraded) and the rate limits, which
    were shared through the cluster, let requests through instead of failing them."""
    nodes = start_cluster(tmp_path_factory)
    redis = RedisConnection.from_url(nodes.url, timeout=1)
    cache = FallbackCache(RedisCache(redis.client), MemoryCache(), retry_interval=60)
    # The limiter shares the cache's cluster client, as in the served bridge.
    limiter = RateLimiter(redis.limits_storage, per_ip="1/minute", per_identity=None)
    try:
        await cache.set("tkb:v1:before", b"1", 60)
        assert await cache.get("tkb:v1:before") == b"1"
        await limiter.check_ip("192.0.2.1")
        with pytest.raises(RateLimited):
            await limiter.check_ip("192.0.2.1")  # the limit is kept in the cluster

        nodes.stop()

        assert await cache.get_many("tkb:v1:user:{x}", "tkb:v1:revoked:{x}") == [None, None]
        assert cache.degraded
        await cache.set("tkb:v1:during", b"2", 60)
        assert await cache.get("tkb:v1:during") == b"2"
        await limiter.check_ip("192.0.2.1")  # let through: the store is gone
    finally:
        nodes.stop()
        await redis.aclose()


async def test_the_lock_says_how_it_was_taken_and_waiters_read_the_winner(cluster: RedisClusterNodes) -> None:
    """Against real Redis: a free lock is taken at once, a held one after waiting (or not at all once the
    wait runs out); ten concurrent first sign-ins create one user, and only the first creates: the
    others waited, and read the winner's id instead of meeting Keycloak's 409."""
    redis = RedisConnection.from_url(cluster.url, timeout=2)
    cache = RedisCache(redis.client)
    try:
        await assert_lock_outcomes(cache, "tkb:test:lock")

        keycloak = FakeKeycloak()
        bridge = use_cases(
            tiktok=FakeTikTok(profiles={"act.new": replace(PROFILE, open_id="-000new")}),
            keycloak=keycloak,
            cache=cache,
            policy=make_policy(),
        ).exchange
        results = await asyncio.gather(*(bridge.exchange(request("act.new")) for _ in range(10)))
        assert len({r.user_id for r in results}) == 1
        assert keycloak.calls["create"] == 1
    finally:
        await redis.aclose()
