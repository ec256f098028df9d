"""A local emulator of TikTok's Open API v2, for integration tests and the local stack.

Emulated, following TikTok's documented wire formats (docs/architecture.md, "Tests"):
- `GET /v2/user/info/`: the `{"data": {"user": {...}}, "error": {"code", "message", "log_id"}}` envelope,
  only the requested fields, per-field scope checks, `access_token_invalid` / `scope_not_authorized` (401),
  `invalid_params` (400), `rate_limit_exceeded` (429, 600 calls per sliding minute), optional HTTP 200 for
  every error (as TikTok has been seen to answer), and the `x-tt-logid` header.
- `POST /v2/oauth/token/`: form-encoded only; authorization_code with PKCE as TikTok does it (challenge =
  lowercase hex SHA-256 of the verifier; Android's 32-character verifiers accepted), single-use codes,
  exact redirect_uri match; refresh_token with rotation; flat success JSON; errors as
  `{"error", "error_description", "log_id"}`, by default with HTTP 200.
- `POST /v2/oauth/revoke/`.
- Webhook delivery of `authorization.removed` when a user deauthorizes the app: the event envelope
  `{client_key, event, create_time, user_openid, content}` (content a JSON string with `reason`), signed
  in `TikTok-Signature: t=<unix time>,s=<hex HMAC-SHA256 of "t.body" with the client secret>`, and
  delivered again while the receiver does not answer 200 (TikTok retries for 72 hours; here a few times,
  quickly): the same body each time, signed anew. The user's tokens and pending authorization codes stop
  working first, as on TikTok.
Not emulated: the browser authorize page (tests mint codes through the control API instead, as Login Kit
would hand them to an app), sandbox target users, other webhook events, video and other APIs.

A control API under `/_emulator/` lets tests and the local stack create users, tokens and codes, inject
faults and read call counters over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import string
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from collections.abc import Sequence

    from starlette.requests import Request

FIELD_SCOPES: dict[str, str] = {
    "open_id": "user.info.basic",
    "union_id": "user.info.basic",
    "avatar_url": "user.info.basic",
    "avatar_url_100": "user.info.basic",
    "avatar_large_url": "user.info.basic",
    "display_name": "user.info.basic",
    "bio_description": "user.info.profile",
    "profile_deep_link": "user.info.profile",
    "is_verified": "user.info.profile",
    "username": "user.info.profile",
    "follower_count": "user.info.stats",
    "following_count": "user.info.stats",
    "likes_count": "user.info.stats",
    "video_count": "user.info.stats",
}
USER_INFO_MESSAGES = {
    "access_token_invalid": "The access token is invalid or not found in the request.",
    "scope_not_authorized": "The user did not authorize the scope required for completing this request.",
    "scope_permission_missed": "Access token is invalid, some fields need additional scopes.",
    "invalid_params": "One or more fields in request is invalid.",
    "rate_limit_exceeded": "The API rate limit was exceeded.",
    "internal_error": "Something went wrong. Please try again later.",
}
USER_INFO_STATUS = {
    "access_token_invalid": 401,
    "scope_not_authorized": 401,
    "scope_permission_missed": 400,
    "invalid_params": 400,
    "rate_limit_exceeded": 429,
    "internal_error": 500,
}
_ALNUM = string.ascii_letters + string.digits
_OPEN_ID_ALPHABET = _ALNUM + "_-"
DEMO_DISPLAY_NAME = "Demo TikToker"


def log_id() -> str:
    """14-digit UTC timestamp and 20 uppercase hex characters, as in every captured TikTok answer."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(10).upper()


def _token(prefix: str) -> str:
    body = "".join(secrets.choice(_ALNUM) for _ in range(60))
    return f"{prefix}.{body}!{secrets.randbelow(10000):04d}.va"


@dataclass
class EmulatedUser:
    open_id: str
    union_id: str | None
    display_name: str
    username: str
    avatar_url: str
    avatar_url_100: str
    avatar_large_url: str
    bio_description: str = ""
    profile_deep_link: str = ""
    is_verified: bool = False
    follower_count: int = 0
    following_count: int = 0
    likes_count: int = 0
    video_count: int = 0


@dataclass
class _Token:
    open_id: str
    scopes: frozenset[str]
    expires_at: float


@dataclass
class _Code:
    open_id: str
    redirect_uri: str
    code_challenge: str
    scopes: frozenset[str]
    expires_at: float


@dataclass
class _Fault:
    code: str
    http_status: int
    message: str
    remaining: int


_UNSET: Any = object()


@dataclass
class TikTokEmulator:
    """One TikTok app (client key and secret) with in-memory users, tokens and codes."""

    client_key: str
    client_secret: str
    redirect_uris: Sequence[str] = ()
    error_status: Literal["documented", "always_200"] = "documented"
    token_error_status: int = 200
    user_info_rate_limit_per_minute: int = 600
    access_token_ttl: int = 86400
    refresh_token_ttl: int = 31536000
    code_ttl: int = 300
    webhook_url: str | None = None
    webhook_attempts: int = 3
    webhook_retry_delay: float = 0.2
    calls: dict[str, int] = field(default_factory=lambda: {"user_info": 0, "token": 0, "revoke": 0})
    _users: dict[str, EmulatedUser] = field(default_factory=dict, repr=False)
    _tokens: dict[str, _Token] = field(default_factory=dict, repr=False)
    _refresh: dict[str, _Token] = field(default_factory=dict, repr=False)
    _codes: dict[str, _Code] = field(default_factory=dict, repr=False)
    _faults: dict[str, deque[_Fault]] = field(default_factory=dict, repr=False)
    _window: deque[float] = field(default_factory=deque, repr=False)
    _latency: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _app: Starlette | None = field(default=None, repr=False)

    # --------------------------------------------------------------------------- Python API

    def create_user(
        self,
        *,
        display_name: str = "Tik Toker",
        username: str | None = None,
        union_id: str | None = _UNSET,
        is_verified: bool = False,
        **profile: Any,  # noqa: ANN401 - any other documented profile field
    ) -> EmulatedUser:
        open_id = "-000" + "".join(secrets.choice(_OPEN_ID_ALPHABET) for _ in range(32))
        slug = secrets.token_hex(8)
        expires, signature = int(time.time()) + 86400, secrets.token_urlsafe(12)
        # Signed, expiring CDN URLs, as TikTok serves avatars.
        avatar = (
            f"https://p16-sign.tiktokcdn-us.com/tos-useast5-avt-0068-tx/{slug}~c5_{{size}}.jpeg"
            f"?x-expires={expires}&x-signature={signature}"
        )
        user = EmulatedUser(
            open_id=open_id,
            union_id=str(uuid.uuid4()) if union_id is _UNSET else union_id,
            display_name=display_name,
            username=username or f"user{secrets.randbelow(10**8)}",
            avatar_url=avatar.format(size="168x168"),
            avatar_url_100=avatar.format(size="100x100"),
            avatar_large_url=avatar.format(size="1080x1080"),
            is_verified=is_verified,
            profile_deep_link=f"https://vm.tiktok.com/{slug}/",
        )
        for name, value in profile.items():
            if name not in FIELD_SCOPES or name == "open_id":
                raise ValueError(f"unknown profile field {name!r}")
            setattr(user, name, value)
        with self._lock:
            self._users[open_id] = user
        return user

    def update_user(self, open_id: str, **changes: Any) -> EmulatedUser:  # noqa: ANN401
        with self._lock:
            user = self._users[open_id]
            for name, value in changes.items():
                if name not in FIELD_SCOPES or name == "open_id":
                    raise ValueError(f"unknown profile field {name!r}")
                setattr(user, name, value)
            return user

    def issue_access_token(self, open_id: str, scopes: Sequence[str] = ("user.info.basic",)) -> str:
        with self._lock:
            if open_id not in self._users:
                raise KeyError(open_id)
            token = _token("act")
            self._tokens[token] = _Token(open_id, frozenset(scopes), time.time() + self.access_token_ttl)
            return token

    def revoke_access_token(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def deauthorize(self, open_id: str) -> None:
        """The user removed the app: every access and refresh token and every pending authorization code
        of theirs stops working (a code minted before the removal must not grant the app a fresh token)."""
        with self._lock:
            if open_id not in self._users:
                raise KeyError(open_id)
            for tokens in (self._tokens, self._refresh):
                for token in [t for t, grant in tokens.items() if grant.open_id == open_id]:
                    del tokens[token]
            for code in [c for c, grant in self._codes.items() if grant.open_id == open_id]:
                del self._codes[code]

    def deauthorization_body(self, open_id: str, reason: int = 1, now: int | None = None) -> bytes:
        """The raw `authorization.removed` event; `create_time` is when the user removed the app."""
        return json.dumps(
            {
                "client_key": self.client_key,
                "event": "authorization.removed",
                "create_time": int(time.time()) if now is None else now,
                "user_openid": open_id,
                "content": json.dumps({"reason": reason}),
            }
        ).encode()

    def webhook_signature(self, body: bytes, now: int | None = None) -> str:
        """The `TikTok-Signature` header value for delivering `body` at `now`."""
        timestamp = int(time.time()) if now is None else now
        mac = hmac.new(self.client_secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        return f"t={timestamp},s={mac.hexdigest()}"

    def deauthorization_event(
        self, open_id: str, reason: int = 1, now: int | None = None
    ) -> tuple[bytes, str]:
        """The signed `authorization.removed` delivery: (raw body, TikTok-Signature header value)."""
        body = self.deauthorization_body(open_id, reason, now)
        return body, self.webhook_signature(body, now)

    async def deliver_deauthorization(self, open_id: str, reason: int = 1) -> list[int | str]:
        """Deauthorize the user and deliver the webhook until it gets a 200. Returns each attempt's HTTP
        status, or the transport error's name."""
        self.deauthorize(open_id)
        if self.webhook_url is None:
            return []
        import httpx2  # noqa: PLC0415 - only webhook delivery needs an HTTP client

        # One event, built once: a redelivery carries the very same bytes (receivers de-duplicate on
        # them), and only the signature is renewed, so its timestamp stays within the receiver's max age.
        body = self.deauthorization_body(open_id, reason)
        outcomes: list[int | str] = []
        async with httpx2.AsyncClient(timeout=5) as http:
            for attempt in range(self.webhook_attempts):
                if attempt:
                    await asyncio.sleep(self.webhook_retry_delay)
                headers = {
                    "Content-Type": "application/json",
                    "TikTok-Signature": self.webhook_signature(body),
                }
                try:
                    response = await http.post(self.webhook_url, content=body, headers=headers)
                except httpx2.HTTPError as exc:
                    outcomes.append(type(exc).__name__)
                    continue
                outcomes.append(response.status_code)
                if response.status_code == 200:  # noqa: PLR2004
                    break
        return outcomes

    def issue_authorization_code(
        self,
        open_id: str,
        *,
        redirect_uri: str,
        code_challenge: str,
        scopes: Sequence[str] = ("user.info.basic",),
    ) -> str:
        with self._lock:
            if open_id not in self._users:
                raise KeyError(open_id)
            code = secrets.token_urlsafe(48)
            self._codes[code] = _Code(
                open_id, redirect_uri, code_challenge, frozenset(scopes), time.time() + self.code_ttl
            )
            return code

    def inject_fault(
        self,
        endpoint: Literal["user_info", "token"],
        *,
        code: str,
        http_status: int,
        message: str | None = None,
        count: int = 1,
    ) -> None:
        text = (
            message
            if message is not None
            else USER_INFO_MESSAGES.get(code, code.replace("_", " ").capitalize())
        )
        with self._lock:
            self._faults.setdefault(endpoint, deque()).append(_Fault(code, http_status, text, count))

    def clear_faults(self) -> None:
        """Drop every fault still queued: a fault window ends when its caller says, not when the last
        queued failure happens to be served (a caller whose breaker is open consumes them slowly)."""
        with self._lock:
            self._faults.clear()

    def set_latency(self, seconds: float) -> None:
        self._latency = max(0.0, seconds)

    def reset(self) -> None:
        with self._lock:
            for store in (self._users, self._tokens, self._refresh, self._codes, self._faults):
                store.clear()
            self._window.clear()
            self.calls = {"user_info": 0, "token": 0, "revoke": 0}

    @property
    def app(self) -> Starlette:
        if self._app is None:
            self._app = create_app(self)
        return self._app

    # --------------------------------------------------------------------------- internals

    def _next_fault(self, endpoint: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(endpoint)
            if not queue:
                return None
            fault = queue[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.popleft()
            return fault

    def _rate_limited(self) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._window and self._window[0] <= now - 60:
                self._window.popleft()
            if len(self._window) >= self.user_info_rate_limit_per_minute:
                return True
            self._window.append(now)
            return False

    def _count(self, endpoint: str) -> None:
        with self._lock:
            self.calls[endpoint] += 1

    def _user_info_error(self, code: str, status: int | None = None, message: str | None = None) -> Response:
        lid = log_id()
        body = {
            "data": {},
            "error": {"code": code, "message": message or USER_INFO_MESSAGES[code], "log_id": lid},
        }
        http_status = 200 if self.error_status == "always_200" else (status or USER_INFO_STATUS[code])
        return JSONResponse(body, status_code=http_status, headers={"x-tt-logid": lid})

    def _token_error(self, error: str, description: str, status: int | None = None) -> Response:
        lid = log_id()
        body = {"error": error, "error_description": description, "log_id": lid}
        return JSONResponse(body, status_code=status or self.token_error_status, headers={"x-tt-logid": lid})

    def _bearer(self, request: Request) -> _Token | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value:
            return None
        with self._lock:
            token = self._tokens.get(value.strip())
        if token is None or token.expires_at <= time.time():
            return None
        return token

    # ------------------------------------------------------------------------------ routes

    async def user_info(self, request: Request) -> Response:  # noqa: PLR0911 - one return per documented answer
        self._count("user_info")
        if self._latency:
            await asyncio.sleep(self._latency)
        if (fault := self._next_fault("user_info")) is not None:
            if fault.code == "ok":  # a success envelope without a user, as TikTok answers for no user
                return JSONResponse({"data": {}, "error": {"code": "ok", "message": "", "log_id": log_id()}})
            return self._user_info_error(fault.code, fault.http_status, fault.message)
        if self._rate_limited():
            return self._user_info_error("rate_limit_exceeded")
        token = self._bearer(request)
        if token is None:
            return self._user_info_error("access_token_invalid")
        requested = [f.strip() for f in request.query_params.get("fields", "").split(",") if f.strip()]
        if not requested or any(f not in FIELD_SCOPES for f in requested):
            return self._user_info_error("invalid_params")
        if any(FIELD_SCOPES[f] not in token.scopes for f in requested):
            return self._user_info_error("scope_not_authorized")
        with self._lock:
            user = asdict(self._users[token.open_id])
        data = {f: user[f] for f in requested if not (f == "union_id" and user[f] is None)}
        lid = log_id()
        body = {
            "data": {"user": dict(sorted(data.items()))},
            "error": {"code": "ok", "message": "", "log_id": lid},
        }
        return JSONResponse(body, headers={"x-tt-logid": lid})

    async def _form(self, request: Request) -> dict[str, str] | None:
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/x-www-form-urlencoded":
            return None
        from urllib.parse import parse_qsl  # noqa: PLC0415

        try:
            return dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            return None

    def _client_error(self, form: dict[str, str]) -> Response | None:
        if not form.get("client_secret"):
            return self._token_error("invalid_request", "Client secret is missed in request.")
        key_ok = hmac.compare_digest(form.get("client_key", ""), self.client_key)
        secret_ok = hmac.compare_digest(form["client_secret"], self.client_secret)
        if not (key_ok and secret_ok):
            return self._token_error("invalid_client", "Client key or secret is invalid.")
        return None

    def _grant(self, open_id: str, scopes: frozenset[str]) -> dict[str, Any]:
        access, refresh = _token("act"), _token("rft")
        now = time.time()
        with self._lock:
            self._tokens[access] = _Token(open_id, scopes, now + self.access_token_ttl)
            self._refresh[refresh] = _Token(open_id, scopes, now + self.refresh_token_ttl)
        return {
            "access_token": access,
            "expires_in": self.access_token_ttl,
            "open_id": open_id,
            "refresh_expires_in": self.refresh_token_ttl,
            "refresh_token": refresh,
            "scope": ",".join(sorted(scopes)),
            "token_type": "Bearer",
        }

    async def token(self, request: Request) -> Response:  # noqa: PLR0911 - one return per documented answer
        self._count("token")
        if self._latency:
            await asyncio.sleep(self._latency)
        if (fault := self._next_fault("token")) is not None:
            return self._token_error(fault.code, fault.message, fault.http_status)
        form = await self._form(request)
        if form is None:
            return self._token_error("invalid_request", "The request parameters are malformed.")
        if (error := self._client_error(form)) is not None:
            return error
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._redeem(form)
        if grant_type == "refresh_token":
            with self._lock:
                old = self._refresh.pop(form.get("refresh_token", ""), None)  # rotation: single use
            if old is None or old.expires_at <= time.time():
                return self._token_error("invalid_grant", "Refresh token is invalid or expired.")
            return JSONResponse(self._grant(old.open_id, old.scopes), headers={"Cache-Control": "no-store"})
        if grant_type == "client_credentials":
            # developers.tiktok.com/doc/client-access-token-management: an app token, no user, no
            # refresh token; `clt.` prefix and a 2-hour lifetime as in the documented example.
            return JSONResponse(
                {"access_token": _token("clt"), "expires_in": 7200, "token_type": "Bearer"},
                headers={"Cache-Control": "no-store"},
            )
        return self._token_error("unsupported_grant_type", "The grant type is not supported.")

    def _redeem(self, form: dict[str, str]) -> Response:
        with self._lock:
            code = self._codes.pop(form.get("code", ""), None)  # single use, even when the rest fails
        if code is None or code.expires_at <= time.time():
            return self._token_error("invalid_grant", "Authorization code is expired.")
        if form.get("redirect_uri") != code.redirect_uri:
            return self._token_error(
                "invalid_request", "Redirect_uri is not matched with the uri when requesting code."
            )
        verifier = form.get("code_verifier", "")
        valid = re.fullmatch(r"[A-Za-z0-9\-._~]{32,128}", verifier) is not None
        hexed = hashlib.sha256(verifier.encode()).hexdigest()
        if not valid or not hmac.compare_digest(hexed, code.code_challenge):
            return self._token_error("invalid_request", "Code verifier or code challenge is invalid.")
        return JSONResponse(self._grant(code.open_id, code.scopes), headers={"Cache-Control": "no-store"})

    async def revoke(self, request: Request) -> Response:
        self._count("revoke")
        form = await self._form(request)
        if form is None:
            return self._token_error("invalid_request", "The request parameters are malformed.")
        if (error := self._client_error(form)) is not None:
            return error
        # TikTok: "your app no longer appears in the user's connected apps", so every token of the user
        # for this app stops working, refresh tokens included (then it sends authorization.removed,
        # reason 5, which this emulator leaves to deliver_deauthorization).
        with self._lock:
            grant = self._tokens.get(form.get("token", ""))
        if grant is not None:
            self.deauthorize(grant.open_id)
        return JSONResponse({})


# ------------------------------------------------------------------------------ control API

_PROFILE_FIELDS = {f.name for f in fields(EmulatedUser)} - {"open_id"}


async def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _bad(message: str, status: int = 400) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def create_app(emulator: TikTokEmulator) -> Starlette:  # noqa: C901 - one small handler per control route
    async def create_user(request: Request) -> Response:
        body = await _json_object(request)
        if body is None or not set(body) <= _PROFILE_FIELDS:
            return _bad(f"body must be an object with fields from {sorted(_PROFILE_FIELDS)}")
        try:
            user = emulator.create_user(**body)
        except (TypeError, ValueError) as exc:
            return _bad(str(exc))
        return JSONResponse(asdict(user), status_code=201)

    async def update_user(request: Request) -> Response:
        body = await _json_object(request)
        if body is None or not set(body) <= _PROFILE_FIELDS:
            return _bad("body must be an object of profile fields")
        try:
            user = emulator.update_user(request.path_params["open_id"], **body)
        except KeyError:
            return _bad("unknown user", 404)
        return JSONResponse(asdict(user))

    async def issue_token(request: Request) -> Response:
        body = await _json_object(request)
        scopes = (body or {}).get("scopes", ["user.info.basic"])
        if body is None or not isinstance(body.get("open_id"), str) or not isinstance(scopes, list):
            return _bad('body must be {"open_id": str, "scopes": [str]}')
        try:
            token = emulator.issue_access_token(body["open_id"], [str(s) for s in scopes])
        except KeyError:
            return _bad("unknown user", 404)
        return JSONResponse({"access_token": token, "expires_in": emulator.access_token_ttl}, status_code=201)

    async def revoke_token(request: Request) -> Response:
        body = await _json_object(request)
        if body is None or not isinstance(body.get("access_token"), str):
            return _bad('body must be {"access_token": str}')
        emulator.revoke_access_token(body["access_token"])
        return Response(status_code=204)

    async def issue_code(request: Request) -> Response:
        body = await _json_object(request)
        needed = ("open_id", "redirect_uri", "code_challenge")
        if body is None or not all(isinstance(body.get(k), str) for k in needed):
            return _bad(f"body must have string fields {needed} and optional scopes")
        try:
            code = emulator.issue_authorization_code(
                body["open_id"],
                redirect_uri=body["redirect_uri"],
                code_challenge=body["code_challenge"],
                scopes=[str(s) for s in body.get("scopes", ["user.info.basic"])],
            )
        except KeyError:
            return _bad("unknown user", 404)
        return JSONResponse({"code": code}, status_code=201)

    async def deauthorize(request: Request) -> Response:
        body = await _json_object(request) or {}
        reason = body.get("reason", 1)
        if not isinstance(reason, int):
            return _bad("reason must be an integer")
        try:
            outcomes = await emulator.deliver_deauthorization(request.path_params["open_id"], reason)
        except KeyError:
            return _bad("no such user", 404)
        return JSONResponse({"deliveries": outcomes})

    async def fault(request: Request) -> Response:
        if request.method == "DELETE":
            emulator.clear_faults()
            return Response(status_code=204)
        body = await _json_object(request)
        if (
            body is None
            or body.get("endpoint") not in {"user_info", "token"}
            or not isinstance(body.get("code"), str)
            or not isinstance(body.get("http_status"), int)
        ):
            return _bad('body must be {"endpoint": "user_info"|"token", "code": str, "http_status": int}')
        emulator.inject_fault(
            body["endpoint"],
            code=body["code"],
            http_status=body["http_status"],
            message=body.get("message"),
            count=int(body.get("count", 1)),
        )
        return Response(status_code=204)

    async def latency(request: Request) -> Response:
        body = await _json_object(request)
        if body is None or not isinstance(body.get("seconds"), int | float):
            return _bad('body must be {"seconds": number}')
        emulator.set_latency(float(body["seconds"]))
        return Response(status_code=204)

    async def stats(_request: Request) -> Response:
        return JSONResponse({"calls": dict(emulator.calls)})

    async def reset(_request: Request) -> Response:
        emulator.reset()
        return Response(status_code=204)

    return Starlette(
        routes=[
            Route("/v2/user/info/", emulator.user_info, methods=["GET"]),
            Route("/v2/oauth/token/", emulator.token, methods=["POST"]),
            Route("/v2/oauth/revoke/", emulator.revoke, methods=["POST"]),
            Route("/_emulator/users", create_user, methods=["POST"]),
            Route("/_emulator/users/{open_id}", update_user, methods=["PATCH"]),
            Route("/_emulator/users/{open_id}/deauthorize", deauthorize, methods=["POST"]),
            Route("/_emulator/tokens", issue_token, methods=["POST"]),
            Route("/_emulator/tokens/revoke", revoke_token, methods=["POST"]),
            Route("/_emulator/codes", issue_code, methods=["POST"]),
            Route("/_emulator/faults", fault, methods=["POST", "DELETE"]),
            Route("/_emulator/latency", latency, methods=["POST"]),
            Route("/_emulator/stats", stats, methods=["GET"]),
            Route("/_emulator/reset", reset, methods=["POST"]),
        ]
    )


def demo_token(client_key: str) -> str:
    """A stable demo token per client key, so the README's curl example can name one."""
    digest = base64.b32encode(hashlib.sha256(f"demo:{client_key}".encode()).digest()).decode().rstrip("=")
    return f"act.demo{digest[:56]}!0001.va"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.tiktok_emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--client-key", default=os.environ.get("BRIDGE_TIKTOK_CLIENT_KEY", "emulated-client-key")
    )
    parser.add_argument(
        "--client-secret", default=os.environ.get("BRIDGE_TIKTOK_CLIENT_SECRET", "emulated-client-secret")
    )
    parser.add_argument("--redirect-uri", action="append", default=[])
    parser.add_argument("--webhook-url", help="where to deliver authorization.removed events (the bridge's)")
    parser.add_argument("--seed-demo", action="store_true", help="create a demo user and print its token")
    parser.add_argument(
        "--user-info-rate-limit",
        type=int,
        default=600,
        help="user-info calls allowed per sliding minute (TikTok's default quota is 600; benchmarks lift it)",
    )
    args = parser.parse_args(argv)

    emulator = TikTokEmulator(
        client_key=args.client_key,
        client_secret=args.client_secret,
        redirect_uris=tuple(args.redirect_uri),
        user_info_rate_limit_per_minute=args.user_info_rate_limit,
        webhook_url=args.webhook_url,
    )
    if args.seed_demo:
        user = emulator.create_user(display_name=DEMO_DISPLAY_NAME, username="demo_tiktoker")
        token = demo_token(args.client_key)
        with emulator._lock:  # noqa: SLF001 - the module's own state
            emulator._tokens[token] = _Token(  # noqa: SLF001
                user.open_id,
                frozenset({"user.info.basic", "user.info.profile"}),
                time.time() + 10 * 365 * 86400,
            )
        print(f"demo access token: {token}", flush=True)
        print(f"demo open_id: {user.open_id}", flush=True)

    import uvicorn  # noqa: PLC0415

    uvicorn.run(emulator.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
