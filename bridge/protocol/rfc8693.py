"""RFC 8693 token exchange: token type URIs, request parsing and validation, the response body.

The parser takes the raw body so that it can enforce what form parsers let slip: RFC 6749 §3.2
("Request and response parameters MUST NOT be included more than once"), strict UTF-8, and bounded sizes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl

from bridge.domain.errors import InvalidRequest, InvalidScope, InvalidTarget, UnsupportedGrantType

if TYPE_CHECKING:
    from bridge.domain.model import IssuedToken

GRANT_TYPE_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105 - a URN
# Our own namespace for what TikTok's mobile Login Kit hands an app (RFC 8693 §3 allows custom URIs).
TOKEN_TYPE_TIKTOK_CODE = "urn:tiktok-keycloak-bridge:params:oauth:token-type:tiktok-authorization-code"  # noqa: S105

SUPPORTED_SUBJECT_TOKEN_TYPES = (TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_TIKTOK_CODE)
SUPPORTED_REQUESTED_TOKEN_TYPES = (TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN)

MAX_BODY_BYTES = 16 * 1024
MAX_PARAMETERS = 20
MAX_TOKEN_LENGTH = 4096
MAX_PARAMETER_LENGTH = 2048

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
# TikTok tokens and codes are printable ASCII; anything else cannot be one and is refused before any call.
VISIBLE_ASCII = re.compile(r"^[\x21-\x7e]+$")  # what a token may be: it travels in headers and forms
# RFC 7636 §4.1 allows 43-128 characters; TikTok's Android SDK makes 32, so the floor is 32.
_CODE_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{32,128}$")

_KNOWN_PARAMETERS = frozenset(
    {
        "grant_type",
        "subject_token",
        "subject_token_type",
        "requested_token_type",
        "scope",
        "resource",
        "audience",
        "actor_token",
        "actor_token_type",
        "client_id",
        "client_secret",
        "code_verifier",
        "redirect_uri",
    }
)


@dataclass(frozen=True, slots=True)
class AccessTokenExchange:
    """A validated exchange of a TikTok access token."""

    access_token: str
    requested_token_type: str
    scope: tuple[str, ...]
    client_id: str | None = None
    client_secret: str | None = None
    audiences: tuple[str, ...] = ()
    subject_token_type: ClassVar[str] = TOKEN_TYPE_ACCESS_TOKEN

    def __repr__(self) -> str:
        # Never let the token or secret reach a log line through a repr.
        return (
            f"AccessTokenExchange(requested_token_type={self.requested_token_type!r}, scope={self.scope!r})"
        )


@dataclass(frozen=True, slots=True)
class CodeExchange:
    """A validated exchange of a TikTok Login Kit authorization code with its PKCE verifier."""

    code: str
    code_verifier: str
    redirect_uri: str
    requested_token_type: str
    scope: tuple[str, ...]
    client_id: str | None = None
    client_secret: str | None = None
    audiences: tuple[str, ...] = ()
    subject_token_type: ClassVar[str] = TOKEN_TYPE_TIKTOK_CODE

    def __repr__(self) -> str:
        # Never let the code, verifier or secret reach a log line through a repr.
        return f"CodeExchange(requested_token_type={self.requested_token_type!r}, scope={self.scope!r})"


ExchangeRequest = AccessTokenExchange | CodeExchange


def parse_form(body: bytes, content_type: str | None) -> dict[str, str]:
    """Decode an application/x-www-form-urlencoded body, refusing anything ambiguous."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("The body must be application/x-www-form-urlencoded.")
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequest("The request body is too large.")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        # Form encoding percent-encodes everything outside ASCII; raw bytes mean a broken client.
        raise InvalidRequest("The body is not valid form encoding.") from exc
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_PARAMETERS,
        )
    except UnicodeDecodeError as exc:
        raise InvalidRequest("A parameter is not valid UTF-8.") from exc
    except ValueError as exc:
        raise InvalidRequest("The body is not valid form encoding or has too many parameters.") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise InvalidRequest(f"The parameter {_safe_name(name)} is repeated.")
        form[name] = value
    return form


def _safe_name(name: str) -> str:
    # Echo only names we know; an attacker-chosen name is not reflected back.
    return name if name in _KNOWN_PARAMETERS else "(unknown)"


def _optional(form: dict[str, str], name: str) -> str | None:
    value = form.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_PARAMETER_LENGTH:
        raise InvalidRequest(f"The parameter {name} is too long.")
    return value


def parse_scope(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    scopes = tuple(dict.fromkeys(raw.split(" ")))  # keep order, drop duplicates
    if any(not _SCOPE_TOKEN.match(s) for s in scopes):
        raise InvalidScope("The scope parameter is malformed.")
    return scopes


def _code_parameters(form: dict[str, str]) -> tuple[str, str]:
    """The PKCE verifier and redirect URI that must accompany a TikTok authorization code."""
    code_verifier = _optional(form, "code_verifier")
    redirect_uri = _optional(form, "redirect_uri")
    if code_verifier is None:
        raise InvalidRequest("The code_verifier parameter is required with an authorization code.")
    if not _CODE_VERIFIER.match(code_verifier):
        raise InvalidRequest("The code_verifier is malformed.")
    if redirect_uri is None:
        raise InvalidRequest("The redirect_uri parameter is required with an authorization code.")
    return code_verifier, redirect_uri


def parse_targets(form: dict[str, str]) -> tuple[str, ...]:
    """`audience` (RFC 8693 §2.1) and `resource` (RFC 8707 §2): the APIs the token is meant for, one of
    each at most (a repeated parameter is refused like every other). Which ones are allowed is the
    configuration's business; here only their shape is checked."""
    targets = []
    if (audience := _optional(form, "audience")) is not None:
        if not _SCOPE_TOKEN.match(audience):
            raise InvalidTarget("The audience parameter is malformed.")
        targets.append(audience)
    if (resource := _optional(form, "resource")) is not None:
        # RFC 8707 §2: an absolute URI without a fragment.
        if not _SCOPE_TOKEN.match(resource) or "://" not in resource or "#" in resource:
            raise InvalidTarget("The resource parameter must be an absolute URI without a fragment.")
        targets.append(resource)
    return tuple(dict.fromkeys(targets))


def _subject(form: dict[str, str]) -> tuple[str, str]:
    subject_token = form.get("subject_token")
    if not subject_token:
        raise InvalidRequest("The subject_token parameter is missing.")
    if len(subject_token) > MAX_TOKEN_LENGTH or not VISIBLE_ASCII.match(subject_token):
        raise InvalidRequest("The subject_token is malformed.")
    subject_token_type = form.get("subject_token_type")
    if not subject_token_type:
        raise InvalidRequest("The subject_token_type parameter is missing.")
    if subject_token_type not in SUPPORTED_SUBJECT_TOKEN_TYPES:
        raise InvalidRequest("The subject_token_type is not supported.")
    return subject_token, subject_token_type


def parse_exchange_request(form: dict[str, str]) -> ExchangeRequest:
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

    subject_token, subject_token_type = _subject(form)
    requested = _optional(form, "requested_token_type") or TOKEN_TYPE_ACCESS_TOKEN
    if requested not in SUPPORTED_REQUESTED_TOKEN_TYPES:
        raise InvalidRequest("The requested_token_type is not supported.")

    scope = parse_scope(_optional(form, "scope"))
    if requested == TOKEN_TYPE_ID_TOKEN and "openid" not in scope:
        # Keycloak issues an ID token only for OpenID requests.
        scope = ("openid", *scope)

    client_id, client_secret = _optional(form, "client_id"), _optional(form, "client_secret")
    if subject_token_type == TOKEN_TYPE_TIKTOK_CODE:
        code_verifier, redirect_uri = _code_parameters(form)
        return CodeExchange(
            code=subject_token,
            code_verifier=code_verifier,
            redirect_uri=redirect_uri,
            requested_token_type=requested,
            scope=scope,
            client_id=client_id,
            client_secret=client_secret,
            audiences=audiences,
        )
    if _optional(form, "code_verifier") is not None or _optional(form, "redirect_uri") is not None:
        raise InvalidRequest("code_verifier and redirect_uri go only with an authorization code.")
    return AccessTokenExchange(
        access_token=subject_token,
        requested_token_type=requested,
        scope=scope,
        client_id=client_id,
        client_secret=client_secret,
        audiences=audiences,
    )


def parse_tiktok_proof(form: dict[str, str]) -> ExchangeRequest:
    """The TikTok credential of a link request: the same parameters, and rules, as an exchange's
    (`subject_token`, `subject_token_type`, and with a code `code_verifier` and `redirect_uri`)."""
    subject_token, subject_token_type = _subject(form)
    if subject_token_type == TOKEN_TYPE_TIKTOK_CODE:
        code_verifier, redirect_uri = _code_parameters(form)
        return CodeExchange(
            code=subject_token,
            code_verifier=code_verifier,
            redirect_uri=redirect_uri,
            requested_token_type=TOKEN_TYPE_ACCESS_TOKEN,
            scope=(),
        )
    if _optional(form, "code_verifier") is not None or _optional(form, "redirect_uri") is not None:
        raise InvalidRequest("code_verifier and redirect_uri go only with an authorization code.")
    return AccessTokenExchange(
        access_token=subject_token, requested_token_type=TOKEN_TYPE_ACCESS_TOKEN, scope=()
    )


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
