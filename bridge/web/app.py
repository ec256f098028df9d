"""The ASGI application: routes, error handlers turning the one error tree into RFC answers, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.domain.errors import NO_STORE, BridgeError, HeadersTooLarge, ServerError
from bridge.factory import Resources
from bridge.observability.logs import request_id
from bridge.outbound.tracing import Tracing
from bridge.settings import Settings
from bridge.web import endpoints, links, openapi, strapi, webhook
from bridge.web.support import error_response

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

    import httpx2
    from aiohttp.abc import AbstractResolver
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    Endpoint = Callable[[Request], Awaitable[Response]]

log = logging.getLogger(__name__)

MAX_REQUEST_ID_LENGTH = 64


async def _bridge_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BridgeError)  # noqa: S101 - registered for BridgeError only
    return error_response(exc, path=request.url.path)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for HTTPException only
    names = {404: "not_found", 405: "method_not_allowed"}
    return JSONResponse(
        {"error": names.get(exc.status_code, "invalid_request"), "error_description": str(exc.detail)},
        status_code=exc.status_code,
        headers={**NO_STORE, **(exc.headers or {})},
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    return _unexpected_error_response(exc, path=request.url.path)


def _unexpected_error_response(exc: Exception, *, path: str) -> Response:
    # A bug, not bad input: log what it was (no traceback: locals could hold a token), answer generically.
    log.error("unexpected error", extra={"path": path, "error_type": type(exc).__name__})
    return error_response(ServerError(detail=type(exc).__name__), path=path)


# Request line and headers. Ours are a few hundred bytes; 16 KiB leaves room for what proxies add.
# The protocol (`server.BridgeHttpProtocol`) bounds only headers that arrive in pieces (the bytes received
# while it awaits them), so a large block sent at once is checked here.
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_COUNT = 64


class FrontDoor:
    """The one middleware every request passes, doing in turn:

    1. the admin listener's requests (`admin_port`, told by the connection's local port, never by a
       header) go to the admin app: metrics and the detailed readiness are never answered on the public
       port, nor the public routes on the admin one. One process serves both (uvicorn hands it both
       sockets);
    2. headers over the limits are refused (431) before any endpoint sees them;
    3. a public request gets an id (a sane incoming X-Request-ID is kept), echoed in the answer and
       carried by every log line, and one access line;
    4. the endpoints in `direct` (POST /token: every exchange and refresh) are called here, with the
       app's error answers, instead of through Starlette's error middlewares, router and wrapped sends:
       that layering cost a measurable share of a warm exchange (bench/README.md). Their Starlette
       routes stay, for the 405 to other methods and for anything this lane does not take.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        admin: ASGIApp | None = None,
        admin_port: int = 0,
        direct: Mapping[tuple[str, str], Endpoint] | None = None,
    ) -> None:
        self.app = app
        self.admin = admin
        self.admin_port = admin_port
        self.direct = dict(direct or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
        incoming = b""
        for name, value in headers:
            size += len(name) + len(value) + 4  # ": " and CRLF
            if name == b"x-request-id":
                incoming = value
        too_large = size > MAX_HEADER_BYTES or len(headers) > MAX_HEADER_COUNT
        server = scope.get("server")
        if self.admin is not None and server is not None and server[1] == self.admin_port:
            if too_large:
                await _refusal(scope, len(headers), size)(scope, receive, send)
            else:
                await self.admin(scope, receive, send)
            return

        rid = _request_id(incoming)
        token = request_id.set(rid)
        started = time.perf_counter()
        outcome = {"status": 500}  # what the access line says if the answer never went out
        try:
            if too_large:
                response = _refusal(scope, len(headers), size)
            elif (endpoint := self._direct_endpoint(scope)) is not None:
                response = await _call(endpoint, scope, receive)
            else:
                await self._routed(rid, outcome, scope, receive, send)
                return
            outcome["status"] = response.status_code
            response.raw_headers.append((b"x-request-id", rid.encode()))
            await response(scope, receive, send)
        finally:
            _access_line(scope, outcome["status"], started)
            request_id.reset(token)

    def _direct_endpoint(self, scope: Scope) -> Endpoint | None:
        if not self.direct or scope.get("root_path"):  # behind a path prefix: Starlette's routing
            return None
        return self.direct.get((scope["method"], scope["path"]))

    async def _routed(
        self, rid: str, outcome: dict[str, int], scope: Scope, receive: Receive, send: Send
    ) -> None:
        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


async def _call(endpoint: Endpoint, scope: Scope, receive: Receive) -> Response:
    """The endpoint's answer, or the app's answer to its error (as its exception handlers give it)."""
    try:
        return await endpoint(Request(scope, receive))
    except BridgeError as exc:
        return error_response(exc, path=scope["path"])
    except Exception as exc:  # noqa: BLE001 - a bug: answered and logged as `_unexpected_error` does
        return _unexpected_error_response(exc, path=scope["path"])


def _refusal(scope: Scope, count: int, size: int) -> Response:
    return error_response(HeadersTooLarge(detail=f"{count} headers, {size} bytes"), path=scope["path"])


def _request_id(incoming: bytes) -> str:
    text = incoming.decode("latin-1")
    if 0 < len(text) <= MAX_REQUEST_ID_LENGTH and text.replace("-", "").isalnum():
        return text
    return secrets.token_hex(8)


def _access_line(scope: Scope, status: int, started: float) -> None:
    log.info(
        "request",
        extra={
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )


def _start_deauthorization_retries(settings: Settings, resources: Resources) -> asyncio.Task[None] | None:
    """The loop retrying deauthorizations Keycloak could not take, when a policy needs Keycloak."""
    if not settings.tiktok.webhook_enabled or settings.deauthorization_policy == "record":
        return None
    interval = min(5.0, settings.deauthorization_retry_max_delay)
    return asyncio.create_task(webhook.retry_pending_deauthorizations(resources.deauthorization, interval))


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Stop a background loop, again and again if need be: a cancellation that lands inside an HTTP call
    can be absorbed by the client's own timeout handling (seen with Keycloak frozen mid-call: the loop
    went on, and shutdown waited for it for ever). Bounded: at most ten seconds."""
    if task is None:
        return
    for _ in range(20):
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
        if task.done():
            break
    else:
        log.error("a background loop did not stop at shutdown")
    if task.done() and not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()


def _admin_app(public: Starlette, *, metrics: bool) -> Starlette:
    """The admin listener's routes; they share the public app's state (its resources, opened by its
    lifespan) and error handlers."""
    routes = [
        Route("/healthz", endpoints.healthz, methods=["GET"]),
        Route("/readyz", endpoints.readyz_detailed, methods=["GET"]),
    ]
    if metrics:
        routes.append(Route("/metrics", endpoints.metrics, methods=["GET"]))
    admin = Starlette(
        routes=routes,
        exception_handlers={
            BridgeError: _bridge_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
    )
    admin.state = public.state
    admin.router.redirect_slashes = False
    return admin


def _public_routes(resolved: Settings) -> list[Route]:
    """The public listener's routes; optional endpoints are not mounted at all while switched off."""
    routes = [
        Route(endpoints.TOKEN_PATH, endpoints.token, methods=["POST"]),
        Route(endpoints.REVOCATION_PATH, endpoints.revoke, methods=["POST"]),
        Route(
            "/.well-known/oauth-authorization-server",
            endpoints.authorization_server_metadata,
            methods=["GET"],
        ),
        Route(endpoints.JWKS_PATH, endpoints.jwks, methods=["GET"]),
        Route("/healthz", endpoints.healthz, methods=["GET"]),
        Route("/readyz", endpoints.readyz, methods=["GET"]),
    ]
    spec = openapi.document(
        resolved.issuer_url,
        strapi=resolved.strapi_compat_enabled,
        webhook=resolved.tiktok.webhook_enabled,
        linking=bool(resolved.link_client_ids),
        strapi_jwt=resolved.strapi_jwt_secret is not None,
        vault=bool(resolved.vault_client_ids),
        clients=bool(resolved.public_client_ids or resolved.client_secrets()),
        confidential_clients=bool(resolved.client_secrets()),
    )

    async def openapi_json(_request: Request) -> Response:
        return JSONResponse(spec, headers={"Cache-Control": "public, max-age=3600"})

    routes.append(Route("/openapi.json", openapi_json, methods=["GET"]))
    if resolved.strapi_compat_enabled:
        routes.append(Route(strapi.PATH, strapi.connect, methods=["POST"]))
    if resolved.tiktok.webhook_enabled:
        routes.append(Route(webhook.PATH, webhook.tiktok_webhook, methods=["POST"]))
    if resolved.link_client_ids:
        # Not mounted at all while off (404, and absent from /openapi.json): nothing to probe.
        routes.append(Route(links.PATH, links.endpoint, methods=["GET", "POST", "DELETE"]))
    return routes


def create_app(
    settings: Settings | None = None,
    *,
    mounts: Mapping[str, httpx2.AsyncBaseTransport] | None = None,
    span_exporter: object = None,
    clock: Callable[[], float] | None = None,
    token_resolver: AbstractResolver | None = None,
) -> Starlette:
    """Build the app. Test seams: `mounts` routes outbound httpx2 calls to test transports (e.g. the
    TikTok emulator); `token_resolver` is where the JWT grant's aiohttp session looks host names up (a
    fake token endpoint on a loopback port); `span_exporter` receives the spans when tracing is enabled;
    `clock` is the time sessions are judged by (expiry tests without sleeping)."""
    resolved = settings if settings is not None else Settings.load()
    tracing = Tracing.start(resolved.otel_service_name, span_exporter) if resolved.otel_enabled else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        resources = Resources.from_settings(
            resolved,
            mounts=mounts,
            clock=clock,
            trace_configs=tracing.client_trace_configs() if tracing is not None else (),
            token_resolver=token_resolver,
        )
        app.state.resources = resources
        # Key ids are public (RFC 7638 thumbprints); they let an operator follow a rotation in the logs.
        log.info(
            "signing keys",
            extra={"signing_kid": resources.signer.kid, "published_kids": resources.signer.kids},
        )
        if tracing is not None:
            tracing.instrument_clients(
                resources.http, resources.redis.client if resources.redis is not None else None
            )
        retrier = _start_deauthorization_retries(resolved, resources)
        try:
            yield
        finally:
            await _cancel(retrier)
            await resources.aclose()
            if tracing is not None:
                tracing.shutdown()

    routes = _public_routes(resolved)
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            BridgeError: _bridge_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
    )
    app.add_middleware(
        FrontDoor,
        # Off unless configured: then the admin listener's requests never reach the public routes, nor
        # they its.
        admin=_admin_app(app, metrics=resolved.metrics_enabled) if resolved.admin_port else None,
        admin_port=resolved.admin_port,
        direct={("POST", endpoints.TOKEN_PATH): endpoints.token},
    )
    # Starlette would answer "/token/" with a redirect whose Location is built from the client's Host
    # header (Host: evil.example -> Location: http://evil.example/token): no redirects at all.
    app.router.redirect_slashes = False
    if tracing is not None:
        tracing.instrument_app(app)
    return app


def serve_app() -> Starlette:
    """The factory `bridge serve` hands uvicorn: every worker process configures its own logging."""
    settings = Settings.load()
    from bridge.observability import logs  # noqa: PLC0415 - only the server process configures logging globally

    logs.configure(settings.log_level)
    return create_app(settings)
