"""The exchange composing its jobs with in-memory fakes: the calls a warm sign-in makes, and how a stale
cached user is corrected from what Keycloak minted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.services.provisioning import deterministic_username
from tests.unit.exchange_support import PROFILE, request, service

if TYPE_CHECKING:
    from tests.unit.fakes import FakeKeycloak, FakeTikTok


async def test_warm_returning_user_costs_one_token_call_only(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """Within the TTLs a repeated exchange makes no TikTok call and no Keycloak admin call."""
    bridge = service(tiktok, keycloak)
    await bridge.exchange.exchange(request())
    tiktok.calls.clear()
    keycloak.calls.clear()

    result = await bridge.exchange.exchange(request())

    assert not result.created
    assert tiktok.calls == []
    assert keycloak.admin_calls() == 0
    assert keycloak.calls["token"] == 1


async def test_removed_link_reprovisions_once(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """A cached id whose link is gone is forgotten; the user is provisioned again under the next username."""
    bridge = service(tiktok, keycloak)
    old_id = (await bridge.exchange.exchange(request())).user_id
    keycloak.users[old_id]["federatedIdentities"] = []

    result = await bridge.exchange.exchange(request())

    assert result.user_id != old_id
    assert keycloak.users[result.user_id]["username"] == deterministic_username("tiktok_", PROFILE.open_id, 1)


async def test_a_link_moved_by_an_admin_is_followed_at_once(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """An admin moves the TikTok link from C to D: the very next exchange names D (whom Keycloak's token
    is for), not the cached C, and the cache learns D."""
    bridge = service(tiktok, keycloak)
    c = (await bridge.exchange.exchange(request())).user_id
    link = keycloak.users[c].pop("federatedIdentities")
    d = await keycloak.create_user({"username": "someone-else", "enabled": True, "federatedIdentities": link})

    moved = await bridge.exchange.exchange(request())
    again = await bridge.exchange.exchange(request())

    assert moved.user_id == d
    assert again.user_id == d
