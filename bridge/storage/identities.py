"""The identity store: per TikTok identity, the Keycloak user it is linked to (the user's id, and the
fingerprint of the attributes last synced), the tombstone of its last deauthorization, and the lock
that lets one replica provision (or link) it at a time.

The three share one hash tag, so the user entry and the tombstone are read in one MGET, and the lock
and the entry it guards live in one Redis Cluster slot (one script takes the lock and reads the entry).
The tombstone has a key of its own, which sign-ins never write, so no sign-in can erase it.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

from bridge.domain.model import CachedUser, IdentityCheck, IdentityState
from bridge.storage import keys
from bridge.storage.engine import EntryCheck, end_time

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from bridge.domain.model import Held, Policy
    from bridge.storage.engine import GuardedCache, LockedEntry


def encode_user(user: CachedUser) -> bytes:
    """One encoding for every writer: the Redis script that checks an entry compares bytes."""
    return json.dumps({"id": user.id, "fp": user.fingerprint}).encode()


def decode_user(raw: bytes | None) -> CachedUser | None:
    """The user of a stored entry; None when absent or unreadable (then Keycloak is asked again)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        user_id, fingerprint = data["id"], data.get("fp")
    except (ValueError, TypeError, KeyError):
        return None
    return CachedUser(str(user_id), fingerprint if isinstance(fingerprint, str) else None)


def entry_check(idp_alias: str, check: IdentityCheck) -> EntryCheck:
    """`check` in the engine's terms (the session store writes a session under it)."""
    return EntryCheck(
        user_key=keys.linked_user(idp_alias, check.open_id),
        revoked_key=keys.deauthorized(idp_alias, check.open_id),
        entry=encode_user(check.expected),
        verified_at=check.verified_at,
    )


class LockedUser:
    """`ports.LockedUser`: the identity's user entry as its provisioning lock was taken."""

    def __init__(self, entry: LockedEntry, ttl: float) -> None:
        self._entry = entry
        self._ttl = ttl
        self.user = decode_user(entry.value)

    @property
    def held(self) -> Held:
        return self._entry.held

    async def save_and_release(self, user: CachedUser) -> None:
        await self._entry.save_and_release(encode_user(user), self._ttl)


class IdentityStore:
    """`ports.IdentityStore` over a guarded cache (Redis with its memory fallback, or memory alone)."""

    def __init__(self, cache: GuardedCache, *, idp_alias: str, user_ttl: float, tombstone_ttl: float) -> None:
        self._cache = cache
        self._alias = idp_alias
        self._user_ttl = user_ttl
        # As long as a profile verified before the deauthorization may stay cached.
        self._tombstone_ttl = tombstone_ttl

    @classmethod
    def from_policy(cls, cache: GuardedCache, policy: Policy) -> IdentityStore:
        return cls(
            cache, idp_alias=policy.idp_alias, user_ttl=policy.user_ttl, tombstone_ttl=policy.profile_ttl
        )

    @property
    def degraded(self) -> bool:
        return self._cache.degraded

    async def read(self, open_id: str) -> tuple[CachedUser | None, float | None]:
        user, revoked_at = await self._cache.get_many(
            keys.linked_user(self._alias, open_id), keys.deauthorized(self._alias, open_id)
        )
        return decode_user(user), end_time(revoked_at)

    async def state(self, check: IdentityCheck) -> IdentityState:
        user, deauthorized_at = await self.read(check.open_id)
        return check.judge(deauthorized_at, user)

    async def remember(self, open_id: str, user: CachedUser) -> None:
        await self._cache.set(keys.linked_user(self._alias, open_id), encode_user(user), self._user_ttl)

    async def forget(self, open_id: str) -> None:
        await self._cache.delete(keys.linked_user(self._alias, open_id))

    async def deauthorized(self, open_id: str, at: float) -> None:
        await self._cache.set(
            keys.deauthorized(self._alias, open_id),
            json.dumps(at).encode(),
            self._tombstone_ttl,
            durable=True,
        )

    def lock(self, open_id: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Held]:
        return self._cache.lock(keys.provisioning_lock(self._alias, open_id), ttl=ttl, wait=wait)

    @asynccontextmanager
    async def _provisioning(self, open_id: str, ttl: float, wait: float) -> AsyncIterator[LockedUser]:
        async with self._cache.locked_entry(
            keys.linked_user(self._alias, open_id),
            lock_key=keys.provisioning_lock(self._alias, open_id),
            ttl=ttl,
            wait=wait,
        ) as entry:
            yield LockedUser(entry, self._user_ttl)

    def provisioning(
        self, open_id: str, *, ttl: float, wait: float
    ) -> AbstractAsyncContextManager[LockedUser]:
        return self._provisioning(open_id, ttl, wait)
