"""Linking an external identity to the Keycloak user who is signed in (and unlinking it).

The use case behind the web edge's link routes. It knows its collaborators by the protocols of `ports.py`
only, like the exchange. The rules, and why (SECURITY.md, "Account takeover by linking"):
- The caller proves who they are in Keycloak with a realm access token of a client allowed to link
  (`link_clients`), for a user who still exists and is enabled. A bearer token in a header, never a
  cookie: a cross-site request cannot carry it, so linking needs no CSRF defence.
- The caller proves the external identity freshly: a code redeemed now (with its PKCE verifier, so a
  code intercepted on its way to the app is useless), or an access token the provider accepts now
  (never a cached profile).
- One identity, one user: an identity linked to another user, or a user with another external identity,
  is refused (409) and nothing changes. Relinking the same pair is harmless. The check and the write
  happen under the identity's provisioning lock, which sign-ins take too, so a concurrent first sign-in
  cannot create a second account for the identity meanwhile.
- The cached user id of the identity is forgotten on every change, so the next sign-in asks Keycloak;
  linking, relinking and unlinking end the identity's earlier bridge sessions (a session only ever
  mints for the account it was issued for, and the identity's account may have just changed).
- An identity that already has an account here by its union_id (imported from Strapi, or of the realm's
  web sign-in; `adoption.py`) and no link yet can be linked to that account only: linking it to another
  one would leave the person with two accounts (`IdentityLinkedElsewhere`).
- Only accounts in the bridge's group can be linked: Keycloak's fine-grained permissions confine the
  service account to that group, so a leaked client secret cannot attach an identity to any other account
  (an administrator, say). Keycloak's 403 for any other account is answered as `AccountNotEligible`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.domain.errors import (
    IdentityLinkedElsewhere,
    InvalidToken,
    OtherIdentityLinked,
    TemporarilyUnavailable,
    UserConflict,
)
from bridge.domain.model import FederatedLink, IdentityAttributes, KeycloakUser

if TYPE_CHECKING:
    from bridge.domain.model import ExternalIdentity
    from bridge.services.adoption import AdoptionService
    from bridge.services.ports import (
        BearerVerifier,
        GrantForgetter,
        IdentityProofs,
        IdentitySessions,
        IdentityStore,
        KeycloakGateway,
    )

log = logging.getLogger(__name__)

# Same lock and timings as provisioning (provisioning.py): linking and a first sign-in exclude each other.
LOCK_TTL = 30
LOCK_WAIT = 15


@dataclass(frozen=True)
class LinkPolicy:
    idp_alias: str
    # `azp` values whose user tokens may link; empty means linking is off.
    link_clients: frozenset[str]
    # The attributes the bridge owns on a user, by the identity provider's names.
    attributes: IdentityAttributes


@dataclass(frozen=True, slots=True)
class LinkState:
    """What the account's link to the identity provider is, as answered to the app."""

    user_id: str
    open_id: str | None
    username: str | None = None
    display_name: str | None = None

    def to_json(self, provider: str) -> dict[str, object]:
        """The answer of the link routes; the profile fields are named after `provider`
        (`<provider>_username`)."""
        return {
            "provider": provider,
            "linked": self.open_id is not None,
            "user_id": self.user_id,
            "open_id": self.open_id,
            f"{provider}_username": self.username,
            f"{provider}_display_name": self.display_name,
        }


class LinkingService:
    def __init__(
        self,
        *,
        keycloak: KeycloakGateway,
        bearer: BearerVerifier,
        proofs: IdentityProofs,
        identities: IdentityStore,
        policy: LinkPolicy,
        sessions: IdentitySessions | None,
        adoption: AdoptionService | None = None,
        grants: GrantForgetter | None = None,
    ) -> None:
        self._adoption = adoption
        self._keycloak = keycloak
        self._bearer = bearer
        self._proofs = proofs
        self._identities = identities
        self._policy = policy
        self._sessions = sessions
        # The token vault's grants, when the vault is on: unlinking forgets the identity's.
        self.grants = grants

    @property
    def proofs(self) -> IdentityProofs:
        return self._proofs

    async def signed_in_user(self, bearer_token: str) -> KeycloakUser:
        """The enabled Keycloak user a bearer token of an allowed client belongs to; InvalidToken else."""
        verified = await self._bearer.verify(bearer_token)
        if verified.client_id not in self._policy.link_clients:
            raise InvalidToken(detail=f"client {verified.client_id!r} may not link identities")
        user = await self._keycloak.get_user(verified.subject)
        if user is None:
            raise InvalidToken(detail="the token's user no longer exists")
        if not user.enabled:
            raise InvalidToken(detail=f"keycloak user {user.id} is disabled")
        return user

    async def state(self, user: KeycloakUser) -> LinkState:
        link = await self._provider_link(user.id)
        if link is None:
            return LinkState(user_id=user.id, open_id=None)
        return LinkState(
            user_id=user.id,
            open_id=link.user_id,
            username=user.attribute(self._policy.attributes.username),
            display_name=user.attribute(self._policy.attributes.display_name),
        )

    async def link(self, user: KeycloakUser, profile: ExternalIdentity) -> LinkState:
        alias = self._policy.idp_alias
        async with self._identities.lock(profile.open_id, ttl=LOCK_TTL, wait=LOCK_WAIT) as acquired:
            if not acquired:
                raise TemporarilyUnavailable(detail="identity lock not acquired in time")
            owner = await self._keycloak.find_linked_user(alias, profile.open_id)
            if owner is not None and owner.id != user.id:
                raise IdentityLinkedElsewhere(detail=f"identity linked to keycloak user {owner.id}")
            existing = None
            if owner is None and self._adoption is not None:
                existing = await self._adoption.find(profile)
                if existing is not None and existing.user.id != user.id:
                    raise IdentityLinkedElsewhere(
                        detail=f"identity has keycloak user {existing.user.id} ({existing.source})"
                    )
            current = await self._provider_link(user.id)
            if current is not None and current.user_id != profile.open_id:
                raise OtherIdentityLinked(detail=f"keycloak user {user.id} has another TikTok identity")
            if current is None:
                link = FederatedLink(alias, profile.open_id, profile.username or profile.open_id)
                try:
                    await self._keycloak.add_link(user.id, link)
                except UserConflict as exc:
                    # Linked meanwhile outside the lock (an admin): whatever it is now, it is not ours.
                    raise OtherIdentityLinked(detail="keycloak refused the link: 409") from exc
            await self._write_attributes(user, self._policy.attributes.of(profile))
            await self._identities.forget(profile.open_id)
        await self._end_sessions(profile.open_id)
        log.info(
            "tiktok identity linked",
            extra={
                "keycloak_user_id": user.id,
                "relinked": current is not None,
                # The account the identity had before (imported from Strapi, or of the web sign-in).
                "adopted_from": existing.source if existing is not None else None,
            },
        )
        return LinkState(
            user_id=user.id,
            open_id=profile.open_id,
            username=profile.username,
            display_name=profile.display_name,
        )

    async def unlink(self, user: KeycloakUser) -> LinkState:
        alias = self._policy.idp_alias
        link = await self._provider_link(user.id)
        if link is None:
            return LinkState(user_id=user.id, open_id=None)
        async with self._identities.lock(link.user_id, ttl=LOCK_TTL, wait=LOCK_WAIT) as acquired:
            if not acquired:
                raise TemporarilyUnavailable(detail="identity lock not acquired in time")
            await self._keycloak.remove_link(user.id, alias)
            await self._write_attributes(user, {})
            await self._identities.forget(link.user_id)
            if self.grants is not None:
                await self.grants.forget(link.user_id)
        await self._end_sessions(link.user_id)
        log.info("tiktok identity unlinked", extra={"keycloak_user_id": user.id})
        return LinkState(user_id=user.id, open_id=None)

    async def _end_sessions(self, open_id: str) -> None:
        """Every session the identity started before now is over: it was issued for the account the
        identity had then, which a link, relink or unlink may have just changed."""
        if self._sessions is not None:
            await self._sessions.end_identity(open_id)

    async def _provider_link(self, user_id: str) -> FederatedLink | None:
        links = [link for link in await self._keycloak.user_links(user_id) if self._is_ours(link)]
        return links[0] if links else None

    def _is_ours(self, link: FederatedLink) -> bool:
        return link.identity_provider == self._policy.idp_alias

    async def _write_attributes(self, user: KeycloakUser, attributes: dict[str, list[str]]) -> None:
        """Replace the attributes the bridge owns with `attributes` (none: unlinking), keep the rest.
        Read afresh: PUT takes the whole representation, and a stale one would undo other changes."""
        current = await self._keycloak.get_user(user.id)
        if current is None:
            raise InvalidToken(detail="the token's user was deleted meanwhile")
        owned = self._policy.attributes.owned
        kept = {k: v for k, v in current.attributes.items() if k not in owned}
        if {k: current.attributes.get(k) for k in owned if k in current.attributes} == attributes:
            return
        representation = {**current.representation, "attributes": {**kept, **attributes}}
        await self._keycloak.update_user(user.id, representation)
