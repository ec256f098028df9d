"""The token vault's store: per identity, the provider grant the vault hands out from (`HeldGrant`),
sealed whole (`sealing.Sealer`: a leaked Redis dump holds no usable token), and the lock that
serialises its refreshes across replicas.

The grant and its lock share the identity's hash tag (`keys.vault_grant`, `keys.vault_lock`), so one
script takes the lock and reads the grant, and one writes the grant and releases the lock. A grant is
kept exactly as long as the provider said its refresh token lives, a second at least.

Over an engine that is one place (`engine.Store`: Redis itself, or memory alone), never the fallback
between the two: a refresh token rotated into one replica's memory would be lost to the others, and
the provider has already retired the one before it.
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

from bridge.domain.errors import Unsealable
from bridge.domain.model import HeldGrant
from bridge.storage import keys

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from bridge.domain.model import Held
    from bridge.storage.engine import Store, StoreEntry
    from bridge.storage.sealing import Sealer

log = logging.getLogger(__name__)


class GrantCodec:
    """A grant as the sealed bytes kept, and back."""

    def __init__(self, sealer: Sealer) -> None:
        self._sealer = sealer

    def encode(self, grant: HeldGrant) -> bytes:
        fields = {name: getattr(grant, name) for name in HeldGrant.__dataclass_fields__}
        return self._sealer.seal(json.dumps(fields, separators=(",", ":")).encode()).encode()

    def decode(self, raw: bytes | None) -> HeldGrant | None:
        """The grant of a stored entry; None when absent, unreadable, or sealed with a key dropped."""
        if raw is None:
            return None
        try:
            data = json.loads(self._sealer.open(raw.decode()))
            data["scopes"] = tuple(data.get("scopes") or ())
            return HeldGrant(**{name: data[name] for name in HeldGrant.__dataclass_fields__})
        except Unsealable:
            log.warning("a kept provider grant opens with no configured session encryption key")
            return None
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            return None


class LockedGrant:
    """`ports.LockedGrant`: the identity's grant as its lock was taken."""

    def __init__(self, entry: StoreEntry, codec: GrantCodec, clock: Callable[[], float]) -> None:
        self._entry = entry
        self._codec = codec
        self._clock = clock
        self.grant = codec.decode(entry.value)

    @property
    def held(self) -> Held:
        return self._entry.held

    async def save_and_release(self, grant: HeldGrant) -> None:
        await self._entry.save_and_release(self._codec.encode(grant), _ttl(grant, self._clock()))


def _ttl(grant: HeldGrant, now: float) -> int:
    return max(1, int(grant.refresh_expires_at - now))


class GrantStore:
    """`ports.GrantVault` over an engine that is one place (Redis, or memory alone)."""

    def __init__(self, store: Store, sealer: Sealer, *, idp_alias: str, clock: Callable[[], float]) -> None:
        self._store = store
        self._codec = GrantCodec(sealer)
        self._alias = idp_alias
        self._clock = clock

    async def keep(self, grant: HeldGrant) -> None:
        key = keys.vault_grant(self._alias, grant.open_id)
        await self._store.set(key, self._codec.encode(grant), _ttl(grant, self._clock()))

    async def read(self, open_id: str) -> HeldGrant | None:
        return self._codec.decode(await self._store.get(keys.vault_grant(self._alias, open_id)))

    async def forget(self, open_id: str) -> None:
        await self._store.delete(keys.vault_grant(self._alias, open_id), durable=True)

    @asynccontextmanager
    async def _locked(self, open_id: str, ttl: float, wait: float) -> AsyncIterator[LockedGrant]:
        async with self._store.locked_entry(
            keys.vault_grant(self._alias, open_id),
            lock_key=keys.vault_lock(self._alias, open_id),
            ttl=ttl,
            wait=wait,
        ) as entry:
            yield LockedGrant(entry, self._codec, self._clock)

    def locked(self, open_id: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[LockedGrant]:
        return self._locked(open_id, ttl, wait)
