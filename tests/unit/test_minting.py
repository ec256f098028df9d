"""Minting with in-memory fakes: Keycloak's tokens for a linked identity, with the app's audiences."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING

import pytest

from bridge.domain.errors import (
    InvalidScope,
    InvalidTarget,
    NotLinked,
)
from bridge.domain.model import FederatedLink
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


async def test_a_strapi_jwt_mint_is_signed_for_the_strapi_jwt_provider_and_refused_once_it_is_off(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """`by_account` mints for the account linked to the Strapi jwt provider by its own id, by that
    provider's assertion (the TikTok provider knows no such subject); with the exchange off it is
    refused as unlinked before Keycloak is asked."""
    user_id = await keycloak.create_user({"username": "tiktok_strapi-4", "enabled": True})
    await keycloak.add_link(user_id, FederatedLink("tiktok-strapi-jwt", user_id, "tiktok_strapi-4"))
    on = service(tiktok, keycloak, strapi_jwt=True).minting
    issued = await on.mint(user_id, ("openid",), by_account=True)
    assert (issued.subject, issued.access_token) == (user_id, f"kc-token-for:{user_id}")
    with pytest.raises(NotLinked):
        await on.mint(user_id, ("openid",))
    calls = keycloak.calls["token"]
    with pytest.raises(NotLinked):
        await service(tiktok, keycloak).minting.mint(user_id, ("openid",), by_account=True)
    assert keycloak.calls["token"] == calls
