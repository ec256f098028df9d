"""Profiles this process verified or read recently, kept in its memory in front of the shared cache.

A warm exchange (a TikTok token seen within the profile TTL) read its profile from Redis: one of its
three Redis round trips, about a tenth of its CPU (bench/README.md). A profile entry is the safest thing
to keep locally: it is written once per token, never changed and never deleted before its TTL by any
replica (a deauthorization leaves a tombstone keyed by the open_id, which every exchange still reads
from Redis; a disabled or unlinked user is refused by Keycloak's grant). So a local copy that expires
when the shared entry would (TikTok's verification time plus the profile TTL) answers exactly what
Redis would have answered, and nothing a replica or an operator does to Redis is hidden by it that
the shared entry did not hide already.

Bounded (least recently used first out) so that memory stays flat whatever the traffic; only profiles
TikTok vouched for ever enter it, so garbage tokens cannot fill it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from bridge.domain.model import ExternalIdentity


class RecentProfiles:
    def __init__(self, max_entries: int, ttl: float, *, clock: Callable[[], float] = time.time) -> None:
        self._entries: OrderedDict[str, ExternalIdentity] = OrderedDict()
        self._max_entries = max_entries
        self._ttl = ttl
        # Wall-clock time, as `ExternalIdentity.verified_at` is.
        self._clock = clock

    def get(self, key: str) -> ExternalIdentity | None:
        profile = self._entries.get(key)
        if profile is None:
            return None
        if profile.verified_at + self._ttl <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return profile

    def put(self, key: str, profile: ExternalIdentity) -> None:
        if self._max_entries <= 0 or profile.verified_at + self._ttl <= self._clock():
            return
        self._entries[key] = profile
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
