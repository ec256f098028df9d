"""Guards for outbound calls: a circuit breaker per upstream, and retries for idempotent requests only.

Retries use stamina (exponential backoff with jitter, bounded by attempts *and* total time). Only calls
that are safe to repeat are retried: TikTok user info, Keycloak reads and the service-account token.
Never retried: TikTok code redemption (codes are single-use), the JWT grant (its `jti` is single-use),
user creation (Keycloak's 409 handles races, not blind repeats).

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
from typing import TYPE_CHECKING, Literal

from bridge.errors import UpstreamUnavailable
from bridge.metrics import CIRCUIT_OPENED

if TYPE_CHECKING:
    from bridge.errors import Upstream

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
        self.opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._trial_in_flight = False
        self.failures += 1
        if self.failures >= self.threshold or self.opened_at is not None:
            if self.opened_at is None:
                CIRCUIT_OPENED.labels(self.upstream).inc()
            self.opened_at = time.monotonic()

    def record_neutral(self) -> None:
        """An answer that is not an outage (e.g. a 4xx): the upstream is alive."""
        self.record_success()
