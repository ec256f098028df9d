"""What every HTTP endpoint shares: the process's resources, the client's address, a bounded body, the one
shape of an OAuth error answer, and the one place exchange outcomes are counted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from bridge.domain.errors import (
    BodyTimeout,
    BodyTooLarge,
    BridgeError,
    ClientDisconnected,
    to_oauth_error,
)
from bridge.observability.metrics import EXCHANGES, count
from bridge.protocol.rfc6749 import MAX_BODY_BYTES

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.requests import Request

    from bridge.factory import Resources

    Handler = Callable[[Request], Awaitable[Response]]

log = logging.getLogger(__name__)


def resources_of(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


def client_ip(request: Request) -> str | None:
    # Behind a load balancer uvicorn rewrites this from X-Forwarded-For, for trusted proxies only
    # (`bridge serve --forwarded-allow-ips`), so a client cannot pick its own rate-limit bucket.
    return request.client.host if request.client is not None else None


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """Read at most `limit` bytes, within the body timeout: a larger body is refused without buffering
    it whole, and a client trickling its body cannot hold a worker slot for long."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    try:
        async with asyncio.timeout(resources_of(request).settings.client_body_timeout):
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > limit:
                    raise BodyTooLarge
    except TimeoutError as exc:
        raise BodyTimeout from exc
    except ClientDisconnect as exc:
        # The client hung up mid-body: its doing, not ours (it was logged as an error and counted as a
        # 500, so anyone could page an operator). Nobody receives the answer.
        raise ClientDisconnected from exc
    return bytes(body)


def error_response(exc: BridgeError, *, path: str) -> Response:
    """The RFC 6749 §5.2 answer to any bridge error, logged once (detail to the log, never to the client)."""
    oauth = to_oauth_error(exc)
    level = logging.WARNING if oauth.status_code >= HTTPStatus.INTERNAL_SERVER_ERROR else logging.INFO
    log.log(
        level,
        "request refused",
        extra={"path": path, "error": oauth.error, "status": oauth.status_code, "detail": exc.detail},
    )
    return JSONResponse(oauth.body(), status_code=oauth.status_code, headers=oauth.headers())


def counts_exchanges(endpoint: str) -> Callable[[Handler], Handler]:
    """Count every answer of an exchanging endpoint by outcome: "issued", or the OAuth error code."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def counted(request: Request) -> Response:
            try:
                response = await handler(request)
            except BridgeError as exc:
                count(EXCHANGES, endpoint, to_oauth_error(exc).error)
                raise
            except Exception:
                count(EXCHANGES, endpoint, "server_error")  # a bug; answered by the app's handler
                raise
            count(EXCHANGES, endpoint, "issued")
            return response

        return counted

    return decorate
