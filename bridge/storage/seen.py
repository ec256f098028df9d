"""What was seen lately, remembered for a while: webhook deliveries (TikTok delivers at least once) and
DPoP proofs (RFC 9449 §11.1: single-use). Each is kept under a hash of what was seen, never itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.protocol.dpop import MAX_SKEW
from bridge.storage import keys

if TYPE_CHECKING:
    from collections.abc import Callable

    from bridge.storage.engine import Cache

# TikTok retries a delivery for up to 72 hours.
WEBHOOK_DELIVERY_TTL = 72 * 3600
# A proof is accepted within MAX_SKEW of its issue time either way: remembered as long as that.
DPOP_PROOF_TTL = 2 * MAX_SKEW


class SeenOnce:
    """`ports.SeenOnce`: one kind of thing (its key), remembered `ttl` seconds after its first sighting."""

    def __init__(self, cache: Cache, key: Callable[[str | bytes], str], ttl: float) -> None:
        self._cache = cache
        self._key = key
        self._ttl = ttl

    @classmethod
    def webhook_deliveries(cls, cache: Cache) -> SeenOnce:
        return cls(cache, keys.webhook_delivery, WEBHOOK_DELIVERY_TTL)

    @classmethod
    def dpop_proofs(cls, cache: Cache) -> SeenOnce:
        return cls(cache, keys.dpop_proof, DPOP_PROOF_TTL)

    async def first_time(self, seen: str | bytes) -> bool:
        return await self._cache.add(self._key(seen), b"1", self._ttl)

    async def forget(self, seen: str | bytes) -> None:
        """Not seen after all: what it started failed, and its sender will show it again."""
        await self._cache.delete(self._key(seen))
