"""How much Redis the bridge needs: bytes per entry of each kind, measured, and a table for 100,000,
1 million and 10 million monthly users (docs/soak.md, "Sizing Redis").

    .venv/bin/python bench/redis_sizing.py [--users 300] [--json FILE]

The entries are written by the bridge itself, driven over HTTP as apps drive it: a real bridge process
(`bridge serve`, default settings, sessions on) against a fresh redis-server, a real Keycloak and the
TikTok emulator. `--users` TikTok users sign in with an access token and as many with a Login Kit code
(their sessions keep TikTok's tokens, sealed); a tenth of them then deauthorize the app through the
signed webhook. The keys are then found by SCAN over the bridge's prefix and grouped by the name after
it (`tkb:v1:<kind>:...`), each measured with MEMORY USAGE and its TTL read: nothing here knows how the
bridge encodes an entry, so the figures follow its code wherever the encoding lives.

Live entries of each kind are projected with Little's law: arrivals a second times the TTL measured
(capped by the population that can hold one), from the assumptions printed with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx2
import redis
from joserfc.jwk import ECKey

from bench.soak.stack import wait_http
from devstack.bridge_env import EMULATOR_CLIENT_KEY, EMULATOR_CLIENT_SECRET, bridge_variables, realm_variables
from devstack.keycloak import KeycloakServer, free_port, progress, reusable_instance_dir, start_keycloak
from devstack.redis import RedisServer
from devstack.threaded import ThreadedServer
from devstack.tiktok_emulator import TikTokEmulator

PREFIX = "tkb:v1:"
REALM, CLIENT_ID = "app", "tiktok-bridge"
REDIRECT = "https://app.example/callback"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
CODE_TYPE = "urn:tiktok-keycloak-bridge:params:oauth:token-type:tiktok-authorization-code"
HOUR, DAY = 3600, 86400
MONTH = 30 * DAY
# Room above the keys' own bytes: allocator fragmentation, the replication backlog and client buffers,
# and the copy-on-write of a fork while the replica syncs.
HEADROOM = 1.5
POPULATIONS = (100_000, 1_000_000, 10_000_000)
SIGN_IN_ATTEMPTS = 6
UNAVAILABLE = 503


@dataclass(frozen=True)
class Assumptions:
    sessions_per_user: float = 1.5  # devices signed in (phone, tablet) within the idle timeout
    code_share: float = 0.5  # sessions started from a Login Kit code (they keep TikTok's tokens)
    sign_ins_per_user_month: float = 20.0  # exchanges (cold starts of the app); refreshes write no cache
    peak_factor: float = 3.0  # the busiest hour against the month's average
    deauthorized_share_month: float = 0.02  # users who remove the app in a month
    addresses_per_sign_in: float = 1.0  # distinct client addresses (mobile networks change them)


# ---------------------------------------------------------------------------------- writing entries


async def sign_in(http: httpx2.AsyncClient, emulator: TikTokEmulator, *, code: bool) -> str:
    """One sign-in, again after a 503 (Keycloak slow on a busy machine), with a fresh code each time:
    a code is spent once TikTok has redeemed it."""
    user = emulator.create_user(display_name="Sizing User")
    scopes = ("user.info.basic", "user.info.profile")
    for _ in range(SIGN_IN_ATTEMPTS):
        if code:
            verifier = secrets.token_urlsafe(48)
            subject = emulator.issue_authorization_code(
                user.open_id,
                redirect_uri=REDIRECT,
                code_challenge=hashlib.sha256(verifier.encode()).hexdigest(),
                scopes=scopes,
            )
            form = {"subject_token_type": CODE_TYPE, "code_verifier": verifier, "redirect_uri": REDIRECT}
        else:
            subject = emulator.issue_access_token(user.open_id, scopes)
            form = {"subject_token_type": ACCESS_TOKEN_TYPE}
        answer = await http.post(
            "/token", data={"grant_type": TOKEN_EXCHANGE, "subject_token": subject, **form}
        )
        if answer.status_code != UNAVAILABLE:
            break
        await asyncio.sleep(float(answer.headers.get("retry-after", "1")))
    answer.raise_for_status()
    return user.open_id


async def deauthorize(http: httpx2.AsyncClient, emulator: TikTokEmulator, open_id: str) -> None:
    body, signature = emulator.deauthorization_event(open_id)
    answer = await http.post(
        "/webhooks/tiktok",
        content=body,
        headers={"Content-Type": "application/json", "TikTok-Signature": signature},
    )
    answer.raise_for_status()


async def drive(bridge_url: str, emulator: TikTokEmulator, users: int, redis_url: str) -> dict[str, set[str]]:
    """Sign users in (access tokens, then codes) and deauthorize a tenth; the session keys each phase
    added, so sessions with and without TikTok's tokens are told apart."""
    gate = asyncio.Semaphore(8)
    phases: dict[str, set[str]] = {}
    store = redis.Redis.from_url(redis_url)
    async with httpx2.AsyncClient(base_url=bridge_url, timeout=60) as http:

        async def one(*, code: bool) -> str:
            async with gate:
                return await sign_in(http, emulator, code=code)

        before = session_keys(store)
        by_token = await asyncio.gather(*(one(code=False) for _ in range(users)))
        after_tokens = session_keys(store)
        await asyncio.gather(*(one(code=True) for _ in range(users)))
        after_codes = session_keys(store)
        phases["session (access-token sign-in)"] = after_tokens - before
        phases["session (code sign-in)"] = after_codes - after_tokens
        for open_id in by_token[: max(1, users // 10)]:
            await deauthorize(http, emulator, open_id)
    return phases


def session_keys(client: redis.Redis) -> set[str]:
    return {key.decode() for key in client.scan_iter(match=f"{PREFIX}session:*", count=1000)}


# ---------------------------------------------------------------------------------- measuring


def kind_of(key: str) -> str:
    """`tkb:v1:<kind>:...` -> kind (`ratelimit/...` keeps its first sub-part: per address, identity)."""
    rest = key.removeprefix(PREFIX)
    head, _, tail = rest.partition(":")
    if head in {"lock", "ratelimit"}:
        return f"{head}:{tail.split(':', 1)[0].strip('{}')[:20]}"
    return head


def measure(client: redis.Redis, phases: dict[str, set[str]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[tuple[int, int]]] = {}
    for raw in client.scan_iter(match=f"{PREFIX}*", count=1000):
        key = raw.decode()
        kind = next((name for name, keys in phases.items() if key in keys), kind_of(key))
        size = client.memory_usage(key, samples=0) or 0
        groups.setdefault(kind, []).append((int(size), int(client.ttl(key))))
    return {
        kind: {
            "keys": len(entries),
            "bytes_mean": round(statistics.fmean(s for s, _ in entries)),
            "bytes_max": max(s for s, _ in entries),
            "ttl_seconds": max(t for _, t in entries),
        }
        for kind, entries in sorted(groups.items())
    }


def project(kinds: dict[str, dict[str, Any]], users: int, a: Assumptions) -> dict[str, float]:
    """Live entries of each kind for `users` monthly users."""
    average_sign_ins = users * a.sign_ins_per_user_month / MONTH
    deauthorizations_per_second = users * a.deauthorized_share_month / MONTH
    sessions = users * a.sessions_per_user
    live: dict[str, float] = {}
    for kind, figures in kinds.items():
        ttl = max(0, figures["ttl_seconds"])
        # Entries that live an hour or less follow the busiest hour; longer ones the average.
        sign_ins_per_second = average_sign_ins * (a.peak_factor if ttl <= HOUR else 1.0)
        if kind == "session (access-token sign-in)":
            live[kind] = sessions * (1 - a.code_share)
        elif kind == "session (code sign-in)":
            live[kind] = sessions * a.code_share
        elif kind in {"profile", "user"}:  # one per sign-in, up to one per user
            live[kind] = min(users, sign_ins_per_second * ttl)
        elif kind == "proven":
            live[kind] = min(
                users * a.addresses_per_sign_in, sign_ins_per_second * a.addresses_per_sign_in * ttl
            )
        elif kind in {"revoked", "sessions-not-before", "webhook", "deauth-pending"}:
            live[kind] = min(users, deauthorizations_per_second * ttl)
        elif kind.startswith("ratelimit"):
            live[kind] = min(users, sign_ins_per_second * ttl)
        else:  # one per deployment (the admin token) or short-lived locks
            live[kind] = 1 if ttl > 60 or ttl < 0 else 0
    return live


def table(kinds: dict[str, dict[str, Any]], a: Assumptions) -> tuple[str, dict[str, Any]]:
    lines = [
        "| entry | bytes each (MEMORY USAGE) | TTL | "
        + " | ".join(f"{users:,} users" for users in POPULATIONS)
        + " |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in POPULATIONS) + " |",
    ]
    totals = dict.fromkeys(POPULATIONS, 0.0)
    projected = {users: project(kinds, users, a) for users in POPULATIONS}
    for kind, figures in kinds.items():
        cells = []
        for users in POPULATIONS:
            entries = projected[users][kind]
            size = entries * figures["bytes_mean"]
            totals[users] += size
            cells.append(f"{entries:,.0f} = {size / 1e6:,.1f} MB")
        ttl = figures["ttl_seconds"]
        lines.append(
            f"| {kind} | {figures['bytes_mean']:,} | {'none' if ttl < 0 else human(ttl)} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append(
        "| **total (keys)** | | | " + " | ".join(f"**{totals[u] / 1e6:,.0f} MB**" for u in POPULATIONS) + " |"
    )
    lines.append(
        f"| **maxmemory (keys x{HEADROOM})** | | | "
        + " | ".join(f"**{totals[u] * HEADROOM / 1e6:,.0f} MB**" for u in POPULATIONS)
        + " |"
    )
    figures = {
        str(u): {"keys_mb": totals[u] / 1e6, "maxmemory_mb": totals[u] * HEADROOM / 1e6} for u in POPULATIONS
    }
    return "\n".join(lines), figures


def human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds} s"


# ---------------------------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=300, help="users signed in each way (default 300)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument(
        "--figures", type=Path, help="print the table from an earlier --json file instead of measuring"
    )
    args = parser.parse_args()
    if args.figures:
        print(table(json.loads(args.figures.read_text())["kinds"], Assumptions())[0])
        return
    if args.users < 10:
        parser.error("--users must be at least 10")
    work = Path(tempfile.mkdtemp(prefix="redis-sizing-"))
    key_file = work / "signing-key.pem"
    key_file.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    secret, admin_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    emulator = TikTokEmulator(
        client_key=EMULATOR_CLIENT_KEY,
        client_secret=EMULATOR_CLIENT_SECRET,
        redirect_uris=(REDIRECT,),
        access_token_ttl=2 * 3600,
        refresh_token_ttl=180 * 86400,
        user_info_rate_limit_per_minute=10**9,
    )
    bridge_port, admin_port = free_port(), free_port()
    bridge_url = f"http://127.0.0.1:{bridge_port}"
    realm_env = realm_variables(
        realm=REALM,
        client_id=CLIENT_ID,
        client_secret=secret,
        issuer=bridge_url,
        admin_client_secret=admin_secret,
    )
    tiktok = ThreadedServer(emulator.app)
    store = RedisServer(work_dir=work / "redis")
    bridge: subprocess.Popen[bytes] | None = None
    keycloak: KeycloakServer | None = None
    # The H2 Keycloak folder scripts/bench keeps (its build is reused); Keycloak fetches the bridge's
    # JWKS only at the first exchange, so it may start before the bridge.
    with reusable_instance_dir("bench") as instance_dir:
        try:
            store.start()
            tiktok.start()
            keycloak = start_keycloak(instance_dir, realm_env)
            env = bridge_variables(
                tiktok_api_url=tiktok.url,
                keycloak_url=keycloak.url,
                realm=REALM,
                client_id=CLIENT_ID,
                client_secret=secret,
                issuer=bridge_url,
                signing_key_file=key_file,
                redis_url=store.url,
                admin_client_secret=admin_secret,
                BRIDGE_TIKTOK_REDIRECT_URIS=REDIRECT,
                BRIDGE_DATA_DIR=str(work / "data"),
                BRIDGE_LOG_LEVEL="WARNING",
                # One client address signs everyone in here; the limits' own keys are still written.
                BRIDGE_RATE_LIMIT_PER_IP="1000000/second",
                BRIDGE_RATE_LIMIT_PER_IDENTITY="1000000/second",
                BRIDGE_TIKTOK_USER_INFO_QUOTA="1000000/minute",
            )
            with (work / "bridge.log").open("wb") as log:
                bridge = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bridge",
                        "serve",
                        "--port",
                        str(bridge_port),
                        "--admin-port",
                        str(admin_port),
                    ],
                    cwd=ROOT,
                    env={**os.environ, **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            wait_http(f"{bridge_url}/healthz", 120, bridge)
            client = redis.Redis.from_url(store.url)
            before = int(client.info("memory")["used_memory"])
            progress(f"signing in {args.users} users with access tokens and {args.users} with codes")
            started = time.monotonic()
            phases = asyncio.run(drive(bridge_url, emulator, args.users, store.url))
            progress(f"done in {time.monotonic() - started:.0f} s; measuring every key")
            kinds = measure(client, phases)
            used = int(client.info("memory")["used_memory"]) - before
            summed = sum(k["keys"] * k["bytes_mean"] for k in kinds.values())
        finally:
            if bridge is not None:
                bridge.terminate()
                bridge.wait(timeout=30)
            if keycloak is not None:
                keycloak.stop()
            tiktok.stop()
            store.stop()
    assumptions = Assumptions()
    markdown, totals = table(kinds, assumptions)
    print(
        f"Measured: {args.users} access-token and {args.users} code sign-ins, {max(1, args.users // 10)} deauthorizations"
    )
    # In a small run the fixed costs (Lua scripts, connections' buffers) dominate this growth.
    print(f"used_memory grew {used / 1e6:.2f} MB for {summed / 1e6:.2f} MB of keys\n")
    print(markdown)
    print("\nAssumptions: " + ", ".join(f"{k}={v}" for k, v in vars(assumptions).items()))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "kinds": kinds,
                    "assumptions": vars(assumptions),
                    "used_memory_growth": used,
                    "totals": totals,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
