"""Deauthorization: the identity provider's word that a user removed the app (its webhook's event),
applied to the identity's Keycloak user.

It holds the tombstone that refuses profiles verified before the event, the queue of deauthorizations
Keycloak has not taken yet, their retries (any replica may run them; the identity's lock lets one
apply each) and the deauthorization policy (record, disable or unlink). Ports: `KeycloakGateway` (its
admin calls only), `IdentityStore` (the tombstone, the cached user) and `DeauthorizationQueue`. The
webhook and its retry loop use it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from bridge.domain.errors import TemporarilyUnavailable, UpstreamError
from bridge.domain.model import PendingDeauthorization

if TYPE_CHECKING:
    from bridge.domain.model import Policy
    from bridge.services.ports import DeauthorizationQueue, GrantForgetter, IdentityStore, KeycloakGateway

log = logging.getLogger(__name__)

# A pending deauthorization: the first retry comes this many seconds after a failure, then twice as
# late each time (up to `Policy.deauthorization_retry_max_delay`); one attempt holds its lock this long
# at most (two Keycloak calls within BRIDGE_HTTP_TIMEOUT, retries included).
DEAUTHORIZATION_FIRST_DELAY = 5.0
DEAUTHORIZATION_LOCK_TTL = 60
DEAUTHORIZATION_LOCK_WAIT = 0.1


class DeauthorizationService:
    def __init__(
        self,
        *,
        keycloak: KeycloakGateway,
        identities: IdentityStore,
        queue: DeauthorizationQueue,
        policy: Policy,
        grants: GrantForgetter | None = None,
    ) -> None:
        self._keycloak = keycloak
        self._identities = identities
        self._queue = queue
        self._policy = policy
        # The token vault's grants, when the vault is on: forgotten first.
        self.grants = grants

    async def deauthorize(self, open_id: str) -> str:
        """`record`, then `attempt`: the whole of one deauthorization, for callers that need no answer
        in between (the webhook answers between the two)."""
        if not await self.record(open_id):
            return "recorded"
        return await self.attempt(open_id)

    async def record(self, open_id: str) -> bool:
        """Keep what must outlive the webhook's answer: the vault's grant forgotten, the tombstone, and
        (unless the policy only records) the deauthorization queued for Keycloak. True if queued.

        The tombstone refuses any profile verified before the event: the provider revoked the user's
        tokens before sending it, but profiles cached under them would otherwise keep signing in for
        their TTL. It has a key of its own, which sign-ins never write, so neither a later sign-in (the
        user authorized the app again) nor one already in flight can erase it; it is read with the user
        id, in the same round trip, so the warm path pays nothing for it.

        Every write is durable (confirmed by the Redis replicas, or NotReplicated) and idempotent: the
        webhook answers 200 only after this returned, so a write a failover could still lose is never
        acknowledged to the provider, which delivers again.
        """
        now = time.time()
        if self.grants is not None:
            # The provider has revoked the grant: the vault must not hand out its access token meanwhile.
            await self.grants.forget(open_id)
        await self._identities.deauthorized(open_id, now)
        if self._policy.deauthorization == "record":
            return False
        await self._queue.add(open_id, now)
        return True

    async def attempt(self, open_id: str) -> str:
        """Apply the deauthorization policy to the user linked to a recorded `open_id`: what was done,
        or "pending" when Keycloak could not take it now (retried, see `retry_deauthorizations`)."""
        return await self._attempt_deauthorization(open_id) or "pending"

    async def retry_deauthorizations(self, limit: int = 20) -> int:
        """One pass over the deauthorizations due for another attempt (any replica may run it; the
        identity's lock makes one of them apply each). Returns how many were attempted."""
        due = await self._queue.due(time.time(), limit)
        for open_id in due:
            await self._attempt_deauthorization(open_id)
        return len(due)

    async def pending(self) -> int:
        """How many deauthorizations Keycloak has not taken yet (retried until the horizon)."""
        return await self._queue.size()

    async def _attempt_deauthorization(self, open_id: str) -> str | None:
        """Try the pending deauthorization of `open_id` once: its outcome, or None if it stays pending
        (Keycloak unavailable, or another replica holds it right now)."""
        # Hardly any waiting: a replica that finds the lock taken leaves the identity to its holder.
        async with self._queue.claim(
            open_id, ttl=DEAUTHORIZATION_LOCK_TTL, wait=DEAUTHORIZATION_LOCK_WAIT
        ) as mine:
            if not mine:
                return None
            record = await self._queue.read(open_id)
            if record is None:
                # Applied by another replica since it was listed, or expired past the horizon.
                await self._queue.unschedule(open_id)
                return None
            try:
                outcome = await self._apply_deauthorization(open_id)
            except (UpstreamError, TemporarilyUnavailable) as exc:
                await self._postpone_deauthorization(open_id, record, exc)
                return None
            await self._queue.drop(open_id)
            if record.attempts:
                log.info(
                    "deauthorization applied after retries",
                    extra={"outcome": outcome, "attempts": record.attempts + 1},
                )
            return outcome

    async def _postpone_deauthorization(
        self, open_id: str, record: PendingDeauthorization, exc: Exception
    ) -> None:
        now = time.time()
        attempts = record.attempts + 1
        age = now - record.received
        left = self._policy.deauthorization_retry_horizon - age
        detail = getattr(exc, "detail", "")
        if left <= 0:
            log.error(
                "deauthorization given up: Keycloak did not take it in time",
                extra={"attempts": attempts, "error_type": type(exc).__name__, "detail": detail},
            )
            await self._queue.drop(open_id)
            return
        delay = min(
            self._policy.deauthorization_retry_max_delay, DEAUTHORIZATION_FIRST_DELAY * 2 ** (attempts - 1)
        )
        log.warning(
            "deauthorization not applied yet, will retry",
            extra={
                "attempts": attempts,
                "retry_in": delay,
                "error_type": type(exc).__name__,
                "detail": detail,
            },
        )
        await self._queue.postpone(open_id, PendingDeauthorization(record.received, attempts), now + delay)

    async def _apply_deauthorization(self, open_id: str) -> str:
        alias = self._policy.idp_alias
        user = await self._keycloak.find_linked_user(alias, open_id)
        if user is None:
            return "no linked user"
        if self._policy.deauthorization == "disable":
            await self._keycloak.update_user(user.id, {**user.representation, "enabled": False})
            outcome = "disabled"
        else:
            await self._keycloak.remove_link(user.id, alias)
            outcome = "unlinked"
        # The cached id now names a disabled or unlinked account: the next sign-in asks Keycloak.
        await self._identities.forget(open_id)
        return outcome
