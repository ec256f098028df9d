"""`POST /api/tiktok-auth-mobile/connect`: the request and answer shapes of the Strapi plugin
"TikTok Auth Mobile", so apps built on it move to Keycloak without a client release.

All logic is the token endpoint's use cases' (`IdentityService`, `ExchangeService`, `ProvisioningService`);
only the shapes differ: `{"access_token": ...}` in, `{"jwt", "user"}` out, and Strapi's error envelope
with the plugin's own messages.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from bridge.domain.errors import (
    NO_STORE,
    AccountDisabled,
    BridgeError,
    EmailTaken,
    NoAccessToken,
    OAuthError,
    ProviderRefusal,
    RegistrationClosed,
    SubjectTokenRejected,
    TemporarilyUnavailable,
    UserNotFound,
    to_oauth_error,
)
from bridge.domain.model import Caller
from bridge.domain.strapi import ATTR_STRAPI_CREATED_AT, ATTR_STRAPI_DOCUMENT_ID, ATTR_STRAPI_USERNAME
from bridge.protocol.clients import STRAPI_CLIENT_ID
from bridge.protocol.rfc6749 import MAX_TOKEN_LENGTH
from bridge.services.exchange import SessionOrder
from bridge.services.strapi_ids import strapi_id_of
from bridge.web.support import client_ip, counts_exchanges, read_body, resources_of

if TYPE_CHECKING:
    from starlette.requests import Request

    from bridge.domain.model import KeycloakUser

log = logging.getLogger(__name__)

PATH = "/api/tiktok-auth-mobile/connect"


# The plugin called TikTok with axios, whose error message for a non-2xx answer is this sentence.
AXIOS_STATUS_MESSAGE = "Failed to fetch TikTok user: Request failed with status code {status}"
STRAPI_ERROR_NAMES = {408: "RequestTimeoutError", 413: "PayloadTooLargeError", 429: "RateLimitError"}
MESSAGES: dict[type[BridgeError], str] = {
    NoAccessToken: NoAccessToken.default_description,
    UserNotFound: "User not exist.",
    RegistrationClosed: "Register action is actually not available.",
    EmailTaken: "Email is already taken.",
    AccountDisabled: "Your account has been blocked by an administrator",
}


def strapi_error(status: int, name: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"data": None, "error": {"status": status, "name": name, "message": message, "details": {}}}
    return JSONResponse(body, status_code=status, headers=headers or NO_STORE)


def plugin_message(exc: BridgeError) -> str | None:
    """The message the Strapi plugin gave for this failure, if it had one."""
    for kind, message in MESSAGES.items():
        if isinstance(exc, kind):
            return message
    if isinstance(exc, ProviderRefusal):
        if exc.provider_status is not None and exc.provider_status >= HTTPStatus.BAD_REQUEST:
            return AXIOS_STATUS_MESSAGE.format(status=exc.provider_status)
        if exc.provider_message:
            return exc.provider_message
        if isinstance(exc, SubjectTokenRejected):
            # Refused from the negative cache: TikTok's answer was a 401 the first time.
            return AXIOS_STATUS_MESSAGE.format(status=HTTPStatus.UNAUTHORIZED.value)
    return None


def error_for(exc: BridgeError) -> Response:
    if (message := plugin_message(exc)) is not None:
        return strapi_error(HTTPStatus.BAD_REQUEST, "ApplicationError", message)
    oauth: OAuthError = to_oauth_error(exc)
    if isinstance(oauth, TemporarilyUnavailable):
        return strapi_error(
            HTTPStatus.SERVICE_UNAVAILABLE, "ServiceUnavailableError", oauth.description, oauth.headers()
        )
    if oauth.status_code in STRAPI_ERROR_NAMES:
        # Strapi's own names for these statuses; Retry-After travels with a rate limit.
        return strapi_error(
            oauth.status_code, STRAPI_ERROR_NAMES[oauth.status_code], oauth.description, oauth.headers()
        )
    if oauth.status_code < HTTPStatus.INTERNAL_SERVER_ERROR:
        return strapi_error(HTTPStatus.BAD_REQUEST, "ApplicationError", oauth.description)
    return strapi_error(HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError", "Internal Server Error")


def _iso(timestamp_ms: int | None) -> str | None:
    if timestamp_ms is None:
        return None
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def strapi_user(user: KeycloakUser, display_name: str | None) -> dict[str, Any]:
    """Every field of the plugin's example answer, each with a stable value (docs/migrating-from-strapi.md).

    An imported user is answered as Strapi knew it: its Strapi `id` (a number), `documentId`,
    `createdAt` and `username`. A user created after the move has the number allocated at its first
    sign-in here (`services/strapi_ids.py`) as `id`, its Keycloak user id as `documentId`, and the
    TikTok display name as `username`, as the plugin set it (never the Keycloak username, which apps
    would display). Only a user without a number (the endpoint answering while allocation is off) is
    answered its Keycloak id as `id`."""
    created = user.attribute(ATTR_STRAPI_CREATED_AT) or _iso(user.created_timestamp)
    number = strapi_id_of(user)
    return {
        "id": number if number is not None else user.id,
        # Strapi 5 apps key records on documentId: the Keycloak user id is as stable as it gets.
        "documentId": user.attribute(ATTR_STRAPI_DOCUMENT_ID) or user.id,
        "username": user.attribute(ATTR_STRAPI_USERNAME) or display_name,
        "email": user.email,
        "provider": "tiktok",
        # Strapi marks users of a third-party provider confirmed: the provider vouched for them.
        "confirmed": True,
        "blocked": not user.enabled,
        "createdAt": created,
        # Keycloak keeps no modification time; the creation time is the honest lower bound.
        "updatedAt": created,
        # Strapi publishes a user when it creates it.
        "publishedAt": created,
    }


def _access_token(body: bytes) -> str:
    try:
        payload = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: JSON nested deeper than the parser's stack (found by an outside test: a 500).
        raise NoAccessToken(detail="body is not JSON") from None
    token = payload.get("access_token") if isinstance(payload, dict) else None
    if not isinstance(token, str) or not token.strip() or len(token) > MAX_TOKEN_LENGTH:
        raise NoAccessToken
    return token.strip()


async def connect(request: Request) -> Response:
    """The route: the plugin's error shapes around the counted exchange."""
    try:
        return await _connect(request)
    except BridgeError as exc:
        log.info("strapi connect refused", extra={"error_type": type(exc).__name__, "detail": exc.detail})
        return error_for(exc)


@counts_exchanges("strapi")
async def _connect(request: Request) -> Response:
    resources = resources_of(request)
    await resources.limiter.check_ip(client_ip(request))
    token = _access_token(await read_body(request))
    profile = await resources.identity.verify_access_token(token, Caller(address=client_ip(request)))
    order = (
        None
        if resources.sessions is None
        else SessionOrder(resources.sessions, client_id=resources.clients.session_client(STRAPI_CLIENT_ID))
    )
    numbered = None
    if (strapi_ids := resources.strapi_ids) is not None:
        # Numbered before the token is minted: the Strapi-compatible client's mapper puts `strapi_id` in
        # the token from the user's attribute at grant time, so the first token carries it already.
        # (The account is read here instead of after the sign-in: one Keycloak read either way.)
        user_id, _ = await resources.provisioning.ensure_user(profile)
        numbered = await strapi_ids.numbered_by_id(user_id, profile.open_id)
    exchanged = await resources.strapi_exchange.sign_in(profile, (), session=order)
    if numbered is not None and numbered.id == exchanged.user_id:
        user = numbered
    else:
        # No allocation, or the account the cache named was deleted or unlinked meanwhile (the sign-in
        # provisioned or found another): the account the token is for, numbered too (its next token
        # carries the number).
        user = await resources.provisioning.account(exchanged.user_id)
        if strapi_ids is not None:
            user = await strapi_ids.numbered(user, profile.open_id)
    display_name = profile.display_name or user.attribute(
        resources.strapi_exchange.policy.attributes.display_name
    )
    answer: dict[str, Any] = {"jwt": exchanged.issued.access_token, "user": strapi_user(user, display_name)}
    if (session := exchanged.session) is not None:
        # An extra field the plugin's apps ignore; a new app version can refresh at /token with it.
        answer["refresh_token"] = session.refresh_token
    log.info("strapi connect", extra={"outcome": "issued", "keycloak_user_id": user.id})
    return JSONResponse(answer, headers=NO_STORE)
