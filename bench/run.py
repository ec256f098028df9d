"""How much the bridge costs on top of Keycloak: the benchmark behind `scripts/bench` (see bench/README.md).

Starts the real stack (Keycloak, redis-server, the TikTok emulator with no added latency, the bridge as
`bridge serve --workers N` with production settings but rate limits off, since all load comes from one
IP), drives it with wrk from a separate process, and prints one table. Every figure is measured `--runs`
times; the table shows the median and the spread (min-max). Baseline and bridge runs alternate so the
ratio of each pair cancels machine noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import httpx2
from joserfc.jwk import ECKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.assertions import AssertionSigner, load_key
from devstack.keycloak import (
    KEYCLOAK_VERSION,
    KeycloakServer,
    fetch_distribution,
    find_java_home,
    free_port,
    progress,
    reusable_instance_dir,
)
from devstack.redis import RedisServer

if TYPE_CHECKING:
    from collections.abc import Callable

LUA = ROOT / "bench" / "wrk_bodies.lua"
EXCHANGE = {
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
}
CLIENT_ID, CLIENT_SECRET, REALM = "tiktok-bridge", "bench-client-secret", "app"
_METRIC = re.compile(r"^bridge_upstream_request_seconds_count\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


@dataclass
class Run:
    requests: int
    seconds: float
    non_2xx: int
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


@dataclass
class Stack:
    keycloak: KeycloakServer
    redis: RedisServer
    bridge_url: str
    emulator_url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    bridge: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=30)
        self.keycloak.stop()
        self.redis.stop()


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url, timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def start_stack(work: Path, key_file: Path, workers: int, instance_dir: Path) -> Stack:
    bridge_port, emulator_port = free_port(), free_port()
    bridge_url, emulator_url = f"http://127.0.0.1:{bridge_port}", f"http://127.0.0.1:{emulator_port}"
    redis = RedisServer(work_dir=work / "redis")
    redis.start()
    keycloak = KeycloakServer(
        instance_dir=instance_dir,
        realm_env={
            "BRIDGE_KEYCLOAK_REALM": REALM,
            "BRIDGE_KEYCLOAK_CLIENT_ID": CLIENT_ID,
            "BRIDGE_KEYCLOAK_CLIENT_SECRET": CLIENT_SECRET,
            "BRIDGE_ISSUER": bridge_url,
            "BRIDGE_JWKS_URL": f"{bridge_url}/.well-known/jwks.json",
        },
    )
    stack = Stack(keycloak=keycloak, redis=redis, bridge_url=bridge_url, emulator_url=emulator_url)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    stack.processes.append(
        subprocess.Popen(
            # TikTok's quota (600 user-info calls a minute) would cap first sign-ins at 10/s: lifted here.
            [
                sys.executable,
                "-m",
                "devstack.tiktok_emulator",
                "--port",
                str(emulator_port),
                "--user-info-rate-limit",
                str(10**9),
            ],
            cwd=ROOT,
            **quiet,
        )  # type: ignore[call-overload]
    )
    metrics_dir = work / "prometheus"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "BRIDGE_TIKTOK_CLIENT_KEY": "emulated-client-key",
        "BRIDGE_TIKTOK_CLIENT_SECRET": "emulated-client-secret",
        "BRIDGE_TIKTOK_API_URL": emulator_url,
        "BRIDGE_KEYCLOAK_URL": keycloak.url,
        "BRIDGE_KEYCLOAK_REALM": REALM,
        "BRIDGE_KEYCLOAK_CLIENT_ID": CLIENT_ID,
        "BRIDGE_KEYCLOAK_CLIENT_SECRET": CLIENT_SECRET,
        "BRIDGE_ISSUER": bridge_url,
        "BRIDGE_SIGNING_KEY_FILE": str(key_file),
        "BRIDGE_REDIS_URL": redis.url,
        "BRIDGE_RATE_LIMIT_ENABLED": "false",
        "BRIDGE_LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    stack.bridge = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--port", str(bridge_port), "--workers", str(workers)],
        cwd=ROOT,
        env=env,
        **quiet,  # type: ignore[call-overload]
    )
    stack.processes.append(stack.bridge)
    wait_http(f"{emulator_url}/_emulator/stats")
    wait_http(f"{bridge_url}/healthz")
    keycloak.prepare(fetch_distribution())
    keycloak.start(find_java_home())
    keycloak.wait_ready()
    return stack


# ------------------------------------------------------------------------------------ measuring


def wrk(url: str, bodies: Path, *, connections: int, seconds: int, cycle: bool) -> Run:
    env = {**os.environ, "BENCH_BODIES": str(bodies), "BENCH_CYCLE": "1" if cycle else "0"}
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith('{"requests"'))
    data = json.loads(line)
    return Run(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        non_2xx=data["non_2xx"] + data["socket_errors"],
        p50_ms=data["p50_ms"],
        p99_ms=data["p99_ms"],
    )


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [pid]
    if children.exists():
        for child in children.read_text().split():
            found.extend(process_tree(int(child)))
    return found


def cpu_seconds(pid: int) -> float:
    total = 0
    for each in process_tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The largest peak resident set of one bridge worker (the uvicorn supervisor excluded when workers>1)."""
    pids = process_tree(pid)
    workers = pids[1:] or pids
    peaks = []
    for each in workers:
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        if match := re.search(r"VmHWM:\s+(\d+) kB", status):
            peaks.append(int(match.group(1)) / 1024)
    return max(peaks, default=0.0)


def upstream_counts(stack: Stack) -> dict[str, float]:
    counts: dict[str, float] = {"tiktok_user_info": 0, "keycloak_admin": 0, "keycloak_token": 0, "redis": 0}
    for line in httpx2.get(f"{stack.bridge_url}/metrics").text.splitlines():
        if not (match := _METRIC.match(line)):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group("labels")))
        value = float(match.group("value"))
        upstream, operation = labels["upstream"], labels["operation"]
        if upstream == "keycloak" and operation.startswith("admin"):
            counts["keycloak_admin"] += value
        elif upstream == "keycloak" and operation in {"jwt_grant", "service_account_token"}:
            counts["keycloak_token"] += value
        elif upstream == "redis":
            counts["redis"] += value
    counts["tiktok_user_info"] = httpx2.get(f"{stack.emulator_url}/_emulator/stats").json()["calls"][
        "user_info"
    ]
    return counts


# ------------------------------------------------------------------------------------- workload


def new_tokens(stack: Stack, count: int) -> list[tuple[str, str]]:
    """`count` fresh TikTok users of the emulator, each with a token: (open_id, token)."""
    made = []
    with httpx2.Client(base_url=stack.emulator_url) as client:
        for _ in range(count):
            open_id = client.post("/_emulator/users", json={}).json()["open_id"]
            token = client.post("/_emulator/tokens", json={"open_id": open_id}).json()["access_token"]
            made.append((open_id, token))
    return made


def write_bodies(path: Path, forms: list[dict[str, str]]) -> Path:
    path.write_text("".join(urlencode(form) + "\n" for form in forms))
    return path


@dataclass
class Measured:
    label: str
    runs: list[Run]
    cpu_ms_per_exchange: list[float] = field(default_factory=list)
    calls: dict[str, float] = field(default_factory=dict)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(r, attribute) for r in self.runs)

    def spread(self, attribute: str) -> str:
        values = [getattr(r, attribute) for r in self.runs]
        return f"{min(values):.1f}-{max(values):.1f}"


def measure_bridge(case: Measured, stack: Stack, run_wrk: Callable[[], Run]) -> Run:
    """Run wrk once; charge the bridge's CPU time and the upstream calls to `case`, per exchange."""
    before_cpu, before_calls = cpu_seconds(stack.bridge.pid), upstream_counts(stack)
    measured = run_wrk()
    case.runs.append(measured)
    case.cpu_ms_per_exchange.append((cpu_seconds(stack.bridge.pid) - before_cpu) * 1000 / measured.requests)
    after_calls = upstream_counts(stack)
    case.calls = {k: (after_calls[k] - before_calls[k]) / measured.requests for k in after_calls}
    return measured


def exchange_forms(tokens: list[str]) -> list[dict[str, str]]:
    return [{**EXCHANGE, "subject_token": token} for token in tokens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--workers", type=int, default=2, help="bridge worker processes")
    parser.add_argument("--connections", type=int, default=16, help="concurrency of the main comparison")
    parser.add_argument("--sweep", default="1,8,32,128", help="concurrency levels of the sweep")
    parser.add_argument("--warm-users", type=int, default=50)
    parser.add_argument("--soak", type=int, default=0, help="also run N warm exchanges and report RSS growth")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found (Debian: apt-get install wrk); scripts/bench installs it")

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    key_file = work / "signing-key.pem"
    key_file.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    with reusable_instance_dir("bench") as instance_dir:
        progress("starting the stack")
        stack = start_stack(work, key_file, args.workers, instance_dir)
        try:
            report(stack, args, work, key_file)
        finally:
            stack.stop()
            shutil.rmtree(work, ignore_errors=True)


def report(stack: Stack, args: argparse.Namespace, work: Path, key_file: Path) -> None:
    assert stack.bridge is not None
    token_url = f"{stack.bridge_url}/token"
    grant_url = f"{stack.keycloak.url}/realms/{REALM}/protocol/openid-connect/token"

    progress(f"provisioning {args.warm_users} returning users")
    warm = new_tokens(stack, args.warm_users)
    with httpx2.Client(timeout=30) as client:
        for _, token in warm:
            assert client.post(token_url, data={**EXCHANGE, "subject_token": token}).status_code == 200
        audience = client.get(f"{stack.keycloak.url}/realms/{REALM}/.well-known/openid-configuration").json()[
            "issuer"
        ]
    warm_bodies = write_bodies(work / "warm.txt", exchange_forms([t for _, t in warm]))
    signer = AssertionSigner(key=load_key(key_file), issuer=stack.bridge_url, lifetime=110)

    def baseline_bodies(count: int) -> Path:
        forms = [
            {
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": signer.mint(warm[i % len(warm)][0], audience),
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            }
            for i in range(count)
        ]
        return write_bodies(work / "baseline.txt", forms)

    progress("warming up")
    wrk(token_url, warm_bodies, connections=args.connections, seconds=3, cycle=True)
    wrk(grant_url, baseline_bodies(4000), connections=args.connections, seconds=3, cycle=False)

    baseline = Measured("Keycloak JWT grant, pre-signed assertions (baseline)", [])
    bridge_warm = Measured("bridge, returning users, warm cache", [])
    ratios: list[float] = []
    for run in range(args.runs):
        progress(f"run {run + 1}/{args.runs}: baseline, then warm exchanges")
        baseline.runs.append(
            wrk(
                grant_url,
                baseline_bodies(2500 * args.seconds),
                connections=args.connections,
                seconds=args.seconds,
                cycle=False,
            )
        )
        measured = measure_bridge(
            bridge_warm,
            stack,
            lambda: wrk(
                token_url, warm_bodies, connections=args.connections, seconds=args.seconds, cycle=True
            ),
        )
        ratios.append(measured.per_second / baseline.runs[-1].per_second)

    first = Measured("bridge, first sign-ins (new users)", [])
    for run in range(args.runs):
        progress(f"run {run + 1}/{args.runs}: first sign-ins")
        fresh = new_tokens(stack, 400 * args.seconds)
        bodies = write_bodies(work / "fresh.txt", exchange_forms([t for _, t in fresh]))
        measured = measure_bridge(
            first,
            stack,
            lambda bodies=bodies: wrk(
                token_url, bodies, connections=args.connections, seconds=args.seconds, cycle=False
            ),
        )
        if measured.seconds < args.seconds - 1:
            progress(
                f"  all {len(fresh)} new users signed in after {measured.seconds:.1f} s; rate from that time"
            )

    # Added latency near half of saturation: one connection keeps the bridge at about half its peak rate.
    low_baseline = Measured("baseline, 1 connection", [])
    low_warm = Measured("warm, 1 connection", [])
    for run in range(args.runs):
        progress(f"run {run + 1}/{args.runs}: added latency at one connection")
        low_baseline.runs.append(
            wrk(
                grant_url,
                baseline_bodies(600 * args.seconds),
                connections=1,
                seconds=args.seconds,
                cycle=False,
            )
        )
        low_warm.runs.append(wrk(token_url, warm_bodies, connections=1, seconds=args.seconds, cycle=True))

    sweep: list[tuple[int, Measured]] = []
    for connections in (int(c) for c in args.sweep.split(",")):
        progress(f"sweep: {connections} connections")
        measured_sweep = Measured(f"{connections}", [])
        for _ in range(args.runs):
            measured_sweep.runs.append(
                wrk(token_url, warm_bodies, connections=connections, seconds=args.seconds, cycle=True)
            )
        sweep.append((connections, measured_sweep))

    soak_line = ""
    if args.soak:
        progress(f"soak: {args.soak} warm exchanges")
        rss_before = peak_rss_mb(stack.bridge.pid)
        done = 0
        while done < args.soak:
            done += wrk(token_url, warm_bodies, connections=args.connections, seconds=10, cycle=True).requests
        soak_line = f"peak RSS per worker after {done} more exchanges: {rss_before:.0f} MB -> {peak_rss_mb(stack.bridge.pid):.0f} MB"

    print_table(args, baseline, bridge_warm, first, ratios, sweep, peak_rss_mb(stack.bridge.pid), soak_line)
    print()
    for name in ("p50_ms", "p99_ms"):
        added = [
            w - b
            for w, b in zip(
                (getattr(r, name) for r in low_warm.runs),
                (getattr(r, name) for r in low_baseline.runs),
                strict=True,
            )
        ]
        print(
            f"added latency at 1 connection ({low_warm.median('per_second'):.0f} req/s), {name[:3]}: "
            f"median {statistics.median(added):.2f} ms (spread {min(added):.2f}-{max(added):.2f}); "
            f"baseline {low_baseline.median(name):.2f} ms, bridge {low_warm.median(name):.2f} ms"
        )


def print_table(
    args: argparse.Namespace,
    baseline: Measured,
    warm: Measured,
    first: Measured,
    ratios: list[float],
    sweep: list[tuple[int, Measured]],
    rss_mb: float,
    soak_line: str,
) -> None:
    from importlib import metadata  # noqa: PLC0415

    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("starlette", "uvicorn", "httpx2", "redis", "joserfc")
    )
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2]
    print()
    print(f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}")
    print(f"Keycloak {KEYCLOAK_VERSION}, redis-server {redis_version.removeprefix('v=')}, {versions}")
    print(
        f"bridge workers: {args.workers}; {args.runs} runs of {args.seconds} s; wrk, {args.connections} connections"
    )
    print()
    print(f"{'case':<55} {'req/s median (spread)':>24} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for case in (baseline, warm, first):
        rate = f"{case.median('per_second'):.0f} ({case.spread('per_second')})"
        non_2xx = sum(r.non_2xx for r in case.runs)
        print(
            f"{case.label:<55} {rate:>24} {case.median('p50_ms'):>8.2f} {case.median('p99_ms'):>8.2f} {non_2xx:>8}"
        )
    print()
    print(
        f"warm throughput / baseline (paired runs): median {statistics.median(ratios):.2f} "
        f"(spread {min(ratios):.2f}-{max(ratios):.2f}; goal >= 0.90)"
    )
    print()
    print(
        f"{'upstream calls per exchange':<30} {'tiktok user info':>17} {'kc admin':>9} {'kc token':>9} {'redis':>7}"
    )
    for case in (warm, first):
        c = case.calls
        print(
            f"{case.label[:30]:<30} {c['tiktok_user_info']:>17.2f} {c['keycloak_admin']:>9.2f} "
            f"{c['keycloak_token']:>9.2f} {c['redis']:>7.2f}"
        )
    print()
    for case in (warm, first):
        cpu = case.cpu_ms_per_exchange
        print(
            f"bridge CPU per exchange, {case.label[8:]}: median {statistics.median(cpu):.2f} ms "
            f"(spread {min(cpu):.2f}-{max(cpu):.2f})"
        )
    print(f"peak RSS of one bridge worker: {rss_mb:.0f} MB")
    if soak_line:
        print(soak_line)
    print()
    print(f"{'concurrency sweep (warm)':<26} {'req/s median (spread)':>24} {'p99 ms':>8}")
    for connections, measured in sweep:
        rate = f"{measured.median('per_second'):.0f} ({measured.spread('per_second')})"
        print(f"{connections:<26} {rate:>24} {measured.median('p99_ms'):>8.2f}")


if __name__ == "__main__":
    main()
