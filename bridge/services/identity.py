"""Identity verification: the external identity behind an authorization code or an access token of the
identity provider.

It uses the profile cache (the shared one, and this process's copies in front of it), the negative
cache of refused tokens, the provider's profile quota (spent by the caller's priority) and the count of
refused tokens per client address. Ports: `IdentityProvider`, `ProfileStore`, `ProviderQuota`,
`RefusalBudget`. The exchange, the Strapi-compatible endpoint and linking (as its `IdentityProofs`)
verify through it. What the provider refuses, or an outage of it, reaches them as the client's error
(`_asking`): the adapter raises upstream errors only.

`verify_access_token` is on the warm path: a token seen lately is answered from this process's memory,
or from one shared-cache read, without asking the provider.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from bridge.domain.errors import (
    AccessTokenRejected,
    IdentityMismatch,
    IdentityRefused,
    InvalidRequest,
    SubjectTokenRejected,
    TemporarilyUnavailable,
    UpstreamUnavailable,
    refusal_for,
)
from bridge.domain.model import Caller
from bridge.observability.metrics import CACHE_LOOKUPS, count

if TYPE_CHECKING:
    from collections.abc import Iterator

    from bridge.domain.model import ExternalIdentity, Policy, ProviderGrant
    from bridge.services.ports import (
        IdentityProvider,
        ProfileStore,
        ProviderQuota,
        RefusalBudget,
        RefusalReservation,
    )


class IdentityService:
    def __init__(
        self,
        *,
        provider: IdentityProvider,
        profiles: ProfileStore,
        policy: Policy,
        quota: ProviderQuota | None = None,
        refusals: RefusalBudget | None = None,
    ) -> None:
        # Per client address, the bare tokens the provider refused in a row: past its budget an address
        # no longer spends the quota (`ratelimit.RefusalCounts`).
        self._refusals = refusals
        self._quota = quota
        self._provider = provider
        self._profiles = profiles
        self._policy = policy

    async def verify_code(
        self, code: str, code_verifier: str, redirect_uri: str
    ) -> tuple[ExternalIdentity, ProviderGrant]:
        """Redeem an authorization code with our own secret, then read the profile with the fresh token.

        A code redeemed with our client secret proves the grant was made to our app, which a bare access
        token cannot. The provider's tokens are returned for a session to keep (sealed), or to be dropped.
        """
        if redirect_uri not in self._policy.redirect_uris:
            raise InvalidRequest("The redirect_uri is not allowed.")
        with self._asking():
            grant = await self._provider.redeem_code(
                code, code_verifier=code_verifier, redirect_uri=redirect_uri
            )
        # A code the provider just redeemed with our secret and the PKCE verifier is as real as it gets.
        await self._spend_quota(proven=True)
        with self._asking():
            profile = await self._provider.read_profile(grant)
        if profile.open_id != grant.open_id:
            raise IdentityMismatch(detail="user info open_id differs from the token answer's")
        return profile, grant

    async def verify_access_token(self, access_token: str, caller: Caller | None = None) -> ExternalIdentity:
        """The profile behind an access token: cheap checks first (shape, the profile cache, the negative
        cache), the provider last, spending its quota by the caller's priority."""
        if not self._provider.plausible(access_token):
            raise AccessTokenRejected(detail="not shaped like the provider's access tokens; not asked")
        found = await self._profiles.lookup(access_token)
        if found.profile is not None:
            count(CACHE_LOOKUPS, "profile", "memory_hit" if found.local else "hit")
            return found.profile
        count(CACHE_LOOKUPS, "profile", "miss")
        if found.rejected:
            # A recently refused token is refused again without spending the provider's quota.
            count(CACHE_LOOKUPS, "rejected", "hit")
            raise AccessTokenRejected(detail="refused by the provider recently (negative cache)")
        caller = caller or Caller()
        # Before the quota: an address whose tokens the provider keeps refusing no longer spends it.
        attempt = await self._reserve_attempt(caller)
        try:
            await self._spend_quota(proven=caller.trusted or await self._proven(caller.address))
            with self._asking():
                profile = await self._provider.verify_access_token(access_token)
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
            # This address brought a token the provider vouched for: its next new tokens get the kept
            # share of the quota. Written on this cold path only, so the warm path pays nothing.
            await self._profiles.vouch_for(caller.address)
        return profile

    async def verify_access_token_fresh(self, access_token: str) -> ExternalIdentity:
        """Ask the provider now, whatever is cached: linking acts on proof that the token is alive this
        moment (a cached profile may belong to a token revoked since). The caller has shown a valid realm
        token, so it spends the quota share of proven callers."""
        if not self._provider.plausible(access_token):
            raise AccessTokenRejected(detail="not shaped like the provider's access tokens; not asked")
        await self._spend_quota(proven=True)
        with self._asking():
            return await self._provider.verify_access_token(access_token)

    async def _reserve_attempt(self, caller: Caller) -> RefusalReservation | None:
        """The caller's attempt, counted as refused until the provider answers; None when nothing counts
        it: a confidential client (one server's address for many users, and a secret proving who it is)
        or an unknown address."""
        if self._refusals is None or caller.trusted or caller.address is None:
            return None
        return await self._refusals.reserve(caller.address)

    async def _proven(self, address: str | None) -> bool:
        return address is not None and await self._profiles.is_proven(address)

    async def _spend_quota(self, *, proven: bool) -> None:
        if self._quota is not None:
            await self._quota.spend(proven=proven)

    @contextmanager
    def _asking(self) -> Iterator[None]:
        """The provider's upstream errors as the client's: a refusal as its `ProviderRefusal`
        (RFC 8693 §2.2.2: invalid_request), an outage as 503 naming the provider."""
        try:
            yield
        except IdentityRefused as exc:
            raise refusal_for(exc) from exc
        except UpstreamUnavailable as exc:
            raise TemporarilyUnavailable(
                f"{self._provider.name} is unavailable; retry later.",
                retry_after=exc.retry_after,
                detail=exc.detail,
            ) from exc
