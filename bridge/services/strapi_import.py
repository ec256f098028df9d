"""Import the TikTok users of a Strapi database into Keycloak (`python -m bridge strapi import`).

One Keycloak user per `up_users` row of provider `tiktok`, made as the bridge's provisioning makes its
users (the bridge's groups, the default realm roles, a pseudo-email only where BRIDGE_EMAIL_TEMPLATE asks
for one and never verified), enabled unless Strapi had it blocked, keeping Strapi's id, document id,
creation time and username and the union_id of the pseudo-email as attributes. Users of other
providers are counted and left alone.

Idempotent and resumable without any state of its own: an imported user's Keycloak username is derived
from its Strapi id, so creating it twice is refused by Keycloak (409), and the user found by its
`strapi_id` attribute is then counted as already imported. A run interrupted halfway is simply run again.

Numbers handed out after the move (`strapi_ids.py`) must never name a Strapi user: every run first
raises Keycloak's high-water mark of Strapi ids to the database's highest id, so new numbers start above
it; and a row whose id a user the import did not create already holds is refused, naming the row.

Ports: `StrapiUserSource` (the Strapi database, read only), `ImportGateway` (Keycloak's Admin API as
the bridge's service account) and `MarkRaiser` (the high-water mark, `strapi_ids.HighWaterMark`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from bridge.domain.errors import UpstreamError, UserConflict
from bridge.domain.model import fit_for_keycloak
from bridge.domain.strapi import (
    ATTR_STRAPI_CREATED_AT,
    ATTR_STRAPI_DOCUMENT_ID,
    ATTR_STRAPI_ID,
    ATTR_STRAPI_USERNAME,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from bridge.domain.model import KeycloakUser, Policy
    from bridge.domain.strapi import StrapiCensus, StrapiUser

log = logging.getLogger(__name__)

BATCH = 500
# Members of the bridge's group read per call when listing the users imported already.
MEMBERS_PAGE = 500
# Keycloak 26.7.4 on H2 on two cores: 68 users/s at 8 calls in flight, 112 at 16, 133 at 32 (2,000 users
# each, cold), 237 at 32 over 100,000 users (bench/strapi_import.py).
DEFAULT_CONCURRENCY = 32

Outcome = Literal["created", "present"]


class StrapiUserSource(Protocol):
    """A Strapi database's users-permissions users, read only."""

    def census(self) -> StrapiCensus: ...

    def tiktok_users(self, *, after_id: int, limit: int) -> Sequence[StrapiUser]:
        """The next `limit` TikTok users by id, after `after_id`."""
        ...


class ImportGateway(Protocol):
    """What the import asks of Keycloak's Admin API."""

    async def create_user(self, representation: dict[str, Any]) -> str: ...

    async def users_with_attribute(self, name: str, value: str) -> list[KeycloakUser]: ...

    async def assign_realm_roles(self, user_id: str, names: tuple[str, ...]) -> None: ...

    async def delete_user(self, user_id: str) -> None: ...

    async def missing_groups(self, paths: tuple[str, ...]) -> list[str]: ...

    async def group_members(self, group_path: str, *, first: int, count: int) -> list[KeycloakUser]: ...


class MarkRaiser(Protocol):
    """The high-water mark of Strapi ids (`strapi_ids.HighWaterMark`)."""

    async def raise_to(self, number: int) -> None: ...


class ImportRefused(Exception):
    """The import cannot go on; the message (one line, naming the Strapi row where there is one) says why."""


@dataclass
class ImportSummary:
    """What a run did (or, dry, would do)."""

    tiktok_users: int
    # Users of other providers ("local", "google", ...), by provider: counted, never imported.
    skipped: dict[str, int]
    dry_run: bool
    created: int = 0
    # Of the created: those made disabled because Strapi had them blocked.
    created_disabled: int = 0
    already_imported: int = 0
    seen: int = field(default=0, repr=False)

    @property
    def changed(self) -> bool:
        return self.created > 0


def keycloak_username(prefix: str, strapi_id: int) -> str:
    """One Strapi user, one Keycloak username: what makes a second create of it a 409."""
    return f"{prefix}strapi-{strapi_id}"


class StrapiImport:
    def __init__(
        self,
        *,
        source: StrapiUserSource,
        keycloak: ImportGateway,
        mark: MarkRaiser,
        policy: Policy,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._source = source
        self._keycloak = keycloak
        self._mark = mark
        self._policy = policy
        self._concurrency = concurrency

    async def run(
        self, *, dry_run: bool = False, on_progress: Callable[[int, int], None] | None = None
    ) -> ImportSummary:
        census = self._source.census()
        skipped = {p: n for p, n in census.by_provider.items() if p != "tiktok"}
        summary = ImportSummary(tiktok_users=census.tiktok, skipped=skipped, dry_run=dry_run)
        if census.tiktok == 0:
            return summary
        imported, held = await self._prepare(census.highest_id, dry_run=dry_run)
        # With the group listed, a dry run knows every imported user the service account could find.
        listed = bool(self._policy.default_groups)
        limit = asyncio.Semaphore(self._concurrency)
        after_id = 0
        while batch := self._source.tiktok_users(after_id=after_id, limit=BATCH):
            if clash := next((user for user in batch if user.id not in imported and user.id in held), None):
                raise _held_by_another(clash, held[clash.id])
            present = [user for user in batch if user.id in imported]
            summary.seen += len(present)
            summary.already_imported += len(present)
            try:
                async with asyncio.TaskGroup() as group:
                    for user in batch:
                        if user.id not in imported:
                            group.create_task(self._one(user, summary, limit, dry_run=dry_run, listed=listed))
            except ExceptionGroup as failed:
                # The first refusal names its row; the rows imported meanwhile stay imported.
                refusals = _flattened(failed)
                if all(isinstance(exc, ImportRefused) for exc in refusals):
                    raise refusals[0] from None
                raise
            after_id = batch[-1].id
            if on_progress is not None:
                on_progress(summary.seen, summary.tiktok_users)
        return summary

    async def _prepare(self, highest_id: int, *, dry_run: bool) -> tuple[set[int], dict[int, str]]:
        """Before any user: the bridge's groups checked; the high-water mark raised to the highest Strapi
        id, so that a number handed out from now on lies above every one, also on a resumed run (a no-op
        once the mark is there); and what `_imported_ids` says."""
        missing = await self._keycloak.missing_groups(self._policy.default_groups)
        if missing:
            raise ImportRefused(f"the bridge's groups do not exist in Keycloak: {', '.join(missing)}")
        if not dry_run:
            try:
                await self._mark.raise_to(highest_id)
            except UpstreamError as exc:
                raise ImportRefused(f"Keycloak refused the Strapi id high-water mark: {exc.detail}") from exc
        return await self._imported_ids()

    async def _imported_ids(self) -> tuple[set[int], dict[int, str]]:
        """The Strapi ids of the users imported already, and the Strapi ids other members hold (users the
        bridge numbered: id -> Keycloak user id), read from the bridge's group in pages: a run over
        users imported before costs a listing, not a refused create and a search per user (the search,
        under fine-grained admin permissions, ran at 6 users/s here). Users outside the group are out
        of the service account's sight anyway; a create refused for another reason still falls back
        to the search."""
        ids: set[int] = set()
        held: dict[int, str] = {}
        if not self._policy.default_groups:
            return ids, held
        first = 0
        while page := await self._keycloak.group_members(
            self._policy.default_groups[0], first=first, count=MEMBERS_PAGE
        ):
            for member in page:
                value = member.attribute(ATTR_STRAPI_ID)
                if value is None or not value.isdigit():
                    continue
                if self._made_by_import(member, int(value)):
                    ids.add(int(value))
                else:
                    held[int(value)] = member.id
            first += len(page)
        return ids, held

    def _made_by_import(self, user: KeycloakUser, strapi_id: int) -> bool:
        """Whether `user` is the one this import makes of Strapi user `strapi_id` (its username says so:
        provisioning's usernames never have a hyphen and digits in that place)."""
        return user.username == keycloak_username(self._policy.username_prefix, strapi_id)

    async def _one(
        self,
        user: StrapiUser,
        summary: ImportSummary,
        limit: asyncio.Semaphore,
        *,
        dry_run: bool,
        listed: bool,
    ) -> None:
        async with limit:
            try:
                if dry_run:
                    outcome = "created" if listed else (await self._exists(user) or "created")
                else:
                    outcome = await self._import(user, listed=listed)
            except UpstreamError as exc:
                raise ImportRefused(f"Strapi user {user.id}: Keycloak refused it: {exc.detail}") from exc
        summary.seen += 1
        if outcome == "present":
            summary.already_imported += 1
        else:
            summary.created += 1
            summary.created_disabled += user.blocked

    async def _exists(self, user: StrapiUser) -> Outcome | None:
        """ "present" if imported already, None if no one holds its id; refused if someone else does."""
        found = await self._keycloak.users_with_attribute(ATTR_STRAPI_ID, str(user.id))
        if any(self._made_by_import(holder, user.id) for holder in found):
            return "present"
        if found:
            raise _held_by_another(user, found[0].id)
        return None

    async def _import(self, user: StrapiUser, *, listed: bool) -> Outcome:
        # Unlisted (no group), nothing says who holds the id yet: asked before the create.
        if not listed and (known := await self._exists(user)) is not None:
            return known
        try:
            user_id = await self._keycloak.create_user(self.representation(user))
        except UserConflict as conflict:
            # Imported by an earlier run (or a run racing this one): found by its Strapi id. Anything
            # else holding its username or e-mail is not this user, and is never taken over.
            if await self._exists(user) is not None:
                return "present"
            what = "e-mail" if conflict.email_taken else "username"
            raise ImportRefused(
                f"Strapi user {user.id}: its Keycloak {what} belongs to another user, not imported from "
                "this Strapi row"
            ) from conflict
        if self._policy.default_realm_roles:
            try:
                await self._keycloak.assign_realm_roles(user_id, self._policy.default_realm_roles)
            except UpstreamError:
                # No half-imported users: the next run imports this one afresh.
                await self._keycloak.delete_user(user_id)
                raise
        log.info("imported strapi user", extra={"strapi_id": user.id, "keycloak_user_id": user_id})
        return "created"

    def representation(self, user: StrapiUser) -> dict[str, Any]:
        """The Keycloak user a Strapi user becomes."""
        attributes = {ATTR_STRAPI_ID: [str(user.id)]}
        if user.document_id:
            attributes[ATTR_STRAPI_DOCUMENT_ID] = [user.document_id]
        if user.created_at:
            attributes[ATTR_STRAPI_CREATED_AT] = [user.created_at]
        if user.union_id:
            attributes[self._policy.attributes.union_id] = [user.union_id]
        if user.username:
            # The plugin set Strapi's username to the TikTok display name; the Strapi-compatible endpoint
            # answers it as it was (sign-ins overwrite the display name, never this).
            attributes[self._policy.attributes.display_name] = [fit_for_keycloak(user.username)]
            attributes[ATTR_STRAPI_USERNAME] = [fit_for_keycloak(user.username)]
        representation: dict[str, Any] = {
            "username": keycloak_username(self._policy.username_prefix, user.id),
            "enabled": not user.blocked,
            "attributes": attributes,
        }
        if self._policy.default_groups:
            representation["groups"] = list(self._policy.default_groups)
        email = self._pseudo_email(user)
        if email is not None:
            # A pseudo-address no one has proven to own: never marked verified.
            representation |= {"email": email, "emailVerified": False}
        return representation

    def _pseudo_email(self, user: StrapiUser) -> str | None:
        template = self._policy.email_template
        # Strapi never kept the open_id: a template that needs one gives no address.
        if template is None or "{open_id}" in template or user.union_id is None:
            return None
        return template.format(union_id=user.union_id).lower()


def _held_by_another(user: StrapiUser, holder_id: str) -> ImportRefused:
    return ImportRefused(
        f"Strapi user {user.id}: its id is already held by Keycloak user {holder_id}, which this import "
        "did not create (a number handed out by the bridge before the import?)"
    )


def _flattened(group: ExceptionGroup[Exception]) -> list[Exception]:
    found: list[Exception] = []
    for exc in group.exceptions:
        if isinstance(exc, ExceptionGroup):
            found += _flattened(exc)
        else:
            found.append(exc)
    return found
