"""The session store's lock-with-entry (`Store.locked_entry`) and session refreshes over it, against a
real redis-server and a real Redis Cluster: each test runs on both. No Keycloak: the minter and TikTok
are the unit tests' fakes."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from bridge.domain.errors import TemporarilyUnavailable, UpstreamUnavailable
from bridge.domain.model import Held
from bridge.services.sessions import NewSession, SessionPolicy, SessionService, parse_token
from bridge.storage import keys
from bridge.storage.cache import RedisCache
from bridge.storage.redis_connection import RedisConnection
from bridge.storage.sealing import Sealer, new_key
from bridge.storage.sessions import SessionStore
from devstack.redis import RedisServer
from tests.integration.test_redis_cluster import start_cluster
from tests.unit.fakes import assert_save_unless_ended_outcomes, assert_set_if_current_outcomes
from tests.unit.test_sessions import FakeMinter, FakeTikTokGrants

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from devstack.redis import RedisClusterNodes
    from tests.conftest import Clock

DAY = 86400.0


@pytest.fixture(scope="module", params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server alone, then a Redis Cluster of three masters (every test runs on each)."""
    server: RedisServer | RedisClusterNodes
    if request.param == "redis":
        server = RedisServer(work_dir=tmp_path_factory.mktemp("redis"))
        server.start()
    else:
        server = start_cluster(tmp_path_factory)
    try:
        yield server.url
    finally:
        server.stop()


class CommandLog:
    """Every command the Redis client sends (its name), recorded on the client itself: one per round
    trip, whatever the bridge's own metrics say."""

    def __init__(self, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN401 - either client
        self.sent: list[str] = []
        send = client.execute_command

        async def recorded(*args: Any, **options: Any) -> Any:  # noqa: ANN401 - redis-py's own signature
            self.sent.append(str(args[0]).upper())
            return await send(*args, **options)

        monkeypatch.setattr(client, "execute_command", recorded)


@pytest.fixture
async def connection(redis_url: str) -> AsyncIterator[RedisConnection]:
    redis = RedisConnection.from_url(redis_url, timeout=2)
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture
def store(connection: RedisConnection) -> RedisCache:
    return RedisCache(connection.client)


@pytest.fixture
def commands(connection: RedisConnection, monkeypatch: pytest.MonkeyPatch) -> CommandLog:
    return CommandLog(connection.client, monkeypatch)


def service(store: RedisCache, clock: Clock) -> SessionService:
    """Sessions over `store`, as one replica holds them; several of these over one store are replicas."""
    return SessionService(
        store=SessionStore(store, idp_alias="tiktok", max_lifetime=int(90 * DAY)),
        minter=FakeMinter(),
        provider=FakeTikTokGrants(),
        sealer=SEALER,
        policy=SessionPolicy(
            idle_timeout=int(30 * DAY),
            max_lifetime=int(90 * DAY),
            reuse_grace=30.0,
            provider_recheck=True,
            provider_recheck_interval=int(DAY),
        ),
        clock=clock,
    )


SEALER = Sealer.from_keys([new_key()])  # shared by the replicas of a test, as their settings would be


async def start(sessions: SessionService) -> str:
    started = await sessions.start(NewSession(user_id="kc-1", open_id="-000a", scope=("openid",)))
    return started.refresh_token


def session_id(token: str) -> str:
    parsed = parse_token(token)
    assert parsed is not None
    return parsed[0]


@contextlib.asynccontextmanager
async def redis_commands(redis_url: str, kinds: tuple[str, ...]) -> AsyncIterator[list[str]]:
    """The commands redis-server receives on keys of these kinds (`tkb:v1:<kind>:...`) while the block
    runs (MONITOR), as their
    names: one per round trip, the commands a script runs inside Redis left out. Filled when the block
    ends (up to a marker sent after it, so nothing in flight is missed)."""
    marker = f"end-of-block-{secrets.token_hex(8)}"
    seen: list[str] = []
    watcher, sender = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    try:
        async with watcher.monitor() as monitor:
            yield seen
            await sender.echo(marker)
            while marker not in (command := await monitor.next_command())["command"]:
                ours = any(f"tkb:v1:{kind}:" in command["command"] for kind in kinds)
                if command["client_type"] != "lua" and ours:
                    seen.append(command["command"].split(" ", 1)[0].upper())
    finally:
        await watcher.aclose()
        await sender.aclose()


def timed_redis_operations() -> dict[str, float]:
    """How many Redis operations the bridge timed so far, by name (what the bench counts)."""
    counts: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name != "bridge_upstream_request_seconds":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels["upstream"] == "redis":
                operation = sample.labels["operation"]
                counts[operation] = counts.get(operation, 0.0) + sample.value
    return counts


def entry_keys() -> tuple[str, str]:
    """A fresh session's record and lock keys (one hash tag, so one slot)."""
    sid = uuid.uuid4().hex[:22]
    return keys.session(sid), keys.session_lock(sid)


# ------------------------------------------------------------------------------ the store


async def test_a_session_is_written_only_if_the_identitys_cached_state_is_as_expected(
    store: RedisCache, commands: CommandLog
) -> None:
    """A returning sign-in's check and session write: one script on a plain Redis (its keys lie in two
    slots), a read of the identity's keys and then the write on a Cluster. Same outcomes either way,
    the tombstone's time compared as the exchange compares it (`<=`, Lua's number read of the float)."""
    await assert_set_if_current_outcomes(store)
    cluster = isinstance(store._redis, RedisCluster)
    assert ("MGET" in commands.sent) is cluster
    assert ("EVALSHA" in commands.sent) is not cluster


async def test_a_rotation_is_written_only_if_the_identitys_sessions_were_not_ended(
    store: RedisCache,
) -> None:
    """The rotated record's write with the lock's release reads the not-before time in the same script
    on a plain Redis; on a Cluster, where that time has another slot, it is read first. Same outcomes."""
    before = timed_redis_operations().get("set_unless_ended_and_unlock", 0.0)
    await assert_save_unless_ended_outcomes(store)
    scripts = timed_redis_operations().get("set_unless_ended_and_unlock", 0.0) - before
    assert scripts == (0 if isinstance(store._redis, RedisCluster) else 3)


async def test_the_lock_comes_with_the_entry_and_goes_with_its_write(
    store: RedisCache, connection: RedisConnection
) -> None:
    """A free lock is taken at once with the entry's value (None when absent); save_and_release writes
    the entry with its ttl and deletes the lock, so the next taker takes it at once, reading the write."""
    key, lock_key = entry_keys()
    async with store.locked_entry(key, lock_key=lock_key, ttl=5, wait=1) as entry:
        assert (entry.held, entry.value) == (Held.AT_ONCE, None)
        await entry.save_and_release(b"v1", 60)
        assert not await connection.client.exists(lock_key)
        assert 0 < await connection.client.pttl(key) <= 60_000
        async with store.locked_entry(key, lock_key=lock_key, ttl=5, wait=0) as following:
            assert (following.held, following.value) == (Held.AT_ONCE, b"v1")
        # Ended without a write: the block's end released the lock.
        assert not await connection.client.exists(lock_key)


async def test_a_held_lock_is_waited_for_with_the_holders_write_or_refused_after_the_wait(
    store: RedisCache,
) -> None:
    """A taker that finds the lock held reads nothing: past its wait it is NOT_TAKEN with no value (the
    entry exists) and nothing to save; if the holder writes and releases in time, it is taken after
    waiting with what the holder wrote."""
    key, lock_key = entry_keys()
    await store.set(key, b"old", 60)
    async with store.locked_entry(key, lock_key=lock_key, ttl=5, wait=1) as holder:
        assert holder.value == b"old"
        async with store.locked_entry(key, lock_key=lock_key, ttl=5, wait=0.05) as refused:
            assert (refused.held, refused.value) == (Held.NOT_TAKEN, None)
            with pytest.raises(RuntimeError):
                await refused.save_and_release(b"not mine", 60)
        assert await store.get(key) == b"old"

        async def wait_for_it() -> tuple[Held, bytes | None]:
            async with store.locked_entry(key, lock_key=lock_key, ttl=5, wait=2) as waiter:
                return waiter.held, waiter.value

        waiting = asyncio.create_task(wait_for_it())
        await asyncio.sleep(0.05)
        await holder.save_and_release(b"new", 60)
    assert await waiting == (Held.AFTER_WAITING, b"new")


async def test_the_write_after_an_expired_lock_keeps_the_next_owners_lock(
    store: RedisCache, connection: RedisConnection
) -> None:
    """A holder whose lock expired still writes its entry (as a plain SET would), but neither its write
    nor the end of its block deletes the lock another owner took since."""
    key, lock_key = entry_keys()
    async with store.locked_entry(key, lock_key=lock_key, ttl=0.05, wait=1) as late:
        await asyncio.sleep(0.1)  # the lock's ttl runs out
        async with store.locked_entry(key, lock_key=lock_key, ttl=5, wait=0) as other:
            assert other.held is Held.AT_ONCE
            owner = await connection.client.get(lock_key)
            await late.save_and_release(b"late", 60)
            assert await store.get(key) == b"late"
            assert await connection.client.get(lock_key) == owner
    async with store.locked_entry(key, lock_key=lock_key, ttl=5, wait=0) as following:
        assert (following.held, following.value) == (Held.AT_ONCE, b"late")


async def test_the_plain_lock_and_the_entry_lock_are_one_lock(store: RedisCache) -> None:
    """`lock(lock_key)` (as the tests and other callers hold it) and `locked_entry` exclude each other;
    a plain lock is released as before."""
    key, lock_key = entry_keys()
    async with store.lock(lock_key, ttl=5, wait=1) as held:
        assert held is Held.AT_ONCE
        async with store.locked_entry(key, lock_key=lock_key, ttl=5, wait=0.05) as refused:
            assert refused.held is Held.NOT_TAKEN
    async with store.locked_entry(key, lock_key=lock_key, ttl=5, wait=0) as entry:
        assert entry.held is Held.AT_ONCE
        async with store.lock(lock_key, ttl=5, wait=0.05) as refused_too:
            assert refused_too is Held.NOT_TAKEN


async def test_keys_of_two_slots_are_refused_as_a_cache_error(store: RedisCache, redis_url: str) -> None:
    """The scripts name both keys as KEYS: a cluster refuses a lock and an entry in different slots, and
    that is the cache's UpstreamUnavailable (a single server takes any keys)."""
    key, lock_key = "tkb:test:entry-a", "tkb:test:lock-b"
    assert key_slot(key.encode()) != key_slot(lock_key.encode())
    if not redis_url.startswith("redis+cluster"):
        async with store.locked_entry(key, lock_key=lock_key, ttl=5, wait=0) as entry:
            assert entry.held is Held.AT_ONCE
        return
    with pytest.raises(UpstreamUnavailable, match="lock_and_get failed"):
        async with store.locked_entry(key, lock_key=lock_key, ttl=5, wait=0):
            pass


# ------------------------------------------------------------------------------ sessions over it


async def test_a_refresh_with_its_lock_free_makes_two_round_trips_three_on_a_cluster(
    store: RedisCache, commands: CommandLog, connection: RedisConnection, clock: Clock
) -> None:
    """Counted twice: the commands the Redis client sent, and the operations the bridge timed (the
    bench's count): lock + record, then record + unlock in a script that reads the identity's
    not-before time too; on a Cluster that time has another slot and is read between the two. The
    lock is free after it: another refresh takes it at once."""
    sessions = service(store, clock)
    token = await start(sessions)
    # Once first, so the scripts are known to the node (a script new to a node costs a load, once).
    token = (await sessions.refresh(token, ())).grant.refresh_token
    commands.sent.clear()
    before = timed_redis_operations()

    token = (await sessions.refresh(token, ())).grant.refresh_token

    after = timed_redis_operations()
    spent = {name: after[name] - before.get(name, 0.0) for name in after if after[name] != before.get(name)}
    if isinstance(store._redis, RedisCluster):
        assert commands.sent == ["EVALSHA", "GET", "EVALSHA"]
        assert spent == {"lock_and_get": 1, "get": 1, "set_and_unlock": 1}
    else:
        assert commands.sent == ["EVALSHA", "EVALSHA"]
        assert spent == {"lock_and_get": 1, "set_unless_ended_and_unlock": 1}
    assert not await connection.client.exists(keys.session_lock(session_id(token)))
    async with store.lock(keys.session_lock(session_id(token)), ttl=5, wait=0) as next_refresh:
        assert next_refresh is Held.AT_ONCE


async def test_concurrent_refreshes_of_one_token_on_three_replicas_yield_one_live_successor(
    store: RedisCache, clock: Clock
) -> None:
    """Nine refreshes of one token at once, over three replicas sharing the store: every answer names
    the same successor, which is live; the token before it is within its grace, the successor rotates."""
    replicas = [service(store, clock) for _ in range(3)]
    token = await start(replicas[0])
    answers = await asyncio.gather(*(replicas[i % 3].refresh(token, ()) for i in range(9)))
    successors = {answer.grant.refresh_token for answer in answers}
    assert len(successors) == 1
    (successor,) = successors
    assert (await replicas[2].refresh(successor, ())).grant.refresh_token != successor


async def test_a_refresh_waits_for_a_held_lock_and_is_refused_after_its_wait(
    store: RedisCache, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh finding the session's lock held waits; past its wait it is temporarily_unavailable (503)
    and consumed nothing; a holder letting go within the wait is waited for."""
    monkeypatch.setattr("bridge.services.sessions.LOCK_WAIT", 0.1)
    sessions = service(store, clock)
    token = await start(sessions)
    lock_key = keys.session_lock(session_id(token))
    async with store.lock(lock_key, ttl=5, wait=0):
        with pytest.raises(TemporarilyUnavailable):
            await sessions.refresh(token, ())

    released = asyncio.Event()

    async def hold_briefly() -> None:
        async with store.lock(lock_key, ttl=5, wait=0):
            await released.wait()

    holder = asyncio.create_task(hold_briefly())
    await asyncio.sleep(0.02)
    asyncio.get_running_loop().call_later(0.03, released.set)
    assert (await sessions.refresh(token, ())).grant.refresh_token
    await holder


@pytest.mark.parametrize("how", ["lock", "locked_entry"])
async def test_a_lock_taken_though_its_answer_was_lost_is_released_once_redis_answers(
    store: RedisCache, connection: RedisConnection, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A lock command whose answer is lost (a timeout under load, a failover) may have taken the lock
    all the same: the bridge releases it in the background as soon as Redis answers, so the identity's
    next sign-in, on any replica, takes it at once instead of waiting out its ttl and answering 503."""
    lock_key = f"tkb:v1:lock:test:{{{uuid.uuid4().hex}}}"
    entry_key = lock_key.replace(":lock:", ":entry:")
    lost = {"answers": 0}

    def losing_the_first_answer(send: Any) -> Any:  # noqa: ANN401 - redis-py's own signatures
        async def sent(*args: Any, **options: Any) -> Any:  # noqa: ANN401
            answer = await send(*args, **options)
            if not lost["answers"]:
                lost["answers"] += 1
                raise aioredis.TimeoutError("the answer was lost on the way back")
            return answer

        return sent

    if how == "lock":
        monkeypatch.setattr(connection.client, "set", losing_the_first_answer(connection.client.set))
        taking = store.lock(lock_key, ttl=30, wait=1)
    else:
        monkeypatch.setattr(store, "_lock_and_get", losing_the_first_answer(store._lock_and_get))
        taking = store.locked_entry(entry_key, lock_key=lock_key, ttl=30, wait=1)  # type: ignore[assignment]
    with pytest.raises(UpstreamUnavailable):
        async with taking:
            pass
    assert lost["answers"] == 1
    async with asyncio.timeout(5):
        while await connection.client.exists(lock_key):  # noqa: ASYNC110 - polls Redis itself
            await asyncio.sleep(0.05)
    async with store.lock(lock_key, ttl=30, wait=0.1) as held:
        assert held is Held.AT_ONCE
