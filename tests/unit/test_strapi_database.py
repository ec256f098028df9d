"""Reading a Strapi database's users: the columns it needs only, and one-line errors for the rest."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING

import pytest

from bridge.storage.strapi_database import StrapiDatabaseError, open_strapi_database

if TYPE_CHECKING:
    from pathlib import Path

# Strapi 4's up_users (no document_id); created_at as SQLite keeps it, milliseconds since the epoch.
STRAPI_4 = """
CREATE TABLE up_users (
  id integer PRIMARY KEY AUTOINCREMENT, username varchar(255), email varchar(255), provider varchar(255),
  password varchar(255), reset_password_token varchar(255), confirmation_token varchar(255),
  confirmed boolean, blocked boolean, created_at datetime, updated_at datetime
);
INSERT INTO up_users (id, username, email, provider, password, confirmed, blocked, created_at) VALUES
  (1, 'Alice', 'unionida@tiktok.com', 'tiktok', NULL, 1, 0, 1740823200123),
  (2, 'erin', 'erin@example.com', 'local', '$2a$10$hash', 1, 0, 1740823200000),
  (3, 'Bob', 'unionidb@tiktok.com', 'tiktok', NULL, 1, 1, '2025-03-01 10:00:00.5'),
  (5, 'Carol', 'unionidc@tiktok.com', 'tiktok', NULL, 1, NULL, NULL);
"""


def make_database(path: Path, schema: str = STRAPI_4) -> str:
    with closing(sqlite3.connect(path)) as db:
        db.executescript(schema)
        db.commit()
    return f"sqlite://{path}"


def test_reads_tiktok_users_of_a_strapi_4_database(tmp_path: Path) -> None:
    """TikTok users come in id order, in pages, with creation times in Strapi's form; others are counted."""
    database = open_strapi_database(make_database(tmp_path / "data.db"))
    assert database.census().by_provider == {"tiktok": 3, "local": 1}
    first = database.tiktok_users(after_id=0, limit=2)
    assert [(u.id, u.username, u.blocked, u.created_at, u.document_id) for u in first] == [
        (1, "Alice", False, "2025-03-01T10:00:00.123Z", None),
        (3, "Bob", True, "2025-03-01T10:00:00.500Z", None),
    ]
    [carol] = database.tiktok_users(after_id=3, limit=2)
    assert (carol.id, carol.blocked, carol.created_at, carol.union_id) == (5, False, None, "unionidc")
    assert database.tiktok_users(after_id=5, limit=2) == []
    database.close()


def test_reads_document_ids_of_strapi_5(tmp_path: Path) -> None:
    """Strapi 5's document_id is read when the table has one."""
    schema = STRAPI_4.replace(
        "id integer PRIMARY KEY AUTOINCREMENT,", "id integer PRIMARY KEY, document_id varchar(255),"
    )
    url = make_database(tmp_path / "data.db", schema)
    with closing(sqlite3.connect(tmp_path / "data.db")) as db:
        db.execute("UPDATE up_users SET document_id = 'doc' || id")
        db.commit()
    database = open_strapi_database(url)
    assert [u.document_id for u in database.tiktok_users(after_id=0, limit=10)] == ["doc1", "doc3", "doc5"]
    database.close()


def test_the_database_is_opened_read_only(tmp_path: Path) -> None:
    """Nothing read through the adapter can write to Strapi's file."""
    database = open_strapi_database(make_database(tmp_path / "data.db"))
    with pytest.raises(StrapiDatabaseError, match=r"readonly|read-only"):
        database._rows("DELETE FROM up_users")
    database.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///nonexistent/data.db", "no SQLite database at /nonexistent/data.db"),
        ("mysql://db/strapi", "unsupported database URL"),
        ("sqlite://data.db", "a SQLite URL names an absolute path"),
        (
            "postgresql://127.0.0.1:1/strapi?connect_timeout=2",
            "cannot connect to PostgreSQL database 127.0.0.1:1/strapi",
        ),
    ],
)
def test_unreachable_or_unsupported_databases_are_one_line_errors(url: str, message: str) -> None:
    """A database that cannot be reached or named is refused with a line saying so."""
    with pytest.raises(StrapiDatabaseError, match=message) as refused:
        open_strapi_database(url)
    assert "\n" not in str(refused.value)


def test_a_database_that_is_not_strapis_is_refused(tmp_path: Path) -> None:
    """A SQLite file without up_users, or with an up_users of another shape, is not Strapi's; nor is a
    file that is not SQLite at all."""
    url = make_database(tmp_path / "other.db", "CREATE TABLE things (id integer);")
    with pytest.raises(StrapiDatabaseError, match=r"is not Strapi's: it has no up_users table"):
        open_strapi_database(url)
    url = make_database(tmp_path / "odd.db", "CREATE TABLE up_users (id integer, name text);")
    with pytest.raises(
        StrapiDatabaseError, match=r"up_users lacks username, email, blocked, created_at, provider"
    ):
        open_strapi_database(url)
    (tmp_path / "text.db").write_text("not a database at all, just text " * 100)
    with pytest.raises(
        StrapiDatabaseError, match=r"cannot read SQLite database .*text.db: file is not a database"
    ):
        open_strapi_database(f"sqlite://{tmp_path / 'text.db'}")
