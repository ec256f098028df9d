"""The protocols of the engines beneath the typed stores: a cache with locks and schedules (Redis, process
memory, or the fallback between them), and the stores' own single-round-trip steps.

Storage speaks these, and so do the composition that builds it and the web layer's readiness and
webhook (whether the cache is reachable, or degraded to memory); the use cases know the typed stores'
protocols (`services/ports.py`), never a key, an encoded entry or a TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from bridge.domain.model import IdentityState

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from bridge.domain.model import Held


def end_time(raw: bytes | None) -> float | None:
    """An end time as the stores keep it (a float's repr, as `json.dumps` writes it: a tombstone, a
    sessions' not-before time); None when absent or unreadable."""
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def ended_by(raw: bytes | None, started: float) -> bool:
    """`model.ended_by` over a stored end time; the Redis scripts below compare the same way (`<=`, Lua
    reading both back to the same doubles)."""
    ended_at = end_time(raw)
    return ended_at is not None and started <= ended_at


@dataclass(frozen=True, slots=True)
class EntryCheck:
    """`set_if_current`'s condition in the engine's terms: no end time at `revoked_key` at or after
    `verified_at`, and `user_key` holding exactly `entry` (`identities.py` builds it)."""

    user_key: str
    revoked_key: str
    entry: bytes
    verified_at: float

    def judge(self, revoked_at: bytes | None, entry: bytes | None) -> IdentityState:
        """The state these two stored values give (the engines that cannot run a script use this)."""
        if ended_by(revoked_at, self.verified_at):
            return IdentityState.REVOKED
        return IdentityState.CURRENT if entry == self.entry else IdentityState.STALE


class Cache(Protocol):
    """What the bridge needs from a cache. Every method raises UpstreamUnavailable('cache') on failure."""

    async def get(self, key: str) -> bytes | None: ...
    async def get_many(self, *keys: str) -> list[bytes | None]:
        """One round trip; with Redis Cluster the keys must share a hash tag (one slot)."""
        ...

    async def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:
        """`durable`: an ending write (a revocation, a tombstone, an identity's end time), confirmed by
        the configured number of Redis replicas before it returns, or NotReplicated: one a failover must
        not lose (SECURITY.md, "Data loss")."""
        ...

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Set only if absent; True if this call set it."""
        ...

    async def delete(self, *keys: str, durable: bool = False) -> None:
        """`durable` as for `set`: a deletion that ends something (a session revoked, a grant forgotten)."""
        ...

    async def count_up(self, key: str, *, floor: int, jump: int) -> int:
        """Add one to the counter `key` (absent counts as 0) and answer it; when that is below `floor`,
        set it to `floor + jump` instead. One step (a Redis script); the counter never expires."""
        ...

    async def schedule(self, key: str, member: str, at: float, *, durable: bool = False) -> None:
        """Put `member` in the schedule `key` (a Redis sorted set), due at time `at`; moves it if there.
        `durable` as for `set`."""
        ...

    async def due(self, key: str, until: float, limit: int) -> list[str]:
        """At most `limit` members of the schedule `key` due at or before `until`, earliest first."""
        ...

    async def scheduled(self, key: str) -> int:
        """How many members the schedule `key` holds, due or not."""
        ...

    async def unschedule(self, key: str, member: str) -> None: ...
    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Held]:
        """Single-flight across replicas: held within `wait` (at once, or after waiting), or not."""
        ...

    async def ping(self) -> None: ...
    async def aclose(self) -> None: ...
    @property
    def degraded(self) -> bool:
        """True while a shared cache is unreachable and this process serves from its own memory."""
        ...


class LockedEntry(Protocol):
    """One entry, read as the lock guarding it was taken (`Store.locked_entry`)."""

    @property
    def held(self) -> Held: ...
    @property
    def value(self) -> bytes | None:
        """The entry as the lock was taken; None if it was absent, or if the lock was not taken."""
        ...

    async def save_and_release(self, value: bytes, ttl: float) -> None:
        """Write the entry and give up the lock together (one Redis round trip). The entry is written
        even if the lock's ttl ran out meanwhile; the lock is deleted only while it is still ours. Only
        for a held lock, and once: leaving the block afterwards releases nothing more."""
        ...


class StoreEntry(LockedEntry, Protocol):
    """A locked entry of a `Store`, which can also make its write depend on an end time elsewhere."""

    async def save_and_release_unless_ended(
        self, value: bytes, ttl: float, *, ended_key: str, started: float
    ) -> bool:
        """`save_and_release`, unless `ended_key` holds a time (a float) at or after `started`: then the
        entry is deleted instead. The lock is released either way; True if the entry was written. One
        Redis round trip (with Redis Cluster, where `ended_key` lies in another slot, a read first)."""
        ...


class GuardedCache(Cache, Protocol):
    """A cache that can read an entry as it takes the lock guarding it, and write it as it releases the
    lock (`locked_entry`). The exchange's cache is one: provisioning takes the identity's lock and reads
    what a previous holder cached in one round trip, and caches the new user's id with the release."""

    def locked_entry(
        self, key: str, *, lock_key: str, ttl: float, wait: float
    ) -> AbstractAsyncContextManager[LockedEntry]:
        """`lock(lock_key)` that reads `key` in the same round trip when it takes the lock (an attempt
        that finds the lock held reads nothing). With Redis Cluster the two keys share a hash tag."""
        ...


class Store(GuardedCache, Protocol):
    """A cache that is one place, Redis or this process's memory, never the fallback between the two:
    a lock and the entry it guards are always kept together, so what `locked_entry` read as it took
    the lock is what its write replaces. The session store is one. (The fallback cache is a
    `GuardedCache` too, but during a Redis outage its entry may be written to memory while the lock
    it replaces stays in Redis until it expires.)"""

    @property
    def one_place(self) -> Literal[True]:
        """Marks a Store, so that mypy refuses the fallback cache wherever a Store is expected."""
        ...

    def locked_entry(
        self, key: str, *, lock_key: str, ttl: float, wait: float
    ) -> AbstractAsyncContextManager[StoreEntry]: ...

    async def set_if_current(self, check: EntryCheck, key: str, value: bytes, ttl: float) -> IdentityState:
        """Write `key` only if `check` finds the identity's cached state as expected; read and written
        in one step (one Redis script; with Redis Cluster, where `key` lies in another slot, a read of
        the identity's keys and then the write). The state found, written or not."""
        ...
