"""The typed stores over process memory: the keys each writes, how it encodes its entries, how long it
keeps them, and what an absent or unreadable entry reads as."""

from __future__ import annotations

import json
import time

import pytest
from redis.crc import key_slot

from bridge.domain.model import (
    CachedUser,
    ExternalIdentity,
    Held,
    IdentityCheck,
    IdentityState,
    PendingDeauthorization,
    SessionRecord,
)
from bridge.storage import keys
from bridge.storage.admin_tokens import AdminTokenStore
from bridge.storage.cache import MemoryCache
from bridge.storage.deauthorizations import DeauthorizationQueue
from bridge.storage.identities import IdentityStore
from bridge.storage.profiles import PROVEN_ADDRESS_TTL, ProfileStore, decode_profile, encode_profile
from bridge.storage.recent_profiles import RecentProfiles
from bridge.storage.seen import DPOP_PROOF_TTL, WEBHOOK_DELIVERY_TTL, SeenOnce
from bridge.storage.sessions import SessionStore


def fresh_profile() -> ExternalIdentity:
    """A profile verified now: process memory keeps one only for its lifetime from `verified_at`, so a
    module-level profile made at import would age out when the suite runs long before this file."""
    return ExternalIdentity("-000a", "u", "Name", "https://a", "user", is_verified=False)


class TtlCache(MemoryCache):
    """Process memory that notes the lifetime each key was written with."""

    def __init__(self) -> None:
        super().__init__()
        self.ttls: dict[str, float] = {}
        self.reads = 0

    async def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:
        self.ttls[key] = ttl
        await super().set(key, value, ttl, durable=durable)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        self.ttls[key] = ttl
        return await super().add(key, value, ttl)

    async def get_many(self, *keys_: str) -> list[bytes | None]:
        self.reads += 1
        return await super().get_many(*keys_)


# ---------------------------------------------------------------------------------------- profiles


def test_profile_json_round_trip() -> None:
    """Profiles survive the cache's serialisation unchanged."""
    profile = fresh_profile()
    assert decode_profile(encode_profile(profile)) == profile


async def test_a_kept_profile_is_read_back_under_its_hashed_key_for_the_profile_ttl() -> None:
    """`keep` writes the token's profile entry (a SHA-256 key, never the token) for the profile TTL."""
    profile = fresh_profile()
    cache = TtlCache()
    store = ProfileStore(cache, profile_ttl=300, negative_ttl=30)
    await store.keep("act.secret", profile)
    key = keys.profile("act.secret")
    assert "act.secret" not in key
    assert cache.ttls == {key: 300}
    assert decode_profile(await cache.get(key) or b"") == profile
    found = await store.lookup("act.secret")
    assert (found.profile, found.rejected, found.local) == (profile, False, False)


async def test_a_rejected_token_reads_as_rejected_for_the_negative_ttl() -> None:
    """`reject` writes the token's negative entry for the negative TTL; a lookup says rejected, no profile."""
    cache = TtlCache()
    store = ProfileStore(cache, profile_ttl=300, negative_ttl=30)
    await store.reject("act.bad")
    assert cache.ttls == {keys.rejected("act.bad"): 30}
    found = await store.lookup("act.bad")
    assert (found.profile, found.rejected) == (None, True)
    assert cache.reads == 1  # the profile and the refusal in one read


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b'{"union_id": "u"}', b'{"open_id": "o", "verified_at": "x"}']
)
async def test_an_unreadable_profile_entry_reads_as_unknown(raw: bytes) -> None:
    """A profile entry this version cannot read is neither a profile nor a refusal: TikTok is asked."""
    cache = MemoryCache()
    await cache.set(keys.profile("act.t"), raw, 60)
    found = await ProfileStore(cache, profile_ttl=60, negative_ttl=60).lookup("act.t")
    assert (found.profile, found.rejected) == (None, False)


async def test_this_process_copy_answers_without_a_read() -> None:
    """A profile read once from the shared cache is answered from memory after, marked local."""
    profile = fresh_profile()
    cache = TtlCache()
    recent = RecentProfiles(10, 300)
    store = ProfileStore(cache, profile_ttl=300, negative_ttl=30, recent=recent)
    await cache.set(keys.profile("act.t"), encode_profile(profile), 300)
    first = await store.lookup("act.t")
    second = await store.lookup("act.t")
    assert (first.local, second.local, second.profile) == (False, True, profile)
    assert cache.reads == 1


async def test_a_vouched_address_is_proven_for_a_day() -> None:
    """`vouch_for` keeps the address (hashed) for `PROVEN_ADDRESS_TTL`; another address is not proven."""
    cache = TtlCache()
    store = ProfileStore(cache, profile_ttl=300, negative_ttl=30)
    assert not await store.is_proven("203.0.113.7")
    await store.vouch_for("203.0.113.7")
    assert cache.ttls == {keys.proven_client("203.0.113.7"): PROVEN_ADDRESS_TTL}
    assert await store.is_proven("203.0.113.7")
    assert not await store.is_proven("203.0.113.8")


# -------------------------------------------------------------------------------------- identities


def identities(cache: MemoryCache) -> IdentityStore:
    return IdentityStore(cache, idp_alias="tiktok", user_ttl=120, tombstone_ttl=300)


async def test_a_remembered_user_is_read_back_with_no_tombstone() -> None:
    """`remember` writes `{"id", "fp"}` under the identity's user key for the user TTL."""
    cache = TtlCache()
    await identities(cache).remember("o", CachedUser("kc-1", "fp1"))
    key = keys.linked_user("tiktok", "o")
    assert cache.ttls == {key: 120}
    assert json.loads(await cache.get(key) or b"") == {"id": "kc-1", "fp": "fp1"}
    assert await identities(cache).read("o") == (CachedUser("kc-1", "fp1"), None)


async def test_a_tombstone_is_kept_as_long_as_profiles_and_read_as_its_time() -> None:
    """`deauthorized` writes the time (a float's repr) under the identity's own key for the tombstone TTL."""
    cache = TtlCache()
    now = time.time()
    await identities(cache).deauthorized("o", now)
    assert cache.ttls == {keys.deauthorized("tiktok", "o"): 300}
    assert await identities(cache).read("o") == (None, now)
    await identities(cache).forget("o")  # forgetting the user leaves the tombstone
    assert await identities(cache).read("o") == (None, now)


@pytest.mark.parametrize(
    ("raw", "user"),
    [
        (b'{"id": "kc-1"}', CachedUser("kc-1", None)),  # written without a fingerprint: synced again
        (b'{"fp": "x"}', None),
        (b"garbage", None),
        (b"[1]", None),
    ],
)
async def test_an_odd_user_entry_reads_as_what_it_can_tell(raw: bytes, user: CachedUser | None) -> None:
    """A user entry without a fingerprint is a user to sync; one without an id, or unreadable, is none."""
    cache = MemoryCache()
    await cache.set(keys.linked_user("tiktok", "o"), raw, 60)
    await cache.set(keys.deauthorized("tiktok", "o"), b"not a time", 60)
    assert await identities(cache).read("o") == (user, None)


async def test_provisioning_reads_the_entry_with_the_lock_and_writes_it_with_the_release() -> None:
    """The provisioning lock (the identity's lock key) comes with the cached user; the release writes it."""
    cache = TtlCache()
    store = identities(cache)
    async with store.provisioning("o", ttl=5, wait=1) as entry:
        assert (entry.held, entry.user) == (Held.AT_ONCE, None)
        async with cache.lock(keys.provisioning_lock("tiktok", "o"), ttl=5, wait=0) as other:
            assert not other  # the lock is the identity's provisioning lock
        await entry.save_and_release(CachedUser("kc-1", "fp"))
    assert cache.ttls == {keys.linked_user("tiktok", "o"): 120}
    async with store.lock("o", ttl=5, wait=0) as again:
        assert again is Held.AT_ONCE  # released with the write
    async with store.provisioning("o", ttl=5, wait=1) as entry:
        assert entry.user == CachedUser("kc-1", "fp")


async def test_the_identity_state_judges_tombstone_then_entry() -> None:
    """A check is current with the exact user and no later tombstone; stale otherwise; revoked by a
    tombstone at or after the verification."""
    cache = MemoryCache()
    store = identities(cache)
    now = time.time()
    check = IdentityCheck("o", CachedUser("kc-1", "fp"), verified_at=now)
    assert await store.state(check) is IdentityState.STALE
    await store.remember("o", CachedUser("kc-1", "other-fp"))
    assert await store.state(check) is IdentityState.STALE
    await store.remember("o", CachedUser("kc-1", "fp"))
    assert await store.state(check) is IdentityState.CURRENT
    await store.deauthorized("o", now)
    assert await store.state(check) is IdentityState.REVOKED


# ---------------------------------------------------------------------------------- deauthorization


async def test_a_new_deauthorization_is_kept_until_the_horizon_and_due_at_once() -> None:
    """`add` keeps the record (received, no attempts) for the horizon and schedules it at its arrival."""
    cache = TtlCache()
    queue = DeauthorizationQueue(cache, idp_alias="tiktok", horizon=3600)
    now = time.time()
    await queue.add("o", now)
    assert cache.ttls == {keys.pending_deauthorization("tiktok", "o"): 3600}
    assert await queue.read("o") == PendingDeauthorization(now, 0)
    assert await queue.due(now, 10) == ["o"]
    assert await cache.due(keys.DEAUTHORIZATION_QUEUE, now, 10) == ["o"]


async def test_a_postponed_deauthorization_lives_until_the_horizon_from_its_arrival() -> None:
    """`postpone` keeps the record only what is left of the horizon (a second at least), due later."""
    cache = TtlCache()
    queue = DeauthorizationQueue(cache, idp_alias="tiktok", horizon=3600)
    now = time.time()
    await queue.postpone("o", PendingDeauthorization(now - 600, 2), now + 40)
    assert cache.ttls[keys.pending_deauthorization("tiktok", "o")] == pytest.approx(3000, abs=5)
    assert await queue.read("o") == PendingDeauthorization(now - 600, 2)
    assert await queue.due(now, 10) == []
    assert await queue.due(now + 40, 10) == ["o"]
    await queue.postpone("o", PendingDeauthorization(now - 7200, 9), now + 40)
    assert cache.ttls[keys.pending_deauthorization("tiktok", "o")] == 1.0


async def test_an_unreadable_record_reads_as_none_and_drop_forgets_both() -> None:
    """A record this version cannot read is no record; `drop` deletes the record and its schedule."""
    cache = MemoryCache()
    queue = DeauthorizationQueue(cache, idp_alias="tiktok", horizon=3600)
    await queue.add("o", time.time())
    await cache.set(keys.pending_deauthorization("tiktok", "o"), b'{"received": 1}', 60)
    assert await queue.read("o") is None
    await queue.drop("o")
    assert await cache.get(keys.pending_deauthorization("tiktok", "o")) is None
    assert await queue.due(time.time() + 10, 10) == []


async def test_claiming_takes_the_identity_deauthorization_lock() -> None:
    """`claim` is the identity's deauthorization lock: a second claimer is refused while it is held."""
    queue = DeauthorizationQueue(MemoryCache(), idp_alias="tiktok", horizon=60)
    async with queue.claim("o", ttl=5, wait=0) as first:
        assert first is Held.AT_ONCE
        async with queue.claim("o", ttl=5, wait=0) as second:
            assert second is Held.NOT_TAKEN


# ------------------------------------------------------------------------------------------ sessions


def record(**overrides: object) -> SessionRecord:
    now = time.time()
    values: dict[str, object] = {
        "user_id": "kc-1",
        "open_id": "o",
        "scope": ("openid",),
        "created": now,
        "last_used": now,
        "current": "h1",
        "audiences": ("api",),
    }
    return SessionRecord(**(values | overrides))  # type: ignore[arg-type]


def sessions(cache: MemoryCache) -> SessionStore:
    return SessionStore(cache, idp_alias="tiktok", max_lifetime=7776000)


async def test_a_saved_session_is_read_back_and_kept_as_long_as_it_lasts() -> None:
    """`save` writes the record under the session's key for its remaining life, a second at least."""
    cache = TtlCache()
    store = sessions(cache)
    kept = record()
    await store.save("sid", kept, 3600.7)
    assert cache.ttls == {keys.session("sid"): 3600}
    assert await store.read("sid") == kept
    await store.save("sid", kept, 0)
    assert cache.ttls == {keys.session("sid"): 1}
    await store.delete("sid")
    assert await store.read("sid") is None


@pytest.mark.parametrize("raw", [b"nope", b"[]", b'{"user_id": "kc-1"}'])
async def test_an_unreadable_session_is_no_session(raw: bytes) -> None:
    """A record this version cannot read is over, as an absent one is."""
    cache = MemoryCache()
    await cache.set(keys.session("sid"), raw, 60)
    assert await sessions(cache).read("sid") is None


async def test_a_session_written_by_a_newer_replica_is_read() -> None:
    """Fields a newer replica added are ignored (a rolling upgrade reads every record)."""
    cache = MemoryCache()
    kept = record()
    await cache.set(keys.session("sid"), json.dumps({**vars(kept), "new_field": 1}).encode(), 60)
    assert await sessions(cache).read("sid") == kept


async def test_a_session_written_before_strapi_jwt_sessions_existed_is_a_tiktok_session() -> None:
    """A record without `by_account` (written by an older replica) reads as the TikTok session it is."""
    cache = MemoryCache()
    old = {k: v for k, v in vars(record()).items() if k != "by_account"}
    await cache.set(keys.session("sid"), json.dumps(old).encode(), 60)
    read = await sessions(cache).read("sid")
    assert read is not None
    assert (read.by_account, read.open_id) == (False, "o")


async def test_an_account_ends_under_the_strapi_jwt_providers_alias_apart_from_identities() -> None:
    """A Strapi jwt session's not-before time lies under the Strapi jwt provider's alias: ending the
    account ends it (and the locked write sees it), and an identity of the same name is not touched."""
    cache = TtlCache()
    store = sessions(cache)
    kept = record(user_id="kc-1", open_id="kc-1", by_account=True)
    await store.save("sid", kept, 60)
    await store.end_identity("kc-1", kept.created)
    assert await store.ended_at("kc-1", by_account=True) is None
    async with store.locked("sid", ttl=5, wait=1) as entry:
        assert await entry.save_and_release_unless_ended(kept, 60)
    await store.end_identity("kc-1", kept.created, by_account=True)
    assert keys.sessions_not_before("tiktok-strapi-jwt", "kc-1") in cache.ttls
    assert await store.ended_at("kc-1", by_account=True) == kept.created
    async with store.locked("sid", ttl=5, wait=1) as entry:
        assert not await entry.save_and_release_unless_ended(kept, 60)
    assert await store.read("sid") is None


async def test_ending_an_identity_keeps_its_time_as_long_as_a_session_lasts() -> None:
    """`end_identity` writes the time under the identity's not-before key for the maximum lifetime."""
    cache = TtlCache()
    store = sessions(cache)
    assert await store.ended_at("o") is None
    now = time.time()
    await store.end_identity("o", now)
    assert cache.ttls == {keys.sessions_not_before("tiktok", "o"): 7776000}
    assert await store.ended_at("o") == now
    await cache.set(keys.sessions_not_before("tiktok", "o"), b"garbage", 60)
    assert await store.ended_at("o") is None


async def test_a_locked_session_is_written_unless_its_identity_ended_since_it_started() -> None:
    """The locked record is written with the release while the identity's end time is before the
    session's start, deleted instead once it is at or after it."""
    cache = MemoryCache()
    store = sessions(cache)
    kept = record()
    await store.save("sid", kept, 60)
    async with store.locked("sid", ttl=5, wait=1) as entry:
        assert (entry.held, entry.record) == (Held.AT_ONCE, kept)
        assert await entry.save_and_release_unless_ended(kept, 60)
    await store.end_identity("o", kept.created)
    async with store.locked("sid", ttl=5, wait=1) as entry:
        assert not await entry.save_and_release_unless_ended(kept, 60)
    assert await store.read("sid") is None


async def test_a_session_starts_only_over_the_identity_state_expected() -> None:
    """`start_if_current` writes the session only when the identity store holds the expected user."""
    cache = MemoryCache()
    store = sessions(cache)
    check = IdentityCheck("o", CachedUser("kc-1", "fp"), verified_at=time.time())
    assert await store.start_if_current(check, "sid", record(), 60) is IdentityState.STALE
    assert await store.read("sid") is None
    await identities(cache).remember("o", CachedUser("kc-1", "fp"))
    assert await store.start_if_current(check, "sid", record(), 60) is IdentityState.CURRENT
    assert await store.read("sid") is not None


# ---------------------------------------------------------------------------- seen once, admin token


@pytest.mark.parametrize(
    ("make", "key", "ttl"),
    [
        (SeenOnce.webhook_deliveries, keys.webhook_delivery, WEBHOOK_DELIVERY_TTL),
        (SeenOnce.dpop_proofs, keys.dpop_proof, DPOP_PROOF_TTL),
    ],
)
async def test_seen_once_answers_true_the_first_time_only(make: object, key: object, ttl: float) -> None:
    """The first sighting is new, the next is not; kept under a hash of what was seen, for its lifetime."""
    cache = TtlCache()
    seen = make(cache)  # type: ignore[operator]
    assert await seen.first_time(b"body")
    assert not await seen.first_time(b"body")
    assert await seen.first_time(b"other")
    assert cache.ttls[key(b"body")] == ttl  # type: ignore[operator]
    assert all("body" not in k for k in cache.ttls)


async def test_the_admin_token_is_shared_until_it_expires() -> None:
    """`keep` writes the token with its expiry for as long as it lives (a second at least); an unreadable
    entry reads as none."""
    cache = TtlCache()
    store = AdminTokenStore(cache)
    expires = time.time() + 300
    await store.keep("app", "admin", "tok", expires)
    key = keys.admin_token("app", "admin")
    assert cache.ttls[key] == pytest.approx(300, abs=2)
    assert await store.read("app", "admin") == ("tok", expires)
    assert await store.read("app", "other") is None
    await store.keep("app", "admin", "tok", time.time() - 5)
    assert cache.ttls[key] == 1.0
    await cache.set(key, b"{}", 60)
    assert await store.read("app", "admin") is None


def test_an_identitys_user_and_tombstone_keys_share_a_redis_cluster_slot() -> None:
    """MGET reads both in one round trip only if Redis Cluster keeps them in one slot (a hash tag)."""
    for open_id in ("-000AbC", "a}b{c", "x" * 200):
        user_key, revoked_key = keys.linked_user("tiktok", open_id), keys.deauthorized("tiktok", open_id)
        lock_key = keys.provisioning_lock("tiktok", open_id)
        assert len({user_key, revoked_key, lock_key}) == 3
        assert key_slot(user_key.encode()) == key_slot(revoked_key.encode()) == key_slot(lock_key.encode())
