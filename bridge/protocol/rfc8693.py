"""RFC 8693 token exchange, built on RFC 6749 (`rfc6749.py`): token type URIs, request parsing and
validation, the response body.

Which subject token types an exchange accepts is not this module's to know: composition hands the
parser a `SubjectTokenTypes` naming them (the identity provider's own URIs among them), and which of
them are authorization codes that travel with a PKCE verifier and a redirect URI, and the rule a
verifier must follow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.domain.errors import InvalidRequest, InvalidScope, UnsupportedGrantType
from bridge.protocol.rfc6749 import (
    MAX_TOKEN_LENGTH,
    VISIBLE_ASCII,
    optional_parameter,
    parse_scope,
    parse_targets,
)

if TYPE_CHECKING:
    from bridge.domain.model import IssuedToken

GRANT_TYPE_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105 - a URN

SUPPORTED_REQUESTED_TOKEN_TYPES = (TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN)

# RFC 7636 §4.1: 43-128 characters of the unreserved set.
RFC7636_CODE_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")


@dataclass(frozen=True, slots=True)
class SubjectTokenTypes:
    """The subject token types an exchange accepts (RFC 8693 §3 allows custom URIs), in the order
    they are announced: access tokens (the registered URI, and any of the provider's own), and
    authorization codes, which need `code_verifier` and `redirect_uri`, the verifier matching
    `code_verifier`."""

    access_tokens: tuple[str, ...] = (TOKEN_TYPE_ACCESS_TOKEN,)
    codes: tuple[str, ...] = ()
    code_verifier: re.Pattern[str] = RFC7636_CODE_VERIFIER

    @property
    def supported(self) -> tuple[str, ...]:
        return (*self.access_tokens, *self.codes)


@dataclass(frozen=True, slots=True)
class AccessTokenExchange:
    """A validated exchange of an identity provider's access token."""

    access_token: str
    requested_token_type: str
    scope: tuple[str, ...]
    client_id: str | None = None
    client_secret: str | None = None
    audiences: tuple[str, ...] = ()
    subject_token_type: str = TOKEN_TYPE_ACCESS_TOKEN

    def __repr__(self) -> str:
        # Never let the token or secret reach a log line through a repr.
        return (
            f"AccessTokenExchange(requested_token_type={self.requested_token_type!r}, scope={self.scope!r})"
        )


@dataclass(frozen=True, slots=True)
class CodeExchange:
    """A validated exchange of an identity provider's authorization code with its PKCE verifier."""

    code: str
    code_verifier: str
    redirect_uri: str
    requested_token_type: str
    scope: tuple[str, ...]
    client_id: str | None = None
    client_secret: str | None = None
    audiences: tuple[str, ...] = ()
    subject_token_type: str = ""

    def __repr__(self) -> str:
        # Never let the code, verifier or secret reach a log line through a repr.
        return f"CodeExchange(requested_token_type={self.requested_token_type!r}, scope={self.scope!r})"


ExchangeRequest = AccessTokenExchange | CodeExchange


def _code_parameters(form: dict[str, str], types: SubjectTokenTypes) -> tuple[str, str]:
    """The PKCE verifier and redirect URI that must accompany an authorization code."""
    code_verifier = optional_parameter(form, "code_verifier")
    redirect_uri = optional_parameter(form, "redirect_uri")
    if code_verifier is None:
        raise InvalidRequest("The code_verifier parameter is required with an authorization code.")
    if not types.code_verifier.match(code_verifier):
        raise InvalidRequest("The code_verifier is malformed.")
    if redirect_uri is None:
        raise InvalidRequest("The redirect_uri parameter is required with an authorization code.")
    return code_verifier, redirect_uri


def _subject(form: dict[str, str], types: SubjectTokenTypes) -> tuple[str, str]:
    subject_token = form.get("subject_token")
    if not subject_token:
        raise InvalidRequest("The subject_token parameter is missing.")
    if len(subject_token) > MAX_TOKEN_LENGTH or not VISIBLE_ASCII.match(subject_token):
        raise InvalidRequest("The subject_token is malformed.")
    subject_token_type = form.get("subject_token_type")
    if not subject_token_type:
        raise InvalidRequest("The subject_token_type parameter is missing.")
    if subject_token_type not in types.supported:
        raise InvalidRequest("The subject_token_type is not supported.")
    return subject_token, subject_token_type


def _credential(
    form: dict[str, str],
    types: SubjectTokenTypes,
    *,
    requested: str,
    scope: tuple[str, ...],
    client_id: str | None = None,
    client_secret: str | None = None,
    audiences: tuple[str, ...] = (),
) -> ExchangeRequest:
    subject_token, subject_token_type = _subject(form, types)
    if subject_token_type in types.codes:
        code_verifier, redirect_uri = _code_parameters(form, types)
        return CodeExchange(
            code=subject_token,
            code_verifier=code_verifier,
            redirect_uri=redirect_uri,
            requested_token_type=requested,
            scope=scope,
            client_id=client_id,
            client_secret=client_secret,
            audiences=audiences,
            subject_token_type=subject_token_type,
        )
    if (
        optional_parameter(form, "code_verifier") is not None
        or optional_parameter(form, "redirect_uri") is not None
    ):
        raise InvalidRequest("code_verifier and redirect_uri go only with an authorization code.")
    return AccessTokenExchange(
        access_token=subject_token,
        requested_token_type=requested,
        scope=scope,
        client_id=client_id,
        client_secret=client_secret,
        audiences=audiences,
        subject_token_type=subject_token_type,
    )


def parse_exchange_request(form: dict[str, str], types: SubjectTokenTypes) -> ExchangeRequest:
    """Validate a token exchange request (RFC 8693 §2.1) and the bridge's extension parameters."""
    grant_type = form.get("grant_type")
    if not grant_type:
        raise InvalidRequest("The grant_type parameter is missing.")
    if grant_type != GRANT_TYPE_TOKEN_EXCHANGE:
        raise UnsupportedGrantType

    if form.get("actor_token") or form.get("actor_token_type"):
        # §2.1: actor_token_type only with actor_token; the bridge supports no delegation at all.
        raise InvalidRequest("Delegation (actor_token) is not supported.")
    audiences = parse_targets(form)

    # The subject first: its errors are reported before those of the other parameters.
    _subject(form, types)
    requested = optional_parameter(form, "requested_token_type") or TOKEN_TYPE_ACCESS_TOKEN
    if requested not in SUPPORTED_REQUESTED_TOKEN_TYPES:
        raise InvalidRequest("The requested_token_type is not supported.")

    scope = parse_scope(optional_parameter(form, "scope"))
    if requested == TOKEN_TYPE_ID_TOKEN and "openid" not in scope:
        # Keycloak issues an ID token only for OpenID requests.
        scope = ("openid", *scope)

    return _credential(
        form,
        types,
        requested=requested,
        scope=scope,
        client_id=optional_parameter(form, "client_id"),
        client_secret=optional_parameter(form, "client_secret"),
        audiences=audiences,
    )


def parse_subject_proof(form: dict[str, str], types: SubjectTokenTypes) -> ExchangeRequest:
    """The credential of a link request: the same parameters, and rules, as an exchange's
    (`subject_token`, `subject_token_type`, and with a code `code_verifier` and `redirect_uri`)."""
    return _credential(form, types, requested=TOKEN_TYPE_ACCESS_TOKEN, scope=())


def exchange_response(issued: IssuedToken, requested_token_type: str) -> dict[str, Any]:
    """RFC 8693 §2.2.1 body for what was requested."""
    body: dict[str, Any]
    if requested_token_type == TOKEN_TYPE_ID_TOKEN:
        if issued.id_token is None:
            raise InvalidScope("Keycloak issued no ID token for this scope.")
        # §2.2.1: a token that is not an access token travels in access_token with token_type N_A.
        body = {
            "access_token": issued.id_token,
            "issued_token_type": TOKEN_TYPE_ID_TOKEN,
            "token_type": "N_A",
        }
    else:
        body = {
            "access_token": issued.access_token,
            "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN,
            "token_type": "Bearer",
        }
        if issued.id_token is not None:
            body["id_token"] = issued.id_token
    if issued.expires_in is not None:
        body["expires_in"] = issued.expires_in
    if issued.scope is not None:
        body["scope"] = issued.scope
    return body


def refresh_response(issued: IssuedToken) -> dict[str, Any]:
    """RFC 6749 §5.1 body of a refreshed access token (the refresh token is added by the caller)."""
    body: dict[str, Any] = {"access_token": issued.access_token, "token_type": "Bearer"}
    if issued.id_token is not None:
        body["id_token"] = issued.id_token
    if issued.expires_in is not None:
        body["expires_in"] = issued.expires_in
    if issued.scope is not None:
        body["scope"] = issued.scope
    return body


@dataclass(frozen=True, slots=True)
class StoredTokenRequest:
    """A validated exchange of a realm user's access token for a token the bridge keeps for that user
    (the token vault: `requested_token_type` is the kept token's type, composition names it)."""

    subject_token: str
    requested_token_type: str
    scope: tuple[str, ...]
    client_id: str | None = None
    client_secret: str | None = None

    def __repr__(self) -> str:
        # Never let the token or secret reach a log line through a repr.
        return f"StoredTokenRequest(requested_token_type={self.requested_token_type!r}, scope={self.scope!r})"


def parse_stored_token_request(form: dict[str, str], requested_token_type: str) -> StoredTokenRequest:
    """Validate an exchange (RFC 8693 §2.1) of a realm access token for `requested_token_type`: the
    subject is an access token (the registered URI), nothing is delegated, and no audience is named
    (the token kept is the one its issuer made, for its own API)."""
    grant_type = form.get("grant_type")
    if not grant_type:
        raise InvalidRequest("The grant_type parameter is missing.")
    if grant_type != GRANT_TYPE_TOKEN_EXCHANGE:
        raise UnsupportedGrantType
    if form.get("actor_token") or form.get("actor_token_type"):
        raise InvalidRequest("Delegation (actor_token) is not supported.")
    # The registered access token URI only: the realm's own access token.
    subject_token, _type = _subject(form, SubjectTokenTypes())
    if form.get("audience") or form.get("resource"):
        raise InvalidRequest("audience and resource are not supported with this requested_token_type.")
    if (
        optional_parameter(form, "code_verifier") is not None
        or optional_parameter(form, "redirect_uri") is not None
    ):
        raise InvalidRequest("code_verifier and redirect_uri go only with an authorization code.")
    if optional_parameter(form, "requested_token_type") != requested_token_type:
        raise InvalidRequest("The requested_token_type is not supported.")
    return StoredTokenRequest(
        subject_token=subject_token,
        requested_token_type=requested_token_type,
        scope=parse_scope(optional_parameter(form, "scope")),
        client_id=optional_parameter(form, "client_id"),
        client_secret=optional_parameter(form, "client_secret"),
    )


def stored_token_response(
    access_token: str, issued_token_type: str, expires_in: int, scope: tuple[str, ...]
) -> dict[str, Any]:
    """RFC 8693 §2.2.1 body of a kept access token: a Bearer token of its issuer's, with its own scope."""
    return {
        "access_token": access_token,
        "issued_token_type": issued_token_type,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": " ".join(scope),
    }
