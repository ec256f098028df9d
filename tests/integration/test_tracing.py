"""Optional OpenTelemetry tracing over a real exchange (real Keycloak and Redis)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bridge.web.app import create_app
from tests.conftest import TIKTOK_API, Stack

if TYPE_CHECKING:
    from devstack.tiktok_emulator import TikTokEmulator


async def test_spans_cover_request_and_every_upstream_without_secrets(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """One exchange yields spans for the request, TikTok, Keycloak and Redis; none holds a token or secret."""
    exporter = InMemorySpanExporter()
    user = emulator.create_user()
    token = emulator.issue_access_token(user.open_id)
    app = create_app(
        stack.settings(otel_enabled=True),
        mounts={TIKTOK_API: httpx2.ASGITransport(app=emulator.app)},
        span_exporter=exporter,
    )
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://bridge.test") as http,
    ):
        response = await http.post(
            "/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": token,
                "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            },
        )
        await http.get("/healthz")

    assert response.status_code == 200, response.text
    spans = exporter.get_finished_spans()
    names = {span.name for span in spans}
    assert "POST /token" in names
    assert not any("healthz" in name for name in names)
    urls = {str(span.attributes.get("http.url", "")) for span in spans if span.attributes}
    assert any(url.startswith(f"{TIKTOK_API}/v2/user/info/") for url in urls)
    assert any(url.endswith("/protocol/openid-connect/token") for url in urls)
    # The JWT grant (aiohttp, traced by bridge.tracing's own hooks) besides the service-account token
    # (httpx2, by the httpx instrumentation): both POSTs to the token endpoint, both answered 200.
    token_calls = {
        (
            span.instrumentation_scope.name if span.instrumentation_scope else "",
            span.attributes["http.status_code"],
        )
        for span in spans
        if span.attributes
        and str(span.attributes.get("http.url", "")).endswith("/protocol/openid-connect/token")
    }
    assert ("bridge.outbound.tracing", 200) in token_calls
    assert len(token_calls) == 2
    assert any(span.attributes and span.attributes.get("db.system") == "redis" for span in spans)
    dumped = json.dumps([dict(span.attributes or {}) for span in spans], default=str)
    for secret in (token, response.json()["access_token"], stack.client_secret, "emulated-client-secret"):
        assert secret not in dumped
    assert "eyJ" not in dumped  # no JWT at all: the cached service-account token must not reach a span
