"""The one exception tree of the bridge, and how each branch reaches a client.

    BridgeError
    ├── OAuthError                    answered as RFC 6749 §5.2 JSON with its own status
    │   ├── InvalidRequest            400 invalid_request (RFC 8693 §2.2.2: also for a bad subject_token)
    │   │   ├── ProviderRefusal     the identity provider said no (keeps its message and status)
    │   │   │   ├── SubjectTokenRejected  it refused the token or code
    │   │   │   │   └── AccessTokenRejected   ... an access token, in the words the Strapi plugin used
    │   │   │   ├── MissingScope      the grant lacks a scope the bridge needs
    │   │   │   └── UserNotFound      it answered without a user
    │   │   ├── NoAccessToken         the Strapi-compatible endpoint's body carries no access token
    │   │   ├── InvalidDPoPProof      400 invalid_dpop_proof (RFC 9449 §5): a DPoP proof refused
    │   │   ├── IdentityMismatch      the profile belongs to another subject than the code's
    │   │   ├── UnsupportedIdentity   an identifier longer than Keycloak can store
    │   │   ├── AccountDisabled       the Keycloak user is disabled
    │   │   ├── RegistrationClosed    policy forbids creating a new user
    │   │   ├── EmailTaken            the pseudo-email belongs to another account
    │   │   ├── AdoptionRefused       an existing account of the identity cannot be taken over safely
    │   │   │   ├── AccountsAmbiguous     ... several accounts match its union_id
    │   │   │   └── AccountLinkedToOther  ... the one that matches has another TikTok identity
    │   │   └── VaultRefusal          the token vault holds nothing it may hand out for this subject
    │   │       ├── SubjectNotAccepted    a realm access token refused: another realm, expired, tampered
    │   │       ├── NothingHeld       the user never granted TikTok a code (or the grant was ended)
    │   │       └── GrantEnded        TikTok no longer honours the user's grant (its refresh refused)
    │   ├── InvalidGrant              400 invalid_grant: a refresh token unknown, expired, revoked or reused
    │   ├── InvalidClient             401 invalid_client
    │   ├── UnauthorizedClient        400 unauthorized_client: the token was issued to another client
    │   │   └── VaultNotAllowed       ... or the client may not use the token vault
    │   ├── WebhookSignatureRejected  401 invalid_request: a webhook delivery the provider did not sign
    │   ├── UnsupportedGrantType      400 unsupported_grant_type
    │   ├── InvalidScope              400 invalid_scope
    │   ├── InvalidTarget             400 invalid_target: an audience or resource not configured
    │   ├── InvalidToken              401 invalid_token + WWW-Authenticate: Bearer (RFC 6750 §3.1)
    │   │   └── BearerRequired        ... no bearer at all: the challenge carries no error (§3.1)
    │   ├── AccountNotEligible        403 access_denied: the account is outside the bridge's group
    │   ├── LinkConflict              409 link_conflict: linking would move an identity between users
    │   │   ├── IdentityLinkedElsewhere   the external identity belongs to another user
    │   │   └── OtherIdentityLinked   the user already has a different external identity
    │   ├── BodyTimeout               408 invalid_request: the body did not arrive in time
    │   ├── ClientDisconnected        499 invalid_request: the client hung up mid-body (no one reads it)
    │   ├── BodyTooLarge              413 invalid_request
    │   ├── HeadersTooLarge           431 invalid_request (RFC 6585)
    │   ├── RateLimited               429 temporarily_unavailable with Retry-After (RFC 6585)
    │   ├── TemporarilyUnavailable    503 temporarily_unavailable with Retry-After
    │   │   └── Overloaded            ... and Connection: close: the worker is at its connection limit
    │   └── ServerError               500 server_error: our fault or our configuration's, never input's
    │       └── Unsealable            sealed data no configured key opens (a key removed too early)
    ├── UpstreamError                 raised by adapters; never shown to a client as it is
    │   ├── UpstreamUnavailable       the identity provider, Keycloak or the cache: unreachable or overloaded
    │   │   └── NotReplicated         the cache took an ending write, but no replica confirmed it in time
    │   ├── UpstreamProtocolError     an upstream answered in a way the bridge cannot use
    │   ├── IdentityRefused           the identity provider refused a credential (`Refused` says which way)
    │   ├── UserConflict              Keycloak refused a user: its username or e-mail is taken (409)
    │   ├── OutOfReach                the service account may not manage that user (403): not a member
    │   └── NotLinked                 Keycloak's grant found no user linked to the assertion's subject
    └── SetupError                    `bridge keycloak apply` cannot make the realm as specified

`description` is a fixed, client-safe sentence; `detail` (never sent) goes to the logs, and must itself
never hold a token, code or secret. Adapters raise `UpstreamError`s; the use cases map an
`IdentityRefused` to its `ProviderRefusal` (`refusal_for`), and `to_oauth_error` maps the rest:
`UpstreamUnavailable` to `TemporarilyUnavailable`, `OutOfReach` to `AccountNotEligible`, and every
other `UpstreamError` to `ServerError`. `OAuthError.body()` and `.headers()` are the
one shape of an error answer (RFC 6749 §5.2, `Cache-Control: no-store` always): the app, the raw HTTP
protocol in `server.py` and the webhook all answer with them.

The client-facing descriptions name TikTok where the product's answers always have: they are its
public surface, kept word for word. This module imports nothing outside the standard library, so the
use case can depend on it freely.
"""

from __future__ import annotations

import enum
from http import HTTPStatus
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

# Who failed: an identity provider's upstream name, "keycloak" or "cache"; in logs and metrics.
Upstream = str

# RFC 6749 §5.1: token and error answers must not be cached by anyone. Every answer that carries a token,
# an error or a user's state uses this pair.
NO_STORE: Final[Mapping[str, str]] = MappingProxyType({"Cache-Control": "no-store", "Pragma": "no-cache"})


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


class OAuthError(BridgeError):
    """An error with an RFC 6749 §5.2 representation."""

    error: ClassVar[str] = "invalid_request"
    status_code: ClassVar[int] = HTTPStatus.BAD_REQUEST
    default_description: ClassVar[str] = "The request is invalid."

    def __init__(self, description: str | None = None, *, detail: str = "") -> None:
        super().__init__(detail or (description or self.default_description))
        self.description = description or self.default_description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}

    def headers(self) -> dict[str, str]:
        """Every error answer's headers: never cached (RFC 6749 §5.1), plus what the error adds."""
        return {**NO_STORE, **self.extra_headers()}

    def extra_headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(OAuthError):
    error = "invalid_request"


class ProviderRefusal(InvalidRequest):
    """The identity provider said no; keeps its own message and HTTP status, which the Strapi-compatible
    endpoint answers with (the plugin passed the provider's words on)."""

    def __init__(
        self,
        description: str | None = None,
        *,
        detail: str = "",
        provider_message: str | None = None,
        provider_status: int | None = None,
    ) -> None:
        super().__init__(description, detail=detail)
        self.provider_message = provider_message
        self.provider_status = provider_status


class SubjectTokenRejected(ProviderRefusal):
    default_description = "The subject_token was rejected by TikTok."


class AccessTokenRejected(SubjectTokenRejected):
    default_description = "The TikTok access token is invalid or expired."


class MissingScope(ProviderRefusal):
    default_description = "The TikTok grant lacks the user.info.basic scope."


class NoAccessToken(InvalidRequest):
    """The Strapi-compatible endpoint's body names no access token (the plugin's own message)."""

    default_description = "No access token provided."


class InvalidDPoPProof(InvalidRequest):
    # RFC 9449 §5: a token endpoint refusing a proof answers 400 invalid_dpop_proof.
    error = "invalid_dpop_proof"
    default_description = "The DPoP proof is invalid."


class IdentityMismatch(InvalidRequest):
    default_description = "TikTok's user info does not belong to the redeemed code."


class UserNotFound(ProviderRefusal):
    default_description = "TikTok returned no user for the subject_token."


class UnsupportedIdentity(InvalidRequest):
    default_description = "This TikTok account cannot be signed in here."


class AccountDisabled(InvalidRequest):
    default_description = "The account is disabled."


class RegistrationClosed(InvalidRequest):
    default_description = "Registration of new accounts is closed."


class EmailTaken(InvalidRequest):
    default_description = "The e-mail address is already used by another account."


class AdoptionRefused(InvalidRequest):
    """A first sign-in found an existing account of the identity by its union_id (imported from Strapi,
    or linked by a web sign-in provider) that the bridge will not link on its own: never guessed."""

    default_description = "An existing account matches this TikTok user; an administrator must resolve it."


class AccountsAmbiguous(AdoptionRefused):
    default_description = (
        "More than one existing account matches this TikTok user; an administrator must resolve it."
    )


class AccountLinkedToOther(AdoptionRefused):
    default_description = (
        "The existing account of this TikTok user is linked to another TikTok account; "
        "an administrator must resolve it."
    )


class VaultRefusal(InvalidRequest):
    """RFC 8693 §2.2.2: the subject_token is not acceptable for the TikTok access token asked for."""

    default_description = "The subject_token cannot be exchanged for a TikTok access token."


class SubjectNotAccepted(VaultRefusal):
    default_description = "The subject_token is not a valid access token of the realm."


class NothingHeld(VaultRefusal):
    default_description = (
        "No TikTok grant is held for this user: the user must sign in with TikTok "
        "(Login Kit, with an authorization code) first."
    )


class GrantEnded(VaultRefusal):
    default_description = (
        "TikTok no longer honours this user's grant: the user must sign in with TikTok "
        "(Login Kit, with an authorization code) again."
    )


class InvalidGrant(OAuthError):
    error = "invalid_grant"
    default_description = "The refresh token is invalid, expired or revoked."


class InvalidClient(OAuthError):
    error = "invalid_client"
    status_code = HTTPStatus.UNAUTHORIZED
    default_description = "Client authentication failed."

    def extra_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="token"'}


class UnauthorizedClient(OAuthError):
    """RFC 7009 §2.1: a client may revoke only the tokens issued to it."""

    error = "unauthorized_client"
    default_description = "The token was issued to another client."


class VaultNotAllowed(UnauthorizedClient):
    default_description = "This client may not receive TikTok access tokens."


class WebhookSignatureRejected(OAuthError):
    status_code = HTTPStatus.UNAUTHORIZED
    default_description = "The TikTok-Signature header is missing, stale or wrong."


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"
    default_description = "Only urn:ietf:params:oauth:grant-type:token-exchange is supported."


class InvalidScope(OAuthError):
    error = "invalid_scope"
    default_description = "The requested scope is invalid or not allowed."


class InvalidTarget(OAuthError):
    error = "invalid_target"
    default_description = "The requested audience or resource is not one the bridge issues tokens for."


class InvalidToken(OAuthError):
    """A bearer token the bridge will not act on (RFC 6750 §3.1): bad signature, issuer, expiry, client,
    or a user who no longer exists or is disabled. One description for all, so a caller learns nothing
    about which check failed."""

    error = "invalid_token"
    status_code = HTTPStatus.UNAUTHORIZED
    default_description = "The access token is invalid, expired, or not accepted here."

    def extra_headers(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": f'Bearer realm="bridge", error="invalid_token", '
            f'error_description="{self.description}"'
        }


class BearerRequired(InvalidToken):
    default_description = "A bearer access token is required."

    def extra_headers(self) -> dict[str, str]:
        # §3.1: a request without any authentication gets the challenge, without an error code.
        return {"WWW-Authenticate": 'Bearer realm="bridge"'}


class AccountNotEligible(OAuthError):
    """The account is not one the bridge may act for: Keycloak's permissions confine the bridge's
    service account to the members of its group (docs/existing-keycloak.md, "Least privilege")."""

    error = "access_denied"
    status_code = HTTPStatus.FORBIDDEN
    default_description = (
        "This account cannot be used with TikTok here; an administrator of the realm must allow it first."
    )


class LinkConflict(OAuthError):
    error = "link_conflict"
    status_code = HTTPStatus.CONFLICT


class IdentityLinkedElsewhere(LinkConflict):
    default_description = "This TikTok account is already linked to another account. Unlink it there first."


class OtherIdentityLinked(LinkConflict):
    default_description = (
        "This account is already linked to a different TikTok account. Unlink that one first."
    )


class _RetryAfterMixin(OAuthError):
    def __init__(self, description: str | None = None, *, retry_after: int = 5, detail: str = "") -> None:
        super().__init__(description, detail=detail)
        self.retry_after = max(1, int(retry_after))

    def extra_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class BodyTimeout(OAuthError):
    # RFC 9110 §15.5.9: the server would not wait longer; the client may repeat the request.
    status_code = HTTPStatus.REQUEST_TIMEOUT
    default_description = "The request body did not arrive in time."

    def extra_headers(self) -> dict[str, str]:
        return {"Connection": "close"}  # the rest of the body may still be on its way


class ClientDisconnected(OAuthError):
    # nginx's 499 "client closed request": logged and counted as the client's doing, never as a 5xx.
    status_code = 499
    default_description = "The client closed the connection before its request was complete."


class BodyTooLarge(OAuthError):
    status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    default_description = "The request body is too large."


class HeadersTooLarge(OAuthError):
    status_code = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE  # RFC 6585 §5
    default_description = "The request headers are too large."

    def extra_headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class RateLimited(_RetryAfterMixin):
    # RFC 6749 has no code for "slow down" at the token endpoint; this one tells clients to retry later.
    error = "temporarily_unavailable"
    status_code = HTTPStatus.TOO_MANY_REQUESTS
    default_description = "Too many requests; retry later."


class TemporarilyUnavailable(_RetryAfterMixin):
    error = "temporarily_unavailable"
    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    default_description = "A service the bridge depends on is unavailable; retry later."


class Overloaded(TemporarilyUnavailable):
    """The worker holds as many connections or requests as it may (`bridge serve --limit-concurrency`).
    Answered by the HTTP protocol itself, before any app code runs, with the body left unread."""

    default_description = "The server is busy; retry later."

    def extra_headers(self) -> dict[str, str]:
        return {**super().extra_headers(), "Connection": "close"}


class ServerError(OAuthError):
    error = "server_error"
    status_code = HTTPStatus.INTERNAL_SERVER_ERROR
    default_description = "The bridge could not complete the request."


class Unsealable(ServerError):
    """Sealed data that no configured key opens (a key was removed too early, or the data was altered)."""


class UpstreamError(BridgeError):
    """An upstream service failed; adapters raise this, with the library error as __cause__."""

    def __init__(self, upstream: Upstream, detail: str) -> None:
        super().__init__(f"{upstream}: {detail}")
        self.upstream = upstream


class UpstreamUnavailable(UpstreamError):
    """`retryable`: the request was certainly not carried out (no connection, a gateway's 5xx), so an
    idempotent call may be sent again; a timeout is not retryable (the request may still be running)."""

    def __init__(
        self, upstream: Upstream, detail: str, *, retry_after: int = 5, retryable: bool = False
    ) -> None:
        super().__init__(upstream, detail)
        self.retry_after = retry_after
        self.retryable = retryable


class NotReplicated(UpstreamUnavailable):
    """An ending write (a revocation, a deauthorization, an identity's sessions ended) that the Redis
    master took but too few replicas confirmed within the wait (`BRIDGE_REDIS_WAIT_REPLICAS`): a failover
    now would lose it, so it is not acknowledged, and the caller retries (the write is idempotent). The
    master answered, so this is no outage: the fallback to process memory does not start."""

    def __init__(self, detail: str) -> None:
        super().__init__("cache", detail, retry_after=1)


class UpstreamProtocolError(UpstreamError):
    pass


class Refused(enum.Enum):
    """What an identity provider refused, which decides the client's error (`refusal_for`)."""

    ACCESS_TOKEN = "access_token"  # noqa: S105 - a bare access token: invalid, expired or revoked
    CODE = "code"  # an authorization code, its PKCE verifier or redirect URI, or a refresh token
    SCOPE = "scope"  # the grant lacks a scope the bridge needs
    NO_USER = "no_user"  # the provider answered without a user


class IdentityRefused(UpstreamError):
    """The identity provider refused a credential. `description` is the provider adapter's client-safe
    sentence for it; `message` and `status` are the provider's own words and HTTP status (for the
    Strapi-compatible endpoint), never holding the credential."""

    def __init__(
        self,
        upstream: Upstream,
        refused: Refused,
        *,
        description: str | None = None,
        detail: str,
        message: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(upstream, detail)
        self.refused = refused
        self.description = description
        self.message = message
        self.status = status


class UserConflict(UpstreamError):
    """Keycloak refused to create or update a user because its username or e-mail is taken (409)."""

    def __init__(self, message: str) -> None:
        super().__init__("keycloak", f"409 {message}")
        self.message = message

    @property
    def email_taken(self) -> bool:
        return "email" in self.message.lower() and "username" not in self.message.lower()


class OutOfReach(UpstreamError):
    """Keycloak refused the service account one user (403): the user is not a member of the group its
    fine-grained permissions reach, so the bridge may not read, link or change that account."""

    def __init__(self, detail: str) -> None:
        super().__init__("keycloak", detail)


class NotLinked(UpstreamError):
    """The JWT grant found no user linked to the assertion's subject (an admin removed the link)."""

    def __init__(self) -> None:
        super().__init__("keycloak", "no user linked to the assertion subject")


class SetupError(BridgeError):
    """A reason `bridge keycloak apply` (or the doctor's survey) stops, worded for the operator in one
    line (never a traceback)."""


_REFUSALS: dict[Refused, type[ProviderRefusal]] = {
    Refused.ACCESS_TOKEN: AccessTokenRejected,
    Refused.CODE: SubjectTokenRejected,
    Refused.SCOPE: MissingScope,
    Refused.NO_USER: UserNotFound,
}


def refusal_for(exc: IdentityRefused) -> ProviderRefusal:
    """The client's error for what the identity provider refused (RFC 8693 §2.2.2: invalid_request),
    in the adapter's words where it gave some, keeping the provider's own message and status."""
    return _REFUSALS[exc.refused](
        exc.description,
        detail=exc.detail,
        provider_message=exc.message,
        provider_status=exc.status,
    )


# How an answer names an upstream that is down; an identity provider is named by its adapter's
# `upstream` by default; the use cases name it as the product does (`IdentityProvider.name`).
_UPSTREAM_NAMES: dict[Upstream, str] = {"keycloak": "Keycloak", "cache": "The cache"}


def upstream_name(upstream: Upstream) -> str:
    return _UPSTREAM_NAMES.get(upstream, upstream)


def to_oauth_error(exc: BridgeError) -> OAuthError:
    """Map any bridge error to what a client may see."""
    if isinstance(exc, OAuthError):
        return exc
    if isinstance(exc, OutOfReach):
        return AccountNotEligible(detail=exc.detail)
    if isinstance(exc, IdentityRefused):
        # The use cases map these themselves (`refusal_for`); this keeps one that slipped past a
        # client error too, never a 500.
        return refusal_for(exc)
    if isinstance(exc, UpstreamUnavailable):
        return TemporarilyUnavailable(
            f"{upstream_name(exc.upstream)} is unavailable; retry later.",
            retry_after=exc.retry_after,
            detail=exc.detail,
        )
    return ServerError(detail=exc.detail)
