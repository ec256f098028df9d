"""The bridge's session requests: the refresh grant (RFC 6749 §6) and token revocation (RFC 7009).

Forms are decoded by `rfc8693.parse_form`, which refuses repeated parameters, bad encodings and oversized
bodies for every endpoint alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.domain.errors import InvalidGrant, InvalidRequest
from bridge.protocol.rfc8693 import MAX_TOKEN_LENGTH, VISIBLE_ASCII, parse_scope, parse_targets

GRANT_TYPE_REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a grant type name
TOKEN_TYPE_HINTS = ("refresh_token", "access_token")


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


def _optional(form: dict[str, str], name: str) -> str | None:
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
        scope=parse_scope(_optional(form, "scope")),
        client_id=_optional(form, "client_id"),
        client_secret=_optional(form, "client_secret"),
        audiences=parse_targets(form),
    )


def parse_revocation_request(form: dict[str, str]) -> RevocationRequest:
    """RFC 7009 §2.1: `token` is required; an unknown `token_type_hint` is ignored by the server, which
    searches all its token types anyway (the bridge only has refresh tokens to revoke)."""
    token = form.get("token")
    if not token:
        raise InvalidRequest("The token parameter is missing.")
    hint = _optional(form, "token_type_hint")
    return RevocationRequest(
        token=token,
        token_type_hint=hint if hint in TOKEN_TYPE_HINTS else None,
        client_id=_optional(form, "client_id"),
        client_secret=_optional(form, "client_secret"),
    )
