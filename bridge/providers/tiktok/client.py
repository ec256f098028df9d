"""TikTok as the bridge's identity provider (`ports.IdentityProvider`): the Open API v2 client for user
info, authorization-code redemption, refresh and revocation, and the reading of their answers.

TikTok answers errors inside an envelope and sometimes with HTTP 200, so success is decided by the body
(`error.code == "ok"` for user info, presence of `access_token` for the token endpoint), never by the
status alone. What TikTok refuses is raised as `IdentityRefused` (with the client-safe sentence for it
and TikTok's own words), an outage as `UpstreamUnavailable`: upstream errors, which the use cases turn
into the client's. Nothing in this module logs or raises a token, code or secret.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2

from bridge.domain.errors import IdentityRefused, Refused, UpstreamProtocolError, UpstreamUnavailable
from bridge.domain.model import ExternalIdentity, ProviderGrant
from bridge.outbound.resilience import CircuitBreaker, guarded_call
from bridge.protocol.rfc6749 import VISIBLE_ASCII

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

_T = TypeVar("_T")

log = logging.getLogger(__name__)

UPSTREAM = "tiktok"  # in logs, metrics and the breaker
NAME = "TikTok"  # in answers: "TikTok is unavailable; retry later."
SCOPE_BASIC = "user.info.basic"
SCOPE_PROFILE = "user.info.profile"

USER_INFO_PATH = "/v2/user/info/"
TOKEN_PATH = "/v2/oauth/token/"  # noqa: S105 - a path
REVOKE_PATH = "/v2/oauth/revoke/"
MAX_RESPONSE_BYTES = 256 * 1024

# TikTok refuses the whole request when one field needs a scope the token lacks, so only ask for what
# the granted scopes allow. Stats fields are never needed to sign a user in.
FIELDS_BY_SCOPE: dict[str, tuple[str, ...]] = {
    SCOPE_BASIC: ("open_id", "union_id", "avatar_url", "display_name"),
    SCOPE_PROFILE: ("username", "is_verified"),
}
_RETRY_AFTER_DEFAULT = 60  # TikTok's window is one minute and it sends no Retry-After header
# A gateway in front of TikTok answering these did not pass the request on: safe to repeat.
_GATEWAY_STATUSES = frozenset({502, 503, 504})


def _refused(
    refused: Refused,
    description: str | None = None,
    *,
    detail: str,
    message: str | None = None,
    status: int | None = None,
) -> IdentityRefused:
    return IdentityRefused(
        UPSTREAM, refused, description=description, detail=detail, message=message, status=status
    )


def fields_for_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    granted = set(scopes)
    if SCOPE_BASIC not in granted:
        raise _refused(Refused.SCOPE, detail="user.info.basic not among the scopes asked for")
    fields: list[str] = []
    for scope, scope_fields in FIELDS_BY_SCOPE.items():
        if scope in granted:
            fields.extend(scope_fields)
    return tuple(fields)


def _optional_str(user: dict[str, Any], name: str, limit: int = 1024) -> str | None:
    value = user.get(name)
    if isinstance(value, str) and value and len(value) <= limit:
        return value
    return None


def _load_json(status: int, body: bytes, what: str) -> Any:  # noqa: ANN401 - checked by each caller
    """Decode TikTok's JSON; a non-JSON body is an outage when the status says overload, else a bug."""
    try:
        return json.loads(body)
    except ValueError as exc:
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR or status == HTTPStatus.TOO_MANY_REQUESTS:
            raise UpstreamUnavailable(UPSTREAM, f"{what} HTTP {status}", retry_after=5) from exc
        raise UpstreamProtocolError(UPSTREAM, f"{what} HTTP {status}: body is not JSON") from exc


def parse_user_info(status: int, body: bytes) -> ExternalIdentity:
    """Interpret a /v2/user/info/ answer; the status is consulted only where the body says nothing."""
    payload = _load_json(status, body, "user info")
    error = payload.get("error") if isinstance(payload, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    log_id = error.get("log_id") if isinstance(error, dict) else None
    if code != "ok":
        message = error.get("message") if isinstance(error, dict) else None
        _raise_user_info_error(
            status,
            code if isinstance(code, str) else None,
            log_id,
            message[:200] if isinstance(message, str) and message else None,
        )
    data = payload.get("data")
    user = data.get("user") if isinstance(data, dict) else None
    if not isinstance(user, dict):
        raise _refused(Refused.NO_USER, detail=f"TikTok user info had no user (log_id={log_id})")
    # Sanity caps only; what Keycloak can store is decided by the use case (model.fit_for_keycloak).
    open_id = _optional_str(user, "open_id", limit=1024)
    if open_id is None:
        raise _refused(Refused.NO_USER, detail=f"TikTok user info had no open_id (log_id={log_id})")
    verified = user.get("is_verified")
    return ExternalIdentity(
        open_id=open_id,
        union_id=_optional_str(user, "union_id", limit=1024),
        display_name=_optional_str(user, "display_name", limit=1024),
        avatar_url=_optional_str(user, "avatar_url", limit=2048),
        username=_optional_str(user, "username", limit=1024),
        is_verified=verified if isinstance(verified, bool) else None,
    )


def _raise_user_info_error(status: int, code: str | None, log_id: object, message: str | None) -> None:
    where = f"user info HTTP {status} error.code={code} log_id={log_id}"
    if code == "access_token_invalid":
        raise _refused(Refused.ACCESS_TOKEN, detail=where, message=message, status=status)
    if code in {"scope_not_authorized", "scope_permission_missed"}:
        raise _refused(
            Refused.SCOPE,
            "The TikTok token was not granted the scopes the bridge needs.",
            detail=where,
            message=message,
            status=status,
        )
    if code == "rate_limit_exceeded" or status == HTTPStatus.TOO_MANY_REQUESTS:
        raise UpstreamUnavailable(UPSTREAM, where, retry_after=_RETRY_AFTER_DEFAULT)
    if code == "internal_error" or status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        raise UpstreamUnavailable(UPSTREAM, where, retry_after=5)
    if status == HTTPStatus.UNAUTHORIZED:
        raise _refused(Refused.ACCESS_TOKEN, detail=where, message=message, status=status)
    raise UpstreamProtocolError(UPSTREAM, where)


def parse_token_answer(status: int, body: bytes) -> ProviderGrant:
    """Interpret /v2/oauth/token/: success is the presence of access_token, whatever the status."""
    payload = _load_json(status, body, "token")
    if not isinstance(payload, dict):
        raise UpstreamProtocolError(UPSTREAM, f"token HTTP {status}: body is not an object")
    access_token = payload.get("access_token")
    open_id = payload.get("open_id")
    if isinstance(access_token, str) and access_token and isinstance(open_id, str) and open_id:
        scope = payload.get("scope")
        expires_in = payload.get("expires_in")
        refresh_token = payload.get("refresh_token")
        refresh_expires_in = payload.get("refresh_expires_in")
        return ProviderGrant(
            access_token=access_token,
            open_id=open_id,
            refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
            refresh_expires_in=refresh_expires_in if isinstance(refresh_expires_in, int) else None,
            # TikTok separates granted scopes with commas (not spaces, unlike RFC 6749).
            scopes=frozenset(s.strip() for s in scope.split(",") if s.strip())
            if isinstance(scope, str)
            else frozenset(),
            expires_in=expires_in if isinstance(expires_in, int) else None,
        )
    _raise_token_error(status, payload)
    raise AssertionError("unreachable")  # pragma: no cover


def _raise_token_error(status: int, payload: dict[str, Any]) -> None:
    # Only a string is an error code; anything else (a list, a number: found by hypothesis) is none.
    error = payload.get("error") if isinstance(payload.get("error"), str) else None
    described = payload.get("error_description")
    description = described if isinstance(described, str) else ""
    where = f"token HTTP {status} error={error} log_id={payload.get('log_id')}: {description[:200]}"
    message = description[:200] or None
    if error == "invalid_grant":
        raise _refused(
            Refused.CODE,
            "The TikTok authorization code is invalid, expired or already used.",
            detail=where,
            message=message,
        )
    if error == "invalid_request" and "code verifier" in description.lower():
        raise _refused(
            Refused.CODE, "The code_verifier does not match the code.", detail=where, message=message
        )
    if error == "invalid_request" and "redirect_uri" in description.lower():
        raise _refused(
            Refused.CODE,
            "The redirect_uri does not match the one used to obtain the code.",
            detail=where,
            message=message,
        )
    if (
        error in {"temporarily_unavailable", "server_error"}
        or status >= HTTPStatus.INTERNAL_SERVER_ERROR
        or status == HTTPStatus.TOO_MANY_REQUESTS
    ):
        raise UpstreamUnavailable(UPSTREAM, where, retry_after=5)
    if error == "access_denied":
        raise _refused(
            Refused.CODE, "The TikTok user denied the authorization.", detail=where, message=message
        )
    # invalid_client, unauthorized_client, other invalid_request: the bridge's own configuration is at fault.
    raise UpstreamProtocolError(UPSTREAM, where)


def parse_revoke_answer(status: int, body: bytes) -> None:
    """Interpret /v2/oauth/revoke/: an empty object (or body) is success, `error` is a refusal."""
    payload = _load_json(status, body, "revoke") if body.strip() else {}
    if isinstance(payload, dict) and not payload.get("error") and status < HTTPStatus.BAD_REQUEST:
        return
    _raise_token_error(status, payload if isinstance(payload, dict) else {})


class TikTokClient:
    """TikTok as an `IdentityProvider`, calling it with one shared HTTP client; built once per process
    in the app's lifespan. `scopes` are those the app asks users for (which user-info fields a bare
    access token is read with); `access_token_prefix` what every TikTok access token starts with."""

    name = NAME

    def __init__(
        self,
        http: httpx2.AsyncClient,
        *,
        base_url: str,
        client_key: str,
        client_secret: str,
        scopes: tuple[str, ...] = (SCOPE_BASIC,),
        access_token_prefix: str = "",
        breaker: CircuitBreaker | None = None,
        retry_attempts: int = 2,
    ) -> None:
        self._http = http
        self._base_url = base_url
        self._client_key = client_key
        self._client_secret = client_secret
        self._scopes = scopes
        self._access_token_prefix = access_token_prefix
        self._breaker = breaker or CircuitBreaker(UPSTREAM)
        self._retry_attempts = retry_attempts

    def plausible(self, access_token: str) -> bool:
        """TikTok's access tokens have started with "act." in every answer seen since 2022."""
        prefix = self._access_token_prefix
        return not prefix or access_token.startswith(prefix)

    async def verify_access_token(self, access_token: str) -> ExternalIdentity:
        """The profile read with the app's scopes, or with the basic fields alone when this token was
        granted fewer scopes than the app usually asks for (TikTok refuses a field it lacks a scope for)."""
        try:
            return await self.fetch_profile(access_token, self._scopes)
        except IdentityRefused as refused:
            if refused.refused is not Refused.SCOPE or tuple(self._scopes) == (SCOPE_BASIC,):
                raise
            return await self.fetch_profile(access_token, (SCOPE_BASIC,))

    async def read_profile(self, grant: ProviderGrant) -> ExternalIdentity:
        return await self.fetch_profile(grant.access_token, sorted(grant.scopes))

    async def fetch_profile(
        self, access_token: str, scopes: Iterable[str] = (SCOPE_BASIC,)
    ) -> ExternalIdentity:
        if not VISIBLE_ASCII.match(access_token):
            # It cannot go into an Authorization header (httpx would raise; CR/LF would inject), and
            # TikTok answers 401 access_token_invalid to any token it did not issue: say so unasked.
            raise _refused(
                Refused.ACCESS_TOKEN,
                detail="token is not visible ASCII; TikTok not called",
                status=HTTPStatus.UNAUTHORIZED,
            )
        fields = ",".join(fields_for_scopes(scopes))
        # Stamped before asking, not when the answer is read: an answer TikTok gave just before the user
        # revoked the app, but read after the bridge heard of it, must count as older than the revocation.
        asked_at = time.time()
        profile = await self._call(
            "user_info",
            parse_user_info,
            "GET",
            USER_INFO_PATH,
            idempotent=True,
            params={"fields": fields},
            headers={"Authorization": f"Bearer {access_token}"},
        )
        return replace(profile, verified_at=asked_at)

    async def redeem_code(self, code: str, *, code_verifier: str, redirect_uri: str) -> ProviderGrant:
        """Exchange a Login Kit authorization code with our own client secret (never retried: single-use).
        A grant without user.info.basic is refused: no profile can be read with it."""
        grant = await self._call(
            "token",
            parse_token_answer,
            "POST",
            TOKEN_PATH,
            idempotent=False,
            data={
                "client_key": self._client_key,
                "client_secret": self._client_secret,
                "code": code,
                "grant_type": "authorization_code",
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            },
            headers={"Cache-Control": "no-cache"},
        )
        if SCOPE_BASIC not in grant.scopes:
            raise _refused(
                Refused.SCOPE,
                "The user did not grant the user.info.basic scope.",
                detail=f"granted {sorted(grant.scopes)}",
            )
        return grant

    async def refresh(self, refresh_token: str) -> ProviderGrant:
        """Refresh a user's grant (TikTok rotates the refresh token: the old one stops working). Never
        retried: a repeat would present a token TikTok has just retired. `invalid_grant` means the user
        revoked the app (or the token expired): refused."""
        return await self._call(
            "refresh",
            parse_token_answer,
            "POST",
            TOKEN_PATH,
            idempotent=False,
            data={
                "client_key": self._client_key,
                "client_secret": self._client_secret,
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
            },
            headers={"Cache-Control": "no-cache"},
        )

    async def revoke(self, access_token: str) -> None:
        """Revoke the user's grant of our app (POST /v2/oauth/revoke/); `{}` on success."""
        await self._call(
            "revoke",
            parse_revoke_answer,
            "POST",
            REVOKE_PATH,
            idempotent=True,  # revoking twice is revoking once
            data={
                "client_key": self._client_key,
                "client_secret": self._client_secret,
                "token": access_token,
            },
        )

    async def _call(
        self,
        operation: str,
        parse: Callable[[int, bytes], _T],
        method: str,
        path: str,
        *,
        idempotent: bool,
        **kwargs: Any,  # noqa: ANN401
    ) -> _T:
        async def send_and_parse() -> _T:
            return parse(*await self._send(method, path, **kwargs))

        return await guarded_call(
            self._breaker, operation, send_and_parse, idempotent=idempotent, attempts=self._retry_attempts
        )

    async def _send(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:  # noqa: ANN401
        url = f"{self._base_url}{path}"
        try:
            async with self._http.stream(method, url, **kwargs) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise UpstreamProtocolError(
                            UPSTREAM, f"{path} answer larger than {MAX_RESPONSE_BYTES}"
                        )
        except httpx2.TimeoutException as exc:
            # The request may be in progress at TikTok: not repeated.
            raise UpstreamUnavailable(UPSTREAM, f"{path} timed out") from exc
        except httpx2.HTTPError as exc:
            raise UpstreamUnavailable(
                UPSTREAM, f"{path}: {type(exc).__name__}", retryable=isinstance(exc, httpx2.ConnectError)
            ) from exc
        if response.status_code in _GATEWAY_STATUSES:
            raise UpstreamUnavailable(UPSTREAM, f"{path} HTTP {response.status_code}", retryable=True)
        return response.status_code, bytes(body)
