"""Identity verification: the TikTok profile behind a Login Kit code or a TikTok access token.

It uses the profile cache (the shared one, and this process's copies in front of it), the negative
cache of refused tokens, TikTok's user-info quota (spent by the caller's priority) and the count of
refused tokens per client address. Ports: `TikTokGateway`, `ProfileStore`, `UserInfoQuota`,
`RefusalBudget`. The exchange, the Strapi-compatible endpoint and linking (as its `TikTokProofs`)
verify through it.

`verify_access_token` is on the warm path: a token seen lately is answered from this process's memory,
or from one shared-cache read, without asking TikTok.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.domain.errors import (
    AccessTokenRejected,
    IdentityMismatch,
    InvalidRequest,
    MissingScope,
    SubjectTokenRejected,
)
from bridge.domain.model import SCOPE_BASIC, Caller
from bridge.observability.metrics import CACHE_LOOKUPS, count

if TYPE_CHECKING:
    from bridge.domain.model import CodeGrant, Policy, TikTokProfile
    from bridge.services.ports import (
        ProfileStore,
        RefusalBudget,
        RefusalReservation,
        TikTokGateway,
        UserInfoQuota,
    )


class IdentityService:
    def __init__(
        self,
        *,
        tiktok: TikTokGateway,
        profiles: ProfileStore,
        policy: Policy,
        quota: UserInfoQuota | None = None,
        refusals: RefusalBudget | None = None,
    ) -> None:
        # Per client address, the bare tokens TikTok refused in a row: past its budget an address no
        # longer spends the quota (`ratelimit.TikTokRefusals`).
        self._refusals = refusals
        self._quota = quota
        self._tiktok = tiktok
        self._profiles = profiles
        self._policy = policy

    async def verify_code(
        self, code: str, code_verifier: str, redirect_uri: str
    ) -> tuple[TikTokProfile, CodeGrant]:
        """Redeem a Login Kit code with our own secret, then read the profile with the fresh token.

        A code redeemed with our client secret proves the grant was made to our app, which a bare access
        token cannot. TikTok's tokens are returned for a session to keep (sealed), or to be dropped.
        """
        if redirect_uri not in self._policy.redirect_uris:
            raise InvalidRequest("The redirect_uri is not allowed.")
        grant: CodeGrant = await self._tiktok.redeem_code(
            code, code_verifier=code_verifier, redirect_uri=redirect_uri
        )
        if SCOPE_BASIC not in grant.scopes:
            raise MissingScope("The user did not grant the user.info.basic scope.")
        # A code TikTok just redeemed with our secret and the PKCE verifier is as real as it gets.
        await self._spend_quota(proven=True)
        profile = await self._tiktok.fetch_profile(grant.access_token, sorted(grant.scopes))
        if profile.open_id != grant.open_id:
            raise IdentityMismatch(detail="user info open_id differs from the token answer's")
        return profile, grant

    async def verify_access_token(self, access_token: str, caller: Caller | None = None) -> TikTokProfile:
        """The profile behind a TikTok access token: cheap checks first (shape, the profile cache, the
        negative cache), TikTok last, spending its quota by the caller's priority."""
        prefix = self._policy.access_token_prefix
        if prefix and not access_token.startswith(prefix):
            raise AccessTokenRejected(detail="not shaped like a TikTok access token; TikTok not asked")
        found = await self._profiles.lookup(access_token)
        if found.profile is not None:
            count(CACHE_LOOKUPS, "profile", "memory_hit" if found.local else "hit")
            return found.profile
        count(CACHE_LOOKUPS, "profile", "miss")
        if found.rejected:
            # A recently refused token is refused again without spending TikTok's quota.
            count(CACHE_LOOKUPS, "rejected", "hit")
            raise AccessTokenRejected(detail="refused by TikTok recently (negative cache)")
        caller = caller or Caller()
        # Before the quota: an address whose tokens TikTok keeps refusing no longer spends it.
        attempt = await self._reserve_attempt(caller)
        try:
            await self._spend_quota(proven=caller.trusted or await self._proven(caller.address))
            profile = await self._fetch_with_fallback(access_token)
        except SubjectTokenRejected:
            # Counted against the address (the attempt stays reserved), and cached for the token.
            await self._profiles.reject(access_token)
            raise
        except Exception:
            if attempt is not None:
                await attempt.release()
            raise
        if attempt is not None:
            await attempt.vouched()
        await self._profiles.keep(access_token, profile)
        if caller.address is not None:
            # This address brought a token TikTok vouched for: its next new tokens get the kept share of
            # the quota. Written on this cold path only, so the warm path pays nothing.
            await self._profiles.vouch_for(caller.address)
        return profile

    async def verify_access_token_fresh(self, access_token: str) -> TikTokProfile:
        """Ask TikTok now, whatever is cached: linking acts on proof that the token is alive this moment
        (a cached profile may belong to a token revoked since). The caller has shown a valid realm
        token, so it spends the quota share of proven callers."""
        prefix = self._policy.access_token_prefix
        if prefix and not access_token.startswith(prefix):
            raise AccessTokenRejected(detail="not shaped like a TikTok access token; TikTok not asked")
        await self._spend_quota(proven=True)
        return await self._fetch_with_fallback(access_token)

    async def _reserve_attempt(self, caller: Caller) -> RefusalReservation | None:
        """The caller's attempt, counted as refused until TikTok answers; None when nothing counts it: a
        confidential client (one server's address for many users, and a secret proving who it is) or
        an unknown address."""
        if self._refusals is None or caller.trusted or caller.address is None:
            return None
        return await self._refusals.reserve(caller.address)

    async def _proven(self, address: str | None) -> bool:
        return address is not None and await self._profiles.is_proven(address)

    async def _spend_quota(self, *, proven: bool) -> None:
        if self._quota is not None:
            await self._quota.spend(proven=proven)

    async def _fetch_with_fallback(self, access_token: str) -> TikTokProfile:
        scopes = self._policy.access_token_scopes
        try:
            return await self._tiktok.fetch_profile(access_token, scopes)
        except MissingScope:
            if tuple(scopes) == (SCOPE_BASIC,):
                raise
            # This token was granted fewer scopes than the app usually asks for: basic fields suffice.
            return await self._tiktok.fetch_profile(access_token, (SCOPE_BASIC,))
