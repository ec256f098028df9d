"""Exchange a Strapi users-permissions jwt for a bridge session (`subject_token_type` =
`urn:tiktok-keycloak-bridge:params:oauth:token-type:strapi-jwt`): a new app build that still holds the
jwt the plugin gave it signs its user in without asking TikTok again.

The jwt is verified with Strapi's secret (`StrapiJwtVerifier` port: HS256 only, `exp` honoured); its
`id` names the Keycloak user `bridge strapi import` made of that Strapi row, found by an exact search
of `strapi_id` and recognised by the import's username (a user the bridge made after the move holds a
`strapi_id` too, but no Strapi jwt was ever signed for it). That user is then signed in as on any
exchange (`ExchangeService.sign_in`: Keycloak's token by the JWT Authorization Grant, a session), for
the TikTok identity it is linked to. Every refusal is RFC 8693 §2.2.2's `invalid_request`, and no
token: a jwt Strapi did not sign or that expired, an id no imported user holds, a disabled user.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from bridge.domain.errors import AccountDisabled, InvalidRequest, InvalidScope
from bridge.domain.model import ExternalIdentity
from bridge.domain.strapi import ATTR_STRAPI_ID
from bridge.services.strapi_import import keycloak_username

if TYPE_CHECKING:
    from bridge.domain.model import Exchanged, FederatedLink, KeycloakUser
    from bridge.services.exchange import ExchangeService, SessionOrder

log = logging.getLogger(__name__)

REFUSED = "The Strapi jwt is invalid or expired."
NOT_IMPORTED = "No account was imported for this Strapi jwt."
NOT_LINKED = "This account has not signed in with TikTok since the move: sign in with TikTok once."


class StrapiJwtVerifier(Protocol):
    def strapi_id(self, token: str) -> int | None:
        """The Strapi user id of a jwt Strapi signed and that has not expired; None otherwise."""
        ...


class StrapiAccounts(Protocol):
    """What the exchange asks of Keycloak's Admin API."""

    async def users_with_attribute(self, name: str, value: str) -> list[KeycloakUser]: ...
    async def user_links(self, user_id: str) -> list[FederatedLink]: ...


class StrapiJwtExchange:
    def __init__(self, *, verifier: StrapiJwtVerifier, keycloak: StrapiAccounts) -> None:
        self._verifier = verifier
        self._keycloak = keycloak

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
        links = [
            link
            for link in await self._keycloak.user_links(user.id)
            if link.identity_provider == policy.idp_alias
        ]
        if not links:
            raise InvalidRequest(
                NOT_LINKED, detail=f"imported keycloak user {user.id} has no {policy.idp_alias} link"
            )
        names = policy.attributes
        verified = user.attribute(names.verified)
        profile = ExternalIdentity(
            open_id=links[0].user_id,
            union_id=user.attribute(names.union_id),
            display_name=user.attribute(names.display_name),
            username=user.attribute(names.username),
            is_verified=None if verified is None else verified == "true",
        )
        exchanged = await service.sign_in(profile, scope, audiences=audiences, session=session)
        log.info(
            "strapi jwt exchanged", extra={"strapi_id": strapi_id, "keycloak_user_id": exchanged.user_id}
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
