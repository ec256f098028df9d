"""Optional OpenTelemetry tracing: the incoming request and the outbound TikTok, Keycloak and Redis calls.

Off unless BRIDGE_OTEL_ENABLED=true, and then it needs the `otel` extra
(`pip install tiktok-keycloak-bridge[otel]`). Spans go to an OTLP/HTTP exporter configured by the standard
OTEL_EXPORTER_OTLP_* variables. The tracer provider is passed to each instrumentation rather than set
globally, so several apps in one process (tests) do not fight over it.

What spans may carry: URLs (no token is ever in a URL the bridge calls or serves), status codes, and for
Redis the command with its arguments sanitised away (keys are hashed anyway; values, such as the cached
service-account token, must never reach a span).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.errors import ServerError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from bridge.resources import Resources
    from bridge.settings import Settings

# Probes and scrapes would drown the interesting traces.
EXCLUDED_URLS = "healthz,readyz,metrics"


@dataclass(frozen=True)
class Tracing:
    provider: Any  # opentelemetry.sdk.trace.TracerProvider; typed loosely, the package is optional

    @classmethod
    def from_settings(cls, settings: Settings, exporter: Any = None) -> Tracing | None:  # noqa: ANN401
        if not settings.otel_enabled:
            return None
        try:
            from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
            from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor  # noqa: PLC0415
        except ImportError as exc:
            raise ServerError(
                detail="BRIDGE_OTEL_ENABLED needs the otel extra: pip install 'tiktok-keycloak-bridge[otel]'"
            ) from exc
        provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name}))
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

    def instrument_clients(self, resources: Resources) -> None:
        from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor  # noqa: PLC0415
        from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: PLC0415

        # Annotated with httpx types even on the httpx2 instrumentor; an httpx2 client is what it takes.
        HTTPX2ClientInstrumentor.instrument_client(resources.http, tracer_provider=self.provider)  # type: ignore[arg-type]
        if resources.redis is not None:
            RedisInstrumentor.instrument_client(resources.redis.client, tracer_provider=self.provider)

    def shutdown(self) -> None:
        self.provider.shutdown()
