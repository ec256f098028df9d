"""The HTTP surface with TikTok and Keycloak served by respx (and Keycloak's JWT grant, sent through
aiohttp, by a fake token endpoint): error mapping, headers, discovery."""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

import httpx  # respx builds httpx (not httpx2) objects, even serving httpx2 clients
import httpx2
import pytest
from prometheus_client import REGISTRY

from bridge.web.app import create_app
from tests.unit.fake_token_endpoint import Answer

if TYPE_CHECKING:
    import respx

    from bridge.settings import Settings
    from tests.unit.fake_token_endpoint import FakeTokenEndpoint

KC = "http://kc.test"
TIKTOK = "https://open.tiktokapis.com"
ADMIN_PORT = 9000  # Settings.admin_port by default: the admin listener
FORM = {
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "subject_token": "act.valid!1234.va",
    "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
}


def mock_keycloak(
    router: respx.Router, token_endpoint: FakeTokenEndpoint, *, grant: Answer | None = None
) -> None:
    """A Keycloak that knows one linked user, whose token endpoint answers the JWT grant (aiohttp, the
    fake) with `grant` or a token, and the service-account grant (httpx2, respx) with an admin token."""
    router.get(f"{KC}/realms/app/.well-known/openid-configuration").respond(
        json={"issuer": f"{KC}/realms/app"}
    )

    def service_account_token(request: httpx.Request) -> httpx.Response:
        assert dict(httpx.QueryParams(request.content.decode()))["grant_type"] == "client_credentials"
        return httpx.Response(200, json={"access_token": "admin-token", "expires_in": 300})

    router.post(f"{KC}/realms/app/protocol/openid-connect/token").mock(side_effect=service_account_token)
    if grant is not None:
        token_endpoint.answer(grant)
    router.get(f"{KC}/admin/realms/app/users").respond(
        json=[
            {
                "id": "u-1",
                "username": "tiktok_x",
                "enabled": True,
                "attributes": {"tiktok_open_id": ["-000a"]},
            }
        ]
    )
    router.put(f"{KC}/admin/realms/app/users/u-1").respond(204)


def mock_tiktok(router: respx.Router, status: int = 200, code: str = "ok") -> None:
    user = {"open_id": "-000a", "display_name": "X"} if code == "ok" else None
    router.get(f"{TIKTOK}/v2/user/info/").respond(
        status,
        json={"data": {"user": user} if user else {}, "error": {"code": code, "message": "", "log_id": "1"}},
    )


@pytest.mark.httpx2(assert_all_called=False)
async def test_successful_exchange_response_and_assertion(
    client: httpx2.AsyncClient, httpx2_mock: respx.Router, token_endpoint: FakeTokenEndpoint
) -> None:
    """The answer is the §2.2.1 body with no-store; Keycloak got a jwt-bearer grant with our assertion."""
    mock_keycloak(httpx2_mock, token_endpoint)
    mock_tiktok(httpx2_mock)

    response = await client.post("/token", data=FORM)

    assert response.status_code == 200, response.text
    body = response.json()
    assert re.fullmatch(r"tkb1\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}", body.pop("refresh_token"))
    assert body == {
        "access_token": "kc.jwt.token",
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "profile email",
        "refresh_expires_in": 30 * 86400,
    }
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    (grant,) = token_endpoint.requests
    assert (grant.method, grant.path) == ("POST", "/realms/app/protocol/openid-connect/token")
    sent = grant.form
    assert sent["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    header, claims = (json.loads(_b64(part)) for part in sent["assertion"].split(".")[:2])
    assert header["alg"] == "ES256"
    assert (claims["iss"], claims["sub"], claims["aud"]) == (
        "https://bridge.example",
        "-000a",
        f"{KC}/realms/app",
    )


def _b64(part: str) -> bytes:
    import base64  # noqa: PLC0415

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.mark.httpx2(assert_all_called=False)
@pytest.mark.parametrize(
    ("provider_status", "tiktok_code", "status", "error"),
    [
        (401, "access_token_invalid", 400, "invalid_request"),
        (200, "access_token_invalid", 400, "invalid_request"),
        (401, "scope_not_authorized", 400, "invalid_request"),
        (429, "rate_limit_exceeded", 503, "temporarily_unavailable"),
        (500, "internal_error", 503, "temporarily_unavailable"),
        (400, "invalid_params", 500, "server_error"),
    ],
)
async def test_tiktok_errors_map_to_rfc_errors(
    client: httpx2.AsyncClient,
    httpx2_mock: respx.Router,
    token_endpoint: FakeTokenEndpoint,
    provider_status: int,
    tiktok_code: str,
    status: int,
    error: str,
) -> None:
    """Each TikTok failure becomes the RFC 6749 error meant for it, with no-store and no stack trace."""
    mock_keycloak(httpx2_mock, token_endpoint)
    mock_tiktok(httpx2_mock, provider_status, tiktok_code)

    response = await client.post("/token", data=FORM)

    assert response.status_code == status
    assert set(response.json()) == {"error", "error_description"}
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"
    assert "Traceback" not in response.text


@pytest.mark.httpx2(assert_all_called=False)
@pytest.mark.parametrize(
    ("grant", "status", "description"),
    [
        (
            Answer(400, {"error": "invalid_grant", "error_description": "User is not enabled"}),
            400,
            "The account is disabled.",
        ),
        (
            Answer(400, {"error": "invalid_scope"}),
            400,
            "The requested scope is invalid or not allowed.",
        ),
        (Answer(503, body=b"down"), 503, "Keycloak is unavailable; retry later."),
        (
            Answer(400, {"error": "invalid_grant", "error_description": "Invalid token"}),
            500,
            "The bridge could not complete the request.",
        ),
    ],
    ids=["disabled", "scope", "down", "misconfigured"],
)
async def test_keycloak_grant_errors_map_to_rfc_errors(
    client: httpx2.AsyncClient,
    httpx2_mock: respx.Router,
    token_endpoint: FakeTokenEndpoint,
    grant: Answer,
    status: int,
    description: str,
) -> None:
    """Keycloak's refusals are told apart: disabled user, bad scope, outage, or our own misconfiguration."""
    mock_keycloak(httpx2_mock, token_endpoint, grant=grant)
    mock_tiktok(httpx2_mock)
    response = await client.post("/token", data={**FORM, "scope": "openid"})
    assert response.status_code == status
    assert response.json()["error_description"] == description


@pytest.mark.httpx2(assert_all_called=False)
@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "error"),
    [
        (
            "post",
            "/token",
            {"content": b"x" * 70000, "headers": {"content-type": "application/x-www-form-urlencoded"}},
            413,
            "invalid_request",
        ),
        ("post", "/token", {"json": FORM}, 400, "invalid_request"),
        ("post", "/token", {"data": {**FORM, "grant_type": "password"}}, 400, "unsupported_grant_type"),
        ("get", "/token", {}, 405, "method_not_allowed"),
        ("get", "/nope", {}, 404, "not_found"),
    ],
)
async def test_bad_requests_are_json_errors(
    client: httpx2.AsyncClient,
    httpx2_mock: respx.Router,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    error: str,
) -> None:
    """Oversized, mistyped and misrouted requests get JSON errors, never a 500, never cacheable."""
    response = await getattr(client, method)(path, **kwargs)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert (response.headers["cache-control"], response.headers["pragma"]) == ("no-store", "no-cache")


@pytest.mark.httpx2(assert_all_called=False)
async def test_discovery_documents(
    client: httpx2.AsyncClient, httpx2_mock: respx.Router, settings: Settings
) -> None:
    """RFC 8414 metadata advertises the token endpoint and JWKS; the JWKS holds one public ES256 key."""
    metadata = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert metadata["issuer"] == "https://bridge.example"
    assert metadata["token_endpoint"] == "https://bridge.example/token"
    assert metadata["jwks_uri"] == "https://bridge.example/.well-known/jwks.json"
    assert metadata["grant_types_supported"] == [
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "refresh_token",
    ]
    assert metadata["revocation_endpoint"] == "https://bridge.example/revoke"
    assert metadata["dpop_signing_alg_values_supported"] == ["ES256", "Ed25519", "RS256", "PS256"]
    jwks = (await client.get("/.well-known/jwks.json")).json()
    (key,) = jwks["keys"]
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
    assert "d" not in key
    assert (await client.get("/healthz")).json() == {"status": "ok"}


@pytest.mark.httpx2(assert_all_called=False)
async def test_metrics_count_exchanges_by_outcome(
    client: httpx2.AsyncClient, httpx2_mock: respx.Router, token_endpoint: FakeTokenEndpoint
) -> None:
    """/metrics exposes exchange outcomes and upstream latencies, with no token in any label."""
    mock_keycloak(httpx2_mock, token_endpoint)
    mock_tiktok(httpx2_mock, 401, "access_token_invalid")
    admin = f"http://bridge.test:{ADMIN_PORT}"
    before = await client.get(f"{admin}/metrics")
    await client.post("/token", data=FORM)
    after = (await client.get(f"{admin}/metrics")).text

    def value(text: str, line_start: str) -> float:
        lines = [ln for ln in text.splitlines() if ln.startswith(line_start)]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    metric = 'bridge_exchanges_total{endpoint="token",outcome="invalid_request"}'
    assert value(after, metric) == value(before.text, metric) + 1
    assert (
        'bridge_upstream_request_seconds_count{operation="user_info",result="refused",upstream="tiktok"}'
        in after
    )
    assert "act.valid" not in after
    assert before.headers["content-type"].startswith("text/plain")


async def test_rate_limited_request_is_429_with_retry_after(settings: Settings) -> None:
    """Over the per-IP limit the token endpoint answers 429 temporarily_unavailable with Retry-After."""
    app = create_app(settings.model_copy(update={"rate_limit_per_ip": "1/minute"}))
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://bridge.test") as http,
    ):
        await http.post("/token", data={"grant_type": "x"})
        response = await http.post("/token", data={"grant_type": "x"})
    assert response.status_code == 429
    assert response.json()["error"] == "temporarily_unavailable"
    assert int(response.headers["retry-after"]) >= 1


@pytest.mark.parametrize(("strapi", "metrics"), [(True, True), (False, False)])
def test_openapi_document_names_exactly_the_served_routes(
    settings: Settings, strapi: bool, metrics: bool
) -> None:
    """Every route the public listener serves is in /openapi.json with its methods, and nothing else is
    (metrics live on the admin listener, whatever `metrics_enabled` says)."""
    from starlette.routing import Route  # noqa: PLC0415

    from bridge.web import openapi  # noqa: PLC0415

    flags = {
        "strapi_compat_enabled": strapi,
        "metrics_enabled": metrics,
        "tiktok": settings.tiktok.model_copy(update={"webhook_enabled": strapi}),
        "link_client_ids": ("account-app",) if strapi else (),
    }
    app = create_app(settings.model_copy(update=flags))
    served = {
        route.path: {m.lower() for m in (route.methods or set()) - {"HEAD"}}
        for route in app.routes
        if isinstance(route, Route)
    }
    spec = openapi.document(settings.issuer_url, strapi=strapi, webhook=strapi, linking=strapi)
    assert "/metrics" not in served
    documented = {path: set(operations) for path, operations in spec["paths"].items()}
    assert served == documented
    assert spec["openapi"].startswith("3.1")
    for operations in spec["paths"].values():
        for operation in operations.values():
            assert operation["responses"], "every operation documents its responses"


async def test_openapi_is_served(client: httpx2.AsyncClient) -> None:
    """GET /openapi.json answers the document, with the token endpoint's RFC error statuses."""
    spec = (await client.get("/openapi.json")).json()
    assert set(spec["paths"]["/token"]["post"]["responses"]) == {
        "200",
        "400",
        "401",
        "403",
        "408",
        "413",
        "429",
        "431",
        "500",
        "503",
    }
    assert spec["servers"] == [{"url": "https://bridge.example"}]


@pytest.mark.parametrize(
    ("override", "body", "status", "name"),
    [
        ({"rate_limit_per_ip": "1/minute"}, b'{"access_token": "x"}', 429, "RateLimitError"),
        ({}, b"{" + b" " * 20000 + b"}", 413, "PayloadTooLargeError"),
    ],
)
async def test_strapi_endpoint_keeps_its_shape_for_limits(
    settings: Settings, override: dict[str, str], body: bytes, status: int, name: str
) -> None:
    """Rate limits and oversized bodies answer in Strapi's error shape with the right status."""
    app = create_app(settings.model_copy(update=override))
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://bridge.test") as http,
    ):
        path = "/api/tiktok-auth-mobile/connect"
        if status == 429:
            await http.post(path, content=b"{}", headers={"content-type": "application/json"})
        response = await http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"]["name"] == name
    assert response.json()["error"]["status"] == status
    if status == 429:
        assert int(response.headers["retry-after"]) >= 1


async def test_allow_list_refuses_unknown_clients_before_any_upstream_call(settings: Settings) -> None:
    """With an allow-list, a request from an unknown client is 401 invalid_client and TikTok is not called."""
    app = create_app(settings.model_copy(update={"public_client_ids": ("ios-app",)}))
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://bridge.test") as http,
    ):
        response = await http.post("/token", data={**FORM, "client_id": "stranger"})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")


@pytest.mark.httpx2(assert_all_called=False)
@pytest.mark.parametrize("token", ["\x80", "tok\r\nX-Injected: 1", "naïve-token", "a b", "\ud800"])
async def test_strapi_tokens_that_cannot_be_sent_are_refused_unsent(
    client: httpx2.AsyncClient, httpx2_mock: respx.Router, token: str
) -> None:
    """A token that cannot travel in an Authorization header (found by schemathesis: "\\x80" was a 500,
    and so was a lone surrogate, valid in JSON, when its cache key was made) gets the plugin's answer
    for a token TikTok refuses, and TikTok is never called."""
    user_info = httpx2_mock.get(f"{TIKTOK}/v2/user/info/")
    response = await client.post(
        "/api/tiktok-auth-mobile/connect",
        content=json.dumps({"access_token": token}).encode(),  # ASCII-escaped: a lone surrogate too
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert (
        response.json()["error"]["message"]
        == "Failed to fetch TikTok user: Request failed with status code 401"
    )
    assert not user_info.called


@pytest.mark.httpx2(assert_all_called=False)
async def test_readiness_is_cached_and_its_details_are_for_the_admin_listener(
    client: httpx2.AsyncClient, httpx2_mock: respx.Router
) -> None:
    """100 readiness probes within a few seconds make one Keycloak discovery call; the public port says
    only the verdict, the admin port which check decided it."""
    discovery = httpx2_mock.get(f"{KC}/realms/app/.well-known/openid-configuration").respond(
        json={"issuer": f"{KC}/realms/app"}
    )
    public = [await client.get("/readyz") for _ in range(100)]
    detailed = await client.get(f"http://bridge.test:{ADMIN_PORT}/readyz")

    assert discovery.call_count == 1
    assert {response.status_code for response in public} == {200}
    assert public[0].json() == {"status": "ready"}
    assert detailed.json() == {"status": "ready", "checks": {"keycloak": "ok", "cache": "ok"}}


async def test_each_listener_serves_only_its_own_routes(client: httpx2.AsyncClient) -> None:
    """The public port has no /metrics (a JSON 404), and the admin port serves no API route."""
    admin = f"http://bridge.test:{ADMIN_PORT}"
    hidden = await client.get("/metrics")
    assert hidden.status_code == 404
    assert hidden.json()["error"] == "not_found"
    assert (await client.get(f"{admin}/metrics")).status_code == 200
    assert (await client.post(f"{admin}/token", data=FORM)).status_code == 404
    assert (await client.get(f"{admin}/healthz")).json() == {"status": "ok"}


async def test_without_an_admin_port_nothing_serves_metrics(settings: Settings) -> None:
    """`BRIDGE_ADMIN_PORT=0`: no admin listener, and the public port still keeps metrics to itself."""
    app = create_app(settings.model_copy(update={"admin_port": 0}))
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://bridge.test") as http,
    ):
        assert (await http.get("/metrics")).status_code == 404
        assert (await http.get(f"http://bridge.test:{ADMIN_PORT}/metrics")).status_code == 404


@pytest.mark.httpx2(assert_all_called=False)
async def test_every_answer_carries_a_request_id_and_one_access_line(
    client: httpx2.AsyncClient,
    httpx2_mock: respx.Router,
    token_endpoint: FakeTokenEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sane id the client sent, or one of ours, is echoed on answers of the direct lane (POST /token),
    its refusals and the routed endpoints alike, and each request leaves one access line with its
    status."""
    mock_keycloak(httpx2_mock, token_endpoint)
    mock_tiktok(httpx2_mock)
    with caplog.at_level(logging.INFO, logger="bridge.web.app"):
        issued = await client.post("/token", data=FORM, headers={"X-Request-ID": "abc-123"})
        refused = await client.post("/token", data={"grant_type": "x"}, headers={"X-Request-ID": "bad id!"})
        routed = await client.get("/healthz", headers={"X-Request-ID": "r-1"})
        not_allowed = await client.get("/token")
        too_large = await client.post("/token", data=FORM, headers={f"x-h{i}": "v" for i in range(70)})

    assert (issued.status_code, issued.headers["x-request-id"]) == (200, "abc-123")
    assert refused.status_code == 400
    assert re.fullmatch(r"[0-9a-f]{16}", refused.headers["x-request-id"])
    assert (routed.status_code, routed.headers["x-request-id"]) == (200, "r-1")
    assert not_allowed.status_code == 405
    assert not_allowed.headers["x-request-id"]
    assert too_large.status_code == 431
    assert too_large.json()["error"] == "invalid_request"
    assert too_large.headers["x-request-id"]
    access = [(vars(r)["path"], vars(r)["status"]) for r in caplog.records if r.getMessage() == "request"]
    assert access == [("/token", 200), ("/token", 400), ("/healthz", 200), ("/token", 405), ("/token", 431)]


async def test_a_bug_on_the_direct_lane_is_a_json_500_that_tells_nothing(
    client: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception the token endpoint did not expect is answered as the app's handler answers one: the
    RFC 6749 body of server_error with the request id, the log naming its type only (never its text,
    which may hold what the request carried), and counted as a server_error."""

    def broken(_form: dict[str, str], _types: object) -> None:
        raise RuntimeError("act.secret-token")

    monkeypatch.setattr("bridge.web.endpoints.parse_exchange_request", broken)
    before = _exchanges_counted("server_error")
    response = await client.post("/token", data=FORM)

    assert response.status_code == 500
    assert response.json()["error"] == "server_error"
    assert "secret" not in response.text
    assert response.headers["x-request-id"]
    assert response.headers["cache-control"] == "no-store"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [(r.getMessage(), vars(r)["error_type"]) for r in errors] == [("unexpected error", "RuntimeError")]
    assert "secret" not in " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert _exchanges_counted("server_error") == before + 1


def _exchanges_counted(outcome: str) -> float:
    labels = {"endpoint": "token", "outcome": outcome}
    return REGISTRY.get_sample_value("bridge_exchanges_total", labels) or 0.0
