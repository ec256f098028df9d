"""Read the users-permissions users of a Strapi 4 or 5 database: a SQLite file or PostgreSQL.

Only the columns the import needs are ever selected: never `password`, `reset_password_token` or
`confirmation_token`. The database is opened read only (SQLite's `mode=ro`, a read-only PostgreSQL
session), so pointing the import at a live Strapi cannot change it.

URLs: `sqlite:///absolute/path/to/data.db`, `postgresql://user:password@host:port/database` (libpq's
form; the password may also come from PGPASSWORD or ~/.pgpass, which keeps it off the command line).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from bridge.domain.strapi import TIKTOK_PROVIDER, StrapiCensus, StrapiUser

if TYPE_CHECKING:
    from collections.abc import Sequence

TABLE = "up_users"
# Strapi 4 and 5 both have these; Strapi 5 adds `document_id`.
COLUMNS = ("id", "username", "email", "blocked", "created_at")
DOCUMENT_ID = "document_id"
CONNECT_TIMEOUT = 10


class StrapiDatabaseError(Exception):
    """The database cannot be read as Strapi's; the message is one line for the operator."""


class StrapiDatabase:
    """A Strapi database's `up_users`, read through a DB-API connection."""

    def __init__(self, connection: Any, *, placeholder: str, columns: set[str], where: str) -> None:  # noqa: ANN401
        self._connection = connection
        self._placeholder = placeholder
        self._document_id = DOCUMENT_ID in columns
        self.where = where

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql.replace("?", self._placeholder), params)
            rows: list[Any] = cursor.fetchall()
        except Exception as exc:
            raise StrapiDatabaseError(f"reading {self.where} failed: {_first_line(exc)}") from exc
        finally:
            cursor.close()
        return rows

    def census(self) -> StrapiCensus:
        rows = self._rows(f"SELECT COALESCE(provider, ''), COUNT(*), MAX(id) FROM {TABLE} GROUP BY 1")  # noqa: S608
        return StrapiCensus(
            by_provider={str(provider): int(n) for provider, n, _ in rows},
            highest_id=max((int(top) for _, _, top in rows if top is not None), default=0),
        )

    def tiktok_users(self, *, after_id: int, limit: int) -> list[StrapiUser]:
        columns = ", ".join((*COLUMNS, DOCUMENT_ID) if self._document_id else COLUMNS)
        rows = self._rows(
            f"SELECT {columns} FROM {TABLE} WHERE provider = ? AND id > ? ORDER BY id LIMIT ?",  # noqa: S608
            (TIKTOK_PROVIDER, after_id, limit),
        )
        return [
            StrapiUser(
                id=int(row[0]),
                username=row[1],
                email=row[2],
                blocked=bool(row[3]),
                created_at=_iso(row[4]),
                document_id=row[5] if self._document_id else None,
            )
            for row in rows
        ]

    def close(self) -> None:
        self._connection.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _iso(value: object) -> str | None:
    """Strapi's `createdAt` form (`2026-01-02T03:04:05.678Z`) of a creation time as the database holds
    it: milliseconds since the epoch (SQLite), a timestamp without zone in UTC (PostgreSQL), or text."""
    if value is None:
        return None
    if isinstance(value, int | float):
        moment = datetime.fromtimestamp(value / 1000, tz=UTC)
    elif isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return str(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def open_strapi_database(url: str) -> StrapiDatabase:
    """The Strapi database at `url`, checked to hold `up_users`; StrapiDatabaseError otherwise."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return _open_sqlite(url)
    if scheme in {"postgres", "postgresql"}:
        return _open_postgres(url)
    raise StrapiDatabaseError(
        "unsupported database URL: give sqlite:///path/to/data.db or postgresql://user@host/database"
    )


def _open_sqlite(url: str) -> StrapiDatabase:
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/"):
        raise StrapiDatabaseError("a SQLite URL names an absolute path: sqlite:///path/to/data.db")
    path = Path(unquote(parts.path))
    if not path.is_file():
        raise StrapiDatabaseError(f"no SQLite database at {path}")
    where = f"SQLite database {path}"
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=CONNECT_TIMEOUT)
        columns = {row[1] for row in connection.execute(f"PRAGMA table_info({TABLE})")}
    except sqlite3.Error as exc:
        raise StrapiDatabaseError(f"cannot read {where}: {_first_line(exc)}") from exc
    return _checked(StrapiDatabase(connection, placeholder="?", columns=columns, where=where), columns)


def _open_postgres(url: str) -> StrapiDatabase:
    import psycopg  # noqa: PLC0415 - only PostgreSQL imports need the driver

    parts = urlsplit(url)
    # Never the password: the operator sees where, not with what.
    where = f"PostgreSQL database {parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
    try:
        connection = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, autocommit=True)
    except psycopg.Error as exc:
        raise StrapiDatabaseError(f"cannot connect to {where}: {_first_line(exc)}") from exc
    except ValueError as exc:  # a URL libpq cannot parse
        raise StrapiDatabaseError(f"not a PostgreSQL URL libpq understands: {_first_line(exc)}") from exc
    connection.read_only = True
    database = StrapiDatabase(connection, placeholder="%s", columns=set(), where=where)
    columns = {
        str(row[0])
        for row in database._rows(  # noqa: SLF001 - the database's own helper
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = ? AND table_schema = current_schema()",
            (TABLE,),
        )
    }
    return _checked(StrapiDatabase(connection, placeholder="%s", columns=columns, where=where), columns)


def _checked(database: StrapiDatabase, columns: set[str]) -> StrapiDatabase:
    if not columns:
        database.close()
        raise StrapiDatabaseError(f"{database.where} is not Strapi's: it has no {TABLE} table")
    missing = [c for c in (*COLUMNS, "provider") if c not in columns]
    if missing:
        database.close()
        raise StrapiDatabaseError(
            f"{database.where}: {TABLE} lacks {', '.join(missing)}: not Strapi 4 or 5's users-permissions"
        )
    return database
