"""The optional client allow-list of the token endpoint."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from bridge.domain.errors import InvalidClient
from bridge.protocol.clients import ClientRegistry
from bridge.settings import Settings

REGISTRY = ClientRegistry(public=frozenset({"ios-app", "android-app"}), confidential={"web-bff": "s3cret=x"})


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def test_off_when_nothing_is_configured() -> None:
    """Without an allow-list every request passes and no client is named."""
    assert ClientRegistry(frozenset(), {}).authenticate(None, None, None) is None


@pytest.mark.parametrize(
    ("authorization", "form_id", "form_secret", "expected"),
    [
        (None, "ios-app", None, "ios-app"),
        (None, "web-bff", "s3cret=x", "web-bff"),
        (basic("web-bff", "s3cret%3Dx"), None, None, "web-bff"),  # RFC 6749 §2.3.1: form-encoded in Basic
        (basic("android-app", ""), None, None, None),
    ],
)
def test_known_clients_are_named(
    authorization: str | None, form_id: str | None, form_secret: str | None, expected: str | None
) -> None:
    """Public clients by id alone, confidential clients with their secret, in the form or in Basic."""
    if expected is None:
        with pytest.raises(InvalidClient):  # a public client presenting a secret is not that client
            REGISTRY.authenticate(authorization, form_id, form_secret)
    else:
        assert REGISTRY.authenticate(authorization, form_id, form_secret) == expected


@pytest.mark.parametrize(
    ("authorization", "form_id", "form_secret"),
    [
        (None, None, None),
        (None, "unknown-app", None),
        (None, "web-bff", None),
        (None, "web-bff", "wrong"),
        (basic("web-bff", "wrong"), None, None),
        (basic("web-bff", "s3cret=x"), "web-bff", "s3cret=x"),  # two methods at once
        ("Basic !!!not-base64", None, None),
        ("Basic \xe9t\xe9", None, None),  # not ASCII: an HTTP header decoded as Latin-1
        ("Basic " + base64.b64encode(b"\xffweb-bff:s3cret=x").decode(), None, None),  # not UTF-8
        ("Basic " + base64.b64encode(b"web-bff").decode(), None, None),  # no colon, so no secret
    ],
)
def test_everything_else_is_invalid_client(
    authorization: str | None, form_id: str | None, form_secret: str | None
) -> None:
    """Unknown, unnamed, wrong-secret, doubly-authenticated and malformed clients get invalid_client (401)."""
    with pytest.raises(InvalidClient) as caught:
        REGISTRY.authenticate(authorization, form_id, form_secret)
    assert caught.value.status_code == 401
    assert caught.value.headers()["WWW-Authenticate"].startswith("Basic")


def _settings(**values: object) -> Settings:
    base: dict[str, object] = {
        "tiktok_client_key": "key",
        "tiktok_client_secret": "secret",
        "keycloak_url": "https://kc.example",
        "keycloak_realm": "app",
        "keycloak_client_id": "bridge",
        "keycloak_client_secret": "secret",
        "issuer": "https://bridge.example",
    }
    return Settings(**{**base, **values})  # type: ignore[arg-type]


def test_per_app_settings_are_read_and_must_name_known_apps_and_audiences() -> None:
    """App -> Keycloak client and per-app audiences parse; an app outside the allow-list, an unknown
    audience or a mapping without a secret is refused at start-up, without echoing the secret."""
    settings = _settings(
        public_client_ids="ios,android",
        keycloak_clients="ios=tiktok-app-ios:s3cr3t",
        audiences="https://orders.example=aud-orders,billing=aud-billing",
        client_audiences="android=billing",
    )
    assert settings.keycloak_client_map() == {"ios": ("tiktok-app-ios", "s3cr3t")}
    assert settings.audience_scopes() == {"https://orders.example": "aud-orders", "billing": "aud-billing"}
    assert settings.client_audience_map() == {"android": ("billing",)}
    for bad in (
        {"keycloak_clients": "web=tiktok-app-web:s3cr3t"},
        {"client_audiences": "android=https://admin.example"},
        {"keycloak_clients": "ios=tiktok-app-ios"},
    ):
        with pytest.raises(ValidationError) as caught:
            _settings(public_client_ids="ios,android", audiences="billing=aud-billing", **bad)
        assert "s3cr3t" not in str(caught.value)
