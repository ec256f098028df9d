"""Circuit breaker, retries, the Redis fallback cache, rate limits and the metrics endpoint."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import aiohttp
import httpx  # respx builds httpx objects; transport errors are httpx2's, raised where a transport raises
import httpx2
import pytest
from limits.aio.storage import MemoryStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.errors import StorageError
from prometheus_client import REGISTRY

from bridge.domain.errors import (
    IdentityRefused,
    RateLimited,
    TemporarilyUnavailable,
    UpstreamUnavailable,
)
from bridge.domain.model import Held
from bridge.keycloak.client import KeycloakClient
from bridge.outbound.resilience import CircuitBreaker
from bridge.providers.tiktok.client import TikTokClient
from bridge.storage.admin_tokens import AdminTokenStore
from bridge.storage.cache import FallbackCache, MemoryCache
from bridge.storage.ratelimit import ProfileQuota, RateLimiter
from bridge.storage.redis_connection import RedisConnection

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import respx

    from bridge.storage.engine import GuardedCache, Store

USER_INFO = "https://open.tiktokapis.com/v2/user/info/"
OK = {"data": {"user": {"open_id": "-000a"}}, "error": {"code": "ok", "message": "", "log_id": "1"}}


def test_breaker_opens_after_threshold_and_fails_fast() -> None:
    """After `threshold` outages calls are refused at once, with the cooldown left as Retry-After."""
    breaker = CircuitBreaker("keycloak", threshold=3, cooldown=30)
    for _ in range(3):
        breaker.before_call()
        breaker.record_failure()
    assert breaker.state == "open"
    with pytest.raises(UpstreamUnavailable) as caught:
        breaker.before_call()
    assert 29 <= caught.value.retry_after <= 30


def test_breaker_half_open_lets_one_trial_through() -> None:
    """After the cooldown one trial call passes; others wait for it; its success closes the breaker."""
    breaker = CircuitBreaker("tiktok", threshold=1, cooldown=0.01)
    breaker.before_call()
    breaker.record_failure()
    time.sleep(0.02)
    breaker.before_call()  # the trial
    with pytest.raises(UpstreamUnavailable):
        breaker.before_call()
    breaker.record_success()
    assert breaker.state == "closed"
    breaker.before_call()


def test_breaker_reopens_when_the_trial_fails() -> None:
    """A failed trial opens the breaker again for a full cooldown."""
    breaker = CircuitBreaker("tiktok", threshold=1, cooldown=0.01)
    breaker.record_failure()
    time.sleep(0.02)
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state == "open"


def test_breaker_state_is_published_for_alerting() -> None:
    """`bridge_circuit_open` reads 1 from the moment a breaker opens until a call succeeds again."""

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("bridge_circuit_open", {"upstream": "cache"})

    breaker = CircuitBreaker("cache", threshold=2, cooldown=0.01)
    breaker.record_failure()
    assert gauge() in {None, 0.0}
    breaker.record_failure()
    assert gauge() == 1.0
    time.sleep(0.02)
    breaker.before_call()  # half-open: still counted as open until the trial succeeds
    assert gauge() == 1.0
    breaker.record_success()
    assert gauge() == 0.0


@pytest.fixture
async def tiktok() -> AsyncIterator[TikTokClient]:
    async with httpx2.AsyncClient(timeout=1) as http:
        yield TikTokClient(http, base_url="https://open.tiktokapis.com", client_key="k", client_secret="s")


async def test_user_info_is_retried_after_a_gateway_error(
    tiktok: TikTokClient, httpx2_mock: respx.Router
) -> None:
    """A 503 from a gateway is retried once (user info is idempotent) and the second answer used."""
    route = httpx2_mock.get(USER_INFO).mock(side_effect=[httpx.Response(503), httpx.Response(200, json=OK)])
    profile = await tiktok.fetch_profile("act.t")
    assert profile.open_id == "-000a"
    assert route.call_count == 2


async def test_read_timeouts_are_not_retried(tiktok: TikTokClient, httpx2_mock: respx.Router) -> None:
    """A read timeout may mean the request is still running: it is not repeated."""
    route = httpx2_mock.get(USER_INFO).mock(side_effect=httpx2.ReadTimeout("slow"))
    with pytest.raises(UpstreamUnavailable):
        await tiktok.fetch_profile("act.t")
    assert route.call_count == 1


async def test_code_redemption_is_never_retried(tiktok: TikTokClient, httpx2_mock: respx.Router) -> None:
    """Codes are single-use, so a failed redemption is not repeated even on a 503."""
    route = httpx2_mock.post("https://open.tiktokapis.com/v2/oauth/token/").respond(503)
    with pytest.raises(UpstreamUnavailable):
        await tiktok.redeem_code("code", code_verifier="v" * 43, redirect_uri="https://a/cb")
    assert route.call_count == 1


KC = "https://kc.test"
KC_TOKEN = f"{KC}/realms/app/protocol/openid-connect/token"
KC_USERS = f"{KC}/admin/realms/app/users"
ADMIN_TOKEN = httpx.Response(200, json={"access_token": "adm", "expires_in": 300})


@pytest.fixture
async def keycloak() -> AsyncIterator[KeycloakClient]:
    async with httpx2.AsyncClient(timeout=1) as http, aiohttp.ClientSession() as token_http:
        yield KeycloakClient(
            http,
            AdminTokenStore(MemoryCache()),
            token_http=token_http,
            base_url=KC,
            realm="app",
            client_id="bridge",
            client_secret="s",
        )


@pytest.mark.parametrize(
    "first",
    [httpx.Response(503, text="restarting"), httpx2.ConnectError("refused")],
    ids=["503", "refused"],
)
async def test_keycloak_lookups_are_retried_after_a_5xx_or_refusal(
    keycloak: KeycloakClient, httpx2_mock: respx.Router, first: httpx.Response | Exception
) -> None:
    """A user search (a GET) that meets a 5xx or a refused connection is tried once more."""
    httpx2_mock.post(KC_TOKEN).mock(return_value=ADMIN_TOKEN)
    search = httpx2_mock.get(KC_USERS).mock(side_effect=[first, httpx.Response(200, json=[])])
    assert await keycloak.find_linked_user("tiktok", "-000a") is None
    assert search.call_count == 2


@pytest.mark.parametrize(
    "failure", [httpx.Response(503, text="restarting"), httpx2.ReadTimeout("slow")], ids=["503", "timeout"]
)
async def test_keycloak_user_creation_is_never_retried(
    keycloak: KeycloakClient, httpx2_mock: respx.Router, failure: httpx.Response | Exception
) -> None:
    """A POST may have created the user already: a failure is reported, not repeated."""
    httpx2_mock.post(KC_TOKEN).mock(return_value=ADMIN_TOKEN)
    create = httpx2_mock.post(KC_USERS).mock(side_effect=[failure])
    with pytest.raises(UpstreamUnavailable):
        await keycloak.create_user({"username": "tiktok_x"})
    assert create.call_count == 1


async def test_breaker_stops_calls_to_a_dead_tiktok(tiktok: TikTokClient, httpx2_mock: respx.Router) -> None:
    """Five outages in a row open the breaker: the sixth call never reaches the network."""
    route = httpx2_mock.get(USER_INFO).mock(side_effect=httpx2.ConnectError("refused"))
    for _ in range(5):
        with pytest.raises(UpstreamUnavailable):
            await tiktok.fetch_profile("act.t")
    calls = route.call_count
    with pytest.raises(UpstreamUnavailable) as caught:
        await tiktok.fetch_profile("act.t")
    assert route.call_count == calls
    assert caught.value.detail == "tiktok: circuit open"


async def test_refusals_do_not_count_as_outages(tiktok: TikTokClient, httpx2_mock: respx.Router) -> None:
    """Invalid tokens are answers, not outages: however many, the breaker stays closed."""
    body = {"data": {}, "error": {"code": "access_token_invalid", "message": "", "log_id": "1"}}
    httpx2_mock.get(USER_INFO).respond(401, json=body)
    for _ in range(10):
        with pytest.raises(IdentityRefused):
            await tiktok.fetch_profile("act.t")


class FlakyCache(MemoryCache):
    """A primary cache that can be switched off, like a Redis that stops answering."""

    def __init__(self) -> None:
        super().__init__()
        self.up = True

    def _check(self) -> None:
        if not self.up:
            raise UpstreamUnavailable("cache", "down")

    async def get(self, key: str) -> bytes | None:
        self._check()
        return await super().get(key)

    async def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:
        self._check()
        await super().set(key, value, ttl, durable=durable)

    async def ping(self) -> None:
        self._check()


async def test_fallback_cache_serves_from_memory_and_resumes() -> None:
    """While the primary is down reads and writes go to memory; after the retry interval it is used again."""
    primary = FlakyCache()
    cache = FallbackCache(primary, MemoryCache(), retry_interval=0.05)
    primary.up = False
    await cache.set("k", b"memory", 60)
    assert cache.degraded
    assert await cache.get("k") == b"memory"

    primary.up = True
    await asyncio.sleep(0.06)
    await cache.set("k", b"redis", 60)
    assert not cache.degraded
    assert await primary.get("k") == b"redis"


async def test_fallback_lock_does_not_swallow_errors_of_its_body() -> None:
    """An upstream error raised inside the lock is the body's own: it propagates, the cache stays healthy."""
    cache = FallbackCache(FlakyCache(), MemoryCache())
    with pytest.raises(UpstreamUnavailable) as caught:
        async with cache.lock("l", ttl=5, wait=1):
            raise UpstreamUnavailable("keycloak", "down")
    assert caught.value.upstream == "keycloak"
    assert not cache.degraded


_fallback_guards: GuardedCache = FallbackCache(FlakyCache(), MemoryCache())
# Never a Store (the session store): its entry may land in memory while its lock stays in Redis. mypy
# fails on this line ("unused ignore") if the fallback ever fits the Store port.
_fallback_is_no_store: Store = FallbackCache(FlakyCache(), MemoryCache())  # type: ignore[assignment]


async def test_fallback_locked_entry_reads_and_writes_the_primary_while_it_answers() -> None:
    """Lock, entry and write all in the primary (Redis): the entry read as the lock is taken, the write
    landing there with the lock released."""
    primary = FlakyCache()
    cache = FallbackCache(primary, MemoryCache())
    await primary.set("k", b"before", 60)
    async with cache.locked_entry("k", lock_key="l", ttl=5, wait=1) as entry:
        assert entry.held is Held.AT_ONCE
        assert entry.value == b"before"
        await entry.save_and_release(b"after", 60)
        async with primary.lock("l", ttl=5, wait=0) as free:
            assert free is Held.AT_ONCE  # released with the write, inside the block
    assert await primary.get("k") == b"after"
    assert not cache.degraded


async def test_fallback_locked_entry_keeps_the_write_in_memory_if_the_primary_fails_then() -> None:
    """Redis answered when the lock was taken and fails at the write: the value is not lost (served from
    memory, as every write during an outage) and the sign-in does not fail."""
    primary = FlakyCache()
    cache = FallbackCache(primary, MemoryCache(), retry_interval=60)
    async with cache.locked_entry("k", lock_key="l", ttl=5, wait=1) as entry:
        assert entry.value is None
        primary.up = False
        await entry.save_and_release(b"id", 60)
    assert cache.degraded
    assert await cache.get("k") == b"id"


async def test_fallback_locked_entry_is_taken_in_memory_while_the_primary_is_down() -> None:
    """Down from the start: the lock and the entry are this process's, and they still exclude each other."""
    primary = FlakyCache()
    primary.up = False
    cache = FallbackCache(primary, MemoryCache(), retry_interval=60)
    async with cache.locked_entry("k", lock_key="l", ttl=5, wait=1) as entry:
        assert entry.held is Held.AT_ONCE
        async with cache.locked_entry("k", lock_key="l", ttl=5, wait=0.01) as other:
            assert other.held is Held.NOT_TAKEN
        await entry.save_and_release(b"id", 60)
    assert cache.degraded
    assert await cache.get("k") == b"id"


async def test_rate_limit_refuses_with_retry_after() -> None:
    """Past the per-IP budget a request is refused with 429 semantics and a positive Retry-After."""
    limiter = RateLimiter(MemoryStorage(), per_ip="2/minute", per_identity="1/minute")
    await limiter.check_ip("10.0.0.1")
    await limiter.check_ip("10.0.0.1")
    await limiter.check_ip("10.0.0.2")  # another client has its own budget
    with pytest.raises(RateLimited) as caught:
        await limiter.check_ip("10.0.0.1")
    assert caught.value.status_code == 429
    assert 1 <= caught.value.retry_after <= 60
    await limiter.check_identity("-000a")
    with pytest.raises(RateLimited):
        await limiter.check_identity("-000a")


async def test_disabled_rate_limits_never_refuse() -> None:
    """With both limits off nothing is counted or refused."""
    limiter = RateLimiter(MemoryStorage(), per_ip=None, per_identity=None)
    for _ in range(100):
        await limiter.check_ip("10.0.0.1")
        await limiter.check_identity("-000a")


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis+sentinel://127.0.0.1:26379/mymaster",
        "redis+cluster://127.0.0.1:7000",
    ],
)
def test_rate_limits_share_the_caches_redis_client(url: str) -> None:
    """Plain, Sentinel or Cluster: the rate limiter talks through the process's one Redis client (no
    second parse of the URL, no second pool, one view of the Sentinel master)."""
    redis = RedisConnection.from_url(url, timeout=0.5)
    bridge = redis.limits_storage.bridge
    assert isinstance(bridge, RedispyBridge)
    shared: object = redis.client
    assert bridge.get_connection() is shared
    assert bridge.get_connection(readonly=True) is shared


class _DownStorage(MemoryStorage):
    """A quota store that cannot be reached."""

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        raise StorageError(ConnectionError("down"))


async def test_without_its_store_the_quota_is_kept_in_process_memory() -> None:
    """The quota store down: sign-ins go on (counted in this process), and unproven calls still stop at
    their share instead of reaching TikTok whole."""
    quota = ProfileQuota(
        _DownStorage(), per_minute="10/minute", unproven_share=0.5, upstream="tiktok", name="TikTok"
    )
    await quota.spend(proven=True)
    for _ in range(5):
        await quota.spend(proven=False)
    with pytest.raises(TemporarilyUnavailable):
        await quota.spend(proven=False)
    await quota.spend(proven=True)


async def test_the_quota_keeps_a_share_for_proven_calls() -> None:
    """Unproven calls stop at their share; proven ones go on up to the whole quota, and no further."""
    quota = ProfileQuota(
        MemoryStorage(), per_minute="10/minute", unproven_share=0.5, upstream="tiktok", name="TikTok"
    )
    for _ in range(5):
        await quota.spend(proven=False)
    with pytest.raises(TemporarilyUnavailable):
        await quota.spend(proven=False)
    for _ in range(5):
        await quota.spend(proven=True)
    with pytest.raises(TemporarilyUnavailable):
        await quota.spend(proven=True)
