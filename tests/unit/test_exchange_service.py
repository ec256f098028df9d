"""The exchange use case with in-memory fakes: provisioning, caching, policies and the calls it makes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING

import pytest
from redis.crc import key_slot

from bridge.domain.errors import (
    AccountDisabled,
    EmailTaken,
    IdentityMismatch,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    MissingScope,
    RegistrationClosed,
    ServerError,
    SubjectTokenRejected,
    UpstreamUnavailable,
)
from bridge.domain.model import CodeGrant, TikTokProfile
from bridge.protocol.rfc8693 import TOKEN_TYPE_ACCESS_TOKEN, AccessTokenExchange, CodeExchange
from bridge.services.provisioning import deterministic_username
from bridge.storage import keys
from bridge.storage.cache import MemoryCache
from bridge.storage.recent_profiles import RecentProfiles
from tests.unit.fakes import FakeKeycloak, FakeTikTok, RecordingStore, UseCases, make_policy, use_cases

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from bridge.domain.model import KeycloakUser
    from bridge.storage.engine import GuardedCache

PROFILE = TikTokProfile(open_id="-000AbC", union_id="u-1", display_name="Tik Toker")
REDIRECT = "https://app.example/callback"
VERIFIER = "v" * 43


def request(token: str = "act.one", scope: tuple[str, ...] = ()) -> AccessTokenExchange:
    return AccessTokenExchange(access_token=token, requested_token_type=TOKEN_TYPE_ACCESS_TOKEN, scope=scope)


def code_request(code: str = "code-1", redirect_uri: str = REDIRECT) -> CodeExchange:
    return CodeExchange(
        code=code,
        code_verifier=VERIFIER,
        redirect_uri=redirect_uri,
        requested_token_type=TOKEN_TYPE_ACCESS_TOKEN,
        scope=(),
    )


@pytest.fixture
def tiktok() -> FakeTikTok:
    # Verified now, not when the module was imported: a whole suite runs longer than a profile's TTL, and
    # a profile older than that is no longer kept in memory.
    fresh = replace(PROFILE, verified_at=time.time())
    return FakeTikTok(profiles={"act.one": fresh, "act.two": fresh})


@pytest.fixture
def keycloak() -> FakeKeycloak:
    return FakeKeycloak()


def service(
    tiktok: FakeTikTok,
    keycloak: FakeKeycloak,
    *,
    cache: GuardedCache | None = None,
    recent: RecentProfiles | None = None,
    **policy: object,
) -> UseCases:
    """The use cases over the fakes, with the default policy changed by `policy`."""
    return use_cases(
        tiktok=tiktok,
        keycloak=keycloak,
        cache=cache if cache is not None else MemoryCache(),
        policy=make_policy(**policy),
        recent=recent,
    )


class CountingCache(MemoryCache):
    """The shared cache, counting the keys read from it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def get(self, key: str) -> bytes | None:
        self.reads.append(key)
        return await super().get(key)

    async def get_many(self, *keys: str) -> list[bytes | None]:
        self.reads.extend(keys)
        return [await super(CountingCache, self).get(key) for key in keys]


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


async def test_first_exchange_creates_a_linked_user_with_tiktok_attributes(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """The create call carries the link, the deterministic username and the TikTok attributes, no e-mail."""
    result = await service(tiktok, keycloak).exchange.exchange(request())

    assert result.created
    assert result.issued.access_token == f"kc-token-for:{result.user_id}"
    rep = keycloak.users[result.user_id]
    assert rep["username"] == deterministic_username("tiktok_", PROFILE.open_id)
    assert rep["federatedIdentities"] == [
        {"identityProvider": "tiktok", "userId": "-000AbC", "userName": "-000AbC"}
    ]
    assert rep["attributes"] == {
        "tiktok_open_id": ["-000AbC"],
        "tiktok_union_id": ["u-1"],
        "tiktok_display_name": ["Tik Toker"],
    }
    assert "email" not in rep
    # The new user joins the bridge's group, which confines the service account's permissions.
    assert rep["groups"] == ["/tiktok-users"]
    assert keycloak.calls["create"] == 1
    # One search, one create, and the process's one check that the groups exist: nothing more when the
    # lock is free.
    assert keycloak.admin_calls() == 3
    assert keycloak.calls["token"] == 1


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


async def test_rejected_token_is_cached_negatively(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """A token TikTok refused is refused again from the cache, without a second TikTok call."""
    bridge = service(tiktok, keycloak)
    for _ in range(3):
        with pytest.raises(SubjectTokenRejected):
            await bridge.exchange.exchange(request("act.bad"))
    assert tiktok.calls == ["act.bad"]


async def test_disabled_user_is_refused_on_every_path(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """Disabled users are refused whether found by search (cold) or through the cached id (warm)."""
    bridge = service(tiktok, keycloak)
    user_id = (await bridge.exchange.exchange(request())).user_id
    keycloak.users[user_id]["enabled"] = False
    with pytest.raises(AccountDisabled):
        await bridge.exchange.exchange(request())  # warm: the grant refuses
    keycloak.calls.clear()
    with pytest.raises(AccountDisabled):
        await service(tiktok, keycloak).exchange.exchange(request())  # cold: the search result refuses
    assert keycloak.calls["token"] == 0  # no token was asked for on the cold path


async def test_registration_closed_refuses_new_users_only(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """With registration closed, an existing linked user signs in and a new one is refused."""
    await service(tiktok, keycloak).exchange.exchange(request())
    closed = service(tiktok, keycloak, registration_open=False)
    assert (await closed.exchange.exchange(request())).created is False
    tiktok.profiles["act.new"] = TikTokProfile(open_id="-000New", union_id=None, display_name=None)
    with pytest.raises(RegistrationClosed):
        await closed.exchange.exchange(request("act.new"))


async def test_email_template_and_collision(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """The template fills an unverified e-mail; a second identity mapping to the same address is refused."""
    bridge = service(tiktok, keycloak, email_template="{union_id}@tiktok.invalid")
    user_id = (await bridge.exchange.exchange(request())).user_id
    assert keycloak.users[user_id]["email"] == "u-1@tiktok.invalid"
    assert keycloak.users[user_id]["emailVerified"] is False
    tiktok.profiles["act.other"] = replace(PROFILE, open_id="-000Other")
    with pytest.raises(EmailTaken):
        await bridge.exchange.exchange(request("act.other"))


async def test_no_email_when_template_needs_a_missing_union_id(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """TikTok sometimes omits union_id; then no address is made up."""
    tiktok.profiles["act.nounion"] = replace(PROFILE, union_id=None)
    bridge = service(tiktok, keycloak, email_template="{union_id}@tiktok.invalid")
    user_id = (await bridge.exchange.exchange(request("act.nounion"))).user_id
    assert "email" not in keycloak.users[user_id]


async def test_profile_change_is_synced_once(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """A changed display name updates the user once; unchanged profiles cause no admin call."""
    bridge = service(tiktok, keycloak)
    user_id = (await bridge.exchange.exchange(request())).user_id
    tiktok.profiles["act.renamed"] = replace(PROFILE, display_name="New Name")
    keycloak.calls.clear()

    await bridge.exchange.exchange(request("act.renamed"))
    await bridge.exchange.exchange(request("act.renamed"))

    assert keycloak.users[user_id]["attributes"]["tiktok_display_name"] == ["New Name"]
    assert keycloak.calls["update"] == 1
    assert keycloak.calls["token"] == 2


async def test_removed_link_reprovisions_once(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """A cached id whose link is gone is forgotten; the user is provisioned again under the next username."""
    bridge = service(tiktok, keycloak)
    old_id = (await bridge.exchange.exchange(request())).user_id
    keycloak.users[old_id]["federatedIdentities"] = []

    result = await bridge.exchange.exchange(request())

    assert result.user_id != old_id
    assert keycloak.users[result.user_id]["username"] == deterministic_username("tiktok_", PROFILE.open_id, 1)


async def test_concurrent_first_exchanges_create_one_user(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """Single-flight: twenty simultaneous first sign-ins of one identity create exactly one user; the
    nineteen that waited for the lock read the winner's id from the cache instead of creating."""
    bridge = service(tiktok, keycloak)
    results = await asyncio.gather(*(bridge.exchange.exchange(request()) for _ in range(20)))
    assert len(keycloak.users) == 1
    assert {r.user_id for r in results} == set(keycloak.users)
    assert keycloak.calls["create"] == 1
    assert [r.created for r in results].count(True) == 1


async def test_a_first_sign_in_reads_its_user_entry_with_the_lock_and_caches_it_with_the_release(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """Three round trips on the identity's keys (Redis: MGET, then one script each way): the user entry
    with the tombstone; the lock with the entry (a holder that finished meanwhile left the id there);
    the new user's id with the lock's release. Four before: lock, write, release as commands of their
    own."""
    shared = RecordingStore()
    bridge = service(tiktok, keycloak, cache=shared)
    first = await bridge.exchange.exchange(request("act.one"))
    assert first.created
    identity = [op for op in shared.operations if op.split(" ")[1] in {"user", "revoked", "lock"}]
    assert identity == ["get_many user revoked", "locked_entry user", "save_and_release user"]
    assert await shared.key_lock_is_free(keys.provisioning_lock("tiktok", PROFILE.open_id))

    shared.operations.clear()
    again = await bridge.exchange.exchange(request("act.one"))
    assert again.user_id == first.user_id
    assert [op for op in shared.operations if "user" in op] == ["get_many user revoked"]


class LateSearchKeycloak(FakeKeycloak):
    """Its next search misses a user that exists: one created by a holder that finished between that
    search and our taking the lock (`after_missed_search`: what that holder did then)."""

    def __init__(self) -> None:
        super().__init__()
        self.miss_next_search = False
        self.after_missed_search: Callable[[], Awaitable[None]] | None = None

    async def find_linked_user(self, idp_alias: str, idp_user_id: str) -> KeycloakUser | None:
        if self.miss_next_search:
            self.miss_next_search = False
            self.calls["find"] += 1
            if self.after_missed_search is not None:
                await self.after_missed_search()
            return None
        return await super().find_linked_user(idp_alias, idp_user_id)


async def test_a_user_created_just_before_the_lock_is_found_by_the_409(tiktok: FakeTikTok) -> None:
    """The lock taken at once spares the re-read of the cache; a user that appeared between the search
    and the lock is still found (Keycloak refuses the same username), so there is still one user."""
    keycloak = LateSearchKeycloak()
    bridge = service(tiktok, keycloak)
    first = await bridge.exchange.exchange(request("act.one"))
    await bridge.cache.delete(keys.linked_user("tiktok", PROFILE.open_id))
    keycloak.miss_next_search = True

    again = await bridge.exchange.exchange(request("act.two"))
    assert again.user_id == first.user_id
    assert again.created is False  # found through the 409, not created: logs and answers say so
    assert len(keycloak.users) == 1
    assert keycloak.calls["create"] == 2  # the second one met the 409


async def test_sign_ins_racing_for_an_uncached_identity_search_keycloak_once(tiktok: FakeTikTok) -> None:
    """Ten sign-ins of a linked identity whose cache entry is gone take turns at the identity's lock:
    the first searches Keycloak and caches the id as it lets go, the nine behind it read that entry
    with the lock (a search is the dearest admin call under fine-grained permissions)."""
    keycloak = LateSearchKeycloak()
    bridge = service(tiktok, keycloak)
    first = await bridge.exchange.exchange(request("act.one"))
    await bridge.cache.delete(keys.linked_user("tiktok", PROFILE.open_id))
    searches = keycloak.calls["find"]

    racing = await asyncio.gather(*(bridge.exchange.exchange(request("act.two")) for _ in range(10)))

    assert {r.user_id for r in racing} == {first.user_id}
    assert not any(r.created for r in racing)
    assert keycloak.calls["find"] - searches == 1
    assert keycloak.calls["create"] == 1  # only the first sign-in's


def test_deterministic_username_is_stable_and_valid() -> None:
    """Usernames depend only on the open_id and use characters Keycloak accepts."""
    name = deterministic_username("tiktok_", "-000Ab/C:d e")
    assert name == deterministic_username("tiktok_", "-000Ab/C:d e")
    assert name != deterministic_username("tiktok_", "-000Ab/C:d E")
    assert name.startswith("tiktok_")
    assert len(name) == len("tiktok_") + 20
    assert name == name.lower()
    assert name.replace("_", "").isalnum()


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


def test_an_identitys_user_and_tombstone_keys_share_a_redis_cluster_slot() -> None:
    """MGET reads both in one round trip only if Redis Cluster keeps them in one slot (a hash tag)."""
    for open_id in ("-000AbC", "a}b{c", "x" * 200):
        user_key, revoked_key = keys.linked_user("tiktok", open_id), keys.deauthorized("tiktok", open_id)
        lock_key = keys.provisioning_lock("tiktok", open_id)
        assert len({user_key, revoked_key, lock_key}) == 3
        assert key_slot(user_key.encode()) == key_slot(revoked_key.encode()) == key_slot(lock_key.encode())


def _grant(
    scopes: frozenset[str] = frozenset({"user.info.basic"}), open_id: str = PROFILE.open_id
) -> CodeGrant:
    return CodeGrant(access_token="act.from-code", open_id=open_id, scopes=scopes, expires_in=86400)


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


async def test_new_users_join_the_default_groups(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """Configured groups that exist are named in the create call; they are checked once per process."""
    keycloak.groups = {"/tiktok-users"}
    bridge = service(tiktok, keycloak, default_groups=("/tiktok-users",))
    user_id = (await bridge.exchange.exchange(request())).user_id
    tiktok.profiles["act.other"] = replace(PROFILE, open_id="-000Other")
    await bridge.exchange.exchange(request("act.other"))

    assert keycloak.users[user_id]["groups"] == ["/tiktok-users"]
    assert keycloak.calls["groups"] == 1


async def test_a_missing_default_group_is_a_configuration_error(
    tiktok: FakeTikTok, keycloak: FakeKeycloak
) -> None:
    """A group that does not exist is the operator's mistake: a server error, and no user created."""
    with pytest.raises(ServerError) as refused:
        await service(tiktok, keycloak, default_groups=("/nope",)).exchange.exchange(request())
    assert "/nope" in refused.value.detail
    assert not keycloak.users


async def test_new_users_get_the_default_realm_roles(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """Default realm roles are mapped to a new user right after it is created."""
    keycloak.realm_roles = {"tiktok-user"}
    user_id = (
        await service(tiktok, keycloak, default_realm_roles=("tiktok-user",)).exchange.exchange(request())
    ).user_id
    assert keycloak.users[user_id]["realmRoles"] == ["tiktok-user"]


async def test_a_failed_role_mapping_removes_the_new_user(tiktok: FakeTikTok, keycloak: FakeKeycloak) -> None:
    """No half-provisioned users: without its roles the account is deleted and the sign-in fails; the
    next sign-in provisions it afresh."""
    keycloak.realm_roles = {"tiktok-user"}
    keycloak.fail_role_mapping = True
    bridge = service(tiktok, keycloak, default_realm_roles=("tiktok-user",))
    with pytest.raises(UpstreamUnavailable):
        await bridge.exchange.exchange(request())
    assert not keycloak.users

    keycloak.fail_role_mapping = False
    result = await bridge.exchange.exchange(request())
    assert result.created
    assert keycloak.users[result.user_id]["realmRoles"] == ["tiktok-user"]


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
