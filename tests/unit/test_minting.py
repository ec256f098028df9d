"""Minting with in-memory fakes: Keycloak's tokens for a linked identity, with the app's audiences."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING

import pytest

from bridge.domain.errors import (
    InvalidScope,
    InvalidTarget,
)
from tests.unit.exchange_support import request, service

if TYPE_CHECKING:
    from tests.unit.fakes import FakeKeycloak, FakeTikTok


async def test_configured_audiences_are_asked_of_keycloak_as_their_client_scopes(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """An allowed audience becomes its client scope in the grant; another is invalid_target before
    TikTok is asked; an audience's scope named in `scope` is refused."""
    scopes = MappingProxyType({"https://orders.example": "aud-orders", "billing": "aud-billing"})
    exchange = service(
        tiktok, keycloak, audience_scopes=scopes, reserved_scopes=frozenset(scopes.values())
    ).exchange

    allowed = replace(request(scope=("openid",)), audiences=("https://orders.example",))
    assert (await exchange.exchange(allowed)).issued.scope == "openid aud-orders"
    assert keycloak.scopes == [("openid", "aud-orders")]

    calls = len(tiktok.calls)
    with pytest.raises(InvalidTarget):
        await exchange.exchange(replace(request(), audiences=("https://admin.example",)))
    with pytest.raises(InvalidScope):
        await exchange.exchange(request(scope=("aud-billing",)))
    assert len(tiktok.calls) == calls
