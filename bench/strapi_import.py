"""Users per second of `bridge strapi import`, and of Keycloak's partial import, against Keycloak on H2
or on PostgreSQL.

    .venv/bin/python -m bench.strapi_import [--users 100000] [--probe 2000] [--concurrency 4,8,16,32]
        [--keycloak-database h2|postgres]

Starts Keycloak 26.7.4 with the project's realm (H2 in memory, or Debian's PostgreSQL server started
here, its data under the cache folder; a larger heap than start-dev's 512 MB so 100,000 users fit),
writes a Strapi 5 `up_users` SQLite file of synthetic TikTok users (1 % blocked),
then:

1. probes the import (the use case in this process, through the bridge's own service account, confined
   to its group by fine-grained admin permissions) with `--probe` users at each `--concurrency`;
2. imports `--users` users at the best of those concurrencies;
3. asks Keycloak's `POST /admin/realms/{realm}/partialImport` as the bridge's service account (its answer
   is printed: the endpoint needs manage-realm) and then, as the master realm's administrator, times it
   on `--probe` users in batches of `--batch`.

Each phase imports users of its own Strapi ids, so none finds the users of another. The CPU per user
counts Keycloak's processes and, on PostgreSQL, the database server's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
from joserfc.jwk import ECKey

from bridge.factory import Resources, policy_from_settings
from bridge.services.strapi_ids import HighWaterMark
from bridge.services.strapi_import import StrapiImport
from bridge.settings import Settings
from bridge.storage.strapi_database import open_strapi_database
from devstack.bridge_env import ADMIN_CLIENT_ID, realm_variables
from devstack.keycloak import progress, reusable_instance_dir, start_keycloak
from devstack.postgres import running_postgres

if TYPE_CHECKING:
    from collections.abc import Iterator

REALM = "app"
ADMIN_SECRET = "bench-admin-secret"
HEAP = "-Xms512m -Xmx3g"

SCHEMA = """
CREATE TABLE up_users (
  id integer PRIMARY KEY, document_id varchar(255), username varchar(255), email varchar(255),
  provider varchar(255), password varchar(255), reset_password_token varchar(255),
  confirmation_token varchar(255), confirmed boolean, blocked boolean, created_at datetime,
  updated_at datetime, published_at datetime, created_by_id integer, updated_by_id integer,
  locale varchar(255)
)
"""


def _proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields after the command name) of every process, from /proc/*/stat: state, ppid,
    pgrp, session, ..., utime (12th), stime (13th), cutime, cstime."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            yield int(stat.parent.name), stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue


def session_cpu_seconds(session_id: int) -> float:
    """User+system CPU of every process of a session (Keycloak's kc.sh and its JVM)."""
    total = sum(int(f[11]) + int(f[12]) for _, f in _proc_stats() if int(f[3]) == session_id)
    return total / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pid: int) -> float:
    """User+system CPU of a forking server (PostgreSQL's postmaster): its own, its live children's, and
    what its exited children used (cutime, cstime)."""
    total = 0
    for found, fields in _proc_stats():
        if found == pid:
            total += sum(int(f) for f in fields[11:15])
        elif int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def write_strapi_database(path: Path, first_id: int, count: int) -> str:
    """A Strapi 5 SQLite file holding `count` TikTok users from id `first_id` (every 100th blocked)."""
    now_ms = int(time.time() * 1000)
    rows = (
        (
            i,
            f"doc{i:021d}",
            f"Person {i}",
            f"unionid{i:012d}@tiktok.com",
            "tiktok",
            None,
            1,
            int(i % 100 == 0),
            now_ms - i,
        )
        for i in range(first_id, first_id + count)
    )
    with closing(sqlite3.connect(path)) as db:
        db.execute(SCHEMA)
        db.executemany(
            "INSERT INTO up_users (id, document_id, username, email, provider, password, confirmed, blocked, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.commit()
    return f"sqlite://{path}"


def bridge_settings(keycloak_url: str, key_file: Path) -> Settings:
    return Settings(
        tiktok_client_key="bench",
        tiktok_client_secret="bench",
        keycloak_url=keycloak_url,
        keycloak_realm=REALM,
        keycloak_client_id="tiktok-bridge",
        keycloak_client_secret="bench-client-secret",
        keycloak_admin_client_id=ADMIN_CLIENT_ID,
        keycloak_admin_client_secret=ADMIN_SECRET,
        issuer="http://127.0.0.1:9",
        signing_key_file=key_file,
        log_level="WARNING",
        http_timeout=30.0,
    )


async def import_users(settings: Settings, url: str, concurrency: int) -> tuple[int, int, float]:
    """Run the import use case; (users created, users seen, seconds)."""
    database = open_strapi_database(url)
    resources = Resources.from_settings(settings)
    try:
        policy = policy_from_settings(settings)
        use_case = StrapiImport(
            source=database,
            keycloak=resources.keycloak,
            mark=HighWaterMark(resources.keycloak, groups=policy.default_groups),
            policy=policy,
            concurrency=concurrency,
        )
        last = [time.monotonic()]

        def show(done: int, total: int) -> None:
            if time.monotonic() - last[0] > 30:
                last[0] = time.monotonic()
                progress(f"  {done}/{total} users, {done / (last[0] - started):.0f} users/s")

        started = time.monotonic()
        summary = await use_case.run(on_progress=show)
        return summary.created, summary.seen, time.monotonic() - started
    finally:
        database.close()
        await resources.aclose()


def token(keycloak_url: str, realm: str, form: dict[str, str]) -> str:
    answer = httpx2.post(
        f"{keycloak_url}/realms/{realm}/protocol/openid-connect/token", data=form, timeout=30
    )
    answer.raise_for_status()
    value: str = answer.json()["access_token"]
    return value


def partial_import_users(first_id: int, count: int, group: str) -> list[dict[str, Any]]:
    return [
        {
            "username": f"tiktok_strapi-{i}",
            "enabled": i % 100 != 0,
            "groups": [group],
            "attributes": {
                "strapi_id": [str(i)],
                "strapi_document_id": [f"doc{i:021d}"],
                "strapi_created_at": ["2026-01-01T00:00:00.000Z"],
                "tiktok_union_id": [f"unionid{i:012d}"],
                "tiktok_display_name": [f"Person {i}"],
            },
        }
        for i in range(first_id, first_id + count)
    ]


def partial_import(keycloak_url: str, bearer: str, users: list[dict[str, Any]]) -> httpx2.Response:
    return httpx2.post(
        f"{keycloak_url}/admin/realms/{REALM}/partialImport",
        json={"ifResourceExists": "SKIP", "users": users},
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=600,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--probe", type=int, default=2_000)
    parser.add_argument("--concurrency", default="4,8,16,32")
    parser.add_argument("--batch", type=int, default=500, help="users per partialImport call")
    parser.add_argument("--keycloak-database", choices=("h2", "postgres"), default="h2")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    os.environ["JAVA_OPTS_KC_HEAP"] = HEAP
    results: list[str] = []
    with (
        ExitStack() as servers,
        tempfile.TemporaryDirectory(prefix="bench-strapi-") as folder,
        reusable_instance_dir("bench-strapi") as instance_dir,
    ):
        database: dict[str, Any] = {}
        database_pids: list[int] = []
        if args.keycloak_database == "postgres":
            postgres = servers.enter_context(running_postgres("bench-strapi"))
            database["database"] = postgres.create_database("keycloak")
            assert postgres.process is not None
            database_pids.append(postgres.process.pid)
        work = Path(folder)
        key_file = work / "key.pem"
        key_file.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
        realm_env = realm_variables(
            realm=REALM,
            client_id="tiktok-bridge",
            client_secret="bench-client-secret",
            issuer="http://127.0.0.1:9",
            admin_client_secret=ADMIN_SECRET,
        )
        keycloak = start_keycloak(instance_dir, realm_env, **database)
        progress(f"Keycloak on {args.keycloak_database}")

        def keycloak_cpu() -> float:
            own = session_cpu_seconds(keycloak.process.pid) if keycloak.process else 0.0
            return own + sum(server_cpu_seconds(pid) for pid in database_pids)

        try:
            settings = bridge_settings(keycloak.url, key_file)
            next_id = 1
            rates: dict[int, float] = {}
            for level in levels:
                url = write_strapi_database(work / f"probe-{level}.db", next_id, args.probe)
                cpu = keycloak_cpu()
                created, _, seconds = asyncio.run(import_users(settings, url, level))
                cpu = keycloak_cpu() - cpu
                next_id += args.probe
                rates[level] = created / seconds
                results.append(
                    f"import, concurrency {level}: {created} users in {seconds:.1f} s, {rates[level]:.0f} users/s, "
                    f"Keycloak CPU {1000 * cpu / created:.1f} ms/user"
                )
                progress(results[-1])
            best = max(rates, key=lambda level: rates[level])
            # A second run over the same users: each one a refused create and a search by strapi_id.
            cpu = keycloak_cpu()
            created, seen, seconds = asyncio.run(import_users(settings, url, best))
            cpu = keycloak_cpu() - cpu
            results.append(
                f"second run over {seen} imported users, concurrency {best}: {created} created, "
                f"{seen / seconds:.0f} users/s, Keycloak CPU {1000 * cpu / seen:.1f} ms/user"
            )
            progress(results[-1])
            if args.users:
                url = write_strapi_database(work / "big.db", next_id, args.users)
                cpu = keycloak_cpu()
                created, _, seconds = asyncio.run(import_users(settings, url, best))
                cpu = keycloak_cpu() - cpu
                next_id += args.users
                results.append(
                    f"import of {args.users}, concurrency {best}: {created} users in {seconds:.0f} s, "
                    f"{created / seconds:.0f} users/s, Keycloak CPU {1000 * cpu / created:.1f} ms/user"
                )
                progress(results[-1])

            service_account = token(
                keycloak.url,
                REALM,
                {
                    "grant_type": "client_credentials",
                    "client_id": ADMIN_CLIENT_ID,
                    "client_secret": ADMIN_SECRET,
                },
            )
            refused = partial_import(
                keycloak.url, service_account, partial_import_users(next_id, 1, "/tiktok-users")
            )
            results.append(f"partialImport as the bridge's service account: HTTP {refused.status_code}")
            progress(results[-1])
            admin = token(
                keycloak.url,
                "master",
                {
                    "grant_type": "password",
                    "client_id": "admin-cli",
                    "username": "admin",
                    "password": "admin",
                },
            )
            started, created, cpu = time.monotonic(), 0, keycloak_cpu()
            for first in range(next_id, next_id + args.probe, args.batch):
                answer = partial_import(
                    keycloak.url, admin, partial_import_users(first, args.batch, "/tiktok-users")
                )
                answer.raise_for_status()
                created += int(answer.json().get("added", 0))
            seconds, cpu = time.monotonic() - started, keycloak_cpu() - cpu
            results.append(
                f"partialImport as master admin, batches of {args.batch}: {created} users in {seconds:.1f} s, "
                f"{created / seconds:.0f} users/s, Keycloak CPU {1000 * cpu / created:.1f} ms/user"
            )
            progress(results[-1])
        finally:
            keycloak.stop()
    print(f"Keycloak on {args.keycloak_database}:")
    print("\n".join(results))


if __name__ == "__main__":
    main()
