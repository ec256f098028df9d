"""The token exchange use case: verify the external identity, find or provision its Keycloak user, mint.

It composes the use cases of each step: `IdentityService` (identity.py) verifies, `ProvisioningService`
(provisioning.py) finds or creates the user, `MintingService` (minting.py) asks Keycloak for the
tokens; and it starts the session asked for with the sign-in. Ports of its own: `IdentityStore` (the
identity's cached state, read with the session's write), `IdentityLimiter` and `SessionStarter`. It
imports nothing but the bridge's dependency-free modules (model, errors, ports), the RFC 8693
request types, its metrics and the other use cases, so the same logic serves the RFC 8693 endpoint and
the Strapi-compatible one, and loads without httpx2, redis or Starlette (a test holds it to that).

Per exchange, on the warm path (token seen within the profile TTL, user seen within the user TTL):
no identity-provider call, no Keycloak admin call, one Keycloak token call. When the exchange starts a
session and this process signed the identity in lately, the token call comes first and the identity's
cached state (tombstone, user entry) is read in the same Redis round trip that writes the session
(`_sign_in_known`): one round trip instead of two.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bridge.domain.errors import AccessTokenRejected, AccountDisabled, NotLinked, UpstreamUnavailable
from bridge.domain.model import CachedUser, Exchanged, IdentityCheck, IdentityState, NewSession
from bridge.observability.metrics import CACHE_LOOKUPS, count
from bridge.protocol.rfc8693 import CodeExchange
from bridge.services.provisioning import profile_fingerprint

if TYPE_CHECKING:
    from bridge.domain.model import Caller, ExternalIdentity, Policy, ProviderGrant, SessionGrant
    from bridge.protocol.rfc8693 import ExchangeRequest
    from bridge.services.identity import IdentityService
    from bridge.services.minting import MintingService
    from bridge.services.ports import IdentityLimiter, IdentityStore, SessionStarter
    from bridge.services.provisioning import ProvisioningService

log = logging.getLogger(__name__)

# Identities this process signed in lately (`_sign_in_known`): bounded, so memory stays flat; only
# identities Keycloak issued a token for enter it, so garbage cannot fill it.
KNOWN_IDENTITIES = 100_000


@dataclass(frozen=True, slots=True)
class SessionOrder:
    """A session asked for with an exchange: who starts it, and the caller's part of it."""

    starter: SessionStarter
    jkt: str | None = None
    client_id: str | None = None


class ExchangeService:
    def __init__(
        self,
        *,
        identity: IdentityService,
        provisioning: ProvisioningService,
        minting: MintingService,
        identities: IdentityStore,
        policy: Policy,
        limiter: IdentityLimiter | None = None,
    ) -> None:
        self._identity = identity
        self._provisioning = provisioning
        # This app's: the Keycloak client it mints as, and the audiences it may ask for.
        self._minting = minting
        self._limiter = limiter
        self._identities = identities
        self._policy = policy
        # open_id -> until when (wall clock) its cached user entry, written or confirmed by this
        # process, is expected to last: the identities whose token is minted before the cache is read.
        self._known: OrderedDict[str, float] = OrderedDict()

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def minting(self) -> MintingService:
        """This app's minting (the Strapi jwt exchange mints by its second provider through it)."""
        return self._minting

    async def exchange(
        self, request: ExchangeRequest, caller: Caller | None = None, *, session: SessionOrder | None = None
    ) -> Exchanged:
        # Before the provider is asked: a request for an audience this app may not have costs nothing.
        self._minting.check_targets(request.scope, request.audiences)
        grant: ProviderGrant | None = None
        if isinstance(request, CodeExchange):
            profile, grant = await self._identity.verify_code(
                request.code, request.code_verifier, request.redirect_uri
            )
        else:
            profile = await self._identity.verify_access_token(request.access_token, caller)
        return await self.sign_in(
            profile, request.scope, provider_grant=grant, audiences=request.audiences, session=session
        )

    async def sign_in(
        self,
        profile: ExternalIdentity,
        scope: tuple[str, ...],
        *,
        provider_grant: ProviderGrant | None = None,
        audiences: tuple[str, ...] = (),
        session: SessionOrder | None = None,
    ) -> Exchanged:
        """Keycloak's tokens for a verified profile, and the session asked for (if it can be kept)."""
        if self._limiter is not None:
            # Per identity, before any Keycloak work: one external account cannot hammer the realm.
            await self._limiter.check_identity(profile.open_id)
        if session is not None and not self._identities.degraded and self._is_known(profile.open_id):
            known = await self._sign_in_known(profile, scope, audiences, provider_grant, session)
            if known is not None:
                return known
        exchanged = await self._sign_in(profile, scope, provider_grant, audiences)
        if session is None:
            return exchanged
        started = await self._start_session(session, self._new_session(exchanged, scope, audiences, session))
        return replace(exchanged, session=started)

    async def _sign_in(
        self,
        profile: ExternalIdentity,
        scope: tuple[str, ...],
        provider_grant: ProviderGrant | None,
        audiences: tuple[str, ...],
    ) -> Exchanged:
        """Find or provision the user (the cache first, then Keycloak), then mint."""
        user_id, created = await self._provisioning.ensure_user(profile)
        try:
            issued = await self._minting.mint(profile.open_id, scope, audiences)
        except NotLinked:
            # Our cached id outlived the link (an admin removed it): forget it and provision afresh once.
            await self._identities.forget(profile.open_id)
            user_id, created = await self._provisioning.ensure_user(profile)
            issued = await self._minting.mint(profile.open_id, scope, audiences)
        if issued.subject is not None and issued.subject != user_id:
            # An admin moved the link to another account: Keycloak minted for that one, so the answer
            # and the log name it, and the stale cached id is forgotten.
            log.info("linked user changed in keycloak", extra={"keycloak_user_id": issued.subject})
            await self._identities.forget(profile.open_id)
            user_id = issued.subject
        elif issued.subject is not None:
            # The cached entry names the user Keycloak minted for: next time, mint first.
            self._know(profile.open_id)
        return Exchanged(
            issued=issued, user_id=user_id, profile=profile, created=created, provider_grant=provider_grant
        )

    async def _sign_in_known(
        self,
        profile: ExternalIdentity,
        scope: tuple[str, ...],
        audiences: tuple[str, ...],
        provider_grant: ProviderGrant | None,
        session: SessionOrder,
    ) -> Exchanged | None:
        """An identity this process signed in lately: mint first, then check the identity's cached state
        and start the session in one round trip. None when the state is not what the mint assumed (the
        user entry expired, the profile changed, the link moved) or cannot be read: the caller then
        takes the path that reads the cache first, and this token is dropped.

        Every rule of that path holds: Keycloak refuses a disabled, deleted or unlinked user at the
        grant; a tombstone refuses the profile (the token minted is thrown away); the cached entry must
        name the user the token is for, with the profile's attributes synced.
        """
        try:
            issued = await self._minting.mint(profile.open_id, scope, audiences)
        except (NotLinked, AccountDisabled):
            # Refused or unlinked since: the other path decides, in its order (a tombstone first), so
            # the answer is the same whichever path a replica took.
            self._guessed_wrong(profile.open_id)
            return None
        if issued.subject is None:
            return None
        check = IdentityCheck(
            profile.open_id,
            CachedUser(issued.subject, profile_fingerprint(profile, self._policy.attributes)),
            profile.verified_at,
        )
        exchanged = Exchanged(
            issued=issued,
            user_id=issued.subject,
            profile=profile,
            created=False,
            provider_grant=provider_grant,
        )
        new = self._new_session(exchanged, scope, audiences, session)
        try:
            started: SessionGrant | IdentityState | None = await session.starter.start_if_current(new, check)
        except UpstreamUnavailable as exc:
            # Redis went away meanwhile: the check reads the cache (memory now), the answer has no
            # session, as on the other path.
            log.warning("session not started: the session store is unavailable", extra={"detail": exc.detail})
            state = await self._identities.state(check)
            started = None if state is IdentityState.CURRENT else state
        if started is IdentityState.REVOKED:
            # Forgotten too: a client retrying the revoked token is refused from the cache, no grant.
            self._guessed_wrong(profile.open_id)
            raise AccessTokenRejected(detail="profile verified before the user deauthorized the app")
        if started is IdentityState.STALE:
            self._guessed_wrong(profile.open_id)
            return None
        assert not isinstance(started, IdentityState)  # noqa: S101 - CURRENT comes as a grant (or None)
        count(CACHE_LOOKUPS, "user", "hit")
        return replace(exchanged, session=started)

    @staticmethod
    def _new_session(
        exchanged: Exchanged, scope: tuple[str, ...], audiences: tuple[str, ...], session: SessionOrder
    ) -> NewSession:
        return NewSession(
            user_id=exchanged.user_id,
            open_id=exchanged.profile.open_id,
            scope=scope,
            provider_grant=exchanged.provider_grant,
            jkt=session.jkt,
            client_id=session.client_id,
            audiences=audiences,
        )

    @staticmethod
    async def _start_session(session: SessionOrder, new: NewSession) -> SessionGrant | None:
        """A session for a successful sign-in; None while the session store is down.

        A Redis outage must not stop sign-ins (the exchange itself is served from memory then): the
        answer simply has no refresh token, and the app signs in with the provider again when the access
        token expires.
        """
        try:
            return await session.starter.start(new)
        except UpstreamUnavailable as exc:
            log.warning("session not started: the session store is unavailable", extra={"detail": exc.detail})
            return None

    def _is_known(self, open_id: str) -> bool:
        until = self._known.get(open_id)
        if until is None:
            return False
        if until <= time.time():
            del self._known[open_id]
            return False
        return True

    def _know(self, open_id: str) -> None:
        # Until the entry this sign-in relied on expires at the latest (written now, or earlier by
        # another replica: then it may expire sooner, and the check finds it absent).
        self._known[open_id] = time.time() + self._policy.user_ttl
        self._known.move_to_end(open_id)
        while len(self._known) > KNOWN_IDENTITIES:
            self._known.popitem(last=False)

    def _guessed_wrong(self, open_id: str) -> None:
        # Counted: each of these cost a Keycloak grant whose answer (if any) is dropped.
        count(CACHE_LOOKUPS, "user", "stale")
        self._known.pop(open_id, None)
