"""Minting: Keycloak's tokens for a linked identity, by JWT Authorization Grant, with the app's audiences.

One per app (an app may mint as a Keycloak client of its own, and may have an audience list of its
own). Ports: `KeycloakGateway` (the issuer and the grant only) and `AssertionMinter`. The exchange
mints through it after provisioning; sessions mint through it on every refresh (`Apps.mint`), without
the exchange.

Two providers of the realm trust the bridge's assertions, told apart by their issuer: the TikTok one
(subject: the open_id) and, while the Strapi jwt exchange is on, the Strapi jwt one (subject: the
Keycloak user id of an imported account without a TikTok link; `strapi_jwt.py`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bridge.domain.errors import InvalidScope, InvalidTarget, NotLinked

if TYPE_CHECKING:
    from bridge.domain.model import IssuedToken, Policy
    from bridge.services.ports import AssertionMinter, KeycloakGateway

log = logging.getLogger(__name__)


class MintingService:
    def __init__(
        self,
        *,
        keycloak: KeycloakGateway,
        minter: AssertionMinter,
        policy: Policy,
        strapi_jwt_minter: AssertionMinter | None = None,
    ) -> None:
        self._keycloak = keycloak
        self._minter = minter
        self._policy = policy
        # Signs for the Strapi jwt provider; None while the Strapi jwt exchange is off.
        self._strapi_jwt_minter = strapi_jwt_minter

    def check_targets(self, scope: tuple[str, ...], audiences: tuple[str, ...]) -> None:
        """Only configured audiences, and only through `audience`/`resource`: an audience's client scope
        named in `scope` would bypass the per-app list, so it is refused there."""
        if unknown := set(audiences) - set(self._policy.audience_scopes):
            raise InvalidTarget(detail=f"{len(unknown)} audience(s) not configured for this app")
        if set(scope) & self._policy.reserved_scopes:
            raise InvalidScope("Ask for an audience with the audience parameter, not with scope.")

    async def mint(
        self,
        open_id: str,
        scope: tuple[str, ...],
        audiences: tuple[str, ...] = (),
        *,
        by_account: bool = False,
    ) -> IssuedToken:
        """A Keycloak token for the user linked to `open_id`, by JWT Authorization Grant (what a session
        refresh calls: Keycloak checks the link and the user's state every time). `by_account`:
        `open_id` is a Keycloak user id linked to the Strapi jwt provider, and the assertion is that
        provider's; refused as unlinked (`NotLinked`) while the Strapi jwt exchange is off, so the
        sessions it started end at their next refresh once it is closed.

        Each audience is asked for by its optional client scope, whose audience mapper adds it to `aud`:
        the grant has no audience parameter of its own (keycloak-config/README.md, "Audiences")."""
        if unknown := set(audiences) - set(self._policy.audience_scopes):
            raise InvalidTarget(detail=f"{len(unknown)} audience(s) not configured for this app")
        minter = self._minter
        if by_account:
            if self._strapi_jwt_minter is None:
                log.info("strapi jwt session refused: the strapi jwt exchange is off")
                raise NotLinked
            minter = self._strapi_jwt_minter
        requested = (*scope, *(self._policy.audience_scopes[a] for a in audiences))
        audience = await self._keycloak.issuer()
        assertion = minter.mint(open_id, audience)
        return await self._keycloak.issue_token(assertion, tuple(dict.fromkeys(requested)))
