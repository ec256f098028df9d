"""One cache interface: Redis (shared by replicas), process memory (embedded default), and the fallback
that serves from memory while Redis is unreachable.

Keys are built here only, under a versioned prefix, so a change of format never reads old entries.
Tokens never appear in a key: they are SHA-256 hashed first (`token_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisClusterException, RedisError

from bridge.errors import UpstreamUnavailable
from bridge.metrics import timed

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable

KEY_PREFIX = "tkb:v1:"
T = TypeVar("T")
# redis-py's cluster client raises RedisClusterException, which is no RedisError, when it can reach no
# node: without it a Redis Cluster outage escaped the fallback to memory as a 500.
REDIS_FAILURES = (RedisError, RedisClusterException)


def token_key(kind: str, token: str) -> str:
    """A cache key for something derived from a secret: only its SHA-256 is kept. Any string hashes,
    lone surrogates included (JSON can carry them; found by fuzzing the Strapi endpoint): refusing a
    malformed token is the TikTok client's job, not a crash here."""
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{KEY_PREFIX}{kind}:{digest}"


def plain_key(kind: str, name: str) -> str:
    return f"{KEY_PREFIX}{kind}:{name}"


class Cache(Protocol):
    """What the bridge needs from a cache. Every method raises UpstreamUnavailable('cache') on failure."""

    async def get(self, key: str) -> bytes | None: ...
    async def get_many(self, *keys: str) -> list[bytes | None]:
        """One round trip; with Redis Cluster the keys must share a hash tag (one slot)."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...
    async def add(self, key: str, value: bytes, ttl: float) -> bool: ...
    async def delete(self, *keys: str) -> None: ...
    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[bool]: ...
    async def ping(self) -> None: ...
    async def aclose(self) -> None: ...
    @property
    def degraded(self) -> bool: ...
    @property
    def redis_client(self) -> aioredis.Redis | RedisCluster | None: ...


class MemoryCache:
    """A bounded in-process cache with expiry; locks are per-process asyncio locks."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= time.monotonic():
            self._entries.pop(key, None)
            return None
        self._entries.move_to_end(key)
        return value

    async def get_many(self, *keys: str) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._entries[key] = (time.monotonic() + ttl, value)
        self._entries.move_to_end(key)
        # Least recently used entries go first, so memory stays bounded whatever the traffic.
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Set only if absent (or expired); True if this call set it."""
        if await self.get(key) is not None:
            return False
        await self.set(key, value, ttl)
        return True

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._entries.pop(key, None)

    @asynccontextmanager
    async def _lock(self, key: str, wait: float) -> AsyncIterator[bool]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), timeout=wait)
        except TimeoutError:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
            if not lock.locked():
                self._locks.pop(key, None)

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[bool]:  # noqa: ARG002 - no expiry needed in-process
        return self._lock(key, wait)

    async def ping(self) -> None:
        return None

    @property
    def degraded(self) -> bool:
        return False

    @property
    def redis_client(self) -> aioredis.Redis | RedisCluster | None:
        return None

    async def aclose(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def redis_client(url: str, *, timeout: float) -> aioredis.Redis | RedisCluster:
    """A client for `redis://`/`rediss://`/`unix://`, `redis+sentinel://[:password@]h1:p1,h2:p2/service[/db]`
    (the master of a Sentinel-monitored service, followed across fail-overs) or `redis+cluster://h:p`."""
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


def limits_storage_uri(url: str) -> str:
    """The same Redis, as a `limits` storage URI."""
    return f"async+{url}"


# Release a lock only if we still own it (its value is our token): never free another holder's lock.
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""


def _as_bytes(value: object) -> bytes | None:
    # The client is built without decode_responses, so values come back as bytes.
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


class RedisCache:
    """Redis-backed cache; locks are SET NX PX with an owner token (single-flight across replicas)."""

    def __init__(self, client: aioredis.Redis | RedisCluster) -> None:
        self._redis = client
        # A plain client's pool is shared with the rate limiter; Sentinel and Cluster clients are not.
        self.connection_pool = client.connection_pool if isinstance(client, aioredis.Redis) else None
        self._release = client.register_script(_RELEASE_SCRIPT)

    @classmethod
    def from_url(cls, url: str, *, timeout: float) -> RedisCache:
        return cls(redis_client(url, timeout=timeout))

    async def _command(self, name: str, command: Awaitable[T]) -> T:
        """Run one Redis command, timed under `name`; a Redis failure becomes UpstreamUnavailable."""
        try:
            with timed("redis", name) as outcome:
                result = await command
                outcome["result"] = "ok"
        except REDIS_FAILURES as exc:
            raise UpstreamUnavailable("cache", f"{name} failed: {type(exc).__name__}") from exc
        return result

    async def get(self, key: str) -> bytes | None:
        return _as_bytes(await self._command("get", self._redis.get(key)))

    async def get_many(self, *keys: str) -> list[bytes | None]:
        values = await self._command("mget", self._redis.mget(keys))
        return [_as_bytes(value) for value in values]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._command("set", self._redis.set(key, value, px=max(1, int(ttl * 1000))))

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        return bool(
            await self._command("add", self._redis.set(key, value, px=max(1, int(ttl * 1000)), nx=True))
        )

    async def delete(self, *keys: str) -> None:
        if keys:
            await self._command("delete", self._redis.delete(*keys))

    @asynccontextmanager
    async def _lock(self, key: str, ttl: float, wait: float) -> AsyncIterator[bool]:
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + wait
        delay = 0.01
        try:
            while True:
                with timed("redis", "lock") as outcome:
                    taken = await self._redis.set(key, owner, nx=True, px=max(1, int(ttl * 1000)))
                    outcome["result"] = "ok"
                if taken:
                    break
                if time.monotonic() >= deadline:
                    yield False
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)
        except REDIS_FAILURES as exc:
            raise UpstreamUnavailable("cache", f"lock failed: {type(exc).__name__}") from exc
        try:
            yield True
        finally:
            # If Redis is gone now, the lock expires by itself after ttl.
            with contextlib.suppress(*REDIS_FAILURES):
                await self._release(keys=[key], args=[owner])

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[bool]:
        return self._lock(key, ttl, wait)

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except REDIS_FAILURES as exc:
            raise UpstreamUnavailable("cache", f"PING failed: {type(exc).__name__}") from exc

    @property
    def degraded(self) -> bool:
        return False

    @property
    def redis_client(self) -> aioredis.Redis | RedisCluster | None:
        return self._redis

    async def aclose(self) -> None:
        await self._redis.aclose()


class FallbackCache:
    """Redis while it answers; process memory while it does not, so exchanges go on (uncached across
    replicas, slower) instead of failing. Redis is probed again every `retry_interval` seconds by one
    request at a time, and used again as soon as it answers: recovery needs no restart.

    While degraded, provisioning locks are per process; Keycloak's 409 on the deterministic username
    still guarantees one user per TikTok identity across replicas.
    """

    def __init__(self, primary: Cache, fallback: MemoryCache, *, retry_interval: float = 5.0) -> None:
        self._primary = primary
        self._fallback = fallback
        self._retry_interval = retry_interval
        self._down_until: float | None = None
        self._probing = False

    @property
    def degraded(self) -> bool:
        return self._down_until is not None

    @property
    def redis_client(self) -> aioredis.Redis | RedisCluster | None:
        return self._primary.redis_client

    def _use_primary(self) -> bool:
        if self._down_until is None:
            return True
        if self._probing or time.monotonic() < self._down_until:
            return False
        self._probing = True  # this caller probes; the others keep to memory meanwhile
        return True

    def _failed(self, exc: UpstreamUnavailable) -> None:
        if self._down_until is None:
            log.warning("cache unavailable, serving from process memory", extra={"detail": exc.detail})
        self._down_until = time.monotonic() + self._retry_interval
        self._probing = False

    def _succeeded(self) -> None:
        if self._down_until is not None:
            log.warning("cache available again")
            self._down_until = None
            self._probing = False

    async def get(self, key: str) -> bytes | None:
        if self._use_primary():
            try:
                value = await self._primary.get(key)
            except UpstreamUnavailable as exc:
                self._failed(exc)
            else:
                self._succeeded()
                return value
        return await self._fallback.get(key)

    async def get_many(self, *keys: str) -> list[bytes | None]:
        if self._use_primary():
            try:
                values = await self._primary.get_many(*keys)
            except UpstreamUnavailable as exc:
                self._failed(exc)
            else:
                self._succeeded()
                return values
        return await self._fallback.get_many(*keys)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if self._use_primary():
            try:
                await self._primary.set(key, value, ttl)
            except UpstreamUnavailable as exc:
                self._failed(exc)
            else:
                self._succeeded()
                return
        await self._fallback.set(key, value, ttl)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        if self._use_primary():
            try:
                added = await self._primary.add(key, value, ttl)
            except UpstreamUnavailable as exc:
                self._failed(exc)
            else:
                self._succeeded()
                return added
        return await self._fallback.add(key, value, ttl)

    async def delete(self, *keys: str) -> None:
        # Both: an entry written to memory during an outage must not outlive its deletion.
        await self._fallback.delete(*keys)
        if self._use_primary():
            try:
                await self._primary.delete(*keys)
            except UpstreamUnavailable as exc:
                self._failed(exc)
            else:
                self._succeeded()

    @asynccontextmanager
    async def _lock(self, key: str, ttl: float, wait: float) -> AsyncIterator[bool]:
        async with contextlib.AsyncExitStack() as stack:
            acquired: bool | None = None
            if self._use_primary():
                # Only taking the lock is guarded: an error raised by the body is the body's own.
                try:
                    acquired = await stack.enter_async_context(self._primary.lock(key, ttl=ttl, wait=wait))
                except UpstreamUnavailable as exc:
                    self._failed(exc)
                else:
                    self._succeeded()
            if acquired is None:
                acquired = await stack.enter_async_context(self._fallback.lock(key, ttl=ttl, wait=wait))
            yield acquired

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[bool]:
        return self._lock(key, ttl, wait)

    async def ping(self) -> None:
        """Raises while Redis is unreachable (readiness then says "degraded"); a success ends the outage."""
        try:
            await self._primary.ping()
        except UpstreamUnavailable as exc:
            self._failed(exc)
            raise
        self._succeeded()

    async def aclose(self) -> None:
        await self._primary.aclose()
        await self._fallback.aclose()
