"""The cache implementations of `engine.Cache`: Redis (shared by replicas), process memory (the embedded
default), and the fallback that serves from memory while Redis is unreachable. All three read an entry
as its lock is taken and write it as the lock is released (`engine.GuardedCache`); the first two are also
`engine.Store`s, the fallback is not, since during an outage its entry can be written to memory while the
lock stays in Redis.

These are the engines beneath the typed stores (`profiles.py`, `identities.py`, `sessions.py`,
`deauthorizations.py`, `seen.py`), which name the keys (`keys.py`), encode the entries and choose their
lifetimes; this module stores whatever key and bytes it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter, OrderedDict
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from bridge.domain.errors import NotReplicated, UpstreamUnavailable
from bridge.domain.model import Held, IdentityState
from bridge.observability.metrics import CACHE_WRITES_UNCONFIRMED, count, timed
from bridge.storage.engine import EntryCheck, ended_by
from bridge.storage.redis_connection import REDIS_FAILURES, is_cluster

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from bridge.storage.engine import LockedEntry, Store
    from bridge.storage.redis_connection import RedisClient

T = TypeVar("T")


class _LockedEntry:
    """`engine.LockedEntry`: what `locked_entry` read, and its cache's way to write it and release."""

    def __init__(
        self, held: Held, value: bytes | None, write_and_release: Callable[[bytes, float], Awaitable[None]]
    ) -> None:
        self.held = held
        self.value = value
        self._write_and_release = write_and_release
        self.released = False

    async def save_and_release(self, value: bytes, ttl: float) -> None:
        if not self.held or self.released:
            raise RuntimeError("save_and_release needs the lock held, and is called once")
        await self._write_and_release(value, ttl)
        self.released = True


class _StoreEntry(_LockedEntry):
    """`engine.StoreEntry`: a locked entry of a store that can also write it unless an end time refuses."""

    def __init__(
        self,
        held: Held,
        value: bytes | None,
        write_and_release: Callable[[bytes, float], Awaitable[None]],
        write_unless_ended: Callable[[bytes, float, str, float], Awaitable[bool]],
    ) -> None:
        super().__init__(held, value, write_and_release)
        self._write_unless_ended = write_unless_ended

    async def save_and_release_unless_ended(
        self, value: bytes, ttl: float, *, ended_key: str, started: float
    ) -> bool:
        if not self.held or self.released:
            raise RuntimeError("save_and_release_unless_ended needs the lock held, and is called once")
        written = await self._write_unless_ended(value, ttl, ended_key, started)
        self.released = True
        return written


async def _set_if_current_in_steps(
    store: Store, check: EntryCheck, key: str, value: bytes, ttl: float
) -> IdentityState:
    """`set_if_current` as a read of the identity's keys and then the write: one step for the memory
    store (nothing suspends between them), two round trips for Redis Cluster (`key` has its own slot)."""
    revoked_at, entry = await store.get_many(check.revoked_key, check.user_key)
    state = check.judge(revoked_at, entry)
    if state is IdentityState.CURRENT:
        await store.set(key, value, ttl)
    return state


class MemoryCache:
    """A bounded in-process cache with expiry; locks are per-process asyncio locks."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._locks: dict[str, asyncio.Lock] = {}
        # Holders and waiters of each lock: its asyncio.Lock is dropped only once none is left. (Dropped
        # as soon as it read unlocked, a waiter just woken still held the old one while a newcomer took
        # a new one: two holders at once.)
        self._takers: Counter[str] = Counter()
        self._schedules: dict[str, dict[str, float]] = {}
        # Counters are kept apart from the entries: never evicted, never expired.
        self._counters: dict[str, int] = {}

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

    async def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:  # noqa: ARG002 - one process: no replica to confirm
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

    async def delete(self, *keys: str, durable: bool = False) -> None:  # noqa: ARG002 - as for set
        for key in keys:
            self._entries.pop(key, None)

    async def count_up(self, key: str, *, floor: int, jump: int) -> int:
        value = self._counters.get(key, 0) + 1
        if value < floor:
            value = floor + jump
        self._counters[key] = value
        return value

    async def schedule(self, key: str, member: str, at: float, *, durable: bool = False) -> None:  # noqa: ARG002 - as for set
        self._schedules.setdefault(key, {})[member] = at

    async def due(self, key: str, until: float, limit: int) -> list[str]:
        members = self._schedules.get(key, {})
        return sorted((m for m, at in members.items() if at <= until), key=members.__getitem__)[:limit]

    async def scheduled(self, key: str) -> int:
        return len(self._schedules.get(key, {}))

    async def unschedule(self, key: str, member: str) -> None:
        self._schedules.get(key, {}).pop(member, None)

    async def _acquire(self, key: str, wait: float) -> Held:
        lock = self._locks.setdefault(key, asyncio.Lock())
        # A free lock is taken without suspending (no task of wait_for's in between), so the next taker
        # sees it held. Free but with a woken waiter still to run counts as "at once": that only costs
        # the caller its shortcut, never correctness.
        held = Held.AFTER_WAITING if lock.locked() else Held.AT_ONCE
        self._takers[key] += 1
        taken = False
        try:
            async with asyncio.timeout(wait):
                await lock.acquire()
            taken = True
        except TimeoutError:
            pass
        finally:
            if not taken:  # timed out or cancelled: no longer waiting
                self._let_go(key)
        return held if taken else Held.NOT_TAKEN

    def _release(self, key: str) -> None:
        self._locks[key].release()
        self._let_go(key)

    def _let_go(self, key: str) -> None:
        self._takers[key] -= 1
        if self._takers[key] <= 0:
            del self._takers[key], self._locks[key]

    @asynccontextmanager
    async def _lock(self, key: str, wait: float) -> AsyncIterator[Held]:
        held = await self._acquire(key, wait)
        if not held:
            yield held
            return
        try:
            yield held
        finally:
            self._release(key)

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Held]:  # noqa: ARG002 - no expiry needed in-process
        return self._lock(key, wait)

    @asynccontextmanager
    async def _locked_entry(self, key: str, lock_key: str, wait: float) -> AsyncIterator[_StoreEntry]:
        held = await self._acquire(lock_key, wait)

        async def write_and_release(value: bytes, ttl: float) -> None:
            await self.set(key, value, ttl)
            self._release(lock_key)

        async def write_unless_ended(value: bytes, ttl: float, ended_key: str, started: float) -> bool:
            written = not ended_by(await self.get(ended_key), started)
            if written:
                await self.set(key, value, ttl)
            else:
                await self.delete(key)
            self._release(lock_key)
            return written

        if not held:
            yield _StoreEntry(held, None, write_and_release, write_unless_ended)
            return
        entry = _StoreEntry(held, await self.get(key), write_and_release, write_unless_ended)
        try:
            yield entry
        finally:
            if not entry.released:
                self._release(lock_key)

    def locked_entry(
        self,
        key: str,
        *,
        lock_key: str,
        ttl: float,  # noqa: ARG002 - no expiry needed in-process
        wait: float,
    ) -> AbstractAsyncContextManager[_StoreEntry]:
        return self._locked_entry(key, lock_key, wait)

    @property
    def one_place(self) -> Literal[True]:
        return True

    async def set_if_current(self, check: EntryCheck, key: str, value: bytes, ttl: float) -> IdentityState:
        return await _set_if_current_in_steps(self, check, key, value, ttl)

    async def ping(self) -> None:
        return None

    @property
    def degraded(self) -> bool:
        return False

    async def aclose(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# Release a lock only if we still own it (its value is our token): never free another holder's lock.
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""

# `locked_entry`'s two round trips. KEYS[1] is the lock, KEYS[2] the entry it guards: passed as KEYS, in
# one slot (one hash tag), so Redis Cluster runs each script on the node that holds both.
# Take the lock (ARGV[1] the owner token, ARGV[2] its ttl in ms) and, only if taken, read the entry:
# {1, value} ({1, nil} when the entry is absent), or {0} when the lock is held by another.
_LOCK_AND_GET_SCRIPT = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('get', KEYS[2])}
end
return {0}
"""
# Write the entry (ARGV[2], for ARGV[3] ms) whether or not the lock is still ours, as a plain SET after
# an expired lock would; then release the lock only if it still holds our owner token (ARGV[1]).
_SET_AND_UNLOCK_SCRIPT = """
redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[3])
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

# `set_if_current` (`engine.Store`): KEYS[1] the identity's tombstone, KEYS[2] its user entry, KEYS[3] the
# key to write. ARGV[1] the profile's verification time, ARGV[2] the user entry expected, ARGV[3] the
# value, ARGV[4] its ttl in ms. 1: a tombstone at or after the verification refuses (nothing written);
# 2: the entry is absent or another (nothing written); 0: written. Both times are the repr of a Python
# float, which Lua's tonumber reads back to the same double, so `<=` means what `EntryCheck.judge`'s
# does. Its keys lie in several slots, so it is not used with Redis Cluster.
_SET_IF_CURRENT_SCRIPT = """
local revoked = redis.call('get', KEYS[1])
if revoked and tonumber(ARGV[1]) <= tonumber(revoked) then return 1 end
if redis.call('get', KEYS[2]) ~= ARGV[2] then return 2 end
redis.call('set', KEYS[3], ARGV[3], 'PX', ARGV[4])
return 0
"""
# `count_up`: KEYS[1] the counter, ARGV[1] the floor, ARGV[2] the jump past it. Lua's numbers are doubles,
# exact far beyond any count of users.
_COUNT_UP_SCRIPT = """
local value = redis.call('incr', KEYS[1])
if value < tonumber(ARGV[1]) then
  value = tonumber(ARGV[1]) + tonumber(ARGV[2])
  redis.call('set', KEYS[1], value)
end
return value
"""
_STATES = {0: IdentityState.CURRENT, 1: IdentityState.REVOKED, 2: IdentityState.STALE}

# `save_and_release_unless_ended` (`engine.StoreEntry`): KEYS[1] the lock, KEYS[2] the entry, KEYS[3] the
# end time (another slot: not used with Redis Cluster). ARGV[1] the owner token, ARGV[2] the value,
# ARGV[3] its ttl in ms, ARGV[4] when what the entry holds started (a float's repr, as the end time).
# An end time at or after the start deletes the entry instead of writing it (0); else it is written (1).
# The lock is released either way, only if it is still ours.
_SET_UNLESS_ENDED_AND_UNLOCK_SCRIPT = """
local ended = redis.call('get', KEYS[3])
local written = 1
if ended and tonumber(ARGV[4]) <= tonumber(ended) then
  redis.call('del', KEYS[2])
  written = 0
else
  redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
return written
"""


def _milliseconds(ttl: float) -> int:
    return max(1, int(ttl * 1000))


def _as_bytes(value: object) -> bytes | None:
    # The client is built without decode_responses, so values come back as bytes.
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


# After a lock's fate became unknown: when to try releasing it (about 16 s in all, within a
# provisioning lock's 30 s ttl; a longer outage leaves it to expire).
_LATE_RELEASE_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class RedisCache:
    """Redis-backed cache; locks are SET NX PX with an owner token (single-flight across replicas)."""

    def __init__(self, client: RedisClient, *, wait_replicas: int = 0, wait_timeout: float = 0.2) -> None:
        # The process's one client (`RedisConnection`), closed by its owner, not by the cache.
        self._redis = client
        # Durable writes: how many replicas must confirm them, and how long WAIT may block (shorter
        # than the client's socket timeout, so a replica that lags is not taken for a Redis outage).
        if wait_replicas and is_cluster(client):
            # WAIT is per connection; a cluster pipeline sends it to any node, not the key's.
            msg = "BRIDGE_REDIS_WAIT_REPLICAS must be 0 with Redis Cluster"
            raise ValueError(msg)
        self._wait_replicas = wait_replicas
        self._wait_ms = _milliseconds(wait_timeout)
        self._release = client.register_script(_RELEASE_SCRIPT)
        self._lock_and_get = client.register_script(_LOCK_AND_GET_SCRIPT)
        self._set_and_unlock = client.register_script(_SET_AND_UNLOCK_SCRIPT)
        self._set_if_current = client.register_script(_SET_IF_CURRENT_SCRIPT)
        self._set_unless_ended_and_unlock = client.register_script(_SET_UNLESS_ENDED_AND_UNLOCK_SCRIPT)
        self._count_up = client.register_script(_COUNT_UP_SCRIPT)
        # A cluster client refuses a script whose keys lie in several slots (CROSSSLOT).
        self._one_slot_per_script = is_cluster(client)
        # Releases of locks whose fate is unknown, retried until Redis answers (`_release_later`).
        self._late_releases: set[asyncio.Task[None]] = set()

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

    async def _replicated(self, name: str, write: Callable[[Any], object]) -> None:
        """`write` (added to a pipeline) and WAIT on the same connection: WAIT counts the replicas that
        have this connection's writes. Fewer than asked for within the wait is NotReplicated; the write
        stays on the master (every durable write is idempotent, and the caller's retry repeats it)."""
        pipe = self._redis.pipeline(transaction=False)
        async with pipe:
            write(pipe)
            pipe.execute_command("WAIT", self._wait_replicas, self._wait_ms)
            results = await self._command(name, pipe.execute())
        confirmed = int(results[-1])
        if confirmed < self._wait_replicas:
            count(CACHE_WRITES_UNCONFIRMED, name)
            raise NotReplicated(f"{name}: {confirmed} of {self._wait_replicas} replicas confirmed")

    async def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:
        if durable and self._wait_replicas:
            await self._replicated("set", lambda pipe: pipe.set(key, value, px=_milliseconds(ttl)))
            return
        await self._command("set", self._redis.set(key, value, px=_milliseconds(ttl)))

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        return bool(await self._command("add", self._redis.set(key, value, px=_milliseconds(ttl), nx=True)))

    async def delete(self, *keys: str, durable: bool = False) -> None:
        if not keys:
            return
        if durable and self._wait_replicas:
            await self._replicated("delete", lambda pipe: pipe.delete(*keys))
            return
        await self._command("delete", self._redis.delete(*keys))

    async def count_up(self, key: str, *, floor: int, jump: int) -> int:
        return int(await self._command("count_up", self._count_up(keys=[key], args=[floor, jump])))

    async def schedule(self, key: str, member: str, at: float, *, durable: bool = False) -> None:
        if durable and self._wait_replicas:
            await self._replicated("schedule", lambda pipe: pipe.zadd(key, {member: at}))
            return
        await self._command("schedule", self._redis.zadd(key, {member: at}))

    async def due(self, key: str, until: float, limit: int) -> list[str]:
        found = await self._command("due", self._redis.zrangebyscore(key, "-inf", until, start=0, num=limit))
        return [m.decode() if isinstance(m, bytes) else str(m) for m in found]

    async def scheduled(self, key: str) -> int:
        return int(await self._command("scheduled", self._redis.zcard(key)))

    async def unschedule(self, key: str, member: str) -> None:
        await self._command("unschedule", self._redis.zrem(key, member))

    async def _take(
        self, name: str, attempt: Callable[[], Awaitable[tuple[bool, T]]], wait: float
    ) -> tuple[Held, T | None]:
        """Run `attempt` (timed as `name`) until it takes the lock, polling with backoff until `wait`
        runs out: how the lock was held, and what the taking attempt found (the others found nothing)."""
        deadline = time.monotonic() + wait
        delay = 0.01
        held = Held.AT_ONCE
        try:
            while True:
                with timed("redis", name) as outcome:
                    taken, found = await attempt()
                    outcome["result"] = "ok"
                if taken:
                    return held, found
                if time.monotonic() >= deadline:
                    return Held.NOT_TAKEN, None
                held = Held.AFTER_WAITING
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)
        except REDIS_FAILURES as exc:
            raise UpstreamUnavailable("cache", f"{name} failed: {type(exc).__name__}") from exc

    async def _unlock(self, key: str, owner: str) -> None:
        # Timed like every other command, so that the commands counted per request are the commands sent.
        try:
            with timed("redis", "unlock") as outcome:
                await self._release(keys=[key], args=[owner])
                outcome["result"] = "ok"
        except REDIS_FAILURES:
            self._release_later(key, owner)

    def _release_later(self, key: str, owner: str) -> None:
        """Release `owner`'s lock once Redis answers again, in the background.

        A lock whose SET timed out may have been taken all the same (the answer was lost, not the
        command), and a release that failed left it held: either way the identity's next sign-in, on
        any replica, would wait for the lock's whole ttl (30 s for provisioning) and be answered 503.
        The release compares the owner token, so it never frees a lock someone else took since."""

        async def release() -> None:
            for delay in _LATE_RELEASE_DELAYS:
                await asyncio.sleep(delay)
                with contextlib.suppress(*REDIS_FAILURES):
                    await self._release(keys=[key], args=[owner])
                    return

        task = asyncio.get_running_loop().create_task(release())
        self._late_releases.add(task)
        task.add_done_callback(self._late_releases.discard)

    @asynccontextmanager
    async def _lock(self, key: str, ttl: float, wait: float) -> AsyncIterator[Held]:
        owner = uuid.uuid4().hex

        async def attempt() -> tuple[bool, None]:
            return bool(await self._redis.set(key, owner, nx=True, px=_milliseconds(ttl))), None

        try:
            held, _ = await self._take("lock", attempt, wait)
        except UpstreamUnavailable:
            self._release_later(key, owner)
            raise
        if not held:
            yield held
            return
        try:
            yield held
        finally:
            await self._unlock(key, owner)

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Held]:
        return self._lock(key, ttl, wait)

    @asynccontextmanager
    async def _locked_entry(
        self, key: str, lock_key: str, ttl: float, wait: float
    ) -> AsyncIterator[_StoreEntry]:
        owner = uuid.uuid4().hex

        async def attempt() -> tuple[bool, bytes | None]:
            reply = await self._lock_and_get(keys=[lock_key, key], args=[owner, _milliseconds(ttl)])
            return bool(reply[0]), _as_bytes(reply[1]) if len(reply) > 1 else None

        async def write_and_release(value: bytes, entry_ttl: float) -> None:
            await self._command(
                "set_and_unlock",
                self._set_and_unlock(keys=[lock_key, key], args=[owner, value, _milliseconds(entry_ttl)]),
            )

        async def write_unless_ended(value: bytes, entry_ttl: float, ended_key: str, started: float) -> bool:
            if self._one_slot_per_script:
                # The end time lies in another slot: read it first, then write or delete, and release.
                if not ended_by(await self.get(ended_key), started):
                    await write_and_release(value, entry_ttl)
                    return True
                await self.delete(key)
                await self._unlock(lock_key, owner)
                return False
            written = await self._command(
                "set_unless_ended_and_unlock",
                self._set_unless_ended_and_unlock(
                    keys=[lock_key, key, ended_key],
                    args=[owner, value, _milliseconds(entry_ttl), repr(started)],
                ),
            )
            return bool(written)

        try:
            held, value = await self._take("lock_and_get", attempt, wait)
        except UpstreamUnavailable:
            self._release_later(lock_key, owner)
            raise
        entry = _StoreEntry(held, value, write_and_release, write_unless_ended)
        if not held:
            yield entry
            return
        try:
            yield entry
        finally:
            if not entry.released:  # ended without a write (or the write failed): release alone
                await self._unlock(lock_key, owner)

    def locked_entry(
        self, key: str, *, lock_key: str, ttl: float, wait: float
    ) -> AbstractAsyncContextManager[_StoreEntry]:
        return self._locked_entry(key, lock_key, ttl, wait)

    @property
    def one_place(self) -> Literal[True]:
        return True

    async def set_if_current(self, check: EntryCheck, key: str, value: bytes, ttl: float) -> IdentityState:
        if self._one_slot_per_script:
            return await _set_if_current_in_steps(self, check, key, value, ttl)
        found = await self._command(
            "set_if_current",
            self._set_if_current(
                keys=[check.revoked_key, check.user_key, key],
                args=[repr(check.verified_at), check.entry, value, _milliseconds(ttl)],
            ),
        )
        return _STATES[int(found)]

    async def ping(self) -> None:
        await self._command("ping", self._redis.ping())

    @property
    def degraded(self) -> bool:
        return False

    async def aclose(self) -> None:
        for task in self._late_releases:
            task.cancel()
        # Their locks expire by themselves after their ttl.
        await asyncio.gather(*self._late_releases, return_exceptions=True)


class FallbackCache:
    """Redis while it answers; process memory while it does not, so exchanges go on (uncached across
    replicas, slower) instead of failing. Redis is probed again every `retry_interval` seconds by one
    request at a time, and used again as soon as it answers: recovery needs no restart.

    While degraded, provisioning locks are per process; Keycloak's 409 on the deterministic username
    still guarantees one user per TikTok identity across replicas.
    """

    def __init__(self, primary: Store, fallback: MemoryCache, *, retry_interval: float = 5.0) -> None:
        self._primary = primary
        self._fallback = fallback
        self._retry_interval = retry_interval
        self._down_until: float | None = None
        self._probing = False

    @property
    def degraded(self) -> bool:
        return self._down_until is not None

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

    async def _either(self, primary: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]) -> T:
        """Redis if it is to be tried and answers; process memory otherwise."""
        if self._use_primary():
            try:
                result = await primary()
            except NotReplicated:
                # Redis answered: no outage, and memory is no place for a write that must last.
                self._succeeded()
                raise
            except UpstreamUnavailable as exc:
                self._failed(exc)
            else:
                self._succeeded()
                return result
        return await fallback()

    async def get(self, key: str) -> bytes | None:
        return await self._either(lambda: self._primary.get(key), lambda: self._fallback.get(key))

    async def get_many(self, *keys: str) -> list[bytes | None]:
        return await self._either(
            lambda: self._primary.get_many(*keys), lambda: self._fallback.get_many(*keys)
        )

    async def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:
        await self._either(
            lambda: self._primary.set(key, value, ttl, durable=durable),
            lambda: self._fallback.set(key, value, ttl),
        )

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        return await self._either(
            lambda: self._primary.add(key, value, ttl), lambda: self._fallback.add(key, value, ttl)
        )

    async def delete(self, *keys: str, durable: bool = False) -> None:
        # Both: an entry written to memory during an outage must not outlive its deletion.
        await self._fallback.delete(*keys)
        await self._either(lambda: self._primary.delete(*keys, durable=durable), _nothing)

    async def count_up(self, key: str, *, floor: int, jump: int) -> int:
        # While Redis is out, this process counts in memory from 0: below every floor, so it jumps
        # past the high-water mark the caller passes (and Redis, back, is behind it the same way).
        return await self._either(
            lambda: self._primary.count_up(key, floor=floor, jump=jump),
            lambda: self._fallback.count_up(key, floor=floor, jump=jump),
        )

    async def schedule(self, key: str, member: str, at: float, *, durable: bool = False) -> None:
        await self._either(
            lambda: self._primary.schedule(key, member, at, durable=durable),
            lambda: self._fallback.schedule(key, member, at),
        )

    async def due(self, key: str, until: float, limit: int) -> list[str]:
        return await self._either(
            lambda: self._primary.due(key, until, limit), lambda: self._fallback.due(key, until, limit)
        )

    async def scheduled(self, key: str) -> int:
        return await self._either(lambda: self._primary.scheduled(key), lambda: self._fallback.scheduled(key))

    async def unschedule(self, key: str, member: str) -> None:
        # Both, like delete: a member scheduled in memory during an outage must not come back.
        await self._fallback.unschedule(key, member)
        await self._either(lambda: self._primary.unschedule(key, member), _nothing)

    @asynccontextmanager
    async def _lock(self, key: str, ttl: float, wait: float) -> AsyncIterator[Held]:
        async with contextlib.AsyncExitStack() as stack:
            # Only taking the lock is guarded: an error raised by the body is the body's own.
            acquired = await self._either(
                lambda: stack.enter_async_context(self._primary.lock(key, ttl=ttl, wait=wait)),
                lambda: stack.enter_async_context(self._fallback.lock(key, ttl=ttl, wait=wait)),
            )
            yield acquired

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Held]:
        return self._lock(key, ttl, wait)

    @asynccontextmanager
    async def _locked_entry(
        self, key: str, lock_key: str, ttl: float, wait: float
    ) -> AsyncIterator[LockedEntry]:
        async with contextlib.AsyncExitStack() as stack:
            in_redis = False

            async def from_redis() -> LockedEntry:
                nonlocal in_redis
                entry = await stack.enter_async_context(
                    self._primary.locked_entry(key, lock_key=lock_key, ttl=ttl, wait=wait)
                )
                in_redis = True
                return entry

            # Only taking the lock is guarded, as in `lock`: an error raised by the body is its own.
            entry = await self._either(
                from_redis,
                lambda: stack.enter_async_context(
                    self._fallback.locked_entry(key, lock_key=lock_key, ttl=ttl, wait=wait)
                ),
            )
            if in_redis:
                entry = self._falling_back(entry, key)
            yield entry

    def locked_entry(
        self, key: str, *, lock_key: str, ttl: float, wait: float
    ) -> AbstractAsyncContextManager[LockedEntry]:
        return self._locked_entry(key, lock_key, ttl, wait)

    def _falling_back(self, locked: LockedEntry, key: str) -> _LockedEntry:
        """`locked` (in Redis) whose write falls back to memory if Redis fails just then, as every other
        write of this cache does: the value is not lost (this process serves it from memory until Redis
        answers again), and the lock in Redis, not released, expires after its ttl."""

        async def write_and_release(value: bytes, ttl: float) -> None:
            try:
                await locked.save_and_release(value, ttl)
            except UpstreamUnavailable as exc:
                self._failed(exc)
                await self._fallback.set(key, value, ttl)

        return _LockedEntry(locked.held, locked.value, write_and_release)

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


async def _nothing() -> None:
    return None
