"""Is this process fit for traffic: the readiness decision behind `GET /readyz`, and the doctor's
deployment checks the admin listener adds on request. The HTTP edge (`web/endpoints.py`) only shapes
their answers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from bridge.domain.errors import BridgeError

if TYPE_CHECKING:
    from bridge.factory import Resources
    from bridge.operations.doctor import CachedChecks

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    """The last readiness checks of this process and when they ran; one check runs at a time."""

    status: str = "unavailable"
    code: int = HTTPStatus.SERVICE_UNAVAILABLE
    checks: dict[str, str] = field(default_factory=dict)
    checked_at: float = -math.inf
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def current(self, resources: Resources) -> Readiness:
        async with self.lock:
            # Asked by every probe and load balancer, and each check calls Keycloak (100 probes were 100
            # discovery calls): one check at a time, its answer kept `readiness_cache_ttl` seconds.
            if time.monotonic() - self.checked_at >= resources.settings.readiness_cache_ttl:
                self.status, self.code, self.checks = await check_readiness(resources)
                self.checked_at = time.monotonic()
        return self


async def check_readiness(resources: Resources) -> tuple[str, int, dict[str, str]]:
    """Keycloak and the cache, each `ok` or `unavailable` (the cache `degraded` while the process serves
    from memory), and the verdict: Keycloak down is unavailable; a degraded cache still takes traffic."""
    checks: dict[str, str] = {}
    for name, probe in (("keycloak", resources.keycloak.ping), ("cache", resources.cache.ping)):
        try:
            await probe()
        except BridgeError as exc:
            log.warning("readiness check failed", extra={"check": name, "detail": exc.detail})
            checks[name] = "unavailable"
        else:
            checks[name] = "ok"
    if checks["cache"] != "ok" and resources.cache.degraded:
        # Exchanges still work from process memory: degraded, but worth sending traffic to.
        checks["cache"] = "degraded"
    if checks["keycloak"] != "ok":
        return "unavailable", HTTPStatus.SERVICE_UNAVAILABLE, checks
    if checks["cache"] == "degraded":
        return "degraded", HTTPStatus.OK, checks
    if checks["cache"] == "ok":
        return "ready", HTTPStatus.OK, checks
    return "unavailable", HTTPStatus.SERVICE_UNAVAILABLE, checks


@dataclass
class DeploymentChecks:
    """Every check of `bridge doctor`, run with the process's own clients and kept a minute."""

    _checks: CachedChecks | None = None

    async def current(self, resources: Resources) -> dict[str, Any]:
        if self._checks is None:
            # The doctor is loaded when an operator first asks, not by every serving process.
            from bridge.operations.doctor import CachedChecks  # noqa: PLC0415

            self._checks = CachedChecks()
        # The process's own clients: the check opens no connection of its own.
        redis = resources.redis.client if resources.redis is not None else None
        checks = await self._checks.current(resources.settings, resources.http, redis)
        return {
            "deployment": [check.as_dict() for check in checks],
            "deployment_ok": all(check.ok for check in checks),
        }
