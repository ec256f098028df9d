"""The session store: bridge sessions (`SessionRecord`, as compact JSON), the lock that serialises the
refreshes of each, and per identity the time before which its sessions are over (`end_identity`): per
TikTok identity, or per Keycloak account for the sessions a Strapi jwt started (`by_account`), each
under its identity provider's alias.

A session's record and its lock share one hash tag, so one script takes the lock and reads the record,
and one writes the record and releases the lock (reading the identity's not-before time as it writes,
except on Redis Cluster, where that time lies in another slot). A session is kept exactly as long as
it could still be used, a second at least.

Over an engine that is one place (`engine.Store`: Redis itself, or memory alone), never the fallback
between the two: a session must not be served from one replica's memory while others cannot see it.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

from bridge.domain.model import SessionRecord, strapi_jwt_idp_alias
from bridge.storage import keys
from bridge.storage.engine import end_time
from bridge.storage.identities import entry_check

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from bridge.domain.model import Held, IdentityCheck, IdentityState
    from bridge.storage.engine import Store, StoreEntry


def encode_record(record: SessionRecord) -> bytes:
    # A shallow dict: every field is a str, number, None or a tuple of str (`asdict` copied each
    # deeply, at three times the CPU; written on every exchange and refresh).
    return json.dumps(vars(record), separators=(",", ":")).encode()


def decode_record(raw: bytes | None) -> SessionRecord | None:
    """The record of a stored entry; None when absent or unreadable (a session that is over)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        data["scope"] = tuple(data.get("scope") or ())
        data["audiences"] = tuple(data.get("audiences") or ())
        # Fields a newer replica added are ignored, so a rolling upgrade reads every record.
        return SessionRecord(
            **{name: data[name] for name in SessionRecord.__dataclass_fields__ if name in data}
        )
    except (ValueError, TypeError, AttributeError):
        return None


def _ttl(lasts: float) -> int:
    return max(1, int(lasts))


class LockedSession:
    """`ports.LockedSession`: a session's record as its lock was taken."""

    def __init__(self, entry: StoreEntry, not_before_key: Callable[[str, bool], str]) -> None:
        self._entry = entry
        self._not_before_key = not_before_key
        self.record = decode_record(entry.value)

    @property
    def held(self) -> Held:
        return self._entry.held

    async def save_and_release(self, record: SessionRecord, lasts: float) -> None:
        await self._entry.save_and_release(encode_record(record), _ttl(lasts))

    async def save_and_release_unless_ended(self, record: SessionRecord, lasts: float) -> bool:
        return await self._entry.save_and_release_unless_ended(
            encode_record(record),
            _ttl(lasts),
            ended_key=self._not_before_key(record.open_id, record.by_account),
            started=record.created,
        )


class SessionStore:
    """`ports.SessionStore` over an engine that is one place (Redis, or memory alone)."""

    def __init__(self, store: Store, *, idp_alias: str, max_lifetime: float) -> None:
        self._store = store
        self._alias = idp_alias
        # Whether or not the Strapi jwt exchange is on now: sessions it started may still be ended.
        self._account_alias = strapi_jwt_idp_alias(idp_alias)
        # An identity's not-before time outlives every session it can end.
        self._max_lifetime = max_lifetime

    def _not_before_key(self, subject: str, by_account: bool) -> str:  # noqa: FBT001 - a record's flag
        return keys.sessions_not_before(self._account_alias if by_account else self._alias, subject)

    async def save(self, session_id: str, record: SessionRecord, lasts: float) -> None:
        await self._store.set(keys.session(session_id), encode_record(record), _ttl(lasts))

    async def read(self, session_id: str) -> SessionRecord | None:
        return decode_record(await self._store.get(keys.session(session_id)))

    async def delete(self, session_id: str, *, durable: bool = False) -> None:
        await self._store.delete(keys.session(session_id), durable=durable)

    async def start_if_current(
        self, check: IdentityCheck, session_id: str, record: SessionRecord, lasts: float
    ) -> IdentityState:
        return await self._store.set_if_current(
            entry_check(self._alias, check), keys.session(session_id), encode_record(record), _ttl(lasts)
        )

    async def end_identity(self, open_id: str, at: float, *, by_account: bool = False) -> None:
        await self._store.set(
            self._not_before_key(open_id, by_account),
            json.dumps(at).encode(),
            self._max_lifetime,
            durable=True,
        )

    async def ended_at(self, open_id: str, *, by_account: bool = False) -> float | None:
        return end_time(await self._store.get(self._not_before_key(open_id, by_account)))

    @asynccontextmanager
    async def _locked(self, session_id: str, ttl: float, wait: float) -> AsyncIterator[LockedSession]:
        async with self._store.locked_entry(
            keys.session(session_id), lock_key=keys.session_lock(session_id), ttl=ttl, wait=wait
        ) as entry:
            yield LockedSession(entry, self._not_before_key)

    def locked(
        self, session_id: str, *, ttl: float, wait: float
    ) -> AbstractAsyncContextManager[LockedSession]:
        return self._locked(session_id, ttl, wait)
