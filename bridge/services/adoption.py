"""Adoption: the account a TikTok identity already has in the realm, found by its union_id at the
identity's first sign-in through the bridge, and linked to its open_id.

Two kinds of accounts exist before the bridge ever saw the identity's open_id:
- users imported from Strapi (`bridge strapi import`): Strapi never stored an open_id, only the union_id
  inside the pseudo-email, which the import keeps (lowercased) in the union_id attribute next to
  `strapi_id`. Only users carrying `strapi_id`, an attribute no user can write (the realm's user profile
  makes it admin-only), are adopted this way: an account that merely shares the pseudo-email is not.
- accounts of the realm's own TikTok web sign-in (BRIDGE_UNION_ID_IDP_ALIASES): identity providers whose
  links are keyed by the union_id, as the community extension keycloak-tiktok makes them.

The rules: the lookup happens only when no account is linked to the open_id, under the identity's
provisioning lock (a racing pair of first sign-ins adopts once); the candidate must be a member of the
bridge's group (the accounts its service account may manage) and must have no link to the bridge's
provider; two candidates, or one linked to another TikTok identity, are refused (`AdoptionRefused`),
never guessed. Ports: `KeycloakGateway` (its admin calls only).

A web sign-in account outside the group is invisible to the service account: Keycloak leaves it out of
the search without an error (measured on 26.7.4), so "no candidate" cannot tell a person without an
account from one whose account the bridge may not see. Such accounts come into the group through
`bridge keycloak apply` (a group mapper on each provider, and the accounts linked before enrolled once),
which then records the provider on the group (`ENROLLED_PROVIDERS`, an attribute the service account can
read). Until every configured provider is recorded there, a first sign-in that finds no candidate is
refused (`ServerError`, logged with the fix) rather than given a new account that could be the person's
second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.domain.errors import (
    AccountDisabled,
    AccountLinkedToOther,
    AccountNotEligible,
    AccountsAmbiguous,
    ServerError,
    UserConflict,
)
from bridge.domain.model import FederatedLink, fit_for_keycloak
from bridge.domain.strapi import ATTR_STRAPI_ID

if TYPE_CHECKING:
    from bridge.domain.model import ExternalIdentity, KeycloakUser
    from bridge.services.ports import KeycloakGateway

log = logging.getLogger(__name__)

IMPORTED = "strapi_import"
# The bridge's group's attribute listing the union_id-keyed providers whose accounts `bridge keycloak
# apply` brought into the group (mapper and enrollment both done).
ENROLLED_PROVIDERS = "tiktok_bridge_union_id_providers"


@dataclass(frozen=True)
class AdoptionPolicy:
    # The realm's identity provider the bridge links open_ids to.
    idp_alias: str
    # The attribute the import keeps the union_id in (lowercased, as Strapi had it).
    union_id_attribute: str
    # Whether users imported from Strapi are looked for (one attribute search per first sign-in).
    imported: bool
    # Identity providers whose links are keyed by the union_id (the realm's TikTok web sign-in).
    union_id_idp_aliases: tuple[str, ...] = ()
    # The bridge's group: an adopted account must be a member. Empty: no group.
    group: str = ""

    @property
    def active(self) -> bool:
        return self.imported or bool(self.union_id_idp_aliases)


@dataclass(frozen=True, slots=True)
class Candidate:
    user: KeycloakUser
    # Where it was found: `strapi_import`, or `idp:<alias>`.
    source: str


class AdoptionService:
    def __init__(self, *, keycloak: KeycloakGateway, policy: AdoptionPolicy) -> None:
        self._keycloak = keycloak
        self._policy = policy
        # Set once the group records every configured provider: `apply` never takes a record back.
        self._providers_in_reach = not (policy.group and policy.union_id_idp_aliases)

    async def find(self, profile: ExternalIdentity) -> Candidate | None:
        """The one existing account of the identity by its union_id, if there is one; AdoptionRefused
        when the match is not unique or is linked to another TikTok identity, AccountNotEligible when it
        lies outside the bridge's group. Call it only when no account is linked to the open_id."""
        union_id = profile.union_id
        if not union_id or not self._policy.active:
            return None
        found = await self._candidates(union_id)
        if not found:
            await self._check_providers_in_reach()
            return None
        if len(found) > 1:
            raise AccountsAmbiguous(detail=f"union_id matches keycloak users {sorted(found)}")
        (candidate,) = found.values()
        user_id = candidate.user.id
        if self._policy.group and self._policy.group not in await self._keycloak.user_groups(user_id):
            raise AccountNotEligible(
                detail=f"keycloak user {user_id} ({candidate.source}) is outside the group"
            )
        links = await self._keycloak.user_links(user_id)
        if any(link.identity_provider == self._policy.idp_alias for link in links):
            raise AccountLinkedToOther(
                detail=f"keycloak user {user_id} ({candidate.source}) has another open_id"
            )
        return candidate

    async def _check_providers_in_reach(self) -> None:
        """ServerError unless every union_id-keyed provider's accounts are in the bridge's group: then an
        empty search means no account, not one the service account may not see."""
        if self._providers_in_reach:
            return
        recorded = (await self._keycloak.group_attributes(self._policy.group)).get(ENROLLED_PROVIDERS, [])
        missing = sorted(set(self._policy.union_id_idp_aliases) - set(recorded))
        if missing:
            raise ServerError(
                detail=f"the accounts of identity providers {missing} (BRIDGE_UNION_ID_IDP_ALIASES) are not "
                f"recorded as members of {self._policy.group}: a new account could be a second one for its "
                "person, so first sign-ins are refused; run `bridge keycloak apply`"
            )
        self._providers_in_reach = True

    async def _candidates(self, union_id: str) -> dict[str, Candidate]:
        found: dict[str, Candidate] = {}
        for alias in self._policy.union_id_idp_aliases:
            # The extension keeps TikTok's union_id as it is: matched exactly.
            for user in await self._keycloak.linked_users(alias, union_id):
                found.setdefault(user.id, Candidate(user, f"idp:{alias}"))
        if self._policy.imported:
            wanted = union_id.lower()
            attribute = self._policy.union_id_attribute
            for user in await self._keycloak.users_with_attribute(attribute, wanted):
                kept = {value.lower() for value in user.attributes.get(attribute, [])}
                if user.attribute(ATTR_STRAPI_ID) is not None and wanted in kept:
                    found.setdefault(user.id, Candidate(user, IMPORTED))
        return found

    async def adopt(self, profile: ExternalIdentity) -> KeycloakUser | None:
        """The existing account of the identity, now linked to its open_id; None if it has none. Under
        the identity's provisioning lock, with no account linked to the open_id."""
        candidate = await self.find(profile)
        if candidate is None:
            return None
        user = candidate.user
        if not user.enabled:
            # Refused before any write: a blocked Strapi user stays as the import left it.
            raise AccountDisabled(detail=f"keycloak user {user.id} ({candidate.source}) is disabled")
        link = FederatedLink(
            self._policy.idp_alias, profile.open_id, fit_for_keycloak(profile.username or profile.open_id)
        )
        try:
            await self._keycloak.add_link(user.id, link)
        except UserConflict as conflict:
            # Linked meanwhile outside the lock (an administrator): not ours to overwrite.
            raise AccountLinkedToOther(detail=f"keycloak refused linking user {user.id}: 409") from conflict
        log.info(
            "existing account adopted", extra={"keycloak_user_id": user.id, "adopted_from": candidate.source}
        )
        return user
