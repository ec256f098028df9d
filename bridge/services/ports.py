"""What the use cases need from the world, as protocols: an identity provider, Keycloak, typed stores,
limits, a signer, and each other.

The stores speak in the bridge's values: keys, encodings and lifetimes are storage's business
(`bridge/storage/`), and so are the single-round-trip steps (a lock taken with the entry it guards, a
session written with the identity's state read). The adapters (`providers/`, `keycloak/`, `storage/`)
implement these; the unit tests' fakes implement them too and are type-checked against them. Only the
standard library and the bridge's own value types are imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from bridge.domain.model import (
        CachedUser,
        ExternalIdentity,
        FederatedLink,
        Held,
        HeldGrant,
        IdentityCheck,
        IdentityState,
        IssuedToken,
        KeycloakUser,
        NewSession,
        PendingDeauthorization,
        ProfileLookup,
        ProviderGrant,
        SessionGrant,
        SessionRecord,
        VerifiedBearer,
    )


class ProviderGrants(Protocol):
    """What a session needs of the identity provider: the user's grant kept alive, and ended."""

    async def refresh(self, refresh_token: str) -> ProviderGrant:
        """Refresh a user's grant: refused (`IdentityRefused`) once the user revoked the app."""
        ...

    async def revoke(self, access_token: str) -> None:
        """Revoke the user's grant of the app."""
        ...


class IdentityProvider(ProviderGrants, Protocol):
    """Where users prove who they are (composition picks the adapter, in `factory.py`). A refused
    credential raises `IdentityRefused`, an outage `UpstreamUnavailable`; the use cases turn both into
    the client's error."""

    @property
    def name(self) -> str:
        """The provider's name in the product's answers ("<name> is unavailable; retry later.")."""
        ...

    def plausible(self, access_token: str) -> bool:
        """Whether `access_token` could be one of this provider's at all (its shape; no call)."""
        ...

    async def verify_access_token(self, access_token: str) -> ExternalIdentity:
        """The identity behind a bare access token, read with the scopes the app asks users for."""
        ...

    async def redeem_code(self, code: str, *, code_verifier: str, redirect_uri: str) -> ProviderGrant:
        """Redeem an authorization code (with its PKCE verifier) with the bridge's own client secret."""
        ...

    async def read_profile(self, grant: ProviderGrant) -> ExternalIdentity:
        """The identity behind a grant just redeemed, read with the scopes it was granted."""
        ...


class KeycloakGateway(Protocol):
    async def issuer(self) -> str: ...
    async def find_linked_user(self, idp_alias: str, idp_user_id: str) -> KeycloakUser | None: ...
    async def linked_users(self, idp_alias: str, idp_user_id: str) -> list[KeycloakUser]:
        """The users linked to (idp_alias, idp_user_id), two at most: one too many is enough to know."""
        ...

    async def users_with_attribute(self, name: str, value: str) -> list[KeycloakUser]:
        """The users whose attribute `name` is `value` (compared ignoring case, as Keycloak does)."""
        ...

    async def user_groups(self, user_id: str) -> list[str]:
        """The paths of the groups the user is a direct member of."""
        ...

    async def get_user(self, user_id: str) -> KeycloakUser | None: ...
    async def create_user(self, representation: dict[str, Any]) -> str: ...
    async def update_user(self, user_id: str, representation: dict[str, Any]) -> None: ...
    async def issue_token(self, assertion: str, scope: tuple[str, ...]) -> IssuedToken: ...
    async def delete_user(self, user_id: str) -> None: ...
    async def missing_groups(self, paths: tuple[str, ...]) -> list[str]: ...
    async def remove_link(self, user_id: str, idp_alias: str) -> None: ...
    async def assign_realm_roles(self, user_id: str, names: tuple[str, ...]) -> None: ...
    async def user_links(self, user_id: str) -> list[FederatedLink]: ...
    async def add_link(self, user_id: str, link: FederatedLink) -> None:
        """Raises UserConflict if the user already has a link to that identity provider."""
        ...


class RealmKeys(Protocol):
    """What the bearer verifier (`keycloak.bearer`) needs of Keycloak; `KeycloakClient` has both."""

    async def issuer(self) -> str: ...
    async def realm_keys(self) -> dict[str, Any]: ...


class BearerVerifier(Protocol):
    async def verify(self, token: str) -> VerifiedBearer:
        """Signature, issuer, expiry and token type of a realm access token; InvalidToken otherwise."""
        ...


class IdentityProofs(Protocol):
    """Fresh proof that the caller holds an identity: a code (with PKCE) or a live access token."""

    async def verify_code(
        self, code: str, code_verifier: str, redirect_uri: str
    ) -> tuple[ExternalIdentity, ProviderGrant]: ...
    async def verify_access_token_fresh(self, access_token: str) -> ExternalIdentity: ...


class IdentitySessions(Protocol):
    async def end_identity(self, open_id: str) -> None: ...


class LinkedUsers(Protocol):
    """Who is linked to an identity (ending the sessions of a deauthorized identity's account)."""

    async def linked_users(self, idp_alias: str, idp_user_id: str) -> list[KeycloakUser]: ...


class ProfileStore(Protocol):
    """Profiles verified under an access token, tokens the identity provider refused lately, and client
    addresses that brought a token it vouched for. Every method raises UpstreamUnavailable('cache') on
    failure."""

    async def lookup(self, access_token: str) -> ProfileLookup:
        """What is known of the token: this process's copy first, then one shared-cache read."""
        ...

    async def keep(self, access_token: str, profile: ExternalIdentity) -> None:
        """Remember the profile the provider gave for the token, for the profile lifetime."""
        ...

    async def reject(self, access_token: str) -> None:
        """Remember that the provider refused the token, for the negative-cache lifetime."""
        ...

    async def vouch_for(self, address: str) -> None: ...
    async def is_proven(self, address: str) -> bool: ...


class LockedUser(Protocol):
    """An identity's cached user, read as its provisioning lock was taken (`IdentityStore.provisioning`)."""

    @property
    def held(self) -> Held: ...
    @property
    def user(self) -> CachedUser | None:
        """The entry as the lock was taken; None if it was absent, or if the lock was not taken."""
        ...

    async def save_and_release(self, user: CachedUser) -> None:
        """Cache the user and give up the lock together (one Redis round trip). Only for a held lock,
        and once: leaving the block afterwards releases nothing more."""
        ...


class IdentityStore(Protocol):
    """Per external identity: its cached Keycloak user, the tombstone of its last deauthorization and its
    provisioning lock. Every method raises UpstreamUnavailable('cache') on failure."""

    @property
    def degraded(self) -> bool:
        """True while the shared cache is unreachable and this process serves from its own memory."""
        ...

    async def read(self, open_id: str) -> tuple[CachedUser | None, float | None]:
        """The cached user and when the identity last deauthorized the app: one round trip."""
        ...

    async def state(self, check: IdentityCheck) -> IdentityState:
        """What the cached user and tombstone say of `check` (one round trip)."""
        ...

    async def remember(self, open_id: str, user: CachedUser) -> None: ...
    async def forget(self, open_id: str) -> None: ...
    async def deauthorized(self, open_id: str, at: float) -> None:
        """Keep the tombstone: profiles verified at or before `at` are refused while they may be cached
        (durable, as `SessionStore.end_identity`)."""
        ...

    def lock(self, open_id: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Held]:
        """The identity's provisioning lock (single-flight across replicas), without its entry."""
        ...

    def provisioning(
        self, open_id: str, *, ttl: float, wait: float
    ) -> AbstractAsyncContextManager[LockedUser]:
        """The provisioning lock, with the cached user read in the same round trip when it is taken."""
        ...


class DeauthorizationQueue(Protocol):
    """Deauthorizations Keycloak has not taken yet, and when to try each next (any replica may)."""

    async def add(self, open_id: str, received: float) -> None:
        """Keep a new deauthorization, due at once (durable, as `SessionStore.end_identity`)."""
        ...

    async def due(self, until: float, limit: int) -> list[str]: ...
    async def size(self) -> int: ...
    def claim(self, open_id: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Held]: ...
    async def read(self, open_id: str) -> PendingDeauthorization | None: ...
    async def postpone(self, open_id: str, pending: PendingDeauthorization, until: float) -> None: ...
    async def unschedule(self, open_id: str) -> None: ...
    async def drop(self, open_id: str) -> None: ...


class LockedSession(Protocol):
    """A session's record, read as the lock serialising its refreshes was taken (`SessionStore.locked`)."""

    @property
    def held(self) -> Held: ...
    @property
    def record(self) -> SessionRecord | None:
        """The record as the lock was taken; None if absent or unreadable, or if the lock was not taken."""
        ...

    async def save_and_release(self, record: SessionRecord, lasts: float) -> None:
        """Write the record (kept `lasts` seconds) and give up the lock together: one Redis round trip.
        Written even if the lock's ttl ran out meanwhile; the lock is deleted only while it is ours."""
        ...

    async def save_and_release_unless_ended(self, record: SessionRecord, lasts: float) -> bool:
        """`save_and_release`, unless the identity's sessions were ended at or after the record's start:
        then the record is deleted instead. The lock is released either way; True if written. One Redis
        round trip (with Redis Cluster, where the end time lies in another slot, a read first)."""
        ...


class SessionStore(Protocol):
    """Bridge sessions and, per identity, when its sessions were last ended. Never the memory fallback
    of a Redis outage: every method raises UpstreamUnavailable('cache') while Redis is unreachable."""

    async def save(self, session_id: str, record: SessionRecord, lasts: float) -> None: ...
    async def read(self, session_id: str) -> SessionRecord | None: ...
    async def delete(self, session_id: str, *, durable: bool = False) -> None:
        """`durable`: the deletion ends a session someone may still hold (a revocation, a reuse): it is
        confirmed by the Redis replicas or raises NotReplicated, so that a failover cannot revive it."""
        ...

    def locked(
        self, session_id: str, *, ttl: float, wait: float
    ) -> AbstractAsyncContextManager[LockedSession]: ...
    async def start_if_current(
        self, check: IdentityCheck, session_id: str, record: SessionRecord, lasts: float
    ) -> IdentityState:
        """Write the record only if the identity's cached state is `check`'s, read in the same step (one
        Redis script; with Redis Cluster, where the session lies in another slot, a read and then the
        write). The state found, written or not."""
        ...

    async def end_identity(self, open_id: str, at: float, *, by_account: bool = False) -> None:
        """Every session of the identity started at or before `at` is over; `by_account`: every session
        a Strapi jwt started for the Keycloak account `open_id` (the Strapi jwt provider's subject).
        Durable: confirmed by the Redis replicas, or NotReplicated."""
        ...

    async def ended_at(self, open_id: str, *, by_account: bool = False) -> float | None: ...


class AdminTokenStore(Protocol):
    """The Keycloak service-account token shared by replicas, with when it expires."""

    async def read(self, realm: str, client_id: str) -> tuple[str, float] | None: ...
    async def keep(self, realm: str, client_id: str, value: str, expires_at: float) -> None: ...


class Sealing(Protocol):
    """Authenticated encryption of what a session keeps (`storage/sealing.py`: Fernet, rotating keys)."""

    def seal(self, plaintext: bytes) -> str: ...
    def open(self, sealed: str) -> bytes:
        """Raises Unsealable when no configured key opens it."""
        ...


class SeenOnce(Protocol):
    """Remembers what was seen for a while: a webhook delivery, a DPoP proof."""

    async def first_time(self, seen: str | bytes) -> bool:
        """True the first time `seen` is shown within the store's lifetime, False after."""
        ...

    async def forget(self, seen: str | bytes) -> None:
        """Not seen after all (what it started failed; its sender will show it again)."""
        ...


class SessionStarter(Protocol):
    """Starts bridge sessions (`sessions.SessionService`)."""

    async def start(self, new: NewSession) -> SessionGrant: ...

    async def start_if_current(self, new: NewSession, check: IdentityCheck) -> SessionGrant | IdentityState:
        """Start it only if the identity's cached state is `check`'s (read with the write)."""
        ...


class IdentityLimiter(Protocol):
    async def check_identity(self, open_id: str) -> None: ...


class ProviderQuota(Protocol):
    async def spend(self, *, proven: bool) -> None:
        """Take one profile read from the identity provider's shared quota; TemporarilyUnavailable when
        the share of this kind of request is spent."""
        ...


class RefusalReservation(Protocol):
    """One bare access token's attempt at the identity provider, counted as refused until it is
    settled otherwise."""

    async def vouched(self) -> None:
        """The provider accepted the token: the address's count of refusals in a row starts again."""
        ...

    async def release(self) -> None:
        """Neither accepted nor refused (an outage, a spent quota): the attempt is not counted."""
        ...


class RefusalBudget(Protocol):
    async def reserve(self, address: str) -> RefusalReservation:
        """Count an attempt from `address` before the provider is asked; RateLimited, nothing counted,
        when the address's recent tokens were refused as many times in a row as it may."""
        ...


class Minter(Protocol):
    """Mints as the Keycloak client of a session's app, for the audiences asked (`apps.Apps`)."""

    async def mint(
        self,
        open_id: str,
        scope: tuple[str, ...],
        *,
        audiences: tuple[str, ...] = (),
        client_id: str | None = None,
        by_account: bool = False,
    ) -> IssuedToken:
        """`by_account`: `open_id` is a Keycloak user id linked to the Strapi jwt provider."""
        ...


class AssertionMinter(Protocol):
    def mint(self, subject: str, audience: str) -> str: ...


class GrantForgetter(Protocol):
    """Ends what the token vault holds for an identity (deauthorization, unlinking, an operator)."""

    async def forget(self, open_id: str) -> None: ...


class LockedGrant(Protocol):
    """An identity's kept grant, read as its refresh lock was taken (`GrantVault.locked`)."""

    @property
    def held(self) -> Held: ...
    @property
    def grant(self) -> HeldGrant | None:
        """The grant as the lock was taken; None if absent or unreadable, or if the lock was not taken."""
        ...

    async def save_and_release(self, grant: HeldGrant) -> None:
        """Keep the grant (as long as its refresh token lives) and give up the lock: one round trip."""
        ...


class GrantVault(GrantForgetter, Protocol):
    """The token vault's store: per identity, the provider grant last given with a code, sealed, kept as
    long as its refresh token lives. Never the memory fallback of a Redis outage: every method raises
    UpstreamUnavailable('cache') while Redis is unreachable."""

    async def keep(self, grant: HeldGrant) -> None: ...
    async def read(self, open_id: str) -> HeldGrant | None: ...
    def locked(self, open_id: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[LockedGrant]:
        """The identity's refresh lock (single-flight across replicas), with its grant read as it is taken."""
        ...
