"""Regressions of the outside attack test (SECURITY.md, "Found and fixed under
attack: quota, input and memory"): inputs that were 500s, profiles
that could never sign in, hang-ups counted as server errors, redirects built from the Host header."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from bridge.domain.errors import UnsupportedIdentity
from bridge.domain.model import ExternalIdentity, fit_for_keycloak, keycloak_length
from bridge.providers.tiktok.attributes import ATTRIBUTES
from bridge.web.app import create_app
from tests.unit.test_webhook_signature import sign

if TYPE_CHECKING:
    import httpx2

    from bridge.settings import Settings

EMOJI = "\U0001f600"  # outside the BMP: two UTF-16 units, as Keycloak counts


def test_display_fields_are_cut_to_keycloaks_limit_at_a_code_point() -> None:
    """128 emoji are 256 UTF-16 units: cut to 127 whole emoji, never half a surrogate pair."""
    fitted = fit_for_keycloak(EMOJI * 128)
    assert fitted == EMOJI * 127
    assert keycloak_length(fitted) == 254
    assert fit_for_keycloak("a" + EMOJI * 127) == "a" + EMOJI * 127  # exactly 255 units: kept whole
    assert fit_for_keycloak("short") == "short"


def test_identifiers_are_never_cut() -> None:
    """An over-long union_id is left out, not truncated; an over-long open_id refuses the sign-in."""
    profile = ExternalIdentity(open_id="-000a", union_id="u" * 256, display_name=EMOJI * 128)
    attributes = ATTRIBUTES.of(profile)
    assert "tiktok_union_id" not in attributes
    assert attributes["tiktok_display_name"] == [EMOJI * 127]
    with pytest.raises(UnsupportedIdentity):
        ATTRIBUTES.of(ExternalIdentity(open_id="o" * 256, union_id=None, display_name=None))


@pytest.mark.httpx2(assert_all_called=False)
async def test_deeply_nested_json_at_the_strapi_endpoint_is_the_plugins_400(
    client: httpx2.AsyncClient,
) -> None:
    """`[` x 1000 was a RecursionError and a 500; now the plugin's "No access token provided." 400."""
    response = await client.post(
        "/api/tiktok-auth-mobile/connect",
        content=b"[" * 1000 + b"]" * 1000,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "No access token provided."


@pytest.mark.httpx2(assert_all_called=False)
async def test_a_signed_webhook_with_deep_json_is_a_400(
    client: httpx2.AsyncClient, settings: Settings
) -> None:
    """Past the signature check, deep nesting in the event or its content is refused, not a 500."""
    for body in (
        b"[" * 5000 + b"]" * 5000,
        json.dumps(
            {
                "client_key": settings.tiktok.client_key,
                "event": "authorization.removed",
                "user_openid": "-000a",
                "content": "[" * 5000 + "]" * 5000,
            }
        ).encode(),
    ):
        signature = sign(body, int(time.time()), settings.tiktok.client_secret.get_secret_value())
        response = await client.post(
            "/webhooks/tiktok", content=body, headers={"TikTok-Signature": signature}
        )
        assert response.status_code < 500, response.text


@pytest.mark.httpx2(assert_all_called=False)
async def test_no_redirect_is_built_from_the_host_header(client: httpx2.AsyncClient) -> None:
    """`POST /token/` with `Host: evil.example` was a 307 to http://evil.example/token; now a plain 404."""
    response = await client.post("/token/", headers={"Host": "evil.example"}, data={"x": "y"})
    assert response.status_code == 404
    assert "location" not in response.headers


async def test_a_client_hanging_up_mid_body_is_not_a_server_error(
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A disconnect while the body is read answers 499 in the access log and counts no server_error."""
    app = create_app(settings)
    sent: list[dict[str, Any]] = []
    arrived: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"grant_type=", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return arrived.pop(0) if arrived else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/token",
        "raw_path": b"/token",
        "query_string": b"",
        "headers": [(b"content-type", b"application/x-www-form-urlencoded"), (b"content-length", b"500")],
        "client": ("192.0.2.7", 50000),
        "server": ("bridge.test", 80),
        "app": app,
    }
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)  # type: ignore[arg-type]
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    assert start["status"] == 499
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_the_webhook_refuses_before_buffering(client: httpx2.AsyncClient, settings: Settings) -> None:
    """An unsigned delivery is refused on its header alone (401); a signed one over 16 KiB is 413."""
    big = b"x" * 20_000
    unsigned = await client.post("/webhooks/tiktok", content=big)
    assert unsigned.status_code == 401
    signature = sign(big, int(time.time()), settings.tiktok.client_secret.get_secret_value())
    signed = await client.post("/webhooks/tiktok", content=big, headers={"TikTok-Signature": signature})
    assert signed.status_code == 413


async def test_tokens_not_shaped_like_tiktoks_never_reach_tiktok(client: httpx2.AsyncClient) -> None:
    """A subject token without TikTok's `act.` prefix is refused at once, with no call to TikTok (respx
    has no route for it: a call would fail the test)."""
    response = await client.post(
        "/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": "garbage-token-1234",
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        },
    )
    assert response.status_code == 400
    assert response.json()["error_description"] == "The TikTok access token is invalid or expired."
