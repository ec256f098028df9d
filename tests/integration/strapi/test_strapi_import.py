"""`python -m bridge strapi import` from the real Strapi's SQLite file, and from PostgreSQL holding the
rows Strapi wrote, into the real Keycloak through the bridge's service account."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from bridge.services.strapi_import import keycloak_username
from devstack.postgres import running_postgres

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from devstack.postgres import PostgresServer
    from devstack.strapi import StrapiServer
    from tests.conftest import Stack
    from tests.integration.strapi.conftest import StrapiUser, StrapiUsers

PREFIX = "tiktok_strapi-"
NOT_STRAPI = "is not Strapi's: it has no up_users table"


def strapi_import(stack: Stack, url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it, with the bridge's own environment (`env` added)."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", "strapi", "import", "--database-url", url, *args],
        env={**os.environ, **stack.env(**env)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def imported(stack: Stack, strapi_id: int) -> list[dict[str, Any]]:
    """The Keycloak users whose strapi_id is `strapi_id`, found with Keycloak's attribute search."""
    with stack.admin() as admin:
        found = admin.get("/users", params={"q": f"strapi_id:{strapi_id}", "exact": "true"})
        assert found.status_code == 200, found.text
        users: list[dict[str, Any]] = found.json()
    return users


def delete_imported(stack: Stack) -> None:
    with stack.admin() as admin:
        for user in admin.get("/users", params={"search": PREFIX, "max": "1000"}).json():
            if user["username"].startswith(PREFIX):
                assert admin.delete(f"/users/{user['id']}").status_code == 204


@pytest.fixture
def no_imported_users(stack: Stack) -> Iterator[None]:
    """Each test starts from a realm holding no imported user, and leaves none behind."""
    delete_imported(stack)
    yield
    delete_imported(stack)


@pytest.fixture
def sqlite_url(strapi: StrapiServer, strapi_users: StrapiUsers) -> str:
    return f"sqlite://{strapi.database_file}"


def assert_imported(stack: Stack, seeded: StrapiUser, *, enabled: bool) -> dict[str, Any]:
    [user] = imported(stack, seeded.id)
    assert seeded.union_id is not None
    assert user["username"] == keycloak_username("tiktok_", seeded.id)
    assert user["enabled"] is enabled
    assert user["attributes"] == {
        "strapi_id": [str(seeded.id)],
        "strapi_document_id": [seeded.user["documentId"]],
        "strapi_created_at": [seeded.user["createdAt"]],
        "tiktok_union_id": [seeded.union_id.lower()],
        "tiktok_display_name": [seeded.user["username"]],
        "strapi_username": [seeded.user["username"]],
    }
    assert "email" not in user
    with stack.admin() as admin:
        groups = admin.get(f"/users/{user['id']}/groups").json()
        links = admin.get(f"/users/{user['id']}/federated-identity").json()
    assert [g["path"] for g in groups] == ["/tiktok-users"]
    assert links == []
    return user


def test_import_from_strapis_sqlite_file(
    stack: Stack, strapi_users: StrapiUsers, sqlite_url: str, no_imported_users: None
) -> None:
    """Every TikTok user of the real Strapi becomes one Keycloak user in the bridge's group with Strapi's
    id, document id, creation time and union_id; blocked ones disabled; local users skipped; a second
    run changes nothing."""
    done = strapi_import(stack, sqlite_url)
    assert done.returncode == 0, done.stderr
    tiktok = len(strapi_users.tiktok) + len(strapi_users.blocked)
    lines = done.stdout.splitlines()
    assert lines[0] == f"Strapi: {tiktok} TikTok users; skipped users of other providers: local: 2"
    assert lines[1] == f"created {tiktok} Keycloak users (1 disabled: blocked in Strapi); 0 imported already"
    assert lines[2].startswith(f"{tiktok} users in ")
    assert "users/s" in done.stderr
    for seeded in strapi_users.tiktok:
        assert_imported(stack, seeded, enabled=True)
    for seeded in strapi_users.blocked:
        assert_imported(stack, seeded, enabled=False)
    for seeded in strapi_users.local:
        assert imported(stack, seeded.id) == []

    again = strapi_import(stack, sqlite_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1] == f"no changes: all {tiktok} TikTok users are imported already"
    for seeded in (*strapi_users.tiktok, *strapi_users.blocked):
        assert len(imported(stack, seeded.id)) == 1


def test_dry_run_creates_nothing_and_an_interrupted_import_continues(
    stack: Stack, strapi_users: StrapiUsers, sqlite_url: str, no_imported_users: None
) -> None:
    """A dry run counts and creates nothing; after users were removed mid-way (as if a run had stopped
    there) the next run creates exactly the missing ones."""
    tiktok = len(strapi_users.tiktok) + len(strapi_users.blocked)
    dry = strapi_import(stack, sqlite_url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[1].startswith(f"would create {tiktok} Keycloak users")
    for seeded in (*strapi_users.tiktok, *strapi_users.blocked):
        assert imported(stack, seeded.id) == []

    assert strapi_import(stack, sqlite_url).returncode == 0
    with stack.admin() as admin:
        for seeded in strapi_users.tiktok[1:]:
            [user] = imported(stack, seeded.id)
            assert admin.delete(f"/users/{user['id']}").status_code == 204
    resumed = strapi_import(stack, sqlite_url)
    assert resumed.returncode == 0, resumed.stderr
    missing = len(strapi_users.tiktok) - 1
    assert resumed.stdout.splitlines()[1] == (
        f"created {missing} Keycloak users (0 disabled: blocked in Strapi); "
        f"{tiktok - missing} imported already"
    )


def test_the_pseudo_email_comes_along_only_where_the_template_asks(
    stack: Stack, strapi_users: StrapiUsers, sqlite_url: str, no_imported_users: None
) -> None:
    """With BRIDGE_EMAIL_TEMPLATE={union_id}@tiktok.com the imported user has Strapi's address, unverified."""
    done = strapi_import(stack, sqlite_url, BRIDGE_EMAIL_TEMPLATE="{union_id}@tiktok.com")
    assert done.returncode == 0, done.stderr
    seeded = strapi_users.tiktok[0]
    [user] = imported(stack, seeded.id)
    assert user["email"] == seeded.user["email"]
    assert user["emailVerified"] is False


def test_a_keycloak_refusal_names_the_strapi_row(
    stack: Stack, strapi_users: StrapiUsers, sqlite_url: str, no_imported_users: None
) -> None:
    """A Keycloak account already holding an imported user's username (and not imported from that row)
    stops the import with one line naming the Strapi row, and no traceback."""
    seeded = strapi_users.tiktok[1]
    with stack.admin() as admin:
        made = admin.post(
            "/users", json={"username": keycloak_username("tiktok_", seeded.id), "enabled": True}
        )
        assert made.status_code == 201, made.text
    done = strapi_import(stack, sqlite_url)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"strapi import: Strapi user {seeded.id}: its Keycloak username belongs to another user, "
        "not imported from this Strapi row"
    )
    assert "Traceback" not in done.stderr


def test_unreachable_and_foreign_databases_are_one_line_errors(stack: Stack, tmp_path: Path) -> None:
    """An unreachable PostgreSQL, a missing file and a SQLite file without up_users each end the command
    with one line and status 1."""
    foreign, missing = tmp_path / "foreign.db", tmp_path / "missing.db"
    with closing(sqlite3.connect(foreign)) as db:
        db.execute("CREATE TABLE things (id integer)")
    cases = {
        "postgresql://strapi@127.0.0.1:1/strapi": (
            "strapi import: cannot connect to PostgreSQL database 127.0.0.1:1/strapi: "
        ),
        f"sqlite://{missing}": f"strapi import: no SQLite database at {missing}",
        f"sqlite://{foreign}": f"strapi import: SQLite database {foreign} {NOT_STRAPI}",
    }
    for url, message in cases.items():
        done = strapi_import(stack, url)
        assert done.returncode == 1, url
        assert done.stderr.strip().startswith(message.replace(": no up_users", ": it has no up_users")), (
            done.stderr
        )
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# --------------------------------------------------------------------------------------- PostgreSQL

STRAPI_5_POSTGRES = """
CREATE TABLE up_users (
  id serial PRIMARY KEY, document_id varchar(255), username varchar(255), email varchar(255),
  provider varchar(255), password varchar(255), reset_password_token varchar(255),
  confirmation_token varchar(255), confirmed boolean, blocked boolean, created_at timestamp(6),
  updated_at timestamp(6), published_at timestamp(6), created_by_id integer, updated_by_id integer,
  locale varchar(255)
)
"""
COPIED = (
    "id, document_id, username, email, provider, password, confirmed, blocked, created_at, updated_at, "
    "published_at, locale"
)


def _as_timestamp(value: object) -> datetime | None:
    # SQLite keeps Strapi's times as milliseconds since the epoch; PostgreSQL as timestamps in UTC.
    if value is None:
        return None
    assert isinstance(value, int)
    return datetime.fromtimestamp(value / 1000, tz=UTC).replace(tzinfo=None)


@pytest.fixture(scope="module")
def strapi_postgres(
    strapi: StrapiServer, strapi_users: StrapiUsers
) -> Iterator[tuple[PostgresServer, str, str]]:
    """A PostgreSQL database holding, in Strapi 5's PostgreSQL table, every row Strapi wrote to its SQLite
    file (password hashes included, as a real one would): its server, URL (no password) and password."""
    with running_postgres("strapi-import") as server:
        database = server.create_database("strapi")
        host_url = f"postgresql://{database.username}@127.0.0.1:{server.port}/strapi"
        with psycopg.connect(host_url, password=database.password, autocommit=True) as pg:
            pg.execute(STRAPI_5_POSTGRES)
            with closing(sqlite3.connect(f"file:{strapi.database_file}?mode=ro", uri=True)) as lite:
                rows = lite.execute(f"SELECT {COPIED} FROM up_users").fetchall()  # noqa: S608
            placeholders = ", ".join(["%s"] * len(COPIED.split(", ")))
            for row in rows:
                values = list(row)
                values[6], values[7] = bool(values[6]), bool(values[7])
                values[8:11] = [_as_timestamp(v) for v in values[8:11]]
                pg.execute(f"INSERT INTO up_users ({COPIED}) VALUES ({placeholders})", values)  # noqa: S608
        yield server, host_url, database.password


def test_import_from_postgresql(
    stack: Stack,
    strapi_users: StrapiUsers,
    strapi_postgres: tuple[PostgresServer, str, str],
    no_imported_users: None,
) -> None:
    """The same rows in PostgreSQL import to the same Keycloak users (password from PGPASSWORD, never
    in the URL), and a second run changes nothing."""
    _, url, password = strapi_postgres
    done = strapi_import(stack, url, PGPASSWORD=password)
    assert done.returncode == 0, done.stderr
    tiktok = len(strapi_users.tiktok) + len(strapi_users.blocked)
    assert done.stdout.splitlines()[:2] == [
        f"Strapi: {tiktok} TikTok users; skipped users of other providers: local: 2",
        f"created {tiktok} Keycloak users (1 disabled: blocked in Strapi); 0 imported already",
    ]
    for seeded in strapi_users.tiktok:
        assert_imported(stack, seeded, enabled=True)
    for seeded in strapi_users.blocked:
        assert_imported(stack, seeded, enabled=False)
    again = strapi_import(stack, url, PGPASSWORD=password)
    assert again.stdout.splitlines()[1] == f"no changes: all {tiktok} TikTok users are imported already"
