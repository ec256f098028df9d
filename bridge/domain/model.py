"""The bridge's value types: what the identity provider vouched for, what Keycloak holds and issued, and
account policy.

Plain frozen dataclasses over the standard library, shared by the use cases and the adapters, so the use
cases (`bridge/services/`) never have to import an adapter (and with it httpx2, redis or Starlette) to
name what they work with.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from bridge.domain.errors import UnsupportedIdentity

if TYPE_CHECKING:
    from collections.abc import Mapping


log = logging.getLogger(__name__)

DeauthorizationPolicy = Literal["record", "disable", "unlink"]

# Keycloak refuses attribute values (and federated-identity names) over 255 characters as Java counts
# them: UTF-16 code units, so one emoji counts two (error-invalid-length-too-long).
KEYCLOAK_MAX_LENGTH = 255

# The realm's second identity provider of the bridge, for the Strapi jwt exchange: an imported user who
# has not signed in with TikTok since the move has no TikTok link (Strapi never stored an open_id), so
# the bridge links the account to this provider, by the Keycloak user id itself, and mints by it.
# Keycloak picks a JWT Authorization Grant provider by the assertion's `iss`: this one's is the bridge's
# issuer with this path, and it trusts the same JWKS.
STRAPI_JWT_IDP_SUFFIX = "-strapi-jwt"
STRAPI_JWT_ISSUER_PATH = "/strapi-jwt"


def strapi_jwt_idp_alias(idp_alias: str) -> str:
    """The alias of the Strapi jwt provider beside the bridge's provider `idp_alias`."""
    return f"{idp_alias}{STRAPI_JWT_IDP_SUFFIX}"


def strapi_jwt_issuer(issuer: str) -> str:
    """The issuer of the bridge's assertions for the Strapi jwt provider (`issuer`: the bridge's own)."""
    return f"{issuer.rstrip('/')}{STRAPI_JWT_ISSUER_PATH}"


def keycloak_length(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def fit_for_keycloak(text: str, limit: int = KEYCLOAK_MAX_LENGTH) -> str:
    """`text` cut to what Keycloak stores, at a code point boundary (never half a surrogate pair). For
    display fields only: identifiers are never cut."""
    if keycloak_length(text) <= limit:
        return text
    fitted, used = [], 0
    for char in text:
        units = 2 if ord(char) > 0xFFFF else 1  # noqa: PLR2004 - beyond the BMP: a surrogate pair
        if used + units > limit:
            break
        fitted.append(char)
        used += units
    return "".join(fitted)


class Held(enum.Enum):
    """What asking for a lock came to (`ports.IdentityStore.lock`, `engine.Cache.lock`). True when taken;
    whether the holder waited tells whether another holder may have done the guarded work meanwhile."""

    NOT_TAKEN = "not taken"
    AT_ONCE = "taken at once"
    AFTER_WAITING = "taken after waiting"

    def __bool__(self) -> bool:
        return self is not Held.NOT_TAKEN


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    """The identity of one user of our app at the identity provider, as its profile reported it:
    `open_id` is the provider's stable subject for this app."""

    open_id: str
    union_id: str | None
    display_name: str | None
    avatar_url: str | None = None
    username: str | None = None
    is_verified: bool | None = None
    # When the provider vouched for this profile (it stays cached under its token for a while): a user who
    # deauthorized the app after this moment revoked the token it came from.
    verified_at: float = field(default_factory=time.time, compare=False)


@dataclass(frozen=True, slots=True)
class IdentityAttributes:
    """The attributes the bridge owns on a Keycloak user for its external identity, by the names the
    identity provider's adapter gives them (composition picks the adapter's); each is declared
    in the realm's user profile. Composition hands them to the use cases in their policies."""

    subject: str
    union_id: str
    display_name: str
    username: str
    verified: str

    @property
    def owned(self) -> tuple[str, ...]:
        return (self.subject, self.union_id, self.display_name, self.username, self.verified)

    @property
    def optional(self) -> frozenset[str]:
        """The ones a profile may lack: a sync removes them when it does."""
        return frozenset((self.union_id, self.display_name, self.username, self.verified))

    def of(self, profile: ExternalIdentity) -> dict[str, list[str]]:
        """The attributes of `profile` (written by sign-in and linking alike), fitted to Keycloak's
        limit: display fields are cut, identifiers never (an over-long open_id is refused, an over-long
        union_id left out, each said in the log)."""
        if keycloak_length(profile.open_id) > KEYCLOAK_MAX_LENGTH:
            raise UnsupportedIdentity(detail=f"open_id of {keycloak_length(profile.open_id)} UTF-16 units")
        attributes = {self.subject: [profile.open_id]}
        if profile.union_id:
            if keycloak_length(profile.union_id) <= KEYCLOAK_MAX_LENGTH:
                attributes[self.union_id] = [profile.union_id]
            else:
                log.warning(
                    "union_id too long for Keycloak: left out", extra={"length": len(profile.union_id)}
                )
        if profile.display_name:
            attributes[self.display_name] = [fit_for_keycloak(profile.display_name)]
        if profile.username:
            attributes[self.username] = [fit_for_keycloak(profile.username)]
        if profile.is_verified is not None:
            attributes[self.verified] = ["true" if profile.is_verified else "false"]
        return attributes


@dataclass(frozen=True, slots=True)
class ProviderGrant:
    """What the identity provider's token endpoint returned for a redeemed code (or a refresh)."""

    access_token: str
    open_id: str
    scopes: frozenset[str]
    expires_in: int | None
    refresh_token: str | None = None
    refresh_expires_in: int | None = None

    def __repr__(self) -> str:
        return f"ProviderGrant(open_id={self.open_id!r}, scopes={sorted(self.scopes)!r})"


@dataclass(frozen=True, slots=True)
class KeycloakUser:
    id: str
    username: str
    enabled: bool
    email: str | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    created_timestamp: int | None = None
    representation: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def attribute(self, name: str) -> str | None:
        values = self.attributes.get(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as far as quota priority goes: the client address, and whether the client proved
    itself (a confidential client of the allow-list)."""

    address: str | None = None
    trusted: bool = False


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """What Keycloak issued, before it is shaped into an answer."""

    access_token: str
    expires_in: int | None
    scope: str | None
    id_token: str | None = None
    # The Keycloak user the token is for (its `sub`): the truth when the bridge's cache is stale.
    subject: str | None = None

    def __repr__(self) -> str:
        return f"IssuedToken(expires_in={self.expires_in!r}, scope={self.scope!r})"


@dataclass(frozen=True, slots=True)
class Exchanged:
    """The outcome of one exchange: Keycloak's tokens and whom they are for."""

    issued: IssuedToken
    user_id: str
    profile: ExternalIdentity
    created: bool
    # The provider's answer when the exchange redeemed a code: a session may keep its tokens (sealed).
    provider_grant: ProviderGrant | None = None
    # The bridge session the exchange started, when one was asked for and could be kept.
    session: SessionGrant | None = None


@dataclass(frozen=True, slots=True)
class NewSession:
    """What a successful sign-in starts a session with: whose it is, and what it may refresh into."""

    user_id: str
    open_id: str
    scope: tuple[str, ...]
    provider_grant: ProviderGrant | None = (
        None  # a redeemed code's grant: kept, sealed, for the provider re-check
    )
    jkt: str | None = None  # the DPoP key thumbprint the session is bound to (RFC 9449)
    client_id: str | None = None
    audiences: tuple[str, ...] = ()
    # Minted by the Strapi jwt provider, whose subject (`open_id` here) is the Keycloak user id.
    by_account: bool = False


@dataclass(frozen=True, slots=True)
class SessionGrant:
    """What a client is handed with its access token."""

    refresh_token: str
    refresh_expires_in: int

    def __repr__(self) -> str:
        return f"SessionGrant(refresh_expires_in={self.refresh_expires_in})"


def ended_by(ended_at: float | None, started: float) -> bool:
    """Whether an end time (a tombstone, a sessions' not-before time) refuses what started at `started`:
    at or after it. The stores' Redis scripts compare the same way (`<=`, on the same doubles)."""
    return ended_at is not None and started <= ended_at


class IdentityState(enum.Enum):
    """What the shared cache says of a sign-in whose Keycloak token was minted before it was asked."""

    CURRENT = 0  # no tombstone refuses the profile, and the cached user entry is the one expected
    REVOKED = 1  # the identity deauthorized the app after its profile was verified
    STALE = 2  # the cached user entry is absent or names another user or older attributes


@dataclass(frozen=True, slots=True)
class CachedUser:
    """What the cache remembers of an identity's Keycloak user: its id, and the fingerprint of the
    attributes last synced to it (None in an entry written without one: synced again)."""

    id: str
    fingerprint: str | None


@dataclass(frozen=True, slots=True)
class IdentityCheck:
    """The identity's cached state a sign-in relies on: read with the session's write, in one step."""

    open_id: str
    expected: CachedUser  # the user entry must be exactly this one
    verified_at: float  # a tombstone at or after it refuses

    def judge(self, deauthorized_at: float | None, user: CachedUser | None) -> IdentityState:
        """The state these two cached values give."""
        if ended_by(deauthorized_at, self.verified_at):
            return IdentityState.REVOKED
        return IdentityState.CURRENT if user == self.expected else IdentityState.STALE


@dataclass(frozen=True, slots=True)
class PendingDeauthorization:
    """A deauthorization Keycloak has not taken yet: when it arrived, and how many attempts failed."""

    received: float
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class ProfileLookup:
    """What the profile cache knows of one access token: its profile, that the provider refused it lately,
    or nothing. `local` when this process's own copy answered (no shared-cache read)."""

    profile: ExternalIdentity | None = None
    rejected: bool = False
    local: bool = False


@dataclass(frozen=True, slots=True)
class FederatedLink:
    """One identity-provider link of a Keycloak user."""

    identity_provider: str
    user_id: str
    user_name: str | None = None


@dataclass(frozen=True, slots=True)
class VerifiedBearer:
    """What a verified Keycloak access token says: whose it is and which client it was issued to."""

    subject: str
    client_id: str | None


@dataclass(frozen=True)
class Policy:
    """Account rules. Built from settings by composition (`factory.policy_from_settings`); the defaults
    live in `Settings` only."""

    idp_alias: str
    username_prefix: str
    email_template: str | None
    registration_open: bool
    # Redirect URIs an authorization code may have been issued for (the identity provider's setting).
    redirect_uris: tuple[str, ...]
    default_groups: tuple[str, ...]
    default_realm_roles: tuple[str, ...]
    # What the provider's deauthorization event does to the linked user: record, disable or unlink.
    deauthorization: DeauthorizationPolicy
    # Retrying a policy Keycloak could not take: the longest delay between attempts, and for how long.
    deauthorization_retry_max_delay: float
    deauthorization_retry_horizon: int
    profile_ttl: int
    user_ttl: int
    negative_ttl: int
    # The attributes the bridge owns on a user, by the identity provider's names.
    attributes: IdentityAttributes
    # Audiences this app may ask for -> the Keycloak client scope that puts each in `aud`.
    audience_scopes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Every audience scope of the bridge: never accepted in `scope`, so `audience` is the only way in.
    reserved_scopes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SessionRecord:
    """What the store keeps of one session: hashes, times, and sealed TikTok tokens."""

    user_id: str
    # The subject every refresh's grant names: the TikTok open_id, or with `by_account` the user id.
    open_id: str
    scope: tuple[str, ...]
    created: float
    last_used: float
    current: str  # SHA-256 of the live secret
    previous: str | None = None  # SHA-256 of the secret retired by the last rotation
    rotated_at: float | None = None
    successor: str | None = None  # the live token, sealed: handed out again within the grace window
    jkt: str | None = None  # DPoP key thumbprint the session is bound to (RFC 9449)
    tiktok: str | None = None  # sealed {"refresh_token", "access_token"} of a code-started session
    tiktok_checked: float | None = None
    client_id: str | None = None
    # The audiences granted at sign-in: a refresh may keep or narrow them, never widen them.
    audiences: tuple[str, ...] = ()
    # SHA-256 of a secret handed out twice, by its rotation and to a grace retry: it gets no grace of
    # its own (once one holder has rotated it, the other presenting it is reuse).
    retried: str | None = None
    # Started by a Strapi jwt for an account without a TikTok link: every refresh mints by the Strapi
    # jwt provider (`open_id` holds the Keycloak user id, that provider's subject), and the session is
    # ended with the account (`SessionService.end_account`), not with a TikTok identity. Absent from
    # records written before it existed: those are TikTok sessions, as they were.
    by_account: bool = False


# An access token is refreshed when less than this is left of it (or half its life, if shorter), so a
# backend always receives one it can use for a while.
REFRESH_MARGIN = 300.0


@dataclass(frozen=True, slots=True)
class HeldGrant:
    """The provider's grant of one identity, as the vault keeps it (sealed by the store)."""

    open_id: str
    user_id: str  # the Keycloak user it was granted for: a link moved elsewhere does not inherit it
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    scopes: tuple[str, ...]
    access_expires_at: float
    access_lifetime: float
    refresh_expires_at: float
    stored_at: float

    def refresh_due(self, now: float) -> bool:
        return now >= self.access_expires_at - min(REFRESH_MARGIN, self.access_lifetime / 2)
