"""Numeric Strapi ids for the users the bridge created: apps built on the Strapi plugin decode `user.id`
as an integer and key their data on it, so every user the Strapi-compatible endpoint answers gets one.

An imported user keeps Strapi's own id (`strapi_import.py`). Any other user is given a number the first
time the endpoint serves it, before its token is minted (the Strapi-compatible client's token mapper
reads `strapi_id` at grant time, so the first token already carries it), and keeps it: the number is
the user's Keycloak attribute `strapi_id`, read back on every later sign-in.

How a number is chosen (docs/migrating-from-strapi.md, "How numeric ids are allocated"):

1. The candidate is the shared counter's next value, but never at or below the high-water mark kept in
   Keycloak (`HighWaterMark`): a counter that Redis lost, rolled back in a failover, or that restarts
   in a process's memory while Redis is out, jumps past the mark by a margin instead (`MARGIN`, plus a
   random spread so that two replicas counting in their own memory do not pick the same numbers).
2. The mark is raised to the candidate (max-merge: read, written only if greater) before the candidate
   is claimed, so a number is on Keycloak's record before any user holds it, and even a number whose
   holder is deleted later is never handed out again.
3. The user claims the candidate (its `strapi_id` is written), then an exact attribute search asks
   Keycloak who holds it. If any other user does, this user moves on to a new candidate. Both racers
   moving is safe: each claims before it searches, so of two users claiming one number the later
   searcher always sees the earlier claim and moves; at most one keeps it, maybe none (a gap). "The
   lower Keycloak id keeps it" would not be: a racer whose search ran before the other's claim landed
   keeps the number having seen no one, and the other, seeing it and holding the lower id, would keep
   it too.

The counter only spares Keycloak contention: with Redis gone, numbers still never repeat (the mark and
the search), only fresh candidates collide more often. Claims of one user are serialised by its
identity's provisioning lock, so two first sign-ins of one user racing give it one number.

Why the margin: two max-merge writes can race (both read the mark, the lower candidate is written last),
leaving the mark below a number handed out a moment earlier; the next allocation raises it again. Only
if the counter is lost in that window would a number come back, and then only a number whose holder was
deleted (the search finds any live holder). The margin (far more than the allocations in flight at once)
puts a restarted counter above every number such a race can hide.

Ports: `IdGateway` (Keycloak's Admin API as the bridge's service account), `IdCounter` (the counter,
`storage/strapi_ids.py`) and `IdentityStore` (its provisioning lock).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bridge.domain.errors import (
    TemporarilyUnavailable,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnavailable,
    UserConflict,
)
from bridge.domain.strapi import ATTR_STRAPI_ID, ATTR_STRAPI_ID_HIGH_WATER, HIGH_WATER_USERNAME
from bridge.services.provisioning import PROVISIONING_LOCK_TTL, PROVISIONING_LOCK_WAIT

if TYPE_CHECKING:
    from collections.abc import Callable

    from bridge.domain.model import KeycloakUser
    from bridge.services.ports import IdentityStore

log = logging.getLogger(__name__)

# How far past the high-water mark a counter that fell behind it restarts (plus up to as much again,
# at random): far more numbers than can be handed out while two writes of the mark race.
MARGIN = 1000
# Candidates tried before the sign-in is answered 503: a collision needs a counter that handed one
# number out twice (Redis lost), so a second one in a row is already rare.
MAX_CANDIDATES = 5
# After a collision, the next floor lies up to this far above the number that collided: two replicas
# counting in their own memory would otherwise keep drawing the same numbers.
RETRY_SPREAD = 64


class IdGateway(Protocol):
    """What allocating asks of Keycloak's Admin API (the bridge's service account)."""

    async def get_user(self, user_id: str) -> KeycloakUser | None: ...
    async def user_named(self, username: str) -> KeycloakUser | None:
        """The user whose username is exactly `username`, if the service account may see it."""
        ...

    async def create_user(self, representation: dict[str, Any]) -> str: ...
    async def update_user(self, user_id: str, representation: dict[str, Any]) -> None: ...
    async def users_with_attribute(self, name: str, value: str) -> list[KeycloakUser]: ...


class IdCounter(Protocol):
    """The shared counter numbers are drawn from (Redis, or memory while it is out)."""

    async def take(self, *, floor: int, jump: int) -> int:
        """The counter's next value; if that is below `floor`, `floor + jump`, which the counter keeps."""
        ...


def strapi_id_of(user: KeycloakUser) -> int | None:
    """The user's Strapi id: imported from Strapi, or allocated here; None if it has none."""
    value = user.attribute(ATTR_STRAPI_ID)
    return int(value) if value is not None and value.isdigit() else None


def _with_attributes(user: KeycloakUser, attributes: dict[str, list[str]]) -> KeycloakUser:
    """`user` as it is once `attributes` are written: its PUT body (the whole representation, as Keycloak's
    user profile wants) and the value the bridge goes on with."""
    representation = {**user.representation, "attributes": attributes}
    return dataclasses.replace(user, attributes=attributes, representation=representation)


@dataclass(frozen=True, slots=True)
class Mark:
    """The high-water mark as read: its value (0 with no marker yet) and the marker account, if any."""

    value: int
    marker: KeycloakUser | None


class HighWaterMark:
    """The highest Strapi id handed out or imported, kept in Keycloak: the attribute
    `strapi_id_high_water` of a disabled account the bridge owns (`HIGH_WATER_USERNAME`, in the bridge's
    group, so the least-privileged service account may create and update it). Never lowered by its
    own writes; operators must not delete it (docs/migrating-from-strapi.md)."""

    def __init__(self, keycloak: IdGateway, *, groups: tuple[str, ...]) -> None:
        self._keycloak = keycloak
        self._groups = groups
        # The marker's Keycloak id once found: later reads are a GET by id, not a search.
        self._marker_id: str | None = None

    async def read(self) -> Mark:
        marker = await self._find()
        return Mark(_mark_of(marker), marker)

    async def raise_to(self, number: int, *, seen: Mark | None = None) -> None:
        """Make the mark at least `number`: written only if what was read (`seen`, or read now) is lower."""
        mark = seen if seen is not None else await self.read()
        if mark.value >= number:
            return
        if mark.marker is None:
            try:
                self._marker_id = await self._keycloak.create_user(self._representation(number))
            except UserConflict:
                # Another replica made it meanwhile: merge into that one.
                await self.raise_to(number, seen=await self._found_after_conflict())
            else:
                log.info("strapi id high-water marker created", extra={"strapi_id": number})
            return
        attributes = {**mark.marker.attributes, ATTR_STRAPI_ID_HIGH_WATER: [str(number)]}
        marker = _with_attributes(mark.marker, attributes)
        await self._keycloak.update_user(marker.id, marker.representation)

    async def _find(self) -> KeycloakUser | None:
        if self._marker_id is not None:
            marker = await self._keycloak.get_user(self._marker_id)
            if marker is not None:
                return marker
            # Deleted (against the docs): the mark it held is lost; the next raise makes a new one.
            log.warning("strapi id high-water marker vanished", extra={"keycloak_user_id": self._marker_id})
            self._marker_id = None
        marker = await self._keycloak.user_named(HIGH_WATER_USERNAME)
        if marker is not None:
            self._marker_id = marker.id
        return marker

    async def _found_after_conflict(self) -> Mark:
        mark = await self.read()
        if mark.marker is None:
            raise UpstreamProtocolError(
                "keycloak",
                f"username {HIGH_WATER_USERNAME} is taken by an account the service account cannot see",
            )
        return mark

    def _representation(self, number: int) -> dict[str, Any]:
        representation: dict[str, Any] = {
            "username": HIGH_WATER_USERNAME,
            # Nobody signs in as the marker: it only holds the mark.
            "enabled": False,
            "attributes": {ATTR_STRAPI_ID_HIGH_WATER: [str(number)]},
        }
        if self._groups:
            representation["groups"] = list(self._groups)
        return representation


def _mark_of(marker: KeycloakUser | None) -> int:
    value = None if marker is None else marker.attribute(ATTR_STRAPI_ID_HIGH_WATER)
    return int(value) if value is not None and value.isdigit() else 0


class StrapiIds:
    """Gives each user the Strapi-compatible endpoint serves a numeric id, once (module docstring)."""

    def __init__(
        self,
        *,
        keycloak: IdGateway,
        counter: IdCounter,
        mark: HighWaterMark,
        identities: IdentityStore,
        randbelow: Callable[[int], int] = secrets.randbelow,
    ) -> None:
        self._keycloak = keycloak
        self._counter = counter
        self._mark = mark
        self._identities = identities
        # Where a candidate lands past a floor (tests make it predictable).
        self._randbelow = randbelow

    async def numbered_by_id(self, user_id: str, open_id: str) -> KeycloakUser | None:
        """`numbered` for the user with this id; None if Keycloak has no such user (an administrator
        deleted the one a cache still names: the sign-in provisions a new one, numbered after it)."""
        user = await self._keycloak.get_user(user_id)
        return None if user is None else await self.numbered(user, open_id)

    async def numbered(self, user: KeycloakUser, open_id: str) -> KeycloakUser:
        """`user` with its Strapi id: as it is if it has one (or is disabled: its sign-in is refused
        anyway), else with a number allocated now under its identity's provisioning lock."""
        if strapi_id_of(user) is not None or not user.enabled:
            return user
        async with self._identities.lock(
            open_id, ttl=PROVISIONING_LOCK_TTL, wait=PROVISIONING_LOCK_WAIT
        ) as held:
            if not held:
                raise TemporarilyUnavailable(detail="provisioning lock not acquired in time")
            # Read again under the lock: a racing first sign-in may have numbered it meanwhile.
            fresh = await self._keycloak.get_user(user.id)
            if fresh is None:
                raise UpstreamProtocolError("keycloak", "user vanished before its strapi id was allocated")
            if strapi_id_of(fresh) is not None:
                return fresh
            return await self._allocate(fresh)

    async def _allocate(self, user: KeycloakUser) -> KeycloakUser:
        collided = 0
        claimed = user
        try:
            for _ in range(MAX_CANDIDATES):
                mark = await self._mark.read()
                floor = max(mark.value, collided) + 1
                if collided:
                    floor += self._randbelow(RETRY_SPREAD)
                candidate = await self._counter.take(floor=floor, jump=MARGIN + self._randbelow(MARGIN))
                # On Keycloak's record before any user holds it.
                await self._mark.raise_to(candidate, seen=mark)
                claimed = _with_attributes(user, {**user.attributes, ATTR_STRAPI_ID: [str(candidate)]})
                await self._keycloak.update_user(user.id, claimed.representation)
                holders = await self._keycloak.users_with_attribute(ATTR_STRAPI_ID, str(candidate))
                others = [holder.id for holder in holders if holder.id != user.id]
                if not others:
                    log.info(
                        "strapi id allocated", extra={"keycloak_user_id": user.id, "strapi_id": candidate}
                    )
                    return claimed
                log.warning(
                    "strapi id taken by another user; trying another",
                    extra={"keycloak_user_id": user.id, "strapi_id": candidate, "holders": others},
                )
                collided = candidate
        except Exception:
            if claimed is not user:
                await self._withdraw(user)
            raise
        await self._withdraw(user)
        raise UpstreamUnavailable("keycloak", f"no unused strapi id in {MAX_CANDIDATES} candidates")

    async def _withdraw(self, user: KeycloakUser) -> None:
        """Take back an unconfirmed claim: a number read back on a later sign-in must be this user's
        alone. Best effort: Keycloak failing here is already the sign-in's error."""
        try:
            await self._keycloak.update_user(user.id, user.representation)
        except UpstreamError as exc:
            log.error(  # noqa: TRY400 - the cause is Keycloak's, logged by its client; no trace needed
                "strapi id claim not withdrawn", extra={"keycloak_user_id": user.id, "detail": exc.detail}
            )
