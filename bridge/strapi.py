"""`POST /api/tiktok-auth-mobile/connect`: the request and answer shapes of the Strapi plugin
"TikTok Auth Mobile", so apps built on it move to Keycloak without a client release.

All logic is the token endpoint's (`ExchangeService`); only the shapes differ: `{"access_token": ...}` in,
`{"jwt", "user"}` out, and Strapi's error envelope with the plugin's own messages.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from bridge.endpoints import NO_STORE, client_ip, read_body, resources_of
from bridge.errors import (
    AccountDisabled,
    BridgeError,
    EmailTaken,
    OAuthError,
    RegistrationClosed,
    SubjectTokenRejected,
    TemporarilyUnavailable,
    TikTokRefusal,
    UserNotFound,
    to_oauth_error,
)
from bridge.metrics import EXCHANGES
from bridge.rfc8693 import MAX_TOKEN_LENGTH

if TYPE_CHECKING:
    from starlette.requests import Request

    from bridge.keycloak import KeycloakUser

log = logging.getLogger(__name__)

PATH = "/api/tiktok-auth-mobile/connect"
NO_TOKEN = "No access token provided."  # noqa: S105 - a message
# The plugin called TikTok with axios, whose error message for a non-2xx answer is this sentence.
AXIOS_STATUS_MESSAGE = "Failed to fetch TikTok user: Request failed with status code {status}"
STRAPI_ERROR_NAMES = {408: "RequestTimeoutError", 413: "PayloadTooLargeError", 429: "RateLimitError"}
MESSAGES: dict[type[BridgeError], str] = {
    UserNotFound: "User not exist.",
    RegistrationClosed: "Register action is actually not available.",
    EmailTaken: "Email is already taken.",
    AccountDisabled: "Your account has been blocked by an administrator",
}


def strapi_error(status: int, name: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"data": None, "error": {"status": status, "name": name, "message": message, "details": {}}}
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **(headers or {})})


def plugin_message(exc: BridgeError) -> str | None:
    """The message the Strapi plugin gave for this failure, if it had one."""
    for kind, message in MESSAGES.items():
        if isinstance(exc, kind):
            return message
    if isinstance(exc, TikTokRefusal):
        if exc.tiktok_status is not None and exc.tiktok_status >= 400:  # noqa: PLR2004
            return AXIOS_STATUS_MESSAGE.format(status=exc.tiktok_status)
        if exc.tiktok_message:
            return exc.tiktok_message
        if isinstance(exc, SubjectTokenRejected):
            # Refused from the negative cache: TikTok's answer was a 401 the first time.
            return AXIOS_STATUS_MESSAGE.format(status=401)
    return None


def error_for(exc: BridgeError) -> Response:
    EXCHANGES.labels("strapi", to_oauth_error(exc).error).inc()
    if (message := plugin_message(exc)) is not None:
        return strapi_error(400, "ApplicationError", message)
    oauth: OAuthError = to_oauth_error(exc)
    if isinstance(oauth, TemporarilyUnavailable):
        return strapi_error(503, "ServiceUnavailableError", oauth.description, oauth.headers())
    if oauth.status_code in STRAPI_ERROR_NAMES:
        # Strapi's own names for these statuses; Retry-After travels with a rate limit.
        return strapi_error(
            oauth.status_code, STRAPI_ERROR_NAMES[oauth.status_code], oauth.description, oauth.headers()
        )
    if oauth.status_code < 500:  # noqa: PLR2004
        return strapi_error(400, "ApplicationError", oauth.description)
    return strapi_error(500, "InternalServerError", "Internal Server Error")


def _iso(timestamp_ms: int | None) -> str | None:
    if timestamp_ms is None:
        return None
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def strapi_user(user: KeycloakUser) -> dict[str, Any]:
    created = _iso(user.created_timestamp)
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "provider": "tiktok",
        # Strapi marks users of a third-party provider confirmed: the provider vouched for them.
        "confirmed": True,
        "blocked": not user.enabled,
        "createdAt": created,
        # Keycloak keeps no modification time; the creation time is the honest lower bound.
        "updatedAt": created,
    }


def _access_token(body: bytes) -> str | None:
    try:
        payload = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None
    token = payload.get("access_token") if isinstance(payload, dict) else None
    if not isinstance(token, str) or not token.strip() or len(token) > MAX_TOKEN_LENGTH:
        return None
    return token.strip()


async def connect(request: Request) -> Response:
    resources = resources_of(request)
    try:
        await resources.limiter.check_ip(client_ip(request))
        token = _access_token(await read_body(request))
        if token is None:
            return strapi_error(400, "ApplicationError", NO_TOKEN)
        profile = await resources.exchange.verify_access_token(token)
        exchanged = await resources.exchange.sign_in(profile, ())
        user = await resources.exchange.account(exchanged.user_id)
    except BridgeError as exc:
        log.info("strapi connect refused", extra={"error_type": type(exc).__name__, "detail": exc.detail})
        return error_for(exc)
    EXCHANGES.labels("strapi", "issued").inc()
    log.info("strapi connect", extra={"outcome": "issued", "keycloak_user_id": user.id})
    return JSONResponse({"jwt": exchanged.issued.access_token, "user": strapi_user(user)}, headers=NO_STORE)
