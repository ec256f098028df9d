"""Start and stop a throwaway PostgreSQL server (Debian's `postgresql` package) on a free loopback port,
for Keycloak to keep its data in as production does.

PostgreSQL refuses to run as root (`initdb` and `postgres` both stop: "cannot be run as root"). Started
by an ordinary user, the server runs as that user with its data under the cache folder, where the
cluster made by `initdb` is kept between runs. Started by root (CI and this project's machines), it runs
as the `postgres` account that the Debian package creates, with its data in a private temporary folder
removed afterwards: root's cache folder lies in a home only root may enter, and giving that account a
way in would change the machine outside the project.

Each `create_database` gives a new, empty database and its own login, so a Keycloak started on it imports
the realm afresh, as one on the in-memory H2 database does. Keycloak logs in over TCP with a password
(scram-sha-256), as against a production server; the set-up itself uses the server's Unix socket, which
lies in the data folder that only the server's account (and root) may enter.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from devstack.keycloak import (
    KeycloakDatabase,
    SetupError,
    default_cache_dir,
    die_with_parent,
    free_port,
    progress,
    reusable_dir,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

DEBIAN_BINARIES = Path("/usr/lib/postgresql")
# The account the Debian package creates; the server runs as it when started by root.
SERVER_ACCOUNT = "postgres"
SUPERUSER = "postgres"
# Keycloak's connection pool may grow to 100 (its default `db-pool-max-size`), and a test run starts two
# Keycloaks on one server: PostgreSQL's default of 100 connections could refuse the second one's.
MAX_CONNECTIONS = 250


def find_binaries() -> Path:
    """The folder of `initdb` and `postgres`: Debian's newest /usr/lib/postgresql/<major>/bin, else PATH."""
    majors = sorted(
        (int(path.name), path / "bin")
        for path in (DEBIAN_BINARIES.iterdir() if DEBIAN_BINARIES.is_dir() else ())
        if path.name.isdigit() and (path / "bin" / "postgres").exists()
    )
    if majors:
        return majors[-1][1]
    if on_path := shutil.which("initdb"):
        return Path(on_path).parent
    raise SetupError("PostgreSQL's server binaries were not found; Debian: apt-get install postgresql")


def server_account() -> str | None:
    """The account the server must run as: `postgres` for root, None (this process's) otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise SetupError(
            "PostgreSQL does not run as root and there is no 'postgres' account to run it as; "
            "Debian's postgresql package creates it (apt-get install postgresql)"
        ) from None
    return SERVER_ACCOUNT


@dataclass
class PostgresServer:
    """One PostgreSQL server on loopback over `data_dir` (made with `initdb` when it holds no cluster)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    account: str | None = field(default_factory=server_account)
    binaries: Path = field(default_factory=find_binaries)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            user=self.account,
            # The server's account may not enter the caller's working folder, which initdb minds.
            cwd=self.data_dir.parent,
        )

    def init(self) -> None:
        """Make the cluster, unless `data_dir` holds one of the binaries' major version already."""
        major = self.binaries.parent.name
        version_file = self.data_dir / "PG_VERSION"
        if version_file.exists() and version_file.read_text().strip() == major:
            return
        shutil.rmtree(self.data_dir, ignore_errors=True)
        progress(f"initdb: a PostgreSQL {major} cluster in {self.data_dir}")
        made = self._run(
            [
                str(self.binaries / "initdb"),
                f"--pgdata={self.data_dir}",
                f"--username={SUPERUSER}",
                # The superuser only over the socket in the data folder; everyone else by password.
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # a throwaway cluster: a crash during initdb means running it again
            ]
        )
        if made.returncode != 0:
            raise SetupError(f"initdb failed:\n{made.stdout[-1500:]}{made.stderr[-1500:]}")

    def start(self, timeout: float = 60.0) -> None:
        self.init()
        args = [
            str(self.binaries / "postgres"),
            "-D", str(self.data_dir),
            "-c", f"port={self.port}",
            "-c", "listen_addresses=127.0.0.1",
            # Debian's built-in socket folder (/var/run/postgresql) belongs to the system's own server.
            "-c", f"unix_socket_directories={self.data_dir}",
            "-c", f"max_connections={MAX_CONNECTIONS}",
        ]  # fmt: skip
        progress(f"starting PostgreSQL {self.binaries.parent.name} on 127.0.0.1:{self.port}")
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self.account,
                cwd=self.data_dir.parent,
                # SIGINT is PostgreSQL's fast shutdown: it does not wait for clients to disconnect.
                preexec_fn=die_with_parent(signal.SIGINT),  # noqa: PLW1509 - only a prctl call
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise SetupError(f"PostgreSQL exited with {self.process.returncode}:\n{self.log_tail()}")
            ready = subprocess.run(
                [str(self.binaries / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise SetupError(f"PostgreSQL not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def psql(self, sql: str, *, database: str = "postgres", **variables: str) -> str:
        """Run `sql` as the superuser; `variables` are psql's (`:'name'` quotes one as a literal,
        `:"name"` as an identifier), so no value is ever pasted into SQL text."""
        args = [
            str(self.binaries / "psql"),
            "--no-psqlrc", "--quiet", "--tuples-only", "--no-align",
            "--set=ON_ERROR_STOP=1",
            f"--host={self.data_dir}", f"--port={self.port}",
            f"--username={SUPERUSER}", f"--dbname={database}",
        ]  # fmt: skip
        args += [f"--set={name}={value}" for name, value in variables.items()]
        done = self._run(args, stdin=sql)
        if done.returncode != 0:
            raise SetupError(f"psql failed: {done.stderr.strip()[-1500:]}")
        return done.stdout.strip()

    def create_database(self, name: str) -> KeycloakDatabase:
        """A new, empty database `name` owned by a new login of the same name, for Keycloak; any
        earlier database and login of that name are dropped first."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        password = secrets.token_urlsafe(24)
        self.psql(
            """
            DROP DATABASE IF EXISTS :"name" WITH (FORCE);
            DROP ROLE IF EXISTS :"name";
            CREATE ROLE :"name" LOGIN PASSWORD :'password';
            CREATE DATABASE :"name" OWNER :"name" ENCODING 'UTF8';
            """,
            name=name,
            password=password,
        )
        return KeycloakDatabase(
            url=f"jdbc:postgresql://127.0.0.1:{self.port}/{name}", username=name, password=password
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # Fast shutdown, then immediate (SIGQUIT), then kill: each later one only if the earlier hangs.
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            return


@contextmanager
def postgres_data_dir(name: str) -> Iterator[Path]:
    """Where a server's data lives: the cache folder's `postgres/<name>` (kept, locked while used), or,
    for a server run as another account, a private temporary folder that account owns."""
    account = server_account()
    if account is None:
        with reusable_dir(default_cache_dir() / "postgres", name) as data_dir:
            yield data_dir
        return
    private = Path(tempfile.mkdtemp(prefix=f"postgres-{name}-"))
    try:
        entry = pwd.getpwnam(account)
        os.chown(private, entry.pw_uid, entry.pw_gid)
        yield private / "data"
    finally:
        shutil.rmtree(private, ignore_errors=True)


@contextmanager
def running_postgres(name: str) -> Iterator[PostgresServer]:
    """A started server over `postgres_data_dir(name)`, stopped (and its private data removed) however
    the block ends, Ctrl-C included."""
    with postgres_data_dir(name) as data_dir:
        server = PostgresServer(data_dir=data_dir)
        try:
            server.start()
            yield server
        finally:
            server.stop()


if __name__ == "__main__":
    # `python -m devstack.postgres`: start a server, make a database, show how to reach it, stop.
    with running_postgres("check") as pg:
        db = pg.create_database("keycloak")
        tables = pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", database="keycloak")
        print(f"PostgreSQL ready: {db.url} as {db.username} ({tables} tables)", file=sys.stderr)
