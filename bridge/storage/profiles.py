"""The profile store: TikTok profiles verified under an access token, tokens TikTok refused lately, and
client addresses that brought a token TikTok vouched for (their priority on TikTok's quota).

A token's profile and its refusal share one hash tag, so one MGET reads both: a new token costs one
read before TikTok is asked, not two. This process's copies (`RecentProfiles`) sit in front of the
shared entries and answer a warm exchange without any read at all.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from bridge.domain.model import ExternalIdentity, ProfileLookup
from bridge.storage import keys

if TYPE_CHECKING:
    from bridge.domain.model import Policy
    from bridge.storage.engine import Cache
    from bridge.storage.recent_profiles import RecentProfiles

# How long an address that signed in successfully keeps its priority on TikTok's quota.
PROVEN_ADDRESS_TTL = 86400

_NOTHING = ProfileLookup()
_REJECTED = ProfileLookup(rejected=True)


def encode_profile(profile: ExternalIdentity) -> bytes:
    return json.dumps(
        {
            "open_id": profile.open_id,
            "union_id": profile.union_id,
            "display_name": profile.display_name,
            "avatar_url": profile.avatar_url,
            "username": profile.username,
            "is_verified": profile.is_verified,
            "verified_at": profile.verified_at,
        },
        separators=(",", ":"),
    ).encode()


def decode_profile(raw: bytes) -> ExternalIdentity | None:
    """The profile of a stored entry; None for an entry this version cannot read (as if absent)."""
    try:
        data = json.loads(raw)
        return ExternalIdentity(
            open_id=str(data["open_id"]),
            union_id=data.get("union_id"),
            display_name=data.get("display_name"),
            avatar_url=data.get("avatar_url"),
            username=data.get("username"),
            is_verified=data.get("is_verified"),
            verified_at=float(data.get("verified_at", 0.0)),
        )
    except (ValueError, TypeError, KeyError):
        return None


class ProfileStore:
    """`ports.ProfileStore` over a cache (Redis with its memory fallback, or memory alone)."""

    def __init__(
        self,
        cache: Cache,
        *,
        profile_ttl: float,
        negative_ttl: float,
        recent: RecentProfiles | None = None,
    ) -> None:
        self._cache = cache
        self._profile_ttl = profile_ttl
        self._negative_ttl = negative_ttl
        # This process's copies of profiles in front of the shared cache (`recent_profiles.py`).
        self._recent = recent

    @classmethod
    def from_policy(cls, cache: Cache, policy: Policy, recent: RecentProfiles | None = None) -> ProfileStore:
        return cls(cache, profile_ttl=policy.profile_ttl, negative_ttl=policy.negative_ttl, recent=recent)

    async def lookup(self, access_token: str) -> ProfileLookup:
        profile_key, rejected_key = keys.token_entries(access_token)
        if self._recent is not None and (recent := self._recent.get(profile_key)) is not None:
            return ProfileLookup(recent, local=True)
        # Both in one round trip (one hash tag).
        cached, rejected = await self._cache.get_many(profile_key, rejected_key)
        if cached and (profile := decode_profile(cached)) is not None:
            if self._recent is not None:
                self._recent.put(profile_key, profile)
            return ProfileLookup(profile)
        return _REJECTED if rejected else _NOTHING

    async def keep(self, access_token: str, profile: ExternalIdentity) -> None:
        profile_key = keys.profile(access_token)
        await self._cache.set(profile_key, encode_profile(profile), self._profile_ttl)
        if self._recent is not None:
            self._recent.put(profile_key, profile)

    async def reject(self, access_token: str) -> None:
        await self._cache.set(keys.rejected(access_token), b"1", self._negative_ttl)

    async def vouch_for(self, address: str) -> None:
        await self._cache.set(keys.proven_client(address), b"1", PROVEN_ADDRESS_TTL)

    async def is_proven(self, address: str) -> bool:
        return await self._cache.get(keys.proven_client(address)) is not None
