"""The counter the Strapi-compatible endpoint draws numeric user ids from (`services/strapi_ids.py`).

Shared by the replicas through Redis (process memory while Redis is out, or with no Redis at all). It is
a fast source of fresh numbers, not the record of which were handed out: Keycloak holds that (the
high-water mark, and the users' own `strapi_id`), so a counter lost or rolled back costs a gap, never a
repeat.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.storage import keys

if TYPE_CHECKING:
    from bridge.storage.engine import Cache


class StrapiIdCounter:
    """`strapi_ids.IdCounter` over a cache (Redis with its memory fallback, or memory alone)."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    async def take(self, *, floor: int, jump: int) -> int:
        """The next number, never below `floor`: a counter behind it (lost, rolled back, or left behind
        by an import) restarts at `floor + jump`."""
        return await self._cache.count_up(keys.STRAPI_ID_COUNTER, floor=floor, jump=jump)
