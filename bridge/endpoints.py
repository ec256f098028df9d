"""Thin HTTP adapters: read the request, call the use case, shape the answer. No logic of their own."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from bridge.errors import BridgeError
from bridge.metrics import exposition
from bridge.rfc8693 import (
    GRANT_TYPE_TOKEN_EXCHANGE,
    SUPPORTED_REQUESTED_TOKEN_TYPES,
    SUPPORTED_SUBJECT_TOKEN_TYPES,
    exchange_response,
    parse_exchange_request,
    parse_form,
)
from bridge.web import NO_STORE, client_ip, counts_exchanges, read_body, resources_of

if TYPE_CHECKING:
    from starlette.requests import Request

log = logging.getLogger(__name__)

TOKEN_PATH = "/token"  # noqa: S105 - a path
JWKS_PATH = "/.well-known/jwks.json"


@counts_exchanges("token")
async def token(request: Request) -> Response:
    resources = resources_of(request)
    await resources.limiter.check_ip(client_ip(request))
    body = await read_body(request)
    exchange_request = parse_exchange_request(parse_form(body, request.headers.get("content-type")))
    client_id = resources.clients.authenticate(
        request.headers.get("authorization"), exchange_request.client_id, exchange_request.client_secret
    )
    exchanged = await resources.exchange.exchange(exchange_request)
    log.info(
        "token exchanged",
        extra={
            "outcome": "issued",
            "keycloak_user_id": exchanged.user_id,
            "user_created": exchanged.created,
            "subject_token_type": exchange_request.subject_token_type,
            "client_id": client_id,
        },
    )
    return JSONResponse(
        exchange_response(exchanged.issued, exchange_request.requested_token_type), headers=NO_STORE
    )


async def authorization_server_metadata(request: Request) -> Response:
    """RFC 8414 metadata, so clients discover the token endpoint and what it accepts."""
    issuer = resources_of(request).settings.issuer_url
    metadata: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": f"{issuer}{TOKEN_PATH}",
        "jwks_uri": f"{issuer}{JWKS_PATH}",
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": [],
        # Not registered RFC 8414 names, but what clients ask for most: which token types we take.
        "subject_token_types_supported": list(SUPPORTED_SUBJECT_TOKEN_TYPES),
        "requested_token_types_supported": list(SUPPORTED_REQUESTED_TOKEN_TYPES),
    }
    return JSONResponse(metadata, headers={"Cache-Control": "public, max-age=3600"})


async def jwks(request: Request) -> Response:
    # Short max-age: Keycloak and others must see a rotated key soon after it is published.
    return JSONResponse(resources_of(request).signer.jwks(), headers={"Cache-Control": "public, max-age=300"})


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    resources = resources_of(request)
    checks: dict[str, str] = {}
    for name, probe in (("keycloak", resources.keycloak.ping), ("cache", resources.cache.ping)):
        try:
            await probe()
        except BridgeError as exc:
            log.warning("readiness check failed", extra={"check": name, "detail": exc.detail})
            checks[name] = "unavailable"
        else:
            checks[name] = "ok"
    if checks["cache"] != "ok" and resources.cache.degraded:
        # Exchanges still work from process memory: degraded, but worth sending traffic to.
        checks["cache"] = "degraded"
    if checks["keycloak"] != "ok":
        status, code = "unavailable", HTTPStatus.SERVICE_UNAVAILABLE
    elif checks["cache"] == "degraded":
        status, code = "degraded", HTTPStatus.OK
    elif checks["cache"] == "ok":
        status, code = "ready", HTTPStatus.OK
    else:
        status, code = "unavailable", HTTPStatus.SERVICE_UNAVAILABLE
    return JSONResponse(
        {"status": status, "checks": checks}, status_code=code, headers={"Cache-Control": "no-store"}
    )


async def metrics(_request: Request) -> Response:
    body, media_type = exposition()
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-store"})
