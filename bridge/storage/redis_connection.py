"""The one Redis connection of a process: parsed from BRIDGE_REDIS_URL once, shared by the cache (and the
typed stores over it), the rate limiter, tracing and the admin listener's verbose readiness check.

Supported URLs: `redis://`, `rediss://`, `unix://`; `redis+sentinel://[:password@]h1:p1,h2:p2/service[/db]`
(the master of a Sentinel-monitored service, followed across fail-overs); `redis+cluster://h:p`.
The rate limiter (`limits`) is handed this same client instead of a URL to parse again, so a Sentinel
or Cluster deployment has one client, one pool and one view of which node is the master.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import unquote

import redis.asyncio as aioredis
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisClusterException, RedisError

from bridge.observability.metrics import timed
from bridge.storage.keys import RATE_LIMIT_PREFIX

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from limits.typing import AsyncRedisClient

RedisClient = aioredis.Redis | RedisCluster
# redis-py's cluster client raises RedisClusterException, which is no RedisError, when it can reach no
# node: without it a Redis Cluster outage escaped the fallback to memory as a 500.
REDIS_FAILURES = (RedisError, RedisClusterException)

T = TypeVar("T")


def redis_client(url: str, *, timeout: float) -> RedisClient:
    """A client for one of the URL forms above; every command times out after `timeout` seconds."""
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    scheme, _, rest = url.partition("://")
    if scheme in {"redis+sentinel", "rediss+sentinel"}:
        credentials, _, hosts_and_path = rest.rpartition("@")
        hosts, _, path = hosts_and_path.partition("/")
        service, _, db = path.partition("/")
        if not service:
            raise ValueError("a redis+sentinel URL names the service: redis+sentinel://host:26379/mymaster")
        password = unquote(credentials.partition(":")[2]) or None
        sentinels = [
            (host.rpartition(":")[0] or host, int(host.rpartition(":")[2] or 26379))
            for host in hosts.split(",")
        ]
        sentinel = Sentinel(sentinels, password=password, ssl=scheme.startswith("rediss"), **options)  # type: ignore[no-untyped-call]
        master: aioredis.Redis = sentinel.master_for(service, db=int(db or 0))
        return master
    if scheme in {"redis+cluster", "rediss+cluster"}:
        return RedisCluster.from_url(f"{scheme.removesuffix('+cluster')}://{rest}", **options)
    return aioredis.Redis.from_url(url, health_check_interval=30, **options)


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


async def _timed(operation: str, call: Awaitable[T]) -> T:
    """`call`, one Redis round trip, timed under `operation` as the cache times its commands."""
    with timed("redis", operation) as outcome:
        result = await call
        outcome["result"] = "ok"
    return result


class SharedClientStorage(RedisStorage):
    """A `limits` Redis storage that uses a client we built instead of building its own from a URL.

    `limits` keeps its client in its bridge's `storage` and hands it out through `connection_getter`;
    setting both before its scripts are registered is all it takes (checked against limits 5.x, and
    tested with a plain Redis and a real Redis Cluster). The URI only selects redis-py as the library.
    """

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        super().__init__(
            "async+redis://", implementation="redispy", wrap_exceptions=True, key_prefix=RATE_LIMIT_PREFIX
        )

    # Each call below is one script in Redis: timed like the cache's commands, so the Redis commands
    # counted per request (operators' dashboards, the bench) include the rate limits' and the quota's.
    async def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        acquiring = super().acquire_sliding_window_entry(key, limit, expiry, amount)
        return await _timed("sliding_window", acquiring)

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        return await _timed("sliding_window_read", super().get_sliding_window(key, expiry))

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return await _timed("moving_window", super().acquire_entry(key, limit, expiry, amount))

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return await _timed("moving_window_read", super().get_moving_window(key, limit, expiry))

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return await _timed("counter", super().incr(key, expiry, amount))

    async def clear(self, key: str) -> None:
        await _timed("counter_clear", super().clear(key))

    def configure_bridge(self) -> None:
        bridge = self.bridge
        if not isinstance(bridge, RedispyBridge):  # pragma: no cover - the URI above selects redis-py
            raise TypeError(f"unexpected limits bridge {type(bridge).__name__}")
        # limits types its client as a protocol of its own that redis-py's classes satisfy at run time.
        client = cast("AsyncRedisClient", self._client)
        bridge.storage = client  # read by its reset(), which the bridge never calls
        bridge.connection_getter = lambda _readonly: client


@dataclass(frozen=True)
class RedisConnection:
    """The process's Redis client and the rate-limit storage over it."""

    client: RedisClient
    limits_storage: SharedClientStorage

    @classmethod
    def from_url(cls, url: str, *, timeout: float) -> RedisConnection:
        client = redis_client(url, timeout=timeout)
        return cls(client=client, limits_storage=SharedClientStorage(client))

    async def aclose(self) -> None:
        await self.client.aclose()
        # A Sentinel master client does not close its connections to the sentinels (redis-py's
        # Sentinel has no close of its own): one socket per sentinel would outlive the process's client.
        manager = getattr(getattr(self.client, "connection_pool", None), "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()
