"""The Strapi import's use case over fakes: what it sends Keycloak, and how it stays idempotent."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from bridge.domain.errors import UpstreamProtocolError, UserConflict
from bridge.domain.strapi import StrapiCensus, StrapiUser
from bridge.keycloak.client import user_from_representation
from bridge.services.strapi_import import ImportRefused, StrapiImport
from tests.unit.fakes import make_policy

if TYPE_CHECKING:
    from bridge.domain.model import KeycloakUser

ALICE = StrapiUser(
    id=4,
    username="Alice A.",
    email="unionidalice@tiktok.com",
    blocked=False,
    document_id="abcdefghijklmnopqrstuvwx",
    created_at="2025-03-01T10:00:00.123Z",
)
BOB = StrapiUser(
    id=7, username="Bob", email="unionidbob@tiktok.com", blocked=True, document_id=None, created_at=None
)


@dataclass
class FakeSource:
    users: list[StrapiUser]
    others: dict[str, int] = field(default_factory=lambda: {"local": 2})

    highest_local_id: int = 0

    def census(self) -> StrapiCensus:
        highest = max([u.id for u in self.users] + [self.highest_local_id])
        return StrapiCensus(by_provider={"tiktok": len(self.users), **self.others}, highest_id=highest)

    def tiktok_users(self, *, after_id: int, limit: int) -> list[StrapiUser]:
        return [u for u in sorted(self.users, key=lambda u: u.id) if u.id > after_id][:limit]


@dataclass
class FakeKeycloak:
    """Keycloak's users by username; a second create of a username (or an e-mail) is a 409."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: set[str] = field(default_factory=lambda: {"/tiktok-users"})
    refuse: set[str] = field(default_factory=set)  # usernames Keycloak refuses with a 400
    roles_fail: bool = False
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ids: Any = field(default_factory=lambda: itertools.count(1))
    creates: int = 0
    searches: int = 0

    async def create_user(self, representation: dict[str, Any]) -> str:
        self.creates += 1
        username = representation["username"]
        if username in self.refuse:
            raise UpstreamProtocolError("keycloak", "user create HTTP 400: error-invalid-length")
        if username in self.users:
            raise UserConflict("User exists with same username")
        email = representation.get("email")
        if email and any(u.get("email") == email for u in self.users.values()):
            raise UserConflict("User exists with same email")
        user_id = f"kc-{next(self.ids)}"
        self.users[username] = {**representation, "id": user_id}
        return user_id

    async def users_with_attribute(self, name: str, value: str) -> list[KeycloakUser]:
        self.searches += 1
        return [
            user_from_representation(u)
            for u in self.users.values()
            if value in u.get("attributes", {}).get(name, [])
        ]

    async def assign_realm_roles(self, user_id: str, names: tuple[str, ...]) -> None:
        if self.roles_fail:
            raise UpstreamProtocolError("keycloak", "role mapping HTTP 500")
        self.roles[user_id] = names

    async def delete_user(self, user_id: str) -> None:
        self.users = {k: v for k, v in self.users.items() if v["id"] != user_id}

    async def missing_groups(self, paths: tuple[str, ...]) -> list[str]:
        return [p for p in paths if p not in self.groups]

    async def group_members(self, group_path: str, *, first: int, count: int) -> list[KeycloakUser]:
        members = [u for u in self.users.values() if group_path in u.get("groups", [])]
        return [user_from_representation(u) for u in members[first : first + count]]


@dataclass
class FakeMark:
    """The high-water mark, remembering each raise."""

    raised: list[int] = field(default_factory=list)

    async def raise_to(self, number: int) -> None:
        self.raised.append(number)


def importer(
    source: FakeSource,
    keycloak: FakeKeycloak,
    mark: FakeMark | None = None,
    **policy: Any,  # noqa: ANN401
) -> StrapiImport:
    return StrapiImport(
        source=source,
        keycloak=keycloak,
        mark=FakeMark() if mark is None else mark,
        policy=make_policy(**policy),
        concurrency=3,
    )


async def test_each_tiktok_user_becomes_one_keycloak_user_with_strapi_attributes() -> None:
    """A Strapi user is created in the bridge's group with Strapi's ids, creation time, username and union_id
    kept,
    disabled when blocked, without an e-mail when no template asks for one."""
    keycloak = FakeKeycloak()
    summary = await importer(FakeSource([ALICE, BOB]), keycloak).run()
    alice, bob = keycloak.users["tiktok_strapi-4"], keycloak.users["tiktok_strapi-7"]
    assert alice == {
        "id": "kc-1",
        "username": "tiktok_strapi-4",
        "enabled": True,
        "groups": ["/tiktok-users"],
        "attributes": {
            "strapi_id": ["4"],
            "strapi_document_id": ["abcdefghijklmnopqrstuvwx"],
            "strapi_created_at": ["2025-03-01T10:00:00.123Z"],
            "tiktok_union_id": ["unionidalice"],
            "tiktok_display_name": ["Alice A."],
            "strapi_username": ["Alice A."],
        },
    }
    assert bob["enabled"] is False
    assert bob["attributes"] == {
        "strapi_id": ["7"],
        "tiktok_union_id": ["unionidbob"],
        "tiktok_display_name": ["Bob"],
        "strapi_username": ["Bob"],
    }
    assert (summary.tiktok_users, summary.created, summary.created_disabled, summary.already_imported) == (
        2,
        2,
        1,
        0,
    )
    assert summary.skipped == {"local": 2}


async def test_a_second_run_changes_nothing() -> None:
    """Run twice, the import creates each user once and then reports every one as imported already,
    known from the listing of the bridge's group: no create is even tried, no user searched."""
    source, keycloak = FakeSource([ALICE, BOB]), FakeKeycloak()
    await importer(source, keycloak).run()
    assert (keycloak.creates, keycloak.searches) == (2, 0)
    again = await importer(source, keycloak).run()
    assert (again.created, again.already_imported, again.changed, again.seen) == (0, 2, False, 2)
    assert len(keycloak.users) == 2
    assert (keycloak.creates, keycloak.searches) == (2, 0)


async def test_without_groups_each_row_is_searched_before_its_create() -> None:
    """With no group to list (BRIDGE_KEYCLOAK_GROUP and BRIDGE_DEFAULT_GROUPS empty) every row is looked
    up by its strapi_id first: the second run finds each user there and creates nothing."""
    source, keycloak = FakeSource([ALICE, BOB]), FakeKeycloak()
    await importer(source, keycloak, default_groups=()).run()
    assert (keycloak.creates, keycloak.searches) == (2, 2)
    again = await importer(source, keycloak, default_groups=()).run()
    assert (again.created, again.already_imported) == (0, 2)
    assert (keycloak.creates, keycloak.searches) == (2, 4)


async def test_a_user_imported_outside_the_listing_is_still_found() -> None:
    """A user created between the listing and its own create (a racing run) is found by its strapi_id
    after Keycloak's 409, not created twice."""
    keycloak = FakeKeycloak()
    await importer(FakeSource([ALICE]), keycloak).run()
    keycloak.users["tiktok_strapi-4"]["groups"] = []  # out of the listing's sight, as if made meanwhile
    again = await importer(FakeSource([ALICE]), keycloak).run()
    assert (again.created, again.already_imported) == (0, 1)
    assert keycloak.searches == 1


async def test_an_interrupted_run_continues() -> None:
    """Users imported before an interruption are kept; the next run creates only the rest."""
    users = [
        StrapiUser(
            id=i, username=f"u{i}", email=f"u{i}@tiktok.com", blocked=False, document_id=None, created_at=None
        )
        for i in range(1, 8)
    ]
    keycloak = FakeKeycloak(refuse={"tiktok_strapi-5"})
    with pytest.raises(
        ImportRefused, match=r"^Strapi user 5: Keycloak refused it: keycloak: user create HTTP 400"
    ):
        await importer(FakeSource(users), keycloak).run()
    assert "tiktok_strapi-1" in keycloak.users
    keycloak.refuse.clear()
    done = await importer(FakeSource(users), keycloak).run()
    assert done.created + done.already_imported == 7
    assert done.created >= 1
    assert sorted(keycloak.users) == sorted(f"tiktok_strapi-{i}" for i in range(1, 8))


async def test_a_username_held_by_someone_else_is_refused_naming_the_row() -> None:
    """A Keycloak user holding the import's username without this Strapi id is never taken over."""
    keycloak = FakeKeycloak(
        users={"tiktok_strapi-4": {"id": "x", "username": "tiktok_strapi-4", "attributes": {}}}
    )
    with pytest.raises(ImportRefused, match=r"^Strapi user 4: its Keycloak username belongs to another user"):
        await importer(FakeSource([ALICE]), keycloak).run()


async def test_the_pseudo_email_only_where_the_template_asks_never_verified() -> None:
    """With BRIDGE_EMAIL_TEMPLATE={union_id}@tiktok.com the Strapi address comes along, unverified; a
    template that needs the open_id (which Strapi never kept) gives no address."""
    keycloak = FakeKeycloak()
    await importer(FakeSource([ALICE]), keycloak, email_template="{union_id}@tiktok.com").run()
    assert keycloak.users["tiktok_strapi-4"]["email"] == "unionidalice@tiktok.com"
    assert keycloak.users["tiktok_strapi-4"]["emailVerified"] is False
    other = FakeKeycloak()
    await importer(FakeSource([ALICE]), other, email_template="{open_id}@tiktok.invalid").run()
    assert "email" not in other.users["tiktok_strapi-4"]


async def test_an_email_taken_by_another_account_is_refused() -> None:
    """An account of another origin holding the pseudo-email stops the import at that row."""
    keycloak = FakeKeycloak(
        users={"someone": {"id": "x", "username": "someone", "email": "unionidalice@tiktok.com"}}
    )
    with pytest.raises(ImportRefused, match=r"^Strapi user 4: its Keycloak e-mail belongs to another user"):
        await importer(FakeSource([ALICE]), keycloak, email_template="{union_id}@tiktok.com").run()


async def test_dry_run_creates_nothing() -> None:
    """A dry run counts what it would create, and what is imported already, and writes nothing."""
    keycloak = FakeKeycloak()
    await importer(FakeSource([ALICE]), keycloak).run()
    summary = await importer(FakeSource([ALICE, BOB]), keycloak).run(dry_run=True)
    assert (summary.created, summary.already_imported, summary.dry_run) == (1, 1, True)
    assert list(keycloak.users) == ["tiktok_strapi-4"]


async def test_default_realm_roles_are_given_and_a_failure_leaves_no_half_imported_user() -> None:
    """Default realm roles are mapped like provisioning's; if that fails the user is removed again."""
    keycloak = FakeKeycloak()
    await importer(FakeSource([ALICE]), keycloak, default_realm_roles=("member",)).run()
    assert keycloak.roles == {"kc-1": ("member",)}
    failing = FakeKeycloak(roles_fail=True)
    with pytest.raises(ImportRefused, match=r"^Strapi user 4: "):
        await importer(FakeSource([ALICE]), failing, default_realm_roles=("member",)).run()
    assert failing.users == {}


async def test_missing_groups_stop_the_import_before_any_user() -> None:
    """Without the bridge's group in Keycloak nothing is created and the message names the group."""
    keycloak = FakeKeycloak(groups=set())
    with pytest.raises(ImportRefused, match="groups do not exist in Keycloak: /tiktok-users"):
        await importer(FakeSource([ALICE]), keycloak).run()
    assert keycloak.users == {}


async def test_progress_is_reported_per_batch() -> None:
    """The progress callback hears how many users are done out of how many."""
    heard: list[tuple[int, int]] = []
    await importer(FakeSource([ALICE, BOB]), FakeKeycloak()).run(
        on_progress=lambda done, total: heard.append((done, total))
    )
    assert heard == [(2, 2)]


def test_union_id_comes_from_the_pseudo_email_only() -> None:
    """Only an address at tiktok.com yields a union_id."""
    assert ALICE.union_id == "unionidalice"
    assert (
        StrapiUser(1, "x", "x@example.com", blocked=False, document_id=None, created_at=None).union_id is None
    )
    assert StrapiUser(1, "x", None, blocked=False, document_id=None, created_at=None).union_id is None


async def test_every_run_raises_the_high_water_mark_to_the_highest_strapi_id_first() -> None:
    """Before any user is created, and again on a resumed run, the mark is raised to the database's
    highest id (a local user's included); a dry run leaves it alone."""
    mark, keycloak = FakeMark(), FakeKeycloak(refuse={"tiktok_strapi-7"})
    source = FakeSource([ALICE, BOB], highest_local_id=9)
    with pytest.raises(ImportRefused):
        await importer(source, keycloak, mark).run()
    assert mark.raised == [9]
    keycloak.refuse.clear()
    await importer(source, keycloak, mark).run(dry_run=True)
    assert mark.raised == [9]
    await importer(source, keycloak, mark).run()
    assert mark.raised == [9, 9]


async def test_a_mark_keycloak_refuses_stops_the_import_before_any_user() -> None:
    """A Keycloak refusal of the high-water mark is a one-line error, and no user is created."""

    class Refusing(FakeMark):
        async def raise_to(self, number: int) -> None:
            raise UpstreamProtocolError("keycloak", "user create HTTP 400: unknown attribute")

    keycloak = FakeKeycloak()
    with pytest.raises(
        ImportRefused, match=r"^Keycloak refused the Strapi id high-water mark: keycloak: user"
    ):
        await importer(FakeSource([ALICE]), keycloak, Refusing()).run()
    assert keycloak.users == {}


NUMBERED: dict[str, Any] = {
    "id": "kc-n",
    "username": "tiktok_abcdefghijklmnopqrst",
    "groups": ["/tiktok-users"],
}


async def test_a_row_whose_id_a_numbered_user_holds_is_refused_naming_the_row() -> None:
    """A user the bridge numbered 4 (not made by the import) stops the import at Strapi row 4, in a dry
    run too; nothing is taken over."""
    for dry_run in (True, False):
        keycloak = FakeKeycloak(
            users={NUMBERED["username"]: {**NUMBERED, "attributes": {"strapi_id": ["4"]}}}
        )
        with pytest.raises(
            ImportRefused,
            match=r"^Strapi user 4: its id is already held by Keycloak user kc-n, which this import",
        ):
            await importer(FakeSource([ALICE]), keycloak).run(dry_run=dry_run)
        assert list(keycloak.users) == [NUMBERED["username"]]


async def test_without_groups_a_numbered_holder_is_found_by_the_search() -> None:
    """With no group to list, the search before the create finds the numbered holder and refuses."""
    keycloak = FakeKeycloak(users={NUMBERED["username"]: {**NUMBERED, "attributes": {"strapi_id": ["4"]}}})
    with pytest.raises(ImportRefused, match=r"^Strapi user 4: its id is already held by Keycloak user kc-n"):
        await importer(FakeSource([ALICE]), keycloak, default_groups=()).run()
    assert keycloak.creates == 0


async def test_a_holder_out_of_the_listing_is_refused_after_the_409() -> None:
    """A user holding the import's username and this Strapi id is the import's only if the username is
    the one the import gives: found after the 409, someone else's is refused, not counted as imported."""
    keycloak = FakeKeycloak(
        users={
            "tiktok_strapi-4": {"id": "x", "username": "tiktok_strapi-4", "attributes": {}},
            NUMBERED["username"]: {**NUMBERED, "groups": [], "attributes": {"strapi_id": ["4"]}},
        }
    )
    with pytest.raises(ImportRefused, match=r"^Strapi user 4: its id is already held by Keycloak user kc-n"):
        await importer(FakeSource([ALICE]), keycloak).run()
