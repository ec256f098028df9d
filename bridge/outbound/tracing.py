"""Optional OpenTelemetry tracing: the incoming request and the outbound TikTok, Keycloak and Redis calls.

Off unless BRIDGE_OTEL_ENABLED=true, and then it needs the `otel` extra
(`pip install tiktok-keycloak-bridge[otel]`). Spans go to an OTLP/HTTP exporter configured by the standard
OTEL_EXPORTER_OTLP_* variables. The tracer provider is passed to each instrumentation rather than set
globally, so several apps in one process (tests) do not fight over it.

What spans may carry: URLs (no token is ever in a URL the bridge calls or serves), status codes, and for
Redis the command with its arguments sanitised away (keys are hashed anyway; values, such as the cached
service-account token, must never reach a span).

TikTok's endpoints and Keycloak's admin API, discovery and service-account token are called through
the httpx2 client (`Resources.http`) and traced by the httpx2 instrumentation, which wraps the client's
transport whatever carries the bytes underneath (aiohttp: `bridge.aiohttp_transport`). The JWT grant
goes through aiohttp directly (`resources.token_session`), traced by hooks of our own
(`client_trace_configs`) rather than opentelemetry-instrumentation-aiohttp-client: that package pins
opentelemetry-instrumentation and the API to one release behind the ones locked here (0.66b1 and
1.45.1, against 0.66b2 and 1.45.2, whose propagator refuses overlong `traceparent` headers), and adding
it would roll the whole tracing stack back. The hooks make the span the httpx2 instrumentation makes:
named after the method, kind CLIENT, `http.method`, `http.url`, `http.status_code`, an error status
from 400 on, and the W3C trace context injected into the request's headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from bridge.domain.errors import ServerError

if TYPE_CHECKING:
    from types import SimpleNamespace

    import httpx2
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from starlette.applications import Starlette


# Probes and scrapes would drown the interesting traces.
EXCLUDED_URLS = "healthz,readyz,metrics"


@dataclass(frozen=True)
class Tracing:
    provider: Any  # opentelemetry.sdk.trace.TracerProvider; typed loosely, the package is optional

    @classmethod
    def start(cls, service_name: str, exporter: Any = None) -> Tracing:  # noqa: ANN401
        """A tracer provider for `service_name`, exporting over OTLP/HTTP (or to `exporter`, in tests)."""
        try:
            from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
            from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor  # noqa: PLC0415
        except ImportError as exc:
            raise ServerError(
                detail="BRIDGE_OTEL_ENABLED needs the otel extra: pip install 'tiktok-keycloak-bridge[otel]'"
            ) from exc
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        return cls(provider=provider)

    def instrument_app(self, app: Starlette) -> None:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware  # noqa: PLC0415

        app.add_middleware(
            OpenTelemetryMiddleware, tracer_provider=self.provider, excluded_urls=EXCLUDED_URLS
        )

    def instrument_clients(self, http: httpx2.AsyncClient, redis: Redis | RedisCluster | None) -> None:
        from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor  # noqa: PLC0415
        from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: PLC0415

        # Annotated with httpx types even on the httpx2 instrumentor; an httpx2 client is what it takes.
        HTTPX2ClientInstrumentor.instrument_client(http, tracer_provider=self.provider)  # type: ignore[arg-type]
        if redis is not None:
            RedisInstrumentor.instrument_client(redis, tracer_provider=self.provider)

    def client_trace_configs(self) -> list[aiohttp.TraceConfig]:
        """Hooks giving each request of an aiohttp session a client span (see the module docstring)."""
        from opentelemetry import propagate, trace  # noqa: PLC0415

        tracer = self.provider.get_tracer(__name__)

        async def started(
            _session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestStartParams
        ) -> None:
            span = tracer.start_span(
                params.method,
                kind=trace.SpanKind.CLIENT,
                attributes={"http.method": params.method, "http.url": str(params.url.with_user(None))},
            )
            context.span = span
            propagate.inject(params.headers, context=trace.set_span_in_context(span))

        async def ended(
            _session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams
        ) -> None:
            status = params.response.status
            context.span.set_attribute("http.status_code", status)
            if status >= 400:  # noqa: PLR2004 - a client span is an error from 400 on (OTel HTTP semconv)
                context.span.set_status(trace.StatusCode.ERROR)
            context.span.end()

        async def failed(
            _session: aiohttp.ClientSession,
            context: SimpleNamespace,
            params: aiohttp.TraceRequestExceptionParams,
        ) -> None:
            context.span.set_status(trace.StatusCode.ERROR, type(params.exception).__name__)
            context.span.end()

        config = aiohttp.TraceConfig()
        config.on_request_start.append(started)
        config.on_request_end.append(ended)
        config.on_request_exception.append(failed)
        return [config]

    def shutdown(self) -> None:
        self.provider.shutdown()
