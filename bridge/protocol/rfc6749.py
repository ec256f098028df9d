"""RFC 6749 at the bottom of the protocol: the form every token-endpoint request travels in, scopes and
targets, the refresh grant (§6) and token revocation (RFC 7009).

`parse_form` takes the raw body so that it can enforce what form parsers let slip: §3.2 ("Request and
response parameters MUST NOT be included more than once"), strict UTF-8, and bounded sizes. It serves
every endpoint alike; the token exchange (`rfc8693.py`) builds on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from bridge.domain.errors import InvalidGrant, InvalidRequest, InvalidScope, InvalidTarget

GRANT_TYPE_REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a grant type name
TOKEN_TYPE_HINTS = ("refresh_token", "access_token")

MAX_BODY_BYTES = 16 * 1024
MAX_PARAMETERS = 20
MAX_TOKEN_LENGTH = 4096
MAX_PARAMETER_LENGTH = 2048

# §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
# What a token may be: it travels in headers and forms, so printable ASCII only; anything else cannot be
# one and is refused before any call.
VISIBLE_ASCII = re.compile(r"^[\x21-\x7e]+$")

# The token endpoint's parameter names (this RFC's, and its extensions': RFC 8693, 8707, 7636): the only
# names an error message echoes, so an attacker-chosen name is never reflected back.
KNOWN_PARAMETERS = frozenset(
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
class RefreshRequest:
    refresh_token: str
    scope: tuple[str, ...]
    client_id: str | None = None
    client_secret: str | None = None
    # RFC 8707 §2.2: a refresh may name the audience it wants, within what the session was granted.
    audiences: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"RefreshRequest(scope={self.scope!r})"  # never the token


@dataclass(frozen=True, slots=True)
class RevocationRequest:
    token: str
    token_type_hint: str | None
    client_id: str | None = None
    client_secret: str | None = None

    def __repr__(self) -> str:
        return f"RevocationRequest(token_type_hint={self.token_type_hint!r})"


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
    return name if name in KNOWN_PARAMETERS else "(unknown)"


def optional_parameter(form: dict[str, str], name: str) -> str | None:
    """A parameter that may be absent (or empty, the same thing here), bounded in length."""
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
    if any(not SCOPE_TOKEN.match(s) for s in scopes):
        raise InvalidScope("The scope parameter is malformed.")
    return scopes


def parse_targets(form: dict[str, str]) -> tuple[str, ...]:
    """`audience` (RFC 8693 §2.1) and `resource` (RFC 8707 §2): the APIs the token is meant for, one of
    each at most (a repeated parameter is refused like every other). Which ones are allowed is the
    configuration's business; here only their shape is checked."""
    targets = []
    if (audience := optional_parameter(form, "audience")) is not None:
        if not SCOPE_TOKEN.match(audience):
            raise InvalidTarget("The audience parameter is malformed.")
        targets.append(audience)
    if (resource := optional_parameter(form, "resource")) is not None:
        # RFC 8707 §2: an absolute URI without a fragment.
        if not SCOPE_TOKEN.match(resource) or "://" not in resource or "#" in resource:
            raise InvalidTarget("The resource parameter must be an absolute URI without a fragment.")
        targets.append(resource)
    return tuple(dict.fromkeys(targets))


def _given(form: dict[str, str], name: str) -> str | None:
    # The session requests' optional parameters: absent and empty alike mean "not given".
    value = form.get(name)
    return value or None


def parse_refresh_request(form: dict[str, str]) -> RefreshRequest:
    """§6: `refresh_token` is required, `scope` optional (it may only narrow the original)."""
    token = form.get("refresh_token")
    if not token:
        raise InvalidRequest("The refresh_token parameter is missing.")
    if len(token) > MAX_TOKEN_LENGTH or not VISIBLE_ASCII.match(token):
        # Not something the bridge could have issued: the grant is invalid, not the request.
        raise InvalidGrant(detail="malformed refresh token")
    return RefreshRequest(
        refresh_token=token,
        scope=parse_scope(_given(form, "scope")),
        client_id=_given(form, "client_id"),
        client_secret=_given(form, "client_secret"),
        audiences=parse_targets(form),
    )


def parse_revocation_request(form: dict[str, str]) -> RevocationRequest:
    """RFC 7009 §2.1: `token` is required; an unknown `token_type_hint` is ignored by the server, which
    searches all its token types anyway (the bridge only has refresh tokens to revoke)."""
    token = form.get("token")
    if not token:
        raise InvalidRequest("The token parameter is missing.")
    hint = _given(form, "token_type_hint")
    return RevocationRequest(
        token=token,
        token_type_hint=hint if hint in TOKEN_TYPE_HINTS else None,
        client_id=_given(form, "client_id"),
        client_secret=_given(form, "client_secret"),
    )
