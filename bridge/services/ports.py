"""What the use cases need from the world, as protocols: an identity provider, Keycloak, a cache, limits,
a signer, a sealer, and each other.

The adapters (`providers/`, `keycloak/`, `storage/`) implement these; the unit tests' fakes
implement them too and are type-checked against them. Only the standard library and the bridge's own
value types are imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from bridge.domain.model import (
        ExternalIdentity,
        FederatedLink,
        Held,
        IdentityCheck,
        IdentityState,
        IssuedToken,
        KeycloakUser,
        NewSession,
        ProviderGrant,
        SessionGrant,
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


class RecentIdentities(Protocol):
    """This process's copies of verified identities, in front of the shared cache
    (`storage.recent_profiles.RecentProfiles`)."""

    def get(self, key: str) -> ExternalIdentity | None: ...
    def put(self, key: str, profile: ExternalIdentity) -> None: ...


class IdentitySessions(Protocol):
    async def end_identity(self, open_id: str) -> None: ...


class Cache(Protocol):
    """What the bridge needs from a cache. Every method raises UpstreamUnavailable('cache') on failure."""

    async def get(self, key: str) -> bytes | None: ...
    async def get_many(self, *keys: str) -> list[bytes | None]:
        """One round trip; with Redis Cluster the keys must share a hash tag (one slot)."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...
    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Set only if absent; True if this call set it."""
        ...

    async def delete(self, *keys: str) -> None: ...
    async def schedule(self, key: str, member: str, at: float) -> None:
        """Put `member` in the schedule `key` (a Redis sorted set), due at time `at`; moves it if there."""
        ...

    async def due(self, key: str, until: float, limit: int) -> list[str]:
        """At most `limit` members of the schedule `key` due at or before `until`, earliest first."""
        ...

    async def unschedule(self, key: str, member: str) -> None: ...
    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Held]:
        """Single-flight across replicas: held within `wait` (at once, or after waiting), or not."""
        ...

    async def ping(self) -> None: ...
    async def aclose(self) -> None: ...
    @property
    def degraded(self) -> bool:
        """True while a shared cache is unreachable and this process serves from its own memory."""
        ...


class LockedEntry(Protocol):
    """One entry, read as the lock guarding it was taken (`Store.locked_entry`)."""

    @property
    def held(self) -> Held: ...
    @property
    def value(self) -> bytes | None:
        """The entry as the lock was taken; None if it was absent, or if the lock was not taken."""
        ...

    async def save_and_release(self, value: bytes, ttl: float) -> None:
        """Write the entry and give up the lock together (one Redis round trip). The entry is written
        even if the lock's ttl ran out meanwhile; the lock is deleted only while it is still ours. Only
        for a held lock, and once: leaving the block afterwards releases nothing more."""
        ...


class StoreEntry(LockedEntry, Protocol):
    """A locked entry of a `Store`, which can also make its write depend on an end time elsewhere."""

    async def save_and_release_unless_ended(
        self, value: bytes, ttl: float, *, ended_key: str, started: float
    ) -> bool:
        """`save_and_release`, unless `ended_key` holds a time (a float) at or after `started`: then the
        entry is deleted instead. The lock is released either way; True if the entry was written. One
        Redis round trip (with Redis Cluster, where `ended_key` lies in another slot, a read first)."""
        ...


class GuardedCache(Cache, Protocol):
    """A cache that can read an entry as it takes the lock guarding it, and write it as it releases the
    lock (`locked_entry`). The exchange's cache is one: provisioning takes the identity's lock and reads
    what a previous holder cached in one round trip, and caches the new user's id with the release."""

    def locked_entry(
        self, key: str, *, lock_key: str, ttl: float, wait: float
    ) -> AbstractAsyncContextManager[LockedEntry]:
        """`lock(lock_key)` that reads `key` in the same round trip when it takes the lock (an attempt
        that finds the lock held reads nothing). With Redis Cluster the two keys share a hash tag."""
        ...


class Store(GuardedCache, Protocol):
    """A cache that is one place, Redis or this process's memory, never the fallback between the two:
    a lock and the entry it guards are always kept together, so what `locked_entry` read as it took
    the lock is what its write replaces. The session store is one. (The fallback cache is a
    `GuardedCache` too, but during a Redis outage its entry may be written to memory while the lock
    it replaces stays in Redis until it expires.)"""

    @property
    def one_place(self) -> Literal[True]:
        """Marks a Store, so that mypy refuses the fallback cache wherever a Store is expected."""
        ...

    def locked_entry(
        self, key: str, *, lock_key: str, ttl: float, wait: float
    ) -> AbstractAsyncContextManager[StoreEntry]: ...

    async def set_if_current(self, check: IdentityCheck, key: str, value: bytes, ttl: float) -> IdentityState:
        """Write `key` only if `check` finds the identity's cached state as expected; read and written
        in one step (one Redis script; with Redis Cluster, where `key` lies in another slot, a read of
        the identity's keys and then the write). The state found, written or not."""
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
    ) -> IssuedToken: ...


class AssertionMinter(Protocol):
    def mint(self, subject: str, audience: str) -> str: ...
