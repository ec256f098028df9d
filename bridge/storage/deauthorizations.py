"""The deauthorization queue: deauthorizations Keycloak has not taken yet, kept until it does.

Each pending one is a record (when it arrived, attempts so far) kept until the retry horizon from its
arrival, and a member of one schedule (a Redis sorted set) scored by when to try it next, which every
replica polls. A lock per identity, in the record's slot, lets one replica apply each.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from bridge.domain.model import PendingDeauthorization
from bridge.storage import keys

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from bridge.domain.model import Held, Policy
    from bridge.storage.engine import Cache


def encode_pending(pending: PendingDeauthorization) -> bytes:
    return json.dumps({"received": pending.received, "attempts": pending.attempts}).encode()


def decode_pending(raw: bytes | None) -> PendingDeauthorization | None:
    """The record of a stored entry; None when absent or unreadable (then it is dropped from the queue)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return PendingDeauthorization(float(data["received"]), int(data["attempts"]))
    except (ValueError, TypeError, KeyError):
        return None


class DeauthorizationQueue:
    """`ports.DeauthorizationQueue` over a cache (Redis with its memory fallback, or memory alone)."""

    def __init__(self, cache: Cache, *, idp_alias: str, horizon: float) -> None:
        self._cache = cache
        self._alias = idp_alias
        # How long after its arrival a deauthorization is still tried.
        self._horizon = horizon

    @classmethod
    def from_policy(cls, cache: Cache, policy: Policy) -> DeauthorizationQueue:
        return cls(cache, idp_alias=policy.idp_alias, horizon=policy.deauthorization_retry_horizon)

    async def add(self, open_id: str, received: float) -> None:
        """Keep a new deauthorization, due at once."""
        await self._cache.set(
            keys.pending_deauthorization(self._alias, open_id),
            encode_pending(PendingDeauthorization(received)),
            self._horizon,
        )
        # Confirmed with the second write: WAIT counts replicas that have every write before it.
        await self._cache.schedule(keys.DEAUTHORIZATION_QUEUE, open_id, received, durable=True)

    async def due(self, until: float, limit: int) -> list[str]:
        """At most `limit` identities whose deauthorization is due at or before `until`, earliest first."""
        return await self._cache.due(keys.DEAUTHORIZATION_QUEUE, until, limit)

    async def size(self) -> int:
        """How many deauthorizations wait for Keycloak, due now or later."""
        return await self._cache.scheduled(keys.DEAUTHORIZATION_QUEUE)

    def claim(self, open_id: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Held]:
        """The identity's lock: held by the one replica applying its deauthorization."""
        return self._cache.lock(keys.deauthorization_lock(self._alias, open_id), ttl=ttl, wait=wait)

    async def read(self, open_id: str) -> PendingDeauthorization | None:
        return decode_pending(await self._cache.get(keys.pending_deauthorization(self._alias, open_id)))

    async def postpone(self, open_id: str, pending: PendingDeauthorization, until: float) -> None:
        """Keep `pending` (until the horizon from its arrival, a second at least) and try it at `until`."""
        left = pending.received + self._horizon - time.time()
        await self._cache.set(
            keys.pending_deauthorization(self._alias, open_id), encode_pending(pending), max(1.0, left)
        )
        await self._cache.schedule(keys.DEAUTHORIZATION_QUEUE, open_id, until)

    async def unschedule(self, open_id: str) -> None:
        """Take the identity off the schedule (its record is gone already)."""
        await self._cache.unschedule(keys.DEAUTHORIZATION_QUEUE, open_id)

    async def drop(self, open_id: str) -> None:
        """Forget the identity's deauthorization: applied, or given up."""
        await self._cache.delete(keys.pending_deauthorization(self._alias, open_id))
        await self._cache.unschedule(keys.DEAUTHORIZATION_QUEUE, open_id)
