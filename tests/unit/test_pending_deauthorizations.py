"""Deauthorizations Keycloak could not take: kept in the cache, retried with backoff, applied once."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from bridge.domain.errors import UpstreamUnavailable
from bridge.services.deauthorization import DEAUTHORIZATION_FIRST_DELAY, DeauthorizationService
from bridge.storage import keys
from bridge.storage.cache import MemoryCache
from bridge.storage.deauthorizations import DeauthorizationQueue
from bridge.storage.identities import IdentityStore
from tests.unit.fakes import FakeKeycloak, make_policy

if TYPE_CHECKING:
    from bridge.domain.model import KeycloakUser, Policy

OPEN_ID = "-000AbC"


class FlakyKeycloak(FakeKeycloak):
    """Keycloak that is down (every call UpstreamUnavailable) while `down` is set; counts disables."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.slow: asyncio.Event | None = None

    async def find_linked_user(self, idp_alias: str, idp_user_id: str) -> KeycloakUser | None:
        if self.down:
            raise UpstreamUnavailable("keycloak", "frozen")
        if self.slow is not None:
            await self.slow.wait()
        return await super().find_linked_user(idp_alias, idp_user_id)


def linked(keycloak: FakeKeycloak) -> str:
    rep: dict[str, Any] = {
        "username": "tiktok_x",
        "enabled": True,
        "federatedIdentities": [{"identityProvider": "tiktok", "userId": OPEN_ID, "userName": OPEN_ID}],
    }
    keycloak.users["user-1"] = {**rep, "id": "user-1"}
    return "user-1"


def service(keycloak: FakeKeycloak, cache: MemoryCache, **policy: object) -> DeauthorizationService:
    return over(keycloak, cache, make_policy(deauthorization="disable", **policy))


def over(keycloak: FakeKeycloak, cache: MemoryCache, policy: Policy) -> DeauthorizationService:
    """The use case over the identity store and the queue on `cache`, as the factory wires it."""
    return DeauthorizationService(
        keycloak=keycloak,
        identities=IdentityStore.from_policy(cache, policy),
        queue=DeauthorizationQueue.from_policy(cache, policy),
        policy=policy,
    )


async def make_due(cache: MemoryCache) -> None:
    """Move every scheduled retry to now, instead of waiting out its backoff."""
    for open_id in await cache.due(keys.DEAUTHORIZATION_QUEUE, time.time() + 10**9, 100):
        await cache.schedule(keys.DEAUTHORIZATION_QUEUE, open_id, time.time())


async def test_a_removal_while_keycloak_is_down_is_kept_and_applied_once_it_is_back() -> None:
    """Keycloak down: "pending", the event kept with its attempt and a retry 5 s later; once Keycloak is
    back the next pass disables the user and forgets the event."""
    keycloak, cache = FlakyKeycloak(), MemoryCache()
    user_id = linked(keycloak)
    bridge = service(keycloak, cache)
    keycloak.down = True

    assert await bridge.deauthorize(OPEN_ID) == "pending"
    record = json.loads(await cache.get(keys.pending_deauthorization("tiktok", OPEN_ID)) or b"null")
    assert record["attempts"] == 1
    assert await cache.due(keys.DEAUTHORIZATION_QUEUE, time.time(), 10) == []  # not due yet
    later = time.time() + DEAUTHORIZATION_FIRST_DELAY + 1
    assert await cache.due(keys.DEAUTHORIZATION_QUEUE, later, 10) == [OPEN_ID]

    await make_due(cache)
    assert await bridge.retry_deauthorizations() == 1  # still down: postponed again, twice as long
    assert keycloak.users[user_id]["enabled"] is True
    record = json.loads(await cache.get(keys.pending_deauthorization("tiktok", OPEN_ID)) or b"null")
    assert record["attempts"] == 2
    assert (
        await cache.due(keys.DEAUTHORIZATION_QUEUE, time.time() + 2 * DEAUTHORIZATION_FIRST_DELAY - 1, 10)
        == []
    )

    keycloak.down = False
    await make_due(cache)
    assert await bridge.retry_deauthorizations() == 1
    assert keycloak.users[user_id]["enabled"] is False
    assert await cache.get(keys.pending_deauthorization("tiktok", OPEN_ID)) is None
    assert await cache.due(keys.DEAUTHORIZATION_QUEUE, time.time() + 10**9, 10) == []


async def test_two_replicas_retrying_at_once_apply_the_event_once() -> None:
    """Two use cases over one shared cache pass over the same due event together: the identity's lock
    lets one apply it, and the other finds it gone."""
    keycloak, cache = FlakyKeycloak(), MemoryCache()
    linked(keycloak)
    first, second = service(keycloak, cache), service(keycloak, cache)
    keycloak.down = True
    assert await first.deauthorize(OPEN_ID) == "pending"
    keycloak.down = False
    keycloak.slow = asyncio.Event()
    await make_due(cache)

    passes = asyncio.gather(first.retry_deauthorizations(), second.retry_deauthorizations())
    await asyncio.sleep(0.3)  # both have listed it; one holds the lock, the other gave up waiting
    keycloak.slow.set()
    await passes
    await make_due(cache)
    await first.retry_deauthorizations()

    assert keycloak.calls["update"] == 1
    assert keycloak.calls["find"] == 1


async def test_an_event_past_the_retry_horizon_is_given_up() -> None:
    """Past the horizon the event is dropped (logged), so the queue cannot grow for ever."""
    keycloak, cache = FlakyKeycloak(), MemoryCache()
    linked(keycloak)
    bridge = service(keycloak, cache, deauthorization_retry_horizon=60)
    keycloak.down = True
    assert await bridge.deauthorize(OPEN_ID) == "pending"
    key = keys.pending_deauthorization("tiktok", OPEN_ID)
    record = json.loads(await cache.get(key) or b"null")
    await cache.set(key, json.dumps({**record, "received": time.time() - 61}).encode(), 60)
    await make_due(cache)

    await bridge.retry_deauthorizations()

    assert await cache.get(key) is None
    assert await cache.due(keys.DEAUTHORIZATION_QUEUE, time.time() + 10**9, 10) == []


@pytest.mark.parametrize("policy", ["disable", "unlink"])
async def test_with_keycloak_up_nothing_stays_pending(policy: str) -> None:
    """The usual case: applied at once, nothing left in the queue."""
    keycloak, cache = FlakyKeycloak(), MemoryCache()
    linked(keycloak)
    bridge = over(keycloak, cache, make_policy(deauthorization=policy))
    assert await bridge.deauthorize(OPEN_ID) == ("disabled" if policy == "disable" else "unlinked")
    assert await cache.due(keys.DEAUTHORIZATION_QUEUE, time.time() + 10**9, 10) == []


async def test_shutdown_stops_a_retry_loop_that_absorbed_a_cancellation() -> None:
    """A loop whose in-flight call swallows the first cancellation (as an HTTP client's timeout handling
    can) is still stopped at shutdown, instead of holding it for ever."""
    from bridge.web.app import _cancel  # noqa: PLC0415 - the shutdown helper itself

    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    async with asyncio.timeout(5):
        await _cancel(task)
    assert task.cancelled()
    assert swallowed == 1


async def test_the_retry_loop_publishes_how_many_deauthorizations_wait() -> None:
    """`bridge_deauthorizations_pending` follows the queue: 1 while Keycloak is down, 0 once applied."""
    from prometheus_client import REGISTRY  # noqa: PLC0415 - the gauge's process registry

    from bridge.web.webhook import retry_pending_deauthorizations  # noqa: PLC0415 - the loop itself

    keycloak, cache = FlakyKeycloak(), MemoryCache()
    linked(keycloak)
    bridge = service(keycloak, cache)
    keycloak.down = True
    assert await bridge.deauthorize(OPEN_ID) == "pending"
    assert await bridge.pending() == 1

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("bridge_deauthorizations_pending")

    loop = asyncio.create_task(retry_pending_deauthorizations(bridge, interval=0.01))
    try:
        async with asyncio.timeout(5):
            while gauge() != 1.0:  # noqa: ASYNC110 - polls a gauge the loop task sets
                await asyncio.sleep(0.01)
            keycloak.down = False
            await make_due(cache)
            while gauge() != 0.0:
                await make_due(cache)
                await asyncio.sleep(0.01)
    finally:
        loop.cancel()
    assert await bridge.pending() == 0
