"""Fixtures shared by the unit tests: a configured bridge app on an in-process HTTP client, its httpx2
calls served by respx and its JWT grant (aiohttp) by a fake token endpoint on a loopback port."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx2
import pytest
from joserfc.jwk import ECKey

from bridge.app import create_app
from bridge.settings import Settings
from tests.unit.fake_token_endpoint import FakeTokenEndpoint

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

KC = "http://kc.test"


@pytest.fixture
async def token_endpoint() -> AsyncIterator[FakeTokenEndpoint]:
    """Keycloak's token endpoint for the JWT grant, reached by the `client` fixture's bridge."""
    endpoint = FakeTokenEndpoint("kc.test")
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    key = tmp_path / "key.pem"
    key.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    return Settings(
        tiktok_client_key="key",
        tiktok_client_secret="secret",
        keycloak_url=KC,
        keycloak_realm="app",
        keycloak_client_id="tiktok-bridge",
        keycloak_client_secret="kc-secret",
        issuer="https://bridge.example",
        signing_key_file=key,
        data_dir=tmp_path,  # where the development session key is generated: never the checkout
    )


@pytest.fixture
async def client(settings: Settings, token_endpoint: FakeTokenEndpoint) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_app(settings, token_resolver=token_endpoint.resolver)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://bridge.test") as http,
    ):
        yield http
