"""Provisioning: the Keycloak user linked to a verified external identity, found or created.

It holds the cached user entry of each identity (the user id, and the fingerprint of the attributes last
synced to it), the provisioning lock that lets one replica create a new identity's user, the sync of
the identity's attributes, and what a new user gets (default groups, default realm roles, a pseudo-email).
Ports: `KeycloakGateway` (its admin calls only) and `IdentityStore`. The exchange provisions through it;
the Strapi-compatible endpoint reads the account it answers with (`account`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from bridge.domain.errors import (
    AccessTokenRejected,
    AccountDisabled,
    EmailTaken,
    RegistrationClosed,
    ServerError,
    TemporarilyUnavailable,
    UpstreamError,
    UpstreamProtocolError,
    UserConflict,
)
from bridge.domain.model import (
    CachedUser,
    ExternalIdentity,
    IdentityAttributes,
    KeycloakUser,
    ended_by,
    fit_for_keycloak,
)
from bridge.observability.metrics import CACHE_LOOKUPS, LOCK_WAIT_SECONDS, USERS_PROVISIONED, count

if TYPE_CHECKING:
    from bridge.domain.model import Policy
    from bridge.services.adoption import AdoptionService
    from bridge.services.ports import IdentityStore, KeycloakGateway

log = logging.getLogger(__name__)

MAX_USERNAME_ATTEMPTS = 3
# How long one replica may hold the provisioning lock, and how long another waits for it.
PROVISIONING_LOCK_TTL = 30
PROVISIONING_LOCK_WAIT = 15


def deterministic_username(prefix: str, open_id: str, attempt: int = 0) -> str:
    """Same open_id, same username, on every replica: a racing duplicate create gets Keycloak's 409.

    100 bits of SHA-256 in lower-case base32 fits Keycloak's username rules (stored lower-case; no
    prohibited characters) whatever characters the provider puts in an open_id.
    """
    digest = base64.b32encode(hashlib.sha256(open_id.encode()).digest()).decode().lower()[:20]
    return f"{prefix}{digest}" if attempt == 0 else f"{prefix}{digest}-{attempt + 1}"


def _fingerprint(attributes: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(attributes, sort_keys=True).encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)
def profile_fingerprint(profile: ExternalIdentity, attributes: IdentityAttributes) -> str:
    """The fingerprint of the attributes a profile syncs to Keycloak, which a returning user's cached
    entry is compared with: worked out once per distinct profile (equal fields; when it was verified
    does not count), not on every exchange. Bounded; a refused profile raises and is not kept."""
    return _fingerprint(attributes.of(profile))


class ProvisioningService:
    def __init__(
        self,
        *,
        keycloak: KeycloakGateway,
        identities: IdentityStore,
        policy: Policy,
        adoption: AdoptionService | None = None,
    ) -> None:
        self._keycloak = keycloak
        self._identities = identities
        self._policy = policy
        # Finds the account an identity had before its first sign-in through the bridge (`adoption.py`).
        self._adoption = adoption
        self._groups_checked = False

    async def ensure_user(self, profile: ExternalIdentity) -> tuple[str, bool]:
        """The id of the Keycloak user linked to this external identity, created if policy allows."""
        fingerprint = profile_fingerprint(profile, self._policy.attributes)
        cached, revoked_at = await self._identities.read(profile.open_id)
        if ended_by(revoked_at, profile.verified_at):
            raise AccessTokenRejected(detail="profile verified before the user deauthorized the app")
        if cached is not None:
            count(CACHE_LOOKUPS, "user", "hit")
            if cached.fingerprint != fingerprint:
                await self._sync_profile(cached.id, self._policy.attributes.of(profile))
                await self._identities.remember(profile.open_id, CachedUser(cached.id, fingerprint))
            return cached.id, False

        # Not cached: ask Keycloak, for one request of the identity at a time. The search is the dearest
        # admin call under fine-grained admin permissions (measured on 26.7.4: about five times a search
        # with view-users, and a hundred at once ran past the HTTP timeout), so sign-ins of one identity
        # racing each other wait for the first one's answer instead of each searching.
        count(CACHE_LOOKUPS, "user", "miss")
        attributes = self._policy.attributes.of(profile)
        waiting_since = time.perf_counter()
        async with self._identities.provisioning(
            profile.open_id, ttl=PROVISIONING_LOCK_TTL, wait=PROVISIONING_LOCK_WAIT
        ) as entry:
            LOCK_WAIT_SECONDS.observe(time.perf_counter() - waiting_since)
            if not entry.held:
                raise TemporarilyUnavailable(detail="provisioning lock not acquired in time")
            # Whoever held the lock before us found or created the user and cached its id as it let go;
            # the entry was read as we took the lock (same round trip), so a hundred waiters queued
            # behind this lock cost no Keycloak call. One whose write was lost is still found: by the
            # search, or by Keycloak's 409 on the deterministic username, which leads `_create` to it.
            if entry.user is not None:
                return entry.user.id, False
            user = await self._keycloak.find_linked_user(self._policy.idp_alias, profile.open_id)
            if user is None and self._adoption is not None:
                # First sign-in: an account imported from Strapi, or of the realm's web sign-in, is linked
                # and goes on as a returning user's.
                user = await self._adoption.adopt(profile)
            if user is None:
                user_id, created = await self._create(profile, attributes)
            else:
                if not user.enabled:
                    raise AccountDisabled(detail=f"keycloak user {user.id} is disabled")
                if {k: user.attributes.get(k) for k in attributes} != attributes:
                    await self._update_attributes(user, attributes)
                user_id, created = user.id, False
            # Cached and unlocked together: a waiter that takes the lock finds the id.
            await entry.save_and_release(CachedUser(user_id, fingerprint))
            return user_id, created

    async def _create(self, profile: ExternalIdentity, attributes: dict[str, list[str]]) -> tuple[str, bool]:
        """The new user's id and True; or, when Keycloak's 409 shows another replica linked one first,
        that user's id and False (the sign-in found a user, it did not create one)."""
        if not self._policy.registration_open:
            raise RegistrationClosed(detail="new user refused: registration closed")
        representation: dict[str, Any] = {
            "enabled": True,
            "attributes": attributes,
            "federatedIdentities": [
                {
                    "identityProvider": self._policy.idp_alias,
                    "userId": profile.open_id,
                    "userName": fit_for_keycloak(profile.username or profile.open_id),
                }
            ],
        }
        if self._policy.default_groups:
            await self._check_groups()
            representation["groups"] = list(self._policy.default_groups)
        email = self._pseudo_email(profile)
        if email is not None:
            # A pseudo-address no one has proven to own: never marked verified.
            representation |= {"email": email, "emailVerified": False}
        for attempt in range(MAX_USERNAME_ATTEMPTS):
            representation["username"] = deterministic_username(
                self._policy.username_prefix, profile.open_id, attempt
            )
            try:
                user_id = await self._keycloak.create_user(representation)
            except UserConflict as conflict:
                if conflict.email_taken:
                    raise EmailTaken(detail="pseudo-email collides with another account") from conflict
                # Lost a race (then the user is linked now) or the name belongs to someone unlinked.
                linked = await self._keycloak.find_linked_user(self._policy.idp_alias, profile.open_id)
                if linked is not None:
                    if not linked.enabled:
                        raise AccountDisabled(detail=f"keycloak user {linked.id} is disabled") from conflict
                    return linked.id, False
                continue
            await self._assign_roles(user_id)
            USERS_PROVISIONED.inc()
            log.info("provisioned keycloak user", extra={"keycloak_user_id": user_id})
            return user_id, True
        raise UpstreamProtocolError("keycloak", "every candidate username is taken by an unlinked user")

    async def _check_groups(self) -> None:
        if self._groups_checked:
            return
        missing = await self._keycloak.missing_groups(self._policy.default_groups)
        if missing:
            raise ServerError(detail=f"BRIDGE_DEFAULT_GROUPS names groups that do not exist: {missing}")
        self._groups_checked = True

    async def _assign_roles(self, user_id: str) -> None:
        if not self._policy.default_realm_roles:
            return
        try:
            await self._keycloak.assign_realm_roles(user_id, self._policy.default_realm_roles)
        except UpstreamError:
            # No half-provisioned users: without its roles the account is removed again, and the next
            # sign-in provisions it afresh.
            await self._keycloak.delete_user(user_id)
            raise

    def _pseudo_email(self, profile: ExternalIdentity) -> str | None:
        template = self._policy.email_template
        if template is None:
            return None
        owned = self._policy.attributes
        if "{union_id}" in template and owned.union_id not in owned.of(profile):
            return None  # the provider may omit union_id (or it is unstorable): no address, not a wrong one
        return template.format(open_id=profile.open_id, union_id=profile.union_id or "").lower()

    async def _sync_profile(self, user_id: str, attributes: dict[str, list[str]]) -> None:
        user = await self._keycloak.get_user(user_id)
        if user is None:
            return  # deleted; the grant will say so and the caller re-provisions
        await self._update_attributes(user, attributes)

    async def _update_attributes(self, user: KeycloakUser, attributes: dict[str, list[str]]) -> None:
        # PUT wants the whole representation (partial bodies fail user-profile validation).
        representation = dict(user.representation)
        representation["attributes"] = {**user.attributes, **attributes}
        for stale in self._policy.attributes.optional - attributes.keys():
            representation["attributes"].pop(stale, None)
        await self._keycloak.update_user(user.id, representation)

    async def account(self, user_id: str) -> KeycloakUser:
        """The Keycloak user behind an exchange (for answers that describe the account)."""
        user = await self._keycloak.get_user(user_id)
        if user is None:
            raise UpstreamProtocolError("keycloak", "user vanished right after sign-in")
        return user
