"""Deauthorization with in-memory fakes: the tombstone refuses profiles cached before it, whatever the
policy, and no sign-in in flight erases it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from bridge.domain.errors import (
    AccountDisabled,
    SubjectTokenRejected,
)
from bridge.storage.recent_profiles import RecentProfiles
from tests.unit.exchange_support import PROFILE, request, service
from tests.unit.fakes import FakeKeycloak, FakeTikTok

if TYPE_CHECKING:
    from bridge.domain.model import KeycloakUser


@pytest.mark.parametrize("in_memory", [False, True], ids=["shared-cache", "recent-profiles"])
@pytest.mark.parametrize("policy", ["record", "disable", "unlink"])
async def test_deauthorization_refuses_profiles_cached_before_it(
    tiktok: FakeTikTok, keycloak: FakeKeycloak, policy: str, in_memory: bool
) -> None:
    """After the webhook, a token whose profile is still cached no longer signs in, whatever the policy
    (TikTok revoked it; without the tombstone it worked for the profile TTL), and whether the profile
    came from the shared cache or this process's memory. A token verified after the deauthorization
    (the user authorized the app again) is judged by Keycloak as usual."""
    recent = RecentProfiles(100, 300) if in_memory else None
    bridge = service(tiktok, keycloak, recent=recent, deauthorization=policy)
    await bridge.exchange.exchange(request("act.one"))
    await bridge.deauthorization.deauthorize(PROFILE.open_id)
    tiktok.calls.clear()

    with pytest.raises(SubjectTokenRejected):
        await bridge.exchange.exchange(request("act.one"))
    assert tiktok.calls == []  # refused from the cache alone

    tiktok.profiles["act.new"] = replace(PROFILE, verified_at=time.time() + 1)
    if policy == "disable":
        with pytest.raises(AccountDisabled):
            await bridge.exchange.exchange(request("act.new"))
    else:
        result = await bridge.exchange.exchange(request("act.new"))
        assert result.created is (policy == "unlink")
        assert (await bridge.exchange.exchange(request("act.new"))).user_id == result.user_id  # cached again
    with pytest.raises(SubjectTokenRejected):
        await bridge.exchange.exchange(request("act.one"))  # signing in again did not erase the revocation


class GatedKeycloak(FakeKeycloak):
    """Keycloak whose user look-up waits for a gate: a sign-in held in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()
        self.gate = asyncio.Event()

    async def find_linked_user(self, idp_alias: str, idp_user_id: str) -> KeycloakUser | None:
        self.waiting.set()
        await self.gate.wait()
        return await super().find_linked_user(idp_alias, idp_user_id)


async def test_a_sign_in_in_flight_during_deauthorization_does_not_erase_it(tiktok: FakeTikTok) -> None:
    """The webhook lands while a sign-in with a token verified earlier waits on Keycloak: that sign-in
    ends (it was already under way), and the token is refused from then on."""
    keycloak = GatedKeycloak()
    bridge = service(tiktok, keycloak, deauthorization="record")
    in_flight = asyncio.create_task(bridge.exchange.exchange(request("act.one")))
    await keycloak.waiting.wait()  # its profile is verified and cached, and it has read the cache
    await bridge.deauthorization.deauthorize(PROFILE.open_id)
    keycloak.gate.set()
    await in_flight

    with pytest.raises(SubjectTokenRejected):
        await bridge.exchange.exchange(request("act.one"))
