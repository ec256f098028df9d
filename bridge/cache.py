"""One cache interface, two implementations: Redis (shared by replicas) and process memory (embedded default).

Keys are built here only, under a versioned prefix, so a change of format never reads old entries.
Tokens never appear in a key: they are SHA-256 hashed first (`token_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections import OrderedDict
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bridge.errors import UpstreamUnavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

KEY_PREFIX = "tkb:v1:"


def token_key(kind: str, token: str) -> str:
    """A cache key for something derived from a secret: only its SHA-256 is kept."""
    return f"{KEY_PREFIX}{kind}:{hashlib.sha256(token.encode()).hexdigest()}"


def plain_key(kind: str, name: str) -> str:
    return f"{KEY_PREFIX}{kind}:{name}"


class Cache(Protocol):
    """What the bridge needs from a cache. Every method raises UpstreamUnavailable('cache') on failure."""

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl: float) -> None: ...
    async def delete(self, *keys: str) -> None: ...
    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[bool]: ...
    async def ping(self) -> None: ...
    async def aclose(self) -> None: ...


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

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._entries[key] = (time.monotonic() + ttl, value)
        self._entries.move_to_end(key)
        # Least recently used entries go first, so memory stays bounded whatever the traffic.
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

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

    async def aclose(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# Release a lock only if we still own it (its value is our token): never free another holder's lock.
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""


class RedisCache:
    """Redis-backed cache; locks are SET NX PX with an owner token (single-flight across replicas)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._release = client.register_script(_RELEASE_SCRIPT)

    @classmethod
    def from_url(cls, url: str, *, timeout: float) -> RedisCache:
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        return cls(client)

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(key)
        except RedisError as exc:
            raise UpstreamUnavailable("cache", f"GET failed: {type(exc).__name__}") from exc
        # The client is built without decode_responses, so values come back as bytes.
        return value if isinstance(value, bytes) or value is None else value.encode()

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        try:
            await self._redis.set(key, value, px=max(1, int(ttl * 1000)))
        except RedisError as exc:
            raise UpstreamUnavailable("cache", f"SET failed: {type(exc).__name__}") from exc

    async def delete(self, *keys: str) -> None:
        if not keys:
            return
        try:
            await self._redis.delete(*keys)
        except RedisError as exc:
            raise UpstreamUnavailable("cache", f"DEL failed: {type(exc).__name__}") from exc

    @asynccontextmanager
    async def _lock(self, key: str, ttl: float, wait: float) -> AsyncIterator[bool]:
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + wait
        delay = 0.01
        try:
            while True:
                if await self._redis.set(key, owner, nx=True, px=max(1, int(ttl * 1000))):
                    break
                if time.monotonic() >= deadline:
                    yield False
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)
        except RedisError as exc:
            raise UpstreamUnavailable("cache", f"lock failed: {type(exc).__name__}") from exc
        try:
            yield True
        finally:
            # If Redis is gone now, the lock expires by itself after ttl.
            with contextlib.suppress(RedisError):
                await self._release(keys=[key], args=[owner])

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[bool]:
        return self._lock(key, ttl, wait)

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except RedisError as exc:
            raise UpstreamUnavailable("cache", f"PING failed: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        await self._redis.aclose()
