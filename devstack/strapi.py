"""Install, start and stop a real Strapi 5 with users-permissions on SQLite, for the import's tests.

The people this project serves run Strapi with the "TikTok Auth Mobile" plugin, which is not on npm. The
harness therefore installs Strapi itself (`@strapi/strapi` and `@strapi/plugin-users-permissions` from
npm, SQLite through better-sqlite3), writes a minimal project around it, and adds one route that does what
the plugin's sign-in does once TikTok has answered: create a users-permissions user with provider
`tiktok`, the lowercased pseudo-email `<union_id>@tiktok.com`, the display name as username, confirmed,
the default role, through Strapi's own query engine, and answer `{jwt, user}` with a jwt from
users-permissions' JWT service. Local users sign up and in through Strapi's own `/api/auth/local`.

`npm install` runs once per set of versions: the installed `node_modules` is kept in the cache folder under
a hash of the package list. Each `StrapiServer` runs from a folder of its own (configuration, uploads and
the SQLite file) whose `node_modules` points at that installation.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.keycloak import SetupError, default_cache_dir, die_with_parent, free_port, progress

# The registry this machine reaches serves @strapi/strapi 5.55.x, but not the @strapi/admin and
# @strapi/core 5.55.x it depends on: 5.54.0 is the newest release installable as a whole. better-sqlite3
# 13 needs Node 22; 12.x runs on Node 20.
STRAPI_VERSION = "5.54.0"
BETTER_SQLITE3_VERSION = "12.11.1"
MIN_NODE_MAJOR = 20
DEPENDENCIES = {
    "@strapi/strapi": STRAPI_VERSION,
    "@strapi/plugin-users-permissions": STRAPI_VERSION,
    "better-sqlite3": BETTER_SQLITE3_VERSION,
    # Peer dependencies of Strapi's admin panel, pinned where the registry's newest ones conflict.
    "react": "18.3.1",
    "react-dom": "18.3.1",
    "react-router-dom": "6.30.6",
    "styled-components": "6.6.0",
}
PACKAGE = {
    "name": "bridge-test-strapi",
    "private": True,
    "version": "0.0.0",
    "dependencies": DEPENDENCIES,
    "engines": {"node": ">=20.0.0 <=24.x.x"},
}
# The route the plugin's sign-in stands in for; it answers only requests carrying the server's seed key.
SEED_PATH = "/bridge-test/tiktok-users"
SEED_KEY_HEADER = "x-bridge-test-seed-key"
# Strapi's default lifetime of a users-permissions jwt (the plugin keeps it).
JWT_LIFETIME = 30 * 24 * 3600

# The project's configuration and code, copied into each server's folder (devstack/strapi_app/).
PROJECT_FILES = Path(__file__).resolve().parent / "strapi_app"


class NpmUnreachable(SetupError):
    """npm could not reach its registry to install Strapi: tests that need Strapi cannot run here."""


def package_hash() -> str:
    return hashlib.sha256(json.dumps(PACKAGE, sort_keys=True).encode()).hexdigest()[:16]


def find_npm() -> str:
    """npm, next to a Node.js that Strapi 5 runs on (20 or newer)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        raise SetupError("Node.js 20 or newer and npm are needed to run Strapi (https://nodejs.org)")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    major = version.strip().lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < MIN_NODE_MAJOR:
        raise SetupError(
            f"Strapi 5 needs Node.js {MIN_NODE_MAJOR} or newer; this machine's is {version.strip()}"
        )
    return npm


# npm's own retries of a ping take over a minute to give up on a registry that does not answer.
PING_RETRIES = 1


def npm_reachable(npm: str) -> bool:
    """Whether npm reaches its registry (the one configured for this machine)."""
    done = subprocess.run(
        [npm, "ping", f"--fetch-retries={PING_RETRIES}", "--fetch-timeout=20000"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.returncode == 0


def install(cache_dir: Path | None = None) -> Path:
    """The folder holding Strapi's `node_modules`, installed with npm the first time."""
    cache_dir = cache_dir or default_cache_dir()
    home = cache_dir / "strapi" / f"install-{package_hash()}"
    if (home / "node_modules" / ".bin" / "strapi").exists():
        return home
    npm = find_npm()
    if not npm_reachable(npm):
        raise NpmUnreachable("npm cannot reach its registry (npm ping failed): Strapi cannot be installed")
    staging = cache_dir / "strapi" / f".install-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "package.json").write_text(json.dumps(PACKAGE, indent=2))
    progress(f"installing Strapi {STRAPI_VERSION} with npm into {home} (about 700 MB, minutes)")
    started = time.monotonic()
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=staging,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "STRAPI_TELEMETRY_DISABLED": "true"},
    )
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise SetupError(f"npm install of Strapi failed:\n{(done.stdout + done.stderr)[-2000:]}")
    progress(f"Strapi installed in {time.monotonic() - started:.0f} s")
    # Renamed into place last, so an interrupted install is never mistaken for a good one.
    try:
        staging.rename(home)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (home / "node_modules" / ".bin" / "strapi").exists():
            raise
    return home


@dataclass
class StrapiServer:
    """One Strapi process on loopback, run from `app_dir` over the installation in `install_dir`."""

    app_dir: Path
    install_dir: Path
    port: int = field(default_factory=free_port)
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    seed_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database_file(self) -> Path:
        """The SQLite file Strapi keeps its data in (its `up_users` table among others)."""
        return self.app_dir / "data.db"

    @property
    def log_file(self) -> Path:
        return self.app_dir / "strapi.log"

    def prepare(self) -> None:
        self.app_dir.mkdir(parents=True, exist_ok=True)
        (self.app_dir / "package.json").write_text(json.dumps(PACKAGE, indent=2))
        shutil.copytree(PROJECT_FILES, self.app_dir, dirs_exist_ok=True)
        (self.app_dir / "public" / "uploads").mkdir(parents=True, exist_ok=True)
        modules = self.app_dir / "node_modules"
        if not modules.exists():
            modules.symlink_to(self.install_dir / "node_modules", target_is_directory=True)

    def start(self) -> None:
        env = {
            **os.environ,
            "NODE_ENV": "production",
            "STRAPI_TELEMETRY_DISABLED": "true",
            "PORT": str(self.port),
            "DATABASE_FILENAME": str(self.database_file),
            "JWT_SECRET": self.jwt_secret,
            "BRIDGE_TEST_SEED_KEY": self.seed_key,
            **{
                name: secrets.token_urlsafe(16)
                for name in ("ADMIN_JWT_SECRET", "API_TOKEN_SALT", "TRANSFER_TOKEN_SALT", "ENCRYPTION_KEY")
            },
            "APP_KEYS": ",".join(secrets.token_urlsafe(16) for _ in range(2)),
        }
        progress(f"starting Strapi {STRAPI_VERSION} on {self.url} (SQLite: {self.database_file})")
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                ["node", str(self.app_dir / "node_modules" / ".bin" / "strapi"), "start"],
                cwd=self.app_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only a prctl call, before exec
            )

    def wait_ready(self, timeout: float = 180.0) -> None:
        started = time.monotonic()
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise SetupError(f"Strapi exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_health", timeout=2) as response:  # noqa: S310
                    if response.status == 204:  # noqa: PLR2004 - Strapi's health answer
                        progress(f"Strapi ready after {time.monotonic() - started:.0f} s")
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - started > timeout:
                raise SetupError(f"Strapi not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    # ------------------------------------------------------------------------------- Strapi's users

    def _post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - the URL is this loopback server's
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                answer: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:
            raise SetupError(f"Strapi refused POST {path}: {exc.code} {exc.read()[:500]!r}") from None
        return answer

    def sign_in_tiktok(self, union_id: str, display_name: str, *, blocked: bool = False) -> dict[str, Any]:
        """What the plugin answers a first TikTok sign-in: `{jwt, user}`, the user made by Strapi."""
        return self._post(
            SEED_PATH,
            {"union_id": union_id, "display_name": display_name, "blocked": blocked},
            {SEED_KEY_HEADER: self.seed_key},
        )

    def register_local(self, username: str, email: str, password: str) -> dict[str, Any]:
        """Strapi's own sign-up of a "local" user with a password: `{jwt, user}`."""
        return self._post(
            "/api/auth/local/register", {"username": username, "email": email, "password": password}
        )

    def sign_in_local(self, identifier: str, password: str) -> dict[str, Any]:
        """Strapi's own password sign-in: `{jwt, user}`."""
        return self._post("/api/auth/local", {"identifier": identifier, "password": password})


def start_strapi(app_dir: Path) -> StrapiServer:
    """Install (once), write the project, start and wait: the whole set-up in one call."""
    server = StrapiServer(app_dir=app_dir, install_dir=install())
    server.prepare()
    server.start()
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


if __name__ == "__main__":
    # `python -m devstack.strapi`: install Strapi ahead of a test run, start it once and stop it.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="strapi-") as folder:
        strapi = start_strapi(Path(folder))
        try:
            answer = strapi.sign_in_tiktok("ExampleUnionId", "Example%20Person")
            progress(f"Strapi made user {answer['user']['id']} ({answer['user']['documentId']})")
        finally:
            strapi.stop()
    sys.exit(0)
