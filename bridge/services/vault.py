"""The token vault: an allowed confidential backend swaps a Keycloak user's access token for the
identity provider's current access token of that user (RFC 8693, docs/vault.md).

What is kept (`keep`): per linked identity, the newest grant the provider gave the bridge with a code
(a sign-in at /token, or a link), sealed at rest by the store, for as long as the provider says its
refresh token lives (`refresh_expires_in`; a grant without one is not kept: its lifetime is unknown).

What is checked (`hand_out`), in this order, each refused with no token:
- the client is one of the vault's (`VaultNotAllowed`, unauthorized_client);
- the subject token is a realm access token (signature, issuer, expiry, `typ`: `BearerVerifier`) of a
  Keycloak client this backend may present (`VaultPolicy.subject_clients`), else `SubjectNotAccepted`
  (invalid_request, RFC 8693 §2.2.2);
- its user exists, is enabled and is linked to an identity of the provider (a disabled user's grant is
  forgotten);
- a grant is held for that identity, kept for that user (`NothingHeld` otherwise: sign in with a code);
- its scopes are all ones the backend may receive (`VaultPolicy.scopes`), and include every scope asked.

Refreshing: an access token with less than `refresh_margin` left is refreshed under the identity's lock
in the shared store, so however many replicas and backends ask at that moment, the provider sees one
refresh; the others wait for the lock and read the stored result. The rotated refresh token is stored
before anything is answered (the old one is dead at once). A refresh the provider refuses forgets the
grant (`GrantEnded`); an outage keeps it (503, the next request tries again).

Ending (`forget`): the deauthorization webhook, unlinking and `bridge sessions end` forget the grant of
the identity; a session signed out revokes the grant at the provider, whose refusal of the next refresh
then forgets it here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bridge.domain.errors import (
    AccountDisabled,
    GrantEnded,
    IdentityRefused,
    InvalidScope,
    InvalidToken,
    NothingHeld,
    SubjectNotAccepted,
    TemporarilyUnavailable,
    UpstreamUnavailable,
    VaultNotAllowed,
)
from bridge.domain.model import HeldGrant

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from bridge.domain.model import KeycloakUser, ProviderGrant
    from bridge.services.ports import BearerVerifier, GrantVault, KeycloakGateway, ProviderGrants

log = logging.getLogger(__name__)

# One refresh waits on the provider (bounded by the HTTP timeout); the backends behind it wait that long.
LOCK_TTL = 30.0
LOCK_WAIT = 15.0


@dataclass(frozen=True)
class VaultPolicy:
    idp_alias: str
    # The confidential clients that may use the vault.
    clients: frozenset[str]
    # Per client, the Keycloak clients (`azp`) whose user tokens it may present; absent: any.
    subject_clients: Mapping[str, frozenset[str]]
    # Per client, the provider scopes a token it receives may carry; absent: any.
    scopes: Mapping[str, frozenset[str]]


@dataclass(frozen=True, slots=True)
class HandedOut:
    """A vault answer: the provider's access token for a user, and what the audit line names."""

    access_token: str = field(repr=False)
    expires_in: int
    scopes: tuple[str, ...]
    user_id: str
    refreshed: bool


class VaultService:
    def __init__(
        self,
        *,
        store: GrantVault,
        bearer: BearerVerifier,
        keycloak: KeycloakGateway,
        provider: ProviderGrants,
        policy: VaultPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bearer = bearer
        self._keycloak = keycloak
        self._provider = provider
        self._policy = policy
        self._clock = clock

    @property
    def policy(self) -> VaultPolicy:
        return self._policy

    # ------------------------------------------------------------------------------- keeping

    async def keep(self, user_id: str, grant: ProviderGrant) -> bool:
        """Keep the grant a code just gave for `user_id`, replacing the identity's older one. Never
        fails the sign-in or link it follows: a store outage is logged. True if kept."""
        now = self._clock()
        if grant.refresh_token is None or not grant.refresh_expires_in:
            log.info(
                "provider grant not kept: no refresh token or lifetime", extra={"keycloak_user_id": user_id}
            )
            return False
        held = _held(
            grant, open_id=grant.open_id, user_id=user_id, refresh_token=grant.refresh_token, now=now
        )
        try:
            async with self._store.locked(grant.open_id, ttl=LOCK_TTL, wait=LOCK_WAIT) as locked:
                if locked.held:
                    await locked.save_and_release(held)
                else:
                    # A refresh of the older grant holds the lock for too long: the newer grant wins.
                    await self._store.keep(held)
        except UpstreamUnavailable as exc:
            log.warning("provider grant not kept: the store is unavailable", extra={"detail": exc.detail})
            return False
        return True

    async def forget(self, open_id: str) -> None:
        """The identity's grant is no longer handed out (deauthorized, unlinked, ended by an operator)."""
        await self._store.forget(open_id)

    # ----------------------------------------------------------------------------- handing out

    async def hand_out(self, client_id: str, subject_token: str, scope: tuple[str, ...]) -> HandedOut:
        if client_id not in self._policy.clients:
            raise VaultNotAllowed(detail=f"client {client_id!r} is not a vault client")
        user, open_id = await self._subject(client_id, subject_token)
        grant = await self._store.read(open_id)
        if grant is None:
            raise NothingHeld(detail=f"no grant held for keycloak user {user.id}")
        if grant.user_id != user.id:
            await self._store.forget(open_id)
            raise NothingHeld(detail="the grant held was kept for another keycloak user")
        self._check_scopes(client_id, grant, scope)
        refreshed = False
        if grant.refresh_due(self._clock()):
            grant, refreshed = await self._refreshed(open_id)
            self._check_scopes(client_id, grant, scope)
        return HandedOut(
            access_token=grant.access_token,
            expires_in=max(0, int(grant.access_expires_at - self._clock())),
            scopes=grant.scopes,
            user_id=user.id,
            refreshed=refreshed,
        )

    async def _subject(self, client_id: str, subject_token: str) -> tuple[KeycloakUser, str]:
        """The enabled, linked user of a realm access token this client may present, and the identity
        it is linked to. A disabled user's grant is forgotten."""
        try:
            verified = await self._bearer.verify(subject_token)
        except InvalidToken as exc:
            raise SubjectNotAccepted(detail=exc.detail) from exc
        presentable = self._policy.subject_clients.get(client_id)
        if presentable is not None and verified.client_id not in presentable:
            raise SubjectNotAccepted(
                "The subject_token was issued to a client whose tokens this client may not present.",
                detail=f"azp {verified.client_id!r} not presentable by {client_id!r}",
            )
        user = await self._keycloak.get_user(verified.subject)
        if user is None:
            raise SubjectNotAccepted(detail="the token's user no longer exists")
        open_id = await self._linked_identity(user)
        if not user.enabled:
            if open_id is not None:
                await self._store.forget(open_id)
            raise AccountDisabled(detail=f"keycloak user {user.id} is disabled")
        if open_id is None:
            raise NothingHeld(detail=f"keycloak user {user.id} has no linked identity")
        return user, open_id

    async def _linked_identity(self, user: KeycloakUser) -> str | None:
        links = [
            link
            for link in await self._keycloak.user_links(user.id)
            if link.identity_provider == self._policy.idp_alias
        ]
        return links[0].user_id if links else None

    def _check_scopes(self, client_id: str, grant: HeldGrant, asked: tuple[str, ...]) -> None:
        allowed = self._policy.scopes.get(client_id)
        if allowed is not None and not set(grant.scopes) <= allowed:
            # The provider's token cannot be narrowed: one carrying more than the client may receive
            # is not handed to it at all.
            raise InvalidScope(
                "The user's TikTok grant carries scopes this client may not receive.",
                detail=f"not allowed: {sorted(set(grant.scopes) - allowed)}",
            )
        if missing := set(asked) - set(grant.scopes):
            raise InvalidScope(
                "The user did not grant TikTok every scope asked for.", detail=f"missing {sorted(missing)}"
            )

    async def _refreshed(self, open_id: str) -> tuple[HeldGrant, bool]:
        """The identity's grant with a usable access token: refreshed here, or by whoever held the lock
        before (then read as the lock is taken)."""
        async with self._store.locked(open_id, ttl=LOCK_TTL, wait=LOCK_WAIT) as locked:
            if not locked.held:
                raise TemporarilyUnavailable(detail="vault lock not acquired in time")
            grant = locked.grant
            if grant is None:
                raise NothingHeld(detail="the grant was forgotten meanwhile")
            now = self._clock()
            if not grant.refresh_due(now):
                return grant, False
            try:
                fresh = await self._provider.refresh(grant.refresh_token)
            except IdentityRefused as exc:
                await self._store.forget(open_id)
                log.info(
                    "provider refused the refresh; grant forgotten", extra={"keycloak_user_id": grant.user_id}
                )
                raise GrantEnded(detail=exc.detail) from exc
            # TikTok rotates the refresh token with every refresh; should one ever not, the old stays.
            refreshed = _held(
                fresh,
                open_id=open_id,
                user_id=grant.user_id,
                refresh_token=fresh.refresh_token or grant.refresh_token,
                now=now,
                previous=grant,
            )
            await locked.save_and_release(refreshed)
            return refreshed, True


def _held(
    grant: ProviderGrant,
    *,
    open_id: str,
    user_id: str,
    refresh_token: str,
    now: float,
    previous: HeldGrant | None = None,
) -> HeldGrant:
    # A lifetime the provider did not state is not guessed: an access token without one is due for a
    # refresh at once, a refresh token keeps the expiry it had.
    lifetime = float(grant.expires_in or 0)
    if grant.refresh_expires_in:
        refresh_expires_at = now + grant.refresh_expires_in
    else:
        refresh_expires_at = previous.refresh_expires_at if previous is not None else now
    return HeldGrant(
        open_id=open_id,
        user_id=user_id,
        access_token=grant.access_token,
        refresh_token=refresh_token,
        scopes=tuple(sorted(grant.scopes)) or (previous.scopes if previous is not None else ()),
        access_expires_at=now + lifetime,
        access_lifetime=lifetime,
        refresh_expires_at=refresh_expires_at,
        stored_at=now,
    )
