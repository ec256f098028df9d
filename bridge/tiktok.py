"""TikTok Open API v2 client: user info, authorization-code redemption, and the mapping of their errors.

TikTok answers errors inside an envelope and sometimes with HTTP 200, so success is decided by the body
(`error.code == "ok"` for user info, presence of `access_token` for the token endpoint), never by the
status alone. Nothing in this module logs or raises a token, code or secret.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2
import stamina

from bridge.errors import (
    BridgeError,
    MissingScope,
    SubjectTokenRejected,
    UpstreamProtocolError,
    UpstreamUnavailable,
    UserNotFound,
)
from bridge.metrics import timed
from bridge.resilience import CircuitBreaker
from bridge.rfc8693 import VISIBLE_ASCII

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

_T = TypeVar("_T")

log = logging.getLogger(__name__)

USER_INFO_PATH = "/v2/user/info/"
TOKEN_PATH = "/v2/oauth/token/"  # noqa: S105 - a path
MAX_RESPONSE_BYTES = 256 * 1024

SCOPE_BASIC = "user.info.basic"
SCOPE_PROFILE = "user.info.profile"
# TikTok refuses the whole request when one field needs a scope the token lacks, so only ask for what
# the granted scopes allow. Stats fields are never needed to sign a user in.
FIELDS_BY_SCOPE: dict[str, tuple[str, ...]] = {
    SCOPE_BASIC: ("open_id", "union_id", "avatar_url", "display_name"),
    SCOPE_PROFILE: ("username", "is_verified"),
}
_RETRY_AFTER_DEFAULT = 60  # TikTok's window is one minute and it sends no Retry-After header


@dataclass(frozen=True, slots=True)
class TikTokProfile:
    """The TikTok identity of one user of our app, as user info reported it."""

    open_id: str
    union_id: str | None
    display_name: str | None
    avatar_url: str | None = None
    username: str | None = None
    is_verified: bool | None = None
    # When TikTok vouched for this profile (it stays cached under its token for a while): a user who
    # deauthorized the app after this moment revoked the token it came from.
    verified_at: float = field(default_factory=time.time, compare=False)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "open_id": self.open_id,
                "union_id": self.union_id,
                "display_name": self.display_name,
                "avatar_url": self.avatar_url,
                "username": self.username,
                "is_verified": self.is_verified,
                "verified_at": self.verified_at,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TikTokProfile:
        data = json.loads(raw)
        return cls(
            open_id=data["open_id"],
            union_id=data.get("union_id"),
            display_name=data.get("display_name"),
            avatar_url=data.get("avatar_url"),
            username=data.get("username"),
            is_verified=data.get("is_verified"),
            verified_at=float(data.get("verified_at", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class CodeGrant:
    """What TikTok's token endpoint returned for a redeemed authorization code."""

    access_token: str
    open_id: str
    scopes: frozenset[str]
    expires_in: int | None

    def __repr__(self) -> str:
        return f"CodeGrant(open_id={self.open_id!r}, scopes={sorted(self.scopes)!r})"


def fields_for_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    granted = set(scopes)
    if SCOPE_BASIC not in granted:
        raise MissingScope
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
        if status >= 500 or status == 429:  # noqa: PLR2004
            raise UpstreamUnavailable("tiktok", f"{what} HTTP {status}", retry_after=5) from exc
        raise UpstreamProtocolError("tiktok", f"{what} HTTP {status}: body is not JSON") from exc


def parse_user_info(status: int, body: bytes) -> TikTokProfile:
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
        raise UserNotFound(detail=f"TikTok user info had no user (log_id={log_id})")
    open_id = _optional_str(user, "open_id", limit=256)
    if open_id is None:
        raise UserNotFound(detail=f"TikTok user info had no open_id (log_id={log_id})")
    verified = user.get("is_verified")
    return TikTokProfile(
        open_id=open_id,
        union_id=_optional_str(user, "union_id", limit=256),
        display_name=_optional_str(user, "display_name", limit=255),
        avatar_url=_optional_str(user, "avatar_url", limit=2048),
        username=_optional_str(user, "username", limit=255),
        is_verified=verified if isinstance(verified, bool) else None,
    )


def _raise_user_info_error(status: int, code: str | None, log_id: object, message: str | None) -> None:
    where = f"user info HTTP {status} error.code={code} log_id={log_id}"
    if code == "access_token_invalid":
        raise SubjectTokenRejected(
            "The TikTok access token is invalid or expired.",
            detail=where,
            tiktok_message=message,
            tiktok_status=status,
        )
    if code in {"scope_not_authorized", "scope_permission_missed"}:
        raise MissingScope(
            "The TikTok token was not granted the scopes the bridge needs.",
            detail=where,
            tiktok_message=message,
            tiktok_status=status,
        )
    if code == "rate_limit_exceeded" or status == 429:  # noqa: PLR2004
        raise UpstreamUnavailable("tiktok", where, retry_after=_RETRY_AFTER_DEFAULT)
    if code == "internal_error" or status >= 500:  # noqa: PLR2004
        raise UpstreamUnavailable("tiktok", where, retry_after=5)
    if status == 401:  # noqa: PLR2004
        raise SubjectTokenRejected(
            "The TikTok access token is invalid or expired.",
            detail=where,
            tiktok_message=message,
            tiktok_status=status,
        )
    raise UpstreamProtocolError("tiktok", where)


def parse_token_answer(status: int, body: bytes) -> CodeGrant:
    """Interpret /v2/oauth/token/: success is the presence of access_token, whatever the status."""
    payload = _load_json(status, body, "token")
    if not isinstance(payload, dict):
        raise UpstreamProtocolError("tiktok", f"token HTTP {status}: body is not an object")
    access_token = payload.get("access_token")
    open_id = payload.get("open_id")
    if isinstance(access_token, str) and access_token and isinstance(open_id, str) and open_id:
        scope = payload.get("scope")
        expires_in = payload.get("expires_in")
        return CodeGrant(
            access_token=access_token,
            open_id=open_id,
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
        raise SubjectTokenRejected(
            "The TikTok authorization code is invalid, expired or already used.",
            detail=where,
            tiktok_message=message,
        )
    if error == "invalid_request" and "code verifier" in description.lower():
        raise SubjectTokenRejected(
            "The code_verifier does not match the code.", detail=where, tiktok_message=message
        )
    if error == "invalid_request" and "redirect_uri" in description.lower():
        raise SubjectTokenRejected(
            "The redirect_uri does not match the one used to obtain the code.",
            detail=where,
            tiktok_message=message,
        )
    if error in {"temporarily_unavailable", "server_error"} or status >= 500 or status == 429:  # noqa: PLR2004
        raise UpstreamUnavailable("tiktok", where, retry_after=5)
    if error == "access_denied":
        raise SubjectTokenRejected(
            "The TikTok user denied the authorization.", detail=where, tiktok_message=message
        )
    # invalid_client, unauthorized_client, other invalid_request: the bridge's own configuration is at fault.
    raise UpstreamProtocolError("tiktok", where)


class _Retryable(Exception):
    """A failure worth one more try on an idempotent call: no connection, or a gateway error."""

    def __init__(self, cause: UpstreamUnavailable) -> None:
        super().__init__(cause.detail)
        self.cause = cause


_GATEWAY_STATUSES = frozenset({502, 503, 504})


class TikTokClient:
    """Calls TikTok with one shared HTTP client; built once per process in the app's lifespan."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        *,
        base_url: str,
        client_key: str,
        client_secret: str,
        breaker: CircuitBreaker | None = None,
        retry_attempts: int = 2,
    ) -> None:
        self._http = http
        self._base_url = base_url
        self._client_key = client_key
        self._client_secret = client_secret
        self._breaker = breaker or CircuitBreaker("tiktok")
        self._retry_attempts = retry_attempts

    async def fetch_profile(self, access_token: str, scopes: Iterable[str] = (SCOPE_BASIC,)) -> TikTokProfile:
        if not VISIBLE_ASCII.match(access_token):
            # It cannot go into an Authorization header (httpx would raise; CR/LF would inject), and
            # TikTok answers 401 access_token_invalid to any token it did not issue: say so unasked.
            raise SubjectTokenRejected(
                "The TikTok access token is invalid or expired.",
                detail="token is not visible ASCII; TikTok not called",
                tiktok_status=401,
            )
        fields = ",".join(fields_for_scopes(scopes))
        # Stamped before asking, not when the answer is read: an answer TikTok gave just before the user
        # revoked the app, but read after the bridge heard of it, must count as older than the revocation.
        asked_at = time.time()
        profile = await self._guarded(
            "user_info",
            parse_user_info,
            "GET",
            USER_INFO_PATH,
            idempotent=True,
            params={"fields": fields},
            headers={"Authorization": f"Bearer {access_token}"},
        )
        return replace(profile, verified_at=asked_at)

    async def redeem_code(self, code: str, *, code_verifier: str, redirect_uri: str) -> CodeGrant:
        """Exchange a Login Kit authorization code with our own client secret (never retried: single-use)."""
        return await self._guarded(
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

    async def _guarded(
        self,
        operation: str,
        parse: Callable[[int, bytes], _T],
        method: str,
        path: str,
        *,
        idempotent: bool,
        **kwargs: Any,  # noqa: ANN401
    ) -> _T:
        """One call through the breaker, timed, retried only if idempotent, its answer parsed."""
        self._breaker.before_call()
        with timed("tiktok", operation) as outcome:
            try:
                status, body = await self._send_retrying(method, path, idempotent=idempotent, **kwargs)
                result = parse(status, body)
            except UpstreamUnavailable:
                self._breaker.record_failure()
                outcome["result"] = "unavailable"
                raise
            except BridgeError:
                self._breaker.record_neutral()  # TikTok answered; it said no
                outcome["result"] = "refused"
                raise
            self._breaker.record_success()
            outcome["result"] = "ok"
            return result

    async def _send_retrying(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        **kwargs: Any,  # noqa: ANN401
    ) -> tuple[int, bytes]:
        if not idempotent:
            return await self._send(method, path, **kwargs)
        try:
            async for attempt in stamina.retry_context(
                on=_Retryable, attempts=self._retry_attempts, timeout=30.0, wait_initial=0.05, wait_max=0.5
            ):
                with attempt:
                    return await self._attempt(method, path, **kwargs)
        except _Retryable as exc:
            raise exc.cause from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:  # noqa: ANN401
        try:
            status, body = await self._send(method, path, **kwargs)
        except UpstreamUnavailable as exc:
            if isinstance(exc.__cause__, httpx2.ConnectError):
                raise _Retryable(exc) from exc
            raise  # a read timeout: the request may be in progress; do not pile on
        if status in _GATEWAY_STATUSES:
            raise _Retryable(UpstreamUnavailable("tiktok", f"{path} HTTP {status}"))
        return status, body

    async def _send(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:  # noqa: ANN401
        url = f"{self._base_url}{path}"
        try:
            async with self._http.stream(method, url, **kwargs) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise UpstreamProtocolError(
                            "tiktok", f"{path} answer larger than {MAX_RESPONSE_BYTES}"
                        )
                return response.status_code, bytes(body)
        except httpx2.TimeoutException as exc:
            raise UpstreamUnavailable("tiktok", f"{path} timed out") from exc
        except httpx2.HTTPError as exc:
            raise UpstreamUnavailable("tiktok", f"{path}: {type(exc).__name__}") from exc
