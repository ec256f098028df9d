"""Test harness: real Keycloak, real redis-server and the bridge's JWKS, started once per test run.

Unit tests use none of this. Integration and end-to-end tests ask for `stack`; the first one to do so
pays for starting Keycloak (about 15-40 s; the first run on a machine also downloads it with Maven).
Keycloak keeps its data in memory (H2); with `KEYCLOAK_TEST_DB=postgres` (scripts/test-keycloak-postgres)
every Keycloak of the run keeps it in PostgreSQL instead, as production does.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import secrets
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
import hypothesis
import pytest
from joserfc.jwk import ECKey

from bridge.domain.strapi import ATTR_STRAPI_ID_HIGH_WATER, HIGH_WATER_USERNAME
from bridge.observability.logs import redact
from bridge.settings import Settings
from bridge.web.app import create_app
from devstack import keycloak as devstack_keycloak
from devstack.bridge_env import (
    ADMIN_CLIENT_ID,
    EMULATOR_CLIENT_KEY,
    EMULATOR_CLIENT_SECRET,
    bridge_variables,
    realm_variables,
)
from devstack.keycloak import (
    KeycloakDatabase,
    KeycloakServer,
    fetch_distribution,
    find_java_home,
    free_port,
    reusable_instance_dir,
)
from devstack.postgres import PostgresServer, running_postgres
from devstack.redis import RedisServer
from devstack.threaded import ThreadedServer

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence

    from devstack.tiktok_emulator import TikTokEmulator

# Property-test budgets (tests/unit/test_properties.py): bounded by default, longer with
# `scripts/test --hypothesis-profile=long`. Registered here, before hypothesis reads the option.
hypothesis.settings.register_profile("default", max_examples=300, deadline=None)
hypothesis.settings.register_profile(
    "long", max_examples=20_000, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)

TIKTOK_API = "https://open.tiktokapis.com"
# Where the test run's Keycloaks keep their data: "dev-mem" (H2 in memory, the default) or "postgres".
KEYCLOAK_TEST_DB = os.environ.get("KEYCLOAK_TEST_DB", "dev-mem")
if KEYCLOAK_TEST_DB not in {"dev-mem", "postgres"}:
    raise pytest.UsageError(f"KEYCLOAK_TEST_DB={KEYCLOAK_TEST_DB!r}: 'dev-mem' or 'postgres'")
CLIENT_KEY = EMULATOR_CLIENT_KEY
CLIENT_SECRET = EMULATOR_CLIENT_SECRET


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "e2e" in parts:
            item.add_marker(pytest.mark.e2e)


@dataclass
class Stack:
    """The real servers of one test run and how to configure a bridge against them."""

    keycloak: KeycloakServer
    redis: RedisServer
    signing_key_file: Path
    issuer: str
    realm: str
    client_id: str
    client_secret: str
    strapi_client_secret: str
    # The secret of `tiktok-app-example`, the realm's example of one Keycloak client per app.
    example_app_secret: str
    # The client whose service account provisions users, confined to the bridge's group.
    admin_client_secret: str
    java_home: Path
    admin_client_id: str = ADMIN_CLIENT_ID
    jwks_server: ThreadedServer | None = None

    def settings(self, **overrides: Any) -> Settings:  # noqa: ANN401
        values: dict[str, Any] = {
            "tiktok_client_key": CLIENT_KEY,
            "tiktok_client_secret": CLIENT_SECRET,
            "tiktok_api_url": TIKTOK_API,
            "keycloak_url": self.keycloak.url,
            "keycloak_realm": self.realm,
            "keycloak_client_id": self.client_id,
            "keycloak_client_secret": self.client_secret,
            "keycloak_admin_client_id": self.admin_client_id,
            "keycloak_admin_client_secret": self.admin_client_secret,
            "issuer": self.issuer,
            "signing_key_file": self.signing_key_file,
            "redis_url": self.redis.url,
            "http_timeout": 5.0,
        }
        values.update(overrides)
        return Settings(**values)

    def env(self, **overrides: str) -> dict[str, str]:
        """The same configuration as BRIDGE_* variables, for a bridge started as a process."""
        return bridge_variables(
            tiktok_api_url=TIKTOK_API,
            keycloak_url=self.keycloak.url,
            realm=self.realm,
            client_id=self.client_id,
            client_secret=self.client_secret,
            issuer=self.issuer,
            signing_key_file=self.signing_key_file,
            redis_url=self.redis.url,
            admin_client_secret=self.admin_client_secret,
            admin_client_id=self.admin_client_id,
            tiktok_client_key=CLIENT_KEY,
            tiktok_client_secret=CLIENT_SECRET,
            **overrides,
        )

    def admin(self) -> httpx2.Client:
        """A master-realm admin client, for tests to inspect and change Keycloak directly."""
        client = httpx2.Client(base_url=f"{self.keycloak.url}/admin/realms/{self.realm}", timeout=30)
        token = httpx2.post(
            f"{self.keycloak.url}/realms/master/protocol/openid-connect/token",
            data={
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": self.keycloak.admin_username,
                "password": self.keycloak.admin_password,
            },
            timeout=30,
        ).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        return client


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | None]:
    """The PostgreSQL server of the run's Keycloaks (one database each), or None on H2."""
    if KEYCLOAK_TEST_DB != "postgres":
        yield None
        return
    with running_postgres("tests") as server:
        yield server


def keycloak_storage(postgres: PostgresServer | None, instance: str) -> tuple[str, KeycloakDatabase | None]:
    """The instance folder name and the database of a Keycloak called `instance`: on PostgreSQL, a
    fresh database and a folder of its own (the database vendor is fixed in Keycloak's build)."""
    if postgres is None:
        return instance, None
    return f"{instance}-postgres", postgres.create_database(re.sub(r"[^a-z0-9_]", "_", instance.lower()))


# The realm as an import of Strapi ids up to this leaves it: every number the Strapi-compatible endpoint
# hands out in a test lies above the small ids the Strapi tests seed, whichever order the tests run in.
SEEDED_STRAPI_ID_HIGH_WATER = 1_000_000


def seed_strapi_id_high_water(stack: Stack) -> None:
    """The high-water mark of numeric Strapi ids, on its marker account (`services/strapi_ids.py`)."""
    with stack.admin() as admin:
        made = admin.post(
            "/users",
            json={
                "username": HIGH_WATER_USERNAME,
                "enabled": False,
                "groups": ["/tiktok-users"],
                "attributes": {ATTR_STRAPI_ID_HIGH_WATER: [str(SEEDED_STRAPI_ID_HIGH_WATER)]},
            },
        )
        assert made.status_code == 201, made.text


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
    postgres: PostgresServer | None,
) -> Iterator[Stack]:
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        # Starting Keycloak takes a while: show its progress even though pytest captures output.
        def show(line: str) -> None:
            with capture.global_and_fixture_disabled():
                print(line, file=sys.stderr, flush=True)  # noqa: T201 - progress for the person waiting

        devstack_keycloak.progress_writer = show
    work = tmp_path_factory.mktemp("stack")
    key_file = work / "signing-key.pem"
    key_file.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    realm, client_id, client_secret = "app", "tiktok-bridge", secrets.token_urlsafe(24)
    strapi_client_secret = secrets.token_urlsafe(24)
    example_app_secret = secrets.token_urlsafe(24)
    admin_client_secret = secrets.token_urlsafe(24)
    KNOWN_SECRETS.update({client_secret, strapi_client_secret, example_app_secret, admin_client_secret})
    jwks_port = free_port()
    issuer = f"http://127.0.0.1:{jwks_port}"
    realm_env = realm_variables(
        realm=realm,
        client_id=client_id,
        client_secret=client_secret,
        issuer=issuer,
        admin_client_secret=admin_client_secret,
        BRIDGE_STRAPI_KEYCLOAK_CLIENT_SECRET=strapi_client_secret,
        BRIDGE_EXAMPLE_APP_KEYCLOAK_CLIENT_SECRET=example_app_secret,
    )
    distribution = fetch_distribution()
    java_home = find_java_home()
    instance, database = keycloak_storage(postgres, "tests")
    with reusable_instance_dir(instance) as instance_dir:
        keycloak = KeycloakServer(instance_dir=instance_dir, realm_env=realm_env, database=database)
        redis = RedisServer(work_dir=work / "redis")
        stack = Stack(
            keycloak=keycloak,
            redis=redis,
            signing_key_file=key_file,
            issuer=issuer,
            realm=realm,
            client_id=client_id,
            client_secret=client_secret,
            strapi_client_secret=strapi_client_secret,
            example_app_secret=example_app_secret,
            admin_client_secret=admin_client_secret,
            java_home=java_home,
        )
        # The bridge itself publishes the JWKS Keycloak trusts, exactly as in production.
        stack.jwks_server = ThreadedServer(create_app(stack.settings(redis_url=None)), port=jwks_port)
        try:
            redis.start()
            stack.jwks_server.start()
            keycloak.prepare(distribution)
            keycloak.start_and_wait(java_home)
            seed_strapi_id_high_water(stack)
            yield stack
        finally:
            keycloak.stop()
            stack.jwks_server.stop()
            redis.stop()


@pytest.fixture
def emulator() -> TikTokEmulator:
    from devstack.tiktok_emulator import TikTokEmulator  # noqa: PLC0415 - unit tests need not import it

    return TikTokEmulator(client_key=CLIENT_KEY, client_secret=CLIENT_SECRET)


@pytest.fixture
def tiktok_server(emulator: TikTokEmulator) -> Iterator[ThreadedServer]:
    """The emulator on a real port, for bridges running as separate processes."""
    server = ThreadedServer(emulator.app)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def flushed_redis(stack: Stack) -> None:
    import redis.asyncio as aioredis  # noqa: PLC0415

    client = aioredis.Redis.from_url(stack.redis.url)
    await client.flushall()
    await client.aclose()


class BridgeClient:
    """An in-process bridge whose outbound TikTok calls reach the emulator; Keycloak and Redis are real."""

    def __init__(self, http: httpx2.AsyncClient) -> None:
        self.http = http

    async def exchange(self, subject_token: str, **form: str) -> httpx2.Response:
        data = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": subject_token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            **form,
        }
        return await self.http.post("/token", data=data)

    async def refresh(self, refresh_token: str, **form: str) -> httpx2.Response:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **form}
        return await self.http.post("/token", data=data)

    async def revoke(self, token: str, **form: str) -> httpx2.Response:
        return await self.http.post("/revoke", data={"token": token, **form})


async def running_bridge(
    settings: Settings, emulator: TikTokEmulator, clock: Callable[[], float] | None = None
) -> AsyncGenerator[BridgeClient]:
    app = create_app(settings, mounts={TIKTOK_API: httpx2.ASGITransport(app=emulator.app)}, clock=clock)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://bridge.test") as http,
    ):
        yield BridgeClient(http)


def forget_abandoned_sockets() -> None:
    """Collect now, ignoring the unclosed-socket warnings, what redis-py left behind when a test killed
    the server under it: connection attempts to a dead master, abandoned mid-connect. Left to the
    garbage collector they surface later, as a ResourceWarning failing whichever test runs then."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@contextlib.asynccontextmanager
async def served_bridge(
    settings: Settings, emulator: TikTokEmulator, clock: Callable[[], float] | None = None
) -> AsyncIterator[BridgeClient]:
    """`running_bridge` as a context manager: closed (clients, Redis connections) even when the test
    body fails, which an `async for` over the generator does not guarantee."""
    async with contextlib.aclosing(running_bridge(settings, emulator, clock)) as bridges:
        yield await anext(bridges)


class Clock:
    """A clock that stands still until a test moves it (`clock.now += DAY`): what a bridge, or a unit
    under test, judges session lifetimes and token expiry by, instead of the test sleeping."""

    def __init__(self) -> None:
        self.now = time.time()  # real time to start with: Keycloak's tokens are judged by it too

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bridge_settings(stack: Stack) -> Settings:
    """What `bridge` is configured with. A module overrides this fixture to configure its bridge."""
    return stack.settings()


@pytest.fixture
def bridge_clock() -> Callable[[], float]:
    """The time `bridge` judges sessions by: the real one. A module that moves time overrides this
    fixture to return `clock`."""
    return time.time


@pytest.fixture
async def bridge(
    bridge_settings: Settings,
    bridge_clock: Callable[[], float],
    emulator: TikTokEmulator,
    flushed_redis: None,
) -> AsyncIterator[BridgeClient]:
    """An in-process bridge (`bridge_settings`, `bridge_clock`) on an empty Redis."""
    async with served_bridge(bridge_settings, emulator, bridge_clock) as client:
        yield client


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    """Retries keep their attempt count in tests but never sleep (stamina's test mode)."""
    import stamina  # noqa: PLC0415

    stamina.set_testing(True, attempts=2)
    yield
    stamina.set_testing(False)


# The admin listener (metrics, detailed readiness) of each bridge `start_bridge_process` started, by its
# public URL.
ADMIN_URLS: dict[str, str] = {}


def start_bridge_process(
    stack: Stack, log_file: Path | None = None, args: Sequence[str] = (), **env: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m bridge serve` as a real process on a free port, once it answers /healthz.

    `args` are more `bridge serve` flags. Its log goes to a pipe that `communicate()` reads at the end,
    which suits a handful of requests. Give `log_file` for long runs: nobody drains the pipe meanwhile,
    and once its 64 KiB fill up every log write blocks the server (a fuzzing run hung exactly so)."""
    port, admin_port = free_port(), free_port()
    log_target = log_file.open("wb") if log_file is not None else subprocess.PIPE
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge",
            "serve",
            "--port",
            str(port),
            "--admin-port",
            str(admin_port),
            *args,
        ],
        env={**os.environ, **stack.env(**env)},
        stderr=log_target,
    )
    if log_file is not None:
        log_target.close()  # type: ignore[union-attr]  # the child holds its own copy
    url = f"http://127.0.0.1:{port}"
    ADMIN_URLS[url] = f"http://127.0.0.1:{admin_port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx2.get(f"{url}/healthz").status_code == 200:
                return process, url
        except httpx2.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            stderr = process.communicate()[1] or (log_file.read_bytes() if log_file else b"")
            raise RuntimeError(f"bridge did not start: {stderr.decode()[-2000:]}")
        time.sleep(0.1)


# ------------------------------------------------------------------------------ log audit
# Every log record of the whole run, at every level and from every library, is kept and checked at
# the end: a TikTok token, a JWT, a bearer credential or one of the run's secrets in any of them fails
# the run. This is what "no secret or token in any log line" means in practice.

_TOKEN_SHAPES = re.compile(
    r"\b(?:act|rft|clt)\.[A-Za-z0-9!._~-]{16,}|\btkb1\.[A-Za-z0-9_-]{22}\.|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.|(?i:bearer)\s+[A-Za-z0-9._~+/=!-]{12,}"
)
KNOWN_SECRETS: set[str] = {CLIENT_SECRET}


class _AuditHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.getMessage()} {vars(record)}"
        except Exception:  # noqa: BLE001 - a record that cannot be rendered cannot leak either
            return
        if _TOKEN_SHAPES.search(text) or any(secret in text for secret in KNOWN_SECRETS):
            # Say where, not what: the report must not print the secret again.
            self.leaks.append(f"{record.name}:{record.levelname}: {redact(record.getMessage())[:120]!r}")


_audit = _AuditHandler()


def pytest_configure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.addHandler(_audit)
    root.setLevel(logging.DEBUG)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _audit.leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"LOG AUDIT: {len(_audit.leaks)} log records hold a token or secret:", red=True
            )
            for leak in _audit.leaks[:20]:
                reporter.write_line(f"  {leak}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
