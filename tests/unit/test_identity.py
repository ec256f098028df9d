"""Identity verification with in-memory fakes: the profile cache (shared and this process's), the negative
cache, and Login Kit codes."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from bridge.domain.errors import (
    IdentityMismatch,
    InvalidRequest,
    MissingScope,
    SubjectTokenRejected,
)
from bridge.domain.model import ProviderGrant
from bridge.storage import keys
from bridge.storage.recent_profiles import RecentProfiles
from tests.unit.exchange_support import (
    PROFILE,
    REDIRECT,
    VERIFIER,
    CountingCache,
    code_request,
    request,
    service,
)

if TYPE_CHECKING:
    from tests.unit.fakes import FakeKeycloak, FakeTikTok


async def test_a_returning_token_is_served_from_this_process_memory(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """With the recent-profiles tier, a token seen before reads its profile from memory: the shared cache
    is asked only for the user id and the tombstone. Without it, the profile is read from the cache."""
    shared = CountingCache()
    bridge = service(tiktok, keycloak, cache=shared, recent=RecentProfiles(100, 300))
    await bridge.exchange.exchange(request("act.one"))
    profile_key = keys.profile("act.one")
    shared.reads.clear()
    tiktok.calls.clear()

    await bridge.exchange.exchange(request("act.one"))
    assert profile_key not in shared.reads
    assert keys.deauthorized("tiktok", PROFILE.open_id) in shared.reads
    assert tiktok.calls == []

    # Another process (no copy of its own) reads the entry this one wrote, and keeps a copy from then on.
    other = service(tiktok, keycloak, cache=shared, recent=RecentProfiles(100, 300))
    shared.reads.clear()
    await other.exchange.exchange(request("act.one"))
    assert shared.reads.count(profile_key) == 1
    await other.exchange.exchange(request("act.one"))
    assert shared.reads.count(profile_key) == 1
    assert tiktok.calls == []


def test_recent_profiles_expire_with_the_shared_entry_and_stay_bounded() -> None:
    """A copy lives as long as the shared entry would (TikTok's verification time plus the TTL), so it
    never answers what Redis would no longer answer; the oldest-used copy goes first past the bound."""
    now = [1000.0]
    recent = RecentProfiles(2, 300, clock=lambda: now[0])
    recent.put("a", replace(PROFILE, verified_at=900.0))  # 200 s left
    recent.put("stale", replace(PROFILE, verified_at=600.0))  # expired already: not kept
    assert recent.get("stale") is None
    assert recent.get("a") is not None
    now[0] = 1199.0
    assert recent.get("a") is not None
    now[0] = 1200.0
    assert recent.get("a") is None
    assert len(recent) == 0

    for key in ("x", "y", "z"):
        recent.put(key, replace(PROFILE, verified_at=now[0]))
    assert len(recent) == 2
    assert recent.get("x") is None
    assert recent.get("y") is not None
    assert recent.get("z") is not None
    assert len(RecentProfiles(0, 300)) == 0
    off = RecentProfiles(0, 300)
    off.put("x", replace(PROFILE, verified_at=time.time()))
    assert off.get("x") is None


async def test_rejected_token_is_cached_negatively(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """A token TikTok refused is refused again from the cache, without a second TikTok call."""
    bridge = service(tiktok, keycloak)
    for _ in range(3):
        with pytest.raises(SubjectTokenRejected):
            await bridge.exchange.exchange(request("act.bad"))
    assert tiktok.calls == ["act.bad"]


def _grant(
    scopes: frozenset[str] = frozenset({"user.info.basic"}), open_id: str = PROFILE.open_id
) -> ProviderGrant:
    return ProviderGrant(access_token="act.from-code", open_id=open_id, scopes=scopes, expires_in=86400)


async def test_code_path_redeems_once_and_signs_in(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """A code with its verifier and an allowed redirect URI signs the user in; the code cannot be reused."""
    tiktok.codes["code-1"] = (VERIFIER, REDIRECT, _grant())
    tiktok.profiles["act.from-code"] = PROFILE
    bridge = service(tiktok, keycloak, redirect_uris=(REDIRECT,))

    result = await bridge.exchange.exchange(code_request())

    assert result.profile.open_id == PROFILE.open_id
    assert result.created
    with pytest.raises(SubjectTokenRejected):
        await bridge.exchange.exchange(code_request())


async def test_code_with_an_unlisted_redirect_uri_is_refused_unsent(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """A redirect URI outside the allow-list is refused before TikTok is asked."""
    tiktok.codes["code-1"] = (VERIFIER, "https://evil.example/cb", _grant())
    bridge = service(tiktok, keycloak, redirect_uris=(REDIRECT,))
    with pytest.raises(InvalidRequest):
        await bridge.exchange.exchange(code_request(redirect_uri="https://evil.example/cb"))
    assert tiktok.calls == []
    assert not keycloak.users


async def test_code_granted_without_the_basic_scope_is_refused(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """Without user.info.basic there is no open_id to trust: refused, nobody provisioned."""
    tiktok.codes["code-1"] = (VERIFIER, REDIRECT, _grant(scopes=frozenset({"video.list"})))
    with pytest.raises(MissingScope):
        await service(tiktok, keycloak, redirect_uris=(REDIRECT,)).exchange.exchange(code_request())
    assert not keycloak.users


async def test_user_info_for_another_open_id_than_the_code_is_refused(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """If user info answers for someone else than the token answer named, nobody is signed in."""
    tiktok.codes["code-1"] = (VERIFIER, REDIRECT, _grant(open_id="-000Someone"))
    tiktok.profiles["act.from-code"] = PROFILE
    with pytest.raises(IdentityMismatch):
        await service(tiktok, keycloak, redirect_uris=(REDIRECT,)).exchange.exchange(code_request())
    assert not keycloak.users
