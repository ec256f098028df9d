"""The Keycloak service-account token, shared by the replicas (so that they do not each ask Keycloak
for one): kept until it expires, a second at least."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from bridge.storage import keys

if TYPE_CHECKING:
    from bridge.storage.engine import Cache


class AdminTokenStore:
    """`ports.AdminTokenStore` over a cache (Redis with its memory fallback, or memory alone)."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    async def read(self, realm: str, client_id: str) -> tuple[str, float] | None:
        """The token and when it expires; None when absent or unreadable."""
        raw = await self._cache.get(keys.admin_token(realm, client_id))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return str(data["value"]), float(data["expires_at"])
        except (ValueError, TypeError, KeyError):
            return None

    async def keep(self, realm: str, client_id: str, value: str, expires_at: float) -> None:
        await self._cache.set(
            keys.admin_token(realm, client_id),
            json.dumps({"value": value, "expires_at": expires_at}).encode(),
            max(1.0, expires_at - time.time()),
        )
