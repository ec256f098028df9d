"""Guards for outbound calls: `guarded_call`, the one way the serving path's adapters call TikTok or
Keycloak. Operator commands and checks (`keycloak apply`, `doctor`, the verbose readiness) call Keycloak
and TikTok with a plain client, without breaker or retries: an operator reads each step's outcome, and a
retry would hide a misconfiguration the command exists to show.

Each call goes through the upstream's circuit breaker, is timed, and is retried only if it is idempotent
and failed in a way that proves it was not carried out (`UpstreamUnavailable.retryable`: no connection,
a gateway's 5xx). Retries use stamina (exponential backoff with jitter, bounded by attempts *and* total
time). Only calls that are safe to repeat are retried: TikTok user info, Keycloak reads and the
service-account token. Never retried: TikTok code redemption (codes are single-use), the JWT grant (its
`jti` is single-use), user creation (Keycloak's 409 handles races, not blind repeats). Beneath these,
aiohttp re-sends an idempotent request (never a POST) once when a kept-alive connection turns out to
have been closed by the upstream (RFC 9112 §9.3.1 allows it for idempotent methods): a repeated read
changes nothing, and it is the only repetition outside this module.

What the breaker counts: an `UpstreamUnavailable` is a failure; any other `BridgeError` means the upstream
answered and said no (alive: neutral); a result is a success.

The breaker is ours, deliberately small: the maintained alternatives either route every call through a
message bus (purgatory, whose Redis extra also pins redis<6) or are synchronous (pybreaker). After
`threshold` consecutive unavailability failures it opens for `cooldown` seconds, during which calls fail
at once with a Retry-After of the time left (a dead upstream does not pile up requests); then one trial
call is let through, and its success closes the breaker again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

import stamina

from bridge.domain.errors import BridgeError, UpstreamUnavailable
from bridge.observability.metrics import CIRCUIT_OPEN, CIRCUIT_OPENED, timed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from bridge.domain.errors import Upstream

T = TypeVar("T")
# Bounds of the retries of one idempotent call: a dead upstream costs at most this much.
RETRY_TIMEOUT = 30.0
RETRY_WAIT_INITIAL = 0.05
RETRY_WAIT_MAX = 0.5

State = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    upstream: Upstream
    threshold: int = 5
    cooldown: float = 10.0
    failures: int = 0
    opened_at: float | None = None
    _trial_in_flight: bool = field(default=False, repr=False)

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return "closed"
        if time.monotonic() - self.opened_at < self.cooldown:
            return "open"
        return "half_open"

    def before_call(self) -> None:
        """Raise at once while open; in half-open state let exactly one trial call through."""
        state = self.state
        if state == "closed":
            return
        if state == "open" or self._trial_in_flight:
            assert self.opened_at is not None  # noqa: S101 - open implies a time
            left = max(1, math.ceil(self.cooldown - (time.monotonic() - self.opened_at)))
            raise UpstreamUnavailable(self.upstream, "circuit open", retry_after=left)
        self._trial_in_flight = True

    def record_success(self) -> None:
        self.failures = 0
        if self.opened_at is not None:
            CIRCUIT_OPEN.labels(self.upstream).set(0)
        self.opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._trial_in_flight = False
        self.failures += 1
        if self.failures >= self.threshold or self.opened_at is not None:
            if self.opened_at is None:
                CIRCUIT_OPENED.labels(self.upstream).inc()
                CIRCUIT_OPEN.labels(self.upstream).set(1)
            self.opened_at = time.monotonic()

    def record_neutral(self) -> None:
        """An answer that is not an outage (e.g. a 4xx): the upstream is alive."""
        self.record_success()


def _is_retryable(exc: Exception) -> bool:
    return isinstance(exc, UpstreamUnavailable) and exc.retryable


async def guarded_call(
    breaker: CircuitBreaker,
    operation: str,
    call: Callable[[], Awaitable[T]],
    *,
    idempotent: bool,
    attempts: int = 2,
    result_label: Callable[[T], str] | None = None,
) -> T:
    """Run `call` through `breaker`, timed as (upstream, operation), retried only if `idempotent`.

    `call` sends the request and interprets the answer, raising `UpstreamUnavailable` (retryable or not)
    or another `BridgeError`. `result_label` names a result in the latency metric (default "ok").
    """
    breaker.before_call()
    with timed(breaker.upstream, operation) as outcome:
        try:
            if idempotent and attempts > 1:
                result = await _retrying(call, attempts)
            else:
                result = await call()
        except UpstreamUnavailable:
            breaker.record_failure()
            outcome["result"] = "unavailable"
            raise
        except BridgeError:
            breaker.record_neutral()  # the upstream answered; it said no
            outcome["result"] = "refused"
            raise
        breaker.record_success()
        outcome["result"] = result_label(result) if result_label is not None else "ok"
        return result


async def _retrying(call: Callable[[], Awaitable[T]], attempts: int) -> T:
    async for attempt in stamina.retry_context(
        on=_is_retryable,
        attempts=attempts,
        timeout=RETRY_TIMEOUT,
        wait_initial=RETRY_WAIT_INITIAL,
        wait_max=RETRY_WAIT_MAX,
    ):
        with attempt:
            return await call()
    raise AssertionError("unreachable")  # pragma: no cover - stamina re-raises the last failure
