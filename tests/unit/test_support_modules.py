"""The in-memory cache, assertion signing and log redaction."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any, cast

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet
from redis.asyncio import Redis

from bridge.domain.errors import ServerError
from bridge.domain.model import Held
from bridge.keycloak.assertions import AssertionSigner, load_key, load_or_generate_key
from bridge.observability.logs import JsonFormatter, RedactingFilter, redact
from bridge.storage import keys
from bridge.storage.cache import MemoryCache
from bridge.storage.redis_connection import redis_client
from tests.unit.fakes import assert_lock_outcomes

if TYPE_CHECKING:
    import socket
    from pathlib import Path

    import uvicorn
    from joserfc.jwk import KeySetSerialization

    from bridge.storage.engine import Store


async def test_memory_cache_expires_entries() -> None:
    """Entries vanish after their TTL."""
    cache = MemoryCache()
    await cache.set("k", b"v", ttl=0.05)
    assert await cache.get("k") == b"v"
    await asyncio.sleep(0.06)
    assert await cache.get("k") is None


async def test_memory_cache_is_bounded_least_recently_used_first() -> None:
    """The cache never holds more than its bound; the least recently used entry goes first."""
    cache = MemoryCache(max_entries=2)
    await cache.set("a", b"1", 60)
    await cache.set("b", b"2", 60)
    await cache.get("a")
    await cache.set("c", b"3", 60)
    assert len(cache) == 2
    assert await cache.get("b") is None
    assert await cache.get("a") == b"1"


async def test_memory_lock_serialises_and_times_out() -> None:
    """A held lock makes a second taker wait, and report failure when the wait runs out; a taker that
    waited for the holder says so (the holder may have done the work)."""
    await assert_lock_outcomes(MemoryCache(), "l")


async def test_memory_lock_handed_to_a_waiter_is_not_taken_by_a_newcomer_too() -> None:
    """A lock released to a waiting taker stays that taker's: a third one asking meanwhile waits (it
    once found the lock forgotten and took a fresh one, two holders at once)."""
    cache = MemoryCache()
    waiter_inside, waiter_done = asyncio.Event(), asyncio.Event()

    async def waiter() -> None:
        async with cache.lock("l", ttl=5, wait=1) as held:
            assert held is Held.AFTER_WAITING
            waiter_inside.set()
            await waiter_done.wait()

    async with cache.lock("l", ttl=5, wait=1):
        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)  # the waiter is queued on the held lock
    await waiter_inside.wait()
    async with cache.lock("l", ttl=5, wait=0.05) as newcomer:
        assert newcomer is Held.NOT_TAKEN
    waiter_done.set()
    await task
    async with cache.lock("l", ttl=5, wait=0.05) as free_again:
        assert free_again is Held.AT_ONCE
    assert not cache._locks  # nothing is left behind once every taker is gone


async def test_memory_lock_forgets_takers_that_gave_up_or_were_cancelled() -> None:
    """A taker that timed out or was cancelled while waiting counts no more: once the holder releases,
    the lock is free and nothing is kept for it."""
    cache = MemoryCache()

    async def wait_for_it() -> None:
        async with cache.lock("l", ttl=5, wait=5):
            pass

    async with cache.lock("l", ttl=5, wait=1):
        cancelled = asyncio.create_task(wait_for_it())
        await asyncio.sleep(0)
        cancelled.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cancelled
        async with cache.lock("l", ttl=5, wait=0.01) as timed_out:
            assert timed_out is Held.NOT_TAKEN
    assert not cache._locks  # the holder was the last taker
    async with cache.lock("l", ttl=5, wait=0.01) as free:
        assert free is Held.AT_ONCE


_memory_store: Store = MemoryCache()  # the memory cache is a store (mypy checks it here)


async def test_memory_locked_entry_reads_the_entry_as_it_takes_the_lock() -> None:
    """A free lock is taken at once with the entry's value (None when absent); it is the same lock as
    `lock(lock_key)`, so the two exclude each other."""
    cache = MemoryCache()
    async with cache.locked_entry("e", lock_key="l", ttl=5, wait=1) as entry:
        assert (entry.held, entry.value) == (Held.AT_ONCE, None)
        async with cache.lock("l", ttl=5, wait=0.01) as other:
            assert other is Held.NOT_TAKEN
    await cache.set("e", b"v1", 60)
    async with cache.locked_entry("e", lock_key="l", ttl=5, wait=1) as entry:
        assert (entry.held, entry.value) == (Held.AT_ONCE, b"v1")
    async with cache.lock("l", ttl=5, wait=0.01) as free:
        assert free is Held.AT_ONCE  # left without a write: released all the same


async def test_memory_save_and_release_writes_and_frees_the_lock_at_once() -> None:
    """After save_and_release the entry holds the new value (with its ttl) and the lock is free before
    the block ends; it is called once only, and leaving the block keeps nothing behind."""
    cache = MemoryCache()
    async with cache.locked_entry("e", lock_key="l", ttl=5, wait=1) as entry:
        await entry.save_and_release(b"v2", 0.05)
        assert await cache.get("e") == b"v2"
        async with cache.locked_entry("e", lock_key="l", ttl=5, wait=0) as next_one:
            assert (next_one.held, next_one.value) == (Held.AT_ONCE, b"v2")
            with pytest.raises(RuntimeError):
                await entry.save_and_release(b"again", 60)
    assert not cache._locks
    await asyncio.sleep(0.06)
    assert await cache.get("e") is None  # the ttl given to the write


async def test_memory_locked_entry_keeps_a_lock_taken_since_when_its_block_ends() -> None:
    """The block ending after save_and_release does not release a lock another taker holds by then."""
    cache = MemoryCache()
    other_inside, other_done = asyncio.Event(), asyncio.Event()

    async def other() -> None:
        async with cache.lock("l", ttl=5, wait=1):
            other_inside.set()
            await other_done.wait()

    async with cache.locked_entry("e", lock_key="l", ttl=5, wait=1) as entry:
        await entry.save_and_release(b"v", 60)
        task = asyncio.create_task(other())
        await other_inside.wait()
    async with cache.lock("l", ttl=5, wait=0.01) as refused:
        assert refused is Held.NOT_TAKEN  # still the other taker's
    other_done.set()
    await task


async def test_memory_locked_entry_waits_for_a_held_lock_and_reads_the_holders_write() -> None:
    """A held lock is waited for: taken after waiting, with what the holder saved; or not taken once the
    wait runs out, with nothing read and nothing to save."""
    cache = MemoryCache()
    await cache.set("e", b"old", 60)
    async with cache.locked_entry("e", lock_key="l", ttl=5, wait=1) as holder:
        async with cache.locked_entry("e", lock_key="l", ttl=5, wait=0.02) as refused:
            assert (refused.held, refused.value) == (Held.NOT_TAKEN, None)
            with pytest.raises(RuntimeError):
                await refused.save_and_release(b"not mine", 60)
        assert await cache.get("e") == b"old"

        async def wait_for_it() -> tuple[Held, bytes | None]:
            async with cache.locked_entry("e", lock_key="l", ttl=5, wait=1) as waiter:
                return waiter.held, waiter.value

        waiting = asyncio.create_task(wait_for_it())
        await asyncio.sleep(0.01)
        await holder.save_and_release(b"new", 60)
    assert await waiting == (Held.AFTER_WAITING, b"new")


async def test_memory_locked_entry_releases_when_its_block_raises() -> None:
    """An error in the block releases the lock and writes nothing."""
    cache = MemoryCache()
    with pytest.raises(ValueError, match="body"):
        async with cache.locked_entry("e", lock_key="l", ttl=5, wait=1):
            raise ValueError("body")
    async with cache.locked_entry("e", lock_key="l", ttl=5, wait=0) as entry:
        assert (entry.held, entry.value) == (Held.AT_ONCE, None)


def test_token_keys_hold_no_token() -> None:
    """Cache keys for token-derived entries contain a SHA-256, never the token."""
    for key in (keys.profile("act.secret-token!1234.va"), keys.rejected("act.secret-token!1234.va")):
        assert "secret" not in key
        assert key.startswith(keys.PREFIX)
        assert len(key.rsplit(":", 1)[1].strip("{}")) == 64
    # One hash tag for both, so one MGET reads them in Redis Cluster too.
    profile_key, rejected_key = keys.token_entries("act.secret-token!1234.va")
    assert profile_key.partition("{")[2] == rejected_key.partition("{")[2]
    assert profile_key != rejected_key
    assert keys.profile("\ud800") != keys.profile("\ud801")  # lone surrogates hash instead of crashing


def test_assertion_verifies_with_published_jwks() -> None:
    """A minted assertion verifies with the JWKS and has the claims Keycloak checks."""
    signer = AssertionSigner(key=load_key_from_new_pem(), issuer="https://bridge.example", lifetime=60)
    token = signer.mint("-000abc", "https://kc.example/realms/app")
    decoded = jwt.decode(
        token, KeySet.import_key_set(cast("KeySetSerialization", signer.jwks())), algorithms=["ES256"]
    )
    assert decoded.header == {"alg": "ES256", "kid": signer.kid, "typ": "JWT"}
    claims = decoded.claims
    assert (claims["iss"], claims["sub"], claims["aud"]) == (
        "https://bridge.example",
        "-000abc",
        "https://kc.example/realms/app",
    )
    assert claims["exp"] - claims["iat"] == 60
    assert signer.mint("-000abc", "aud") != signer.mint("-000abc", "aud")  # fresh jti each time
    assert "d" not in signer.jwks()["keys"][0]  # never the private part


def load_key_from_new_pem() -> ECKey:
    return ECKey.import_key(ECKey.generate_key("P-256", auto_kid=True).as_pem(private=True))


def test_generated_key_is_kept_and_reused(tmp_path: Path) -> None:
    """Without a configured key, one is generated once and every later load returns the same key."""
    first = load_or_generate_key(tmp_path)
    second = load_or_generate_key(tmp_path)
    assert first.kid == second.kid
    assert oct((tmp_path / "signing-key.pem").stat().st_mode & 0o777) == "0o600"


def test_wrong_key_type_is_a_clear_configuration_error(tmp_path: Path) -> None:
    """An RSA or garbage key file is refused with a message naming the file."""
    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    with pytest.raises(ServerError) as caught:
        load_key(bad)
    assert str(bad) in caught.value.detail


@pytest.mark.parametrize(
    "secret",
    [
        "act.8dsjbPDiBVQzq34dd1X2U47e6r6BsvP7eTBrwYa3O91XMFPpIeTq1pYYt2Ik!5096.va",
        "rft.z4K63WtDO7SFLl4jaI3yn4sUYSlTNTAS4NiYnLRt3iwLBOIH37UUZmamqgNM!5132.va",
        "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        "Bearer abcdefghijklmnop",
        "client_secret=hunter2hunter2",
        "code_verifier=abcdefghijklmnopqrstuvwxyz012345",
        "clt.abcdefghijklmnop",
        "tkb1.abcdefghijklmnop.qrstuvwxyz0123456789",
        "basic dXNlcjpwYXNzd29yZA==",
        "BEARER abcdefghijklmnop",
        "Access_Token=abcdefghijkl",
        "refresh_token=abcdefghijkl",
        "subject_token=act.abcdefghijkl!1234.va",
        "assertion=eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        "code=abcdefghijkl",
        "token=abcdefghijkl",
    ],
)
def test_redaction_masks_credentials(secret: str) -> None:
    """Anything shaped like a token, bearer header or secret form field is masked."""
    masked = redact(f"upstream said: {secret} (end)")
    assert secret not in masked
    assert "[REDACTED]" in masked


def test_json_log_line_is_redacted_including_extra_fields() -> None:
    """The formatter emits one JSON object; the filter masks secrets in the message and in extras."""
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "got %s", ("act.abcdefghijkl!1234.va",), None)
    record.detail = "Bearer abcdefghijklmnop"
    RedactingFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert "abcdefghijkl" not in json.dumps(line)
    assert line["level"] == "info"


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://:pw@127.0.0.1:6379/2", "Redis"),
        ("rediss://cache.example:6380/0", "Redis"),
        ("unix:///run/redis.sock?db=1", "Redis"),
        ("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster/3", "Redis"),
        ("redis+cluster://10.0.0.1:7000", "RedisCluster"),
    ],
)
def test_redis_urls_of_every_deployment_shape(url: str, kind: str) -> None:
    """Plain, TLS, socket, Sentinel and Cluster URLs give the right client without connecting."""
    client = redis_client(url, timeout=0.5)
    assert type(client).__name__ == kind
    if "sentinel" in url:
        assert isinstance(client, Redis)
        pool: Any = client.connection_pool  # a SentinelConnectionPool
        assert pool.service_name == "mymaster"
        assert pool.connection_kwargs["db"] == 3
        assert [
            tuple(s.connection_pool.connection_kwargs[k] for k in ("host", "port"))
            for s in pool.sentinel_manager.sentinels
        ] == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]


def test_sentinel_url_without_service_is_refused() -> None:
    """A Sentinel URL must name the monitored service."""
    with pytest.raises(ValueError, match="names the service"):
        redis_client("redis+sentinel://10.0.0.1:26379", timeout=0.5)


def test_served_connections_disable_nagle() -> None:
    """Accepted connections get TCP_NODELAY even when uvicorn bound the socket without IPPROTO_TCP."""
    import socket  # noqa: PLC0415
    from unittest.mock import MagicMock  # noqa: PLC0415

    from bridge.web.server import BridgeHttpProtocol  # noqa: PLC0415

    listener = socket.socket(family=socket.AF_INET)  # as uvicorn's bind_socket makes it: proto 0
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        transport = MagicMock()
        transport.get_extra_info.side_effect = lambda name, default=None: (
            accepted if name == "socket" else default
        )
        protocol = BridgeHttpProtocol.__new__(BridgeHttpProtocol)
        with contextlib.suppress(AttributeError):  # uvicorn's own set-up needs server state; ours runs first
            protocol.connection_made(transport)
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        for s in (client, accepted, listener):
            s.close()


class RecordingTransport:
    """What the coalescing transport hands on: each write, and whether it was closed or aborted."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.ended: list[str] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return bool(self.ended)

    def close(self) -> None:
        self.ended.append("close")

    def abort(self) -> None:
        self.ended.append("abort")

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("192.0.2.1", 1234) if name == "peername" else default


async def test_an_answer_leaves_in_one_write() -> None:
    """What uvicorn writes in one loop step (status line and headers, then body) is one write to the
    socket, made by the end of that step; closing writes what was kept first, aborting drops it, and the
    rest of the transport is the real one's."""
    from bridge.web.server import _CoalescingTransport  # noqa: PLC0415 - the module's own helper

    real = RecordingTransport()
    transport = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    transport.write(b"")  # an empty write, as uvicorn makes for an empty body
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]

    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # a later step: its own write
    await asyncio.sleep(0)
    assert len(real.writes) == 2

    transport.write(b"last answer")
    transport.close()
    assert (real.writes[-1], real.ended) == (b"last answer", ["close"])
    await asyncio.sleep(0)
    assert len(real.writes) == 3  # nothing written twice

    aborted = RecordingTransport()
    dropped = _CoalescingTransport(aborted, asyncio.get_running_loop())  # type: ignore[arg-type]
    dropped.write(b"half an answer")
    dropped.abort()
    await asyncio.sleep(0)
    assert (aborted.writes, aborted.ended) == ([], ["abort"])
    assert transport.get_extra_info("peername") == ("192.0.2.1", 1234)


@pytest.mark.parametrize(
    "leak",
    [
        "act.ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!1234.va",
        "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        "Bearer abcdefghijklmnop",
    ],
)
def test_log_audit_of_the_run_catches_a_leak(leak: str) -> None:
    """The whole-run log audit (tests/conftest.py) notices a token in any record, at any level."""
    from tests.conftest import _audit  # noqa: PLC0415

    before = len(_audit.leaks)
    logging.getLogger("some.library").debug("sent %s", leak)
    try:
        assert len(_audit.leaks) == before + 1
    finally:
        del _audit.leaks[before:]  # planted on purpose: must not fail the run


def test_forwarded_headers_are_trusted_only_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """`bridge serve` without `--forwarded-allow-ips` turns uvicorn's proxy headers off (uvicorn would
    trust X-Forwarded-For from 127.0.0.1); naming proxies turns them on for those only."""

    from bridge.web import server  # noqa: PLC0415

    configs: list[uvicorn.Config] = []

    class NotServing:
        started = True

        def __init__(self, config: uvicorn.Config) -> None:
            configs.append(config)

        def run(self, sockets: list[socket.socket]) -> None:
            for sock in sockets:
                sock.close()

    monkeypatch.setattr("bridge.web.server.uvicorn.Server", NotServing)
    for allowed in (None, "10.0.0.0/8"):
        server.serve(host="127.0.0.1", port=0, workers=1, forwarded_allow_ips=allowed, admin_port=0)
    assert [config.proxy_headers for config in configs] == [False, True]
