"""The soak's stack: PostgreSQL, Keycloak on it, Redis under Sentinel, the TikTok emulator, three bridge
replicas and the round-robin proxy in front of them; started in that order, stopped in reverse however
the run ends, and the faults the soak throws at it.

Every process is started here with the devstack launchers (or as `python -m ...`) and recorded as it
starts, so `close()` stops exactly what was started: nothing by name, nothing another run owns.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2
from cryptography.fernet import Fernet
from joserfc.jwk import ECKey

from devstack.bridge_env import EMULATOR_CLIENT_KEY, EMULATOR_CLIENT_SECRET, bridge_variables, realm_variables
from devstack.keycloak import (
    KeycloakServer,
    die_with_parent,
    fetch_distribution,
    find_java_home,
    free_port,
    progress,
    reusable_instance_dir,
)
from devstack.postgres import running_postgres
from devstack.redis import RedisSentinelSet, RedisServer

if TYPE_CHECKING:
    import signal

    from devstack.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
REALM, CLIENT_ID = "app", "tiktok-bridge"
STRAPI_CLIENT_ID = "tiktok-bridge-strapi"
ACCOUNT_APP = "account-app"  # a public client that signs password users in (what an existing app is)
REDIRECT_URI = "https://app.example/callback"
REPLICAS = 3
# Keycloak's first start in a fresh instance folder builds it (minutes on a busy machine); the folder is
# the one scripts/bench's PostgreSQL phase keeps, so either reuses the other's build.
KEYCLOAK_INSTANCE = "bench-postgres"
KEYCLOAK_START_TIMEOUT = 600.0
BRIDGE_START_TIMEOUT = 120.0
DRAIN_TIMEOUT = 40.0  # the bridge's own drain deadline is 20 s


def wait_http(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process behind {url} exited with {process.returncode}")
        try:
            if httpx2.get(url, timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


@dataclass
class Replica:
    name: str
    port: int
    admin_port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class SoakStack:
    work: Path
    secrets: dict[str, str] = field(default_factory=dict)
    keycloak: KeycloakServer | None = None
    postgres: PostgresServer | None = None
    redis: RedisSentinelSet | None = None
    replicas: list[Replica] = field(default_factory=list)
    emulator: subprocess.Popen[bytes] | None = None
    proxy: subprocess.Popen[bytes] | None = None
    proxy_port: int = field(default_factory=free_port)
    emulator_port: int = field(default_factory=free_port)
    bridge_env: dict[str, str] = field(default_factory=dict)
    java_home: Path | None = None
    closing: bool = False
    # Held while a process is started or `closing` is set: a fault still running on another thread when
    # the soak is interrupted then cannot start a process after `close()` has stopped the rest.
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _exit: ExitStack = field(default_factory=ExitStack)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    # ------------------------------------------------------------------------------ start, stop

    def start(self) -> None:
        """Everything, in dependency order; on any failure what was started is stopped again."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.secrets = {name: secrets.token_urlsafe(24) for name in ("client", "admin", "strapi", "example")}
        key_file = self.work / "signing-key.pem"
        key_file.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
        self.postgres = self._exit.enter_context(running_postgres("soak"))
        database = self.postgres.create_database("keycloak_soak")
        instance_dir = self._exit.enter_context(reusable_instance_dir(KEYCLOAK_INSTANCE))
        self.keycloak = KeycloakServer(
            instance_dir=instance_dir,
            database=database,
            realm_env=realm_variables(
                realm=REALM,
                client_id=CLIENT_ID,
                client_secret=self.secrets["client"],
                issuer=self.url,
                admin_client_secret=self.secrets["admin"],
                BRIDGE_STRAPI_KEYCLOAK_CLIENT_SECRET=self.secrets["strapi"],
                BRIDGE_EXAMPLE_APP_KEYCLOAK_CLIENT_SECRET=self.secrets["example"],
            ),
        )
        progress("starting Redis: master, replica, three sentinels")
        self.redis = RedisSentinelSet(work_dir=self.work / "redis")
        self.redis.start()
        self.bridge_env = {
            **os.environ,
            **bridge_variables(
                tiktok_api_url=self.emulator_url,
                keycloak_url=self.keycloak.url,
                realm=REALM,
                client_id=CLIENT_ID,
                client_secret=self.secrets["client"],
                issuer=self.url,
                signing_key_file=key_file,
                redis_url=self.redis.url,
                admin_client_secret=self.secrets["admin"],
                BRIDGE_STRAPI_KEYCLOAK_CLIENT_ID=STRAPI_CLIENT_ID,
                BRIDGE_STRAPI_KEYCLOAK_CLIENT_SECRET=self.secrets["strapi"],
                BRIDGE_LINK_CLIENT_IDS=ACCOUNT_APP,
                BRIDGE_TIKTOK_REDIRECT_URIS=REDIRECT_URI,
                # Shared by the replicas: a session sealed by one is opened by another.
                BRIDGE_SESSION_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
                BRIDGE_DATA_DIR=str(self.work / "data"),
                # On, as deployed, but raised: every request comes from one address and a few identities.
                BRIDGE_RATE_LIMIT_PER_IP="1000000/second",
                BRIDGE_RATE_LIMIT_PER_IDENTITY="1000000/second",
                BRIDGE_RATE_LIMIT_WEBHOOK_PER_IP="1000000/second",
                BRIDGE_RATE_LIMIT_REFUSED_TOKENS_PER_IP="",
                BRIDGE_TIKTOK_USER_INFO_QUOTA="1000000/minute",
                BRIDGE_DEAUTHORIZATION_POLICY="disable",
                BRIDGE_LOG_LEVEL="WARNING",
            ),
        }
        progress(f"starting the TikTok emulator on {self.emulator_url}")
        self.emulator = self._spawn(
            [
                "-m",
                "bench.soak.emulator",
                "--port",
                str(self.emulator_port),
                "--client-key",
                EMULATOR_CLIENT_KEY,
                "--client-secret",
                EMULATOR_CLIENT_SECRET,
                "--redirect-uri",
                REDIRECT_URI,
                "--webhook-url",
                f"{self.url}/webhooks/tiktok",
            ],
            self.work / "emulator.log",
        )
        self.replicas = [
            Replica(f"replica-{i + 1}", free_port(), free_port(), self.work / f"replica-{i + 1}.log")
            for i in range(REPLICAS)
        ]
        backends = [arg for r in self.replicas for arg in ("--backend", str(r.port))]
        self.proxy = self._spawn(
            ["-m", "bench.soak.proxy", "--port", str(self.proxy_port), *backends], self.work / "proxy.log"
        )
        progress(f"starting {REPLICAS} bridge replicas behind {self.url}")
        for replica in self.replicas:
            self.start_replica(replica, wait=False)
        for replica in self.replicas:
            wait_http(f"{replica.url}/healthz", BRIDGE_START_TIMEOUT, replica.process)
        wait_http(f"{self.emulator_url}/_emulator/stats", 60, self.emulator)
        self.java_home = find_java_home()
        self.keycloak.prepare(fetch_distribution())
        self.keycloak.start(self.java_home)
        self.keycloak.wait_ready(timeout=KEYCLOAK_START_TIMEOUT)

    def _spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Gone with the soak even if it is killed outright (SIGKILL leaves no finally block).
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only a prctl call, before exec
            )

    def start_replica(self, replica: Replica, *, wait: bool = True) -> None:
        with self._lock, replica.log.open("ab") as out:
            if self.closing:
                raise RuntimeError("the soak is stopping")
            replica.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bridge",
                    "serve",
                    "--port",
                    str(replica.port),
                    "--admin-port",
                    str(replica.admin_port),
                    "--workers",
                    "1",
                ],
                cwd=ROOT,
                env=self.bridge_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only a prctl call, before exec
            )
        if wait:
            wait_http(f"{replica.url}/healthz", BRIDGE_START_TIMEOUT, replica.process)

    def close(self) -> None:
        """Stop everything started, newest first; safe to call twice and after a failed start."""
        with self._lock:
            self.closing = True
        for process in [self.proxy, *(r.process for r in self.replicas), self.emulator]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [self.proxy, *(r.process for r in self.replicas), self.emulator]:
            if process is None:
                continue
            try:
                process.wait(timeout=DRAIN_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self.keycloak is not None:
            self.keycloak.stop()
        if self.redis is not None:
            self.redis.stop()
        self._exit.close()  # PostgreSQL, then the Keycloak folder's lock

    # ------------------------------------------------------------------------------ faults

    def restart_keycloak(self) -> None:
        """Stop Keycloak (SIGTERM) and start it again on the same ports and database."""
        assert self.keycloak is not None
        assert self.java_home is not None
        self.keycloak.stop()
        with self._lock:
            if self.closing:
                return
            self.keycloak.start(self.java_home)
        self.keycloak.wait_ready(timeout=KEYCLOAK_START_TIMEOUT)

    def fail_over_redis(self) -> float:
        """Kill the Redis master (SIGKILL), wait for the sentinels to promote the replica, then bring the
        old master back as the new master's replica, so the set-up can fail over again. Returns the
        seconds the failover took."""
        assert self.redis is not None
        old, new = self.redis.master, self.redis.replica
        assert old is not None
        assert new is not None
        self.redis.kill_master()
        took = self.redis.wait_for_failover(timeout=60)
        again = RedisServer(
            work_dir=old.work_dir, port=old.port, extra_args=("--replicaof", "127.0.0.1", str(new.port))
        )
        with self._lock:
            if self.closing:
                return took
            self.redis.master, self.redis.replica = new, again
            again.start()
        return took

    def stop_replica(self, replica: Replica, sig: signal.Signals) -> None:
        assert replica.process is not None
        replica.process.send_signal(sig)
        replica.process.wait(timeout=DRAIN_TIMEOUT)

    def redis_memory(self) -> tuple[float, int]:
        """(used_memory in MB, keys) of the current master."""
        assert self.redis is not None
        port = self.redis.master_port()
        assert port is not None
        info = RedisSentinelSet.command(port, "INFO", "memory")
        fields = dict(line.split(":", 1) for line in info if ":" in line)
        keys = RedisSentinelSet.command(port, "DBSIZE")[0]
        return int(fields["used_memory"]) / 1e6, int(keys)

    def admin(self) -> httpx2.Client:
        """A master-realm administrator's client on the app realm's Admin API."""
        assert self.keycloak is not None
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
        return httpx2.Client(
            base_url=f"{self.keycloak.url}/admin/realms/{REALM}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "replicas": REPLICAS,
            "workers_per_replica": 1,
            "load_balancer": "bench/soak/proxy.py (round-robin TCP, skips refusing replicas)",
            "keycloak": "PostgreSQL",
            "redis": "Sentinel: master, replica, 3 sentinels",
            "tiktok": "emulator, 2-hour access tokens, 180-day rotating refresh tokens",
        }
