"""Exchange a Strapi users-permissions jwt for a bridge session (`subject_token_type` =
`urn:tiktok-keycloak-bridge:params:oauth:token-type:strapi-jwt`): a new app build that still holds the
jwt the plugin gave it signs its user in without asking TikTok again.

The jwt is verified with Strapi's secret (`StrapiJwtVerifier` port: HS256 only, `exp` honoured); its
`id` names the Keycloak user `bridge strapi import` made of that Strapi row, found by an exact search
of `strapi_id` and recognised by the import's username (a user the bridge made after the move holds a
`strapi_id` too, but no Strapi jwt was ever signed for it). Then:
- a user linked to a TikTok identity (it signed in with TikTok since the move) is signed in as on any
  exchange (`ExchangeService.sign_in`: Keycloak's token by the JWT Authorization Grant, a session), for
  that identity;
- any other user (right after the move, all of them: Strapi never stored an open_id) is linked once to
  the realm's Strapi jwt provider, by its own Keycloak user id (under a lock, idempotent, logged), and
  Keycloak's token is minted by that provider; its session is a Strapi jwt session (`by_account`),
  refreshed by the same provider and ended with the account (`SessionService.end_account`).
Every refusal is RFC 8693 §2.2.2's `invalid_request`, and no token: a jwt Strapi did not sign or that
expired, an id no imported user holds, a disabled user.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from bridge.domain.errors import (
    AccountDisabled,
    InvalidRequest,
    InvalidScope,
    TemporarilyUnavailable,
    UpstreamUnavailable,
    UserConflict,
)
from bridge.domain.model import Exchanged, ExternalIdentity, FederatedLink, Held, NewSession
from bridge.domain.strapi import ATTR_STRAPI_ID
from bridge.services.strapi_import import keycloak_username

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from bridge.domain.model import KeycloakUser, Policy, SessionGrant
    from bridge.services.exchange import ExchangeService, SessionOrder

log = logging.getLogger(__name__)

REFUSED = "The Strapi jwt is invalid or expired."
NOT_IMPORTED = "No account was imported for this Strapi jwt."
# Linking an account to the Strapi jwt provider: two Keycloak calls at most.
LINK_LOCK_TTL = 30
LINK_LOCK_WAIT = 15


class StrapiJwtVerifier(Protocol):
    def strapi_id(self, token: str) -> int | None:
        """The Strapi user id of a jwt Strapi signed and that has not expired; None otherwise."""
        ...


class StrapiAccounts(Protocol):
    """What the exchange asks of Keycloak's Admin API."""

    async def users_with_attribute(self, name: str, value: str) -> list[KeycloakUser]: ...
    async def user_links(self, user_id: str) -> list[FederatedLink]: ...
    async def add_link(self, user_id: str, link: FederatedLink) -> None:
        """Raises UserConflict if the user already has a link to that identity provider."""
        ...


class AccountLocks(Protocol):
    """One replica at a time links an account (`IdentityStore.lock` under the Strapi jwt provider's alias)."""

    def lock(self, open_id: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Held]: ...


class StrapiJwtExchange:
    def __init__(
        self,
        *,
        verifier: StrapiJwtVerifier,
        keycloak: StrapiAccounts,
        locks: AccountLocks,
        idp_alias: str,
    ) -> None:
        self._verifier = verifier
        self._keycloak = keycloak
        self._locks = locks
        # The Strapi jwt provider's alias: an account's link to it names the account's own id.
        self._idp_alias = idp_alias

    async def exchange(
        self,
        token: str,
        service: ExchangeService,
        scope: tuple[str, ...],
        *,
        audiences: tuple[str, ...] = (),
        session: SessionOrder | None = None,
    ) -> Exchanged:
        """Keycloak's tokens, and a session, for the imported user the jwt names, minted by `service`
        (the app's exchange: its Keycloak client and audiences)."""
        policy = service.policy
        if set(scope) & policy.reserved_scopes:
            raise InvalidScope("Ask for an audience with the audience parameter, not with scope.")
        strapi_id = self._verifier.strapi_id(token)
        if strapi_id is None:
            raise InvalidRequest(REFUSED, detail="strapi jwt refused")
        user = await self._imported(strapi_id, policy.username_prefix)
        if not user.enabled:
            raise AccountDisabled(detail=f"keycloak user {user.id} is disabled")
        links = await self._keycloak.user_links(user.id)
        tiktok = [link for link in links if link.identity_provider == policy.idp_alias]
        if tiktok:
            exchanged = await service.sign_in(
                _profile(user, tiktok[0].user_id, policy), scope, audiences=audiences, session=session
            )
        else:
            exchanged = await self._sign_in_account(
                user, links, service, scope, audiences=audiences, session=session
            )
        log.info(
            "strapi jwt exchanged",
            extra={
                "strapi_id": strapi_id,
                "keycloak_user_id": exchanged.user_id,
                "by_account": not tiktok,
            },
        )
        return exchanged

    async def _imported(self, strapi_id: int, prefix: str) -> KeycloakUser:
        """The user the import made of Strapi row `strapi_id`: exact value, and the import's username."""
        wanted = str(strapi_id)
        found = [
            user
            for user in await self._keycloak.users_with_attribute(ATTR_STRAPI_ID, wanted)
            if user.attribute(ATTR_STRAPI_ID) == wanted
            and user.username == keycloak_username(prefix, strapi_id)
        ]
        if len(found) != 1:
            raise InvalidRequest(
                NOT_IMPORTED, detail=f"{len(found)} imported users hold strapi_id {strapi_id}"
            )
        return found[0]

    async def _sign_in_account(
        self,
        user: KeycloakUser,
        links: list[FederatedLink],
        service: ExchangeService,
        scope: tuple[str, ...],
        *,
        audiences: tuple[str, ...],
        session: SessionOrder | None,
    ) -> Exchanged:
        """An account without a TikTok link: linked to the Strapi jwt provider (once), and minted by it."""
        minting = service.minting
        minting.check_targets(scope, audiences)
        if not self._linked(user, links):
            await self._link(user)
        issued = await minting.mint(user.id, scope, audiences, by_account=True)
        if issued.subject is not None and issued.subject != user.id:
            # Only an administrator's hand-made link could do this: never answer another account's token.
            raise InvalidRequest(
                NOT_IMPORTED, detail=f"the {self._idp_alias} link of {user.id} minted for {issued.subject}"
            )
        started = None
        if session is not None:
            started = await _start(
                session,
                NewSession(
                    user_id=user.id,
                    open_id=user.id,
                    scope=scope,
                    jkt=session.jkt,
                    client_id=session.client_id,
                    audiences=audiences,
                    by_account=True,
                ),
            )
        return Exchanged(
            issued=issued,
            user_id=user.id,
            profile=_profile(user, user.id, service.policy),
            created=False,
            session=started,
        )

    def _linked(self, user: KeycloakUser, links: list[FederatedLink]) -> bool:
        """Whether `links` hold the account's link to the Strapi jwt provider, naming the account."""
        return any(link.identity_provider == self._idp_alias and link.user_id == user.id for link in links)

    async def _link(self, user: KeycloakUser) -> None:
        """Link the account to the Strapi jwt provider by its own id: once, whichever replica races."""
        async with self._locks.lock(user.id, ttl=LINK_LOCK_TTL, wait=LINK_LOCK_WAIT) as held:
            if not held:
                raise TemporarilyUnavailable(detail="account link lock not acquired in time")
            if held is Held.AFTER_WAITING and self._linked(user, await self._keycloak.user_links(user.id)):
                return  # the holder before us linked it
            try:
                await self._keycloak.add_link(user.id, FederatedLink(self._idp_alias, user.id, user.username))
            except UserConflict as conflict:
                # Linked meanwhile (a lock that expired, an administrator): fine if it names the account.
                if self._linked(user, await self._keycloak.user_links(user.id)):
                    return
                raise InvalidRequest(
                    NOT_IMPORTED, detail=f"keycloak user {user.id} has another {self._idp_alias} link"
                ) from conflict
        log.info(
            "imported account linked for the strapi jwt exchange",
            extra={"keycloak_user_id": user.id, "idp_alias": self._idp_alias},
        )


def _profile(user: KeycloakUser, subject: str, policy: Policy) -> ExternalIdentity:
    """The TikTok profile the import or the last sign-in kept on the account, under `subject`."""
    names = policy.attributes
    verified = user.attribute(names.verified)
    return ExternalIdentity(
        open_id=subject,
        union_id=user.attribute(names.union_id),
        display_name=user.attribute(names.display_name),
        username=user.attribute(names.username),
        is_verified=None if verified is None else verified == "true",
    )


async def _start(session: SessionOrder, new: NewSession) -> SessionGrant | None:
    """The session, or None while the session store is down: the answer then has no refresh token,
    as on every exchange (`ExchangeService`)."""
    try:
        return await session.starter.start(new)
    except UpstreamUnavailable as exc:
        log.warning("session not started: the session store is unavailable", extra={"detail": exc.detail})
        return None
