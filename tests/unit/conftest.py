"""Fixtures shared by the unit tests: a configured bridge app on an in-process HTTP client, its httpx2
calls served by respx (at the httpx2 client: `httpx2_mock`) and its JWT grant (aiohttp) by a fake token
endpoint on a loopback port."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

import httpx2
import pytest
import respx
from joserfc.jwk import ECKey
from pydantic import SecretStr

from bridge.providers.tiktok.settings import TikTokSettings
from bridge.settings import Settings
from bridge.web.app import create_app
from tests.unit.exchange_support import PROFILE
from tests.unit.fake_token_endpoint import FakeTokenEndpoint
from tests.unit.fakes import FakeKeycloak, FakeTikTok
from tests.unit.respx_httpx2 import HTTPX2Mocker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
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
def httpx2_mock(request: pytest.FixtureRequest) -> Iterator[respx.Router]:
    """pytest-httpx2's fixture (same name, same `httpx2` marker for respx's options), with routes that
    serve httpx2's clients whatever their transport: pytest-httpx2's own patch httpcore2's pool, which
    the bridge's client (over `AiohttpTransport`) never reaches (tests/unit/respx_httpx2.py)."""
    options = {}
    if (marker := request.node.get_closest_marker("httpx2")) is not None:
        options.update(marker.kwargs)
    options.setdefault("using", HTTPX2Mocker.name)
    with respx.mock(**options) as router:
        yield router


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    key = tmp_path / "key.pem"
    key.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    return Settings(
        tiktok=TikTokSettings(client_key="key", client_secret=SecretStr("secret")),
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


# The fakes of the use-case tests (test_identity.py, test_provisioning.py, ...): TikTok vouching for
# `PROFILE` under two tokens, and an empty realm.
@pytest.fixture
def tiktok() -> FakeTikTok:
    # Verified now, not when the module was imported: a whole suite runs longer than a profile's TTL, and
    # a profile older than that is no longer kept in memory.
    fresh = replace(PROFILE, verified_at=time.time())
    return FakeTikTok(profiles={"act.one": fresh, "act.two": fresh})


@pytest.fixture
def keycloak() -> FakeKeycloak:
    return FakeKeycloak()
