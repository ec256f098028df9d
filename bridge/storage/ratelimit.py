"""Rate limits per client IP and per external identity, shared by replicas through Redis (RFC 6585 429);
the identity provider's profile quota, and the count of tokens it refused per client address, kept the
same way. Which provider, and its quota, composition says (`factory.py`).

Built on `limits` (sliding-window counters; Redis storage through redis-py when BRIDGE_REDIS_URL is set,
process memory otherwise). If the limit store itself fails, requests are let through: a Redis outage
must not turn into a sign-in outage (the cache falls back the same way), and it is logged and counted.
The quota and the refusal count are kept in this process's memory meanwhile instead: what they hold
back is a spray, which an outage must not let through whole.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from bridge.domain.errors import RateLimited, TemporarilyUnavailable
from bridge.observability.metrics import RATE_LIMITED
from bridge.storage.redis_connection import REDIS_FAILURES

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from limits.aio.storage import Storage

log = logging.getLogger(__name__)


class RateLimiter:
    """`storage`: the process's shared Redis (`RedisConnection.limits_storage`) or limits' MemoryStorage."""

    def __init__(
        self,
        storage: Storage,
        *,
        per_ip: str | None,
        per_identity: str | None,
        webhook_per_ip: str | None = None,
    ) -> None:
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._storage = storage
        self._per_ip: RateLimitItem | None = parse(per_ip) if per_ip else None
        self._per_identity: RateLimitItem | None = parse(per_identity) if per_identity else None
        self._webhook_per_ip: RateLimitItem | None = parse(webhook_per_ip) if webhook_per_ip else None

    async def check_ip(self, address: str | None) -> None:
        if self._per_ip is not None and address:
            await self._hit(self._per_ip, "ip", address)

    async def check_webhook(self, address: str | None) -> None:
        """Webhook deliveries per address: a bucket of their own (a provider's bursts are not sign-ins)."""
        if self._webhook_per_ip is not None and address:
            await self._hit(self._webhook_per_ip, "webhook", address)

    async def check_identity(self, open_id: str) -> None:
        if self._per_identity is not None:
            await self._hit(self._per_identity, "identity", open_id)

    async def _hit(self, item: RateLimitItem, kind: str, who: str) -> None:
        try:
            if await self._limiter.hit(item, kind, who):
                return
            reset_at, _ = await self._limiter.get_window_stats(item, kind, who)
        # limits wraps the errors of a plain Redis; the cluster client's own (no node reachable) it
        # lets through, so those are caught here too.
        except (StorageError, *REDIS_FAILURES) as exc:
            log.warning(
                "rate-limit store unavailable; request let through", extra={"error_type": type(exc).__name__}
            )
            return
        RATE_LIMITED.labels(kind).inc()
        raise RateLimited(
            retry_after=max(1, math.ceil(reset_at - time.time())), detail=f"{kind} limit {item}"
        )


class ProfileQuota:
    """The identity provider's quota of profile reads (its user-info quota), spent deliberately and
    shared by every replica (same storage as the rate limits). Unproven requests may spend
    `unproven_share` of it; the rest is kept for requests that are likely real, so a spray of made-up
    tokens can no longer make the provider answer 429 to everyone (and open the breaker for every
    sign-in). `upstream` names its counters and metrics, `name` the provider in answers."""

    def __init__(
        self, storage: Storage, *, per_minute: str, unproven_share: float, upstream: str, name: str
    ) -> None:
        self._key = f"{upstream}-user-info"
        self._upstream = upstream
        self._name = name
        # An exact moving window, as the provider counts: the sliding-window counter of the rate limits
        # is an approximation that lets a burst at a window's edge exceed the amount (seen: a 429).
        # It costs a list per key in Redis, paid only when the provider is about to be called.
        self._shared = MovingWindowRateLimiter(storage)
        # While the shared store cannot count (Redis down or timing out under a spray), each process
        # keeps the quota in its own memory: sign-ins go on, as they do from the memory cache, and a
        # spray is still held to the unproven share per process instead of reaching the provider whole.
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._total = parse(per_minute)
        self._unproven = type(self._total)(
            max(1, int(self._total.amount * unproven_share)), self._total.multiples
        )

    async def spend(self, *, proven: bool) -> None:
        try:
            await self._spend(self._shared, proven=proven)
        except (StorageError, *REDIS_FAILURES) as exc:
            log.warning(
                "quota store unavailable; counting in this process", extra={"error_type": type(exc).__name__}
            )
            await self._spend(self._local, proven=proven)

    async def _spend(self, limiter: MovingWindowRateLimiter, *, proven: bool) -> None:
        if not proven and not await limiter.hit(self._unproven, self._key, "unproven"):
            reset_at, _ = await limiter.get_window_stats(self._unproven, self._key, "unproven")
            RATE_LIMITED.labels(f"{self._upstream}_unproven").inc()
            raise TemporarilyUnavailable(
                "Too many new sign-ins right now; retry later.",
                retry_after=max(1, math.ceil(reset_at - time.time())),
                detail=f"unproven share of {self._name}'s user-info quota spent",
            )
        if not await limiter.hit(self._total, self._key, "all"):
            reset_at, _ = await limiter.get_window_stats(self._total, self._key, "all")
            RATE_LIMITED.labels(f"{self._upstream}_quota").inc()
            raise TemporarilyUnavailable(
                f"{self._name}'s quota for this app is spent; retry later.",
                retry_after=max(1, math.ceil(reset_at - time.time())),
                detail=f"{self._name}'s user-info quota spent",
            )


class RefusalCounts:
    """Per client address, how many bare access tokens in a row the identity provider refused
    (`upstream` names the counters and the metric).

    A spray of made-up tokens from a few dozen addresses, each within the per-address rate limit, spent
    the unproven share of the quota, and real users with bare tokens from new addresses got 503 for as
    long as it lasted. Now an address whose last `per_address` tokens were refused (10 by default,
    Auth0's threshold for custom token exchange) is refused with 429 before the quota is touched, until
    the window that began with the first of them ends (an hour by default); a token the provider accepts
    from the address starts the count again, so real users behind one address keep it open.

    Each attempt is counted *before* the provider is asked and then settled (`_Reservation`): an acceptance
    clears the count, an outage or a spent quota gives the attempt back, a refusal keeps it. Counted
    after the answer, a burst of concurrent requests from one address would all pass the count before
    the first refusal arrived. A fixed-window counter (limits' `incr`, one Redis script per step), not a
    moving window: a timestamp list cannot give an attempt back. Like the quota, it is counted in this
    process's memory while the shared store fails.
    """

    def __init__(self, storage: Storage, *, per_address: str, upstream: str) -> None:
        self._upstream = upstream
        self._shared = storage
        self._local = MemoryStorage()
        self._item = parse(per_address)

    async def reserve(self, address: str) -> _Reservation:
        key, expiry = self._item.key_for(f"{self._upstream}-refused", address), self._item.get_expiry()
        storage = self._shared
        try:
            attempts = await storage.incr(key, expiry)
        except (StorageError, *REDIS_FAILURES) as exc:
            log.warning(
                "refusal counter store unavailable; counting in this process",
                extra={"error_type": type(exc).__name__},
            )
            storage = self._local
            attempts = await storage.incr(key, expiry)
        reservation = _Reservation(storage, key, expiry)
        if attempts <= self._item.amount:
            return reservation
        await reservation.release()
        try:
            retry_after = max(1, math.ceil(await storage.get_expiry(key) - time.time()))
        except (StorageError, *REDIS_FAILURES):
            retry_after = expiry
        RATE_LIMITED.labels(f"{self._upstream}_refusals").inc()
        raise RateLimited(
            retry_after=retry_after, detail=f"the address's last {self._item.amount} tokens were refused"
        )


class _Reservation:
    """One attempt counted by `RefusalCounts.reserve`, settled once in the store that counted it."""

    def __init__(self, storage: Storage, key: str, expiry: int) -> None:
        self._storage = storage
        self._key = key
        self._expiry = expiry

    async def vouched(self) -> None:
        await self._settle(self._storage.clear(self._key))

    async def release(self) -> None:
        # limits' counter taken one step back; at zero it is given a whole window again by the next
        # attempt, as a new one is.
        await self._settle(self._storage.incr(self._key, self._expiry, amount=-1))

    @staticmethod
    async def _settle(step: Awaitable[object]) -> None:
        try:
            await step
        except (StorageError, *REDIS_FAILURES) as exc:
            # The attempt stays counted as refused: at worst one more than there were.
            log.warning("refusal counter not settled", extra={"error_type": type(exc).__name__})
