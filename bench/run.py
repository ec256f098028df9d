"""How much the bridge costs on top of Keycloak: the benchmark behind `scripts/bench` (see bench/README.md).

Starts the real stack (Keycloak, redis-server, the TikTok emulator with no added latency, the bridge as
`bridge serve --workers N` with production settings but rate limits off, since all load comes from one
IP) and drives it with wrk from a separate process. Built to tell the truth on a small shared machine:

- every figure is the median of `--runs` runs with the spread (min-max) beside it;
- baseline (Keycloak's own grant) and bridge runs alternate, and each ratio is taken within its pair;
- CPU per exchange is read from /proc for the bridge's processes alone (it moves far less than
  throughput), and Keycloak's CPU per grant the same way;
- the CPU that processes outside the benchmark used during the measured runs is reported, so a reader
  knows when a figure was disturbed;
- a pinned variant (Keycloak on one core; bridge, Redis, emulator and wrk on the other) and a
  bridge-only capacity run (the bridge alone on one core against `bench.stub_upstream`, a fixed-answer
  stand-in for Keycloak's token endpoint on the other core) separate the bridge's cost from Keycloak's;
- first sign-ins are measured against Keycloak on its in-memory H2 database and, in turns with those,
  against a second Keycloak keeping its data in PostgreSQL, as production does;
- the previous results file (`bench/results/*.json`) is shown beside this run's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx2
from joserfc.jwk import ECKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stub_upstream import token_subject
from bridge.keycloak.assertions import AssertionSigner, load_key
from devstack.bridge_env import bridge_variables, realm_variables
from devstack.keycloak import (
    KEYCLOAK_VERSION,
    KeycloakServer,
    fetch_distribution,
    find_java_home,
    free_port,
    progress,
    reusable_instance_dir,
)
from devstack.postgres import running_postgres
from devstack.redis import RedisServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

LUA = ROOT / "bench" / "wrk_bodies.lua"
RESULTS_DIR = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
RESULTS_BEGIN, RESULTS_END = "<!-- results:begin -->", "<!-- results:end -->"
EXCHANGE = {
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
}
CLIENT_ID, CLIENT_SECRET, REALM = "tiktok-bridge", "bench-client-secret", "app"
ADMIN_CLIENT_SECRET = "bench-admin-client-secret"
_METRIC = re.compile(r"^bridge_upstream_request_seconds_count\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")
_ANSWERED = re.compile(r'^bridge_exchanges_total\{endpoint="token",[^}]*\} (?P<value>[0-9.e+]+)$')
TWO_CORES = (os.cpu_count() or 1) >= 2
# The cores of the pinned layouts: Keycloak (or the stub) on one, the bridge side on the other.
KC_CORE, BRIDGE_CORE, ALL_CORES = "0", "1", f"0-{(os.cpu_count() or 1) - 1}"
PINNED_P99_CONNECTIONS = 32  # where the p99 goal (within 5 ms of Keycloak's) is measured
# Assertions minted per second of a baseline run: above Keycloak's rate here (~700/s), so a run never
# runs out; they are single-use and live 110 s, so each run gets fresh ones.
ASSERTIONS_PER_SECOND = 1500
FRESH_USERS_PER_SECOND = 300
# Refresh tokens rotate (single use), so a run needs one live session per request it may send.
REFRESHES_PER_SECOND = 400
SKIPPABLE = ("one-worker", "pinned", "bridge-only", "first", "first-postgres", "refresh", "sweep")
# Unmeasured first sign-ins on each Keycloak before the measured ones: the one on PostgreSQL starts cold
# in the middle of the bench, while the H2 one has been serving since the start. Counted, not timed:
# after 200 (15 s) the PostgreSQL Keycloak spent 31 ms of CPU per sign-in, after 1,200 (60 s) 22 ms,
# and the first figure was mostly its JIT compiler at work. Run in rounds of fresh users, as wrk does
# not end a run when its bodies run out.
FIRST_WARM_UP_SIGN_INS = 1500
FIRST_WARM_UP_ROUND = (10, 1000)  # seconds, users: more users than a round can use
FIRST_WARM_UP_LIMIT_SECONDS = 240
# uvicorn's supervisor restarts a worker that has not answered its ping 5 s after being spawned; on a
# machine loaded by other work, importing the bridge can take longer, so several restarts may come first.
BRIDGE_START_TIMEOUT = 180.0
# Keycloak's first start in a fresh instance (its build step) took 4 minutes here beside test suites.
KEYCLOAK_START_TIMEOUT = 600.0
PROVISION_ATTEMPTS = 5


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
    work: Path
    bridge_env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    bridge: subprocess.Popen[bytes] | None = None
    emulator: subprocess.Popen[bytes] | None = None

    def groups(self) -> dict[str, int]:
        """Root pid of every process the benchmark started, by role (for CPU accounting and pinning)."""
        assert self.bridge is not None
        assert self.emulator is not None
        assert self.keycloak.process is not None
        assert self.redis.process is not None
        return {
            "bridge": self.bridge.pid,
            "keycloak": self.keycloak.process.pid,
            "redis": self.redis.process.pid,
            "emulator": self.emulator.pid,
        }

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


QUIET: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


# The admin listener (/metrics) of each bridge started here, by its public URL.
ADMIN_URLS: dict[str, str] = {}


def start_bridge(
    env: dict[str, str], port: int, workers: int, metrics_dir: Path, prefix: list[str]
) -> subprocess.Popen[bytes]:
    metrics_dir.mkdir()
    admin_port = free_port()
    ADMIN_URLS[f"http://127.0.0.1:{port}"] = f"http://127.0.0.1:{admin_port}"
    return subprocess.Popen(
        [
            *prefix,
            sys.executable,
            "-m",
            "bridge",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--admin-port",
            str(admin_port),
        ],
        cwd=ROOT,
        env={**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        **QUIET,
    )


def start_stack(
    work: Path, key_file: Path, workers: int, instance_dir: Path, *, rate_limits: bool = False
) -> Stack:
    """Keycloak, Redis and the emulator, with the bridge's environment. `rate_limits`: the per-address
    and per-identity limits on, as deployed, but raised so that the bench's load (one address, a few
    dozen users) is never refused: their cost is paid and measured. Off by default (the
    figures in bench/README.md are without them unless a row says otherwise)."""
    bridge_port, emulator_port = free_port(), free_port()
    bridge_url, emulator_url = f"http://127.0.0.1:{bridge_port}", f"http://127.0.0.1:{emulator_port}"
    redis = RedisServer(work_dir=work / "redis")
    redis.start()
    keycloak = KeycloakServer(
        instance_dir=instance_dir,
        realm_env=realm_variables(
            realm=REALM,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            issuer=bridge_url,
            admin_client_secret=ADMIN_CLIENT_SECRET,
        ),
    )
    env = {
        **os.environ,
        **bridge_variables(
            tiktok_api_url=emulator_url,
            keycloak_url=keycloak.url,
            realm=REALM,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            issuer=bridge_url,
            signing_key_file=key_file,
            redis_url=redis.url,
            admin_client_secret=ADMIN_CLIENT_SECRET,
            BRIDGE_RATE_LIMIT_ENABLED="true" if rate_limits else "false",
            BRIDGE_RATE_LIMIT_PER_IP="1000000/second",
            BRIDGE_RATE_LIMIT_PER_IDENTITY="1000000/second",
            # The emulator's quota is lifted (below), so the bridge's own spending of it is too; its
            # cost (one moving-window script per TikTok call) is still paid and measured.
            BRIDGE_TIKTOK_USER_INFO_QUOTA="100000/minute",
            BRIDGE_LOG_LEVEL="WARNING",
        ),
    }
    stack = Stack(
        keycloak=keycloak,
        redis=redis,
        bridge_url=bridge_url,
        emulator_url=emulator_url,
        work=work,
        bridge_env=env,
    )
    # TikTok's quota (600 user-info calls a minute) would cap first sign-ins at 10/s: lifted here.
    stack.emulator = subprocess.Popen(
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
        **QUIET,
    )
    stack.processes.append(stack.emulator)
    try:
        stack.bridge = start_bridge(env, bridge_port, workers, work / "prometheus", [])
        stack.processes.append(stack.bridge)
        wait_http(f"{emulator_url}/_emulator/stats")
        wait_http(f"{bridge_url}/healthz", timeout=BRIDGE_START_TIMEOUT)
        keycloak.prepare(fetch_distribution())
        keycloak.start(find_java_home())
        keycloak.wait_ready(timeout=KEYCLOAK_START_TIMEOUT)
    except BaseException:
        stack.stop()  # nothing the benchmark started may outlive a failed start
        raise
    return stack


# ---------------------------------------------------------------------------------- /proc readings


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [pid]
    try:
        listed = children.read_text().split()
    except OSError:
        return found
    for child in listed:
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


def machine_busy_seconds() -> float:
    """CPU time all cores spent outside idle and iowait since boot (steal excluded: not ours to use)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_and_children_cpu() -> float:
    """This process and its waited-for children (wrk): the load generator's share of the machine."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


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


def pin(pid: int, cores: str) -> None:
    """Move a process and all its threads and children to `cores` (new threads inherit it)."""
    for each in process_tree(pid):
        subprocess.run(["taskset", "-a", "-p", "-c", cores, str(each)], check=False, **QUIET)


def upstream_counts(bridge_url: str, emulator_url: str) -> dict[str, float]:
    counts: dict[str, float] = {"tiktok_user_info": 0, "keycloak_admin": 0, "keycloak_token": 0, "redis": 0}
    counts["answered"] = 0
    for line in httpx2.get(f"{ADMIN_URLS[bridge_url]}/metrics").text.splitlines():
        if answered := _ANSWERED.match(line):
            counts["answered"] += float(answered.group("value"))
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
    counts["tiktok_user_info"] = httpx2.get(f"{emulator_url}/_emulator/stats").json()["calls"]["user_info"]
    return counts


def settled_counts(bridge_url: str, emulator_url: str, *, limit: float = 10.0) -> dict[str, float]:
    """`upstream_counts` once the bridge has stopped answering (the requests in flight when the load
    stopped are finished), or after `limit` seconds."""
    deadline = time.monotonic() + limit
    counts = upstream_counts(bridge_url, emulator_url)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        again = upstream_counts(bridge_url, emulator_url)
        if again == counts:
            break
        counts = again
    return counts


# ------------------------------------------------------------------------------------- measuring


def require_wrk() -> None:
    """Stop with a clear message, not a traceback from the first run, where wrk is not installed (a
    fresh machine on which `scripts/bench` has not run yet: it installs wrk and taskset)."""
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: `scripts/bench --help` installs the bench's tools, then exits")


def wrk(url: str, bodies: Path, *, connections: int, seconds: int, cycle: bool, cores: str | None) -> Run:
    env = {**os.environ, "BENCH_BODIES": str(bodies), "BENCH_CYCLE": "1" if cycle else "0"}
    prefix = ["taskset", "-c", cores] if cores and TWO_CORES else []
    result = subprocess.run(
        [*prefix, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=seconds + 60,  # wrk stops itself; this only guards against a hang
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


@dataclass
class Measured:
    run: Run
    cpu_ms: dict[str, float]  # CPU per request of each watched role, in ms
    calls: dict[str, float]  # upstream calls per request, when a bridge's metrics were read
    foreign: float  # share of the machine's CPU used by processes outside the benchmark


class Bench:
    """One stack and the bookkeeping of every measured wrk run."""

    def __init__(self, stack: Stack, args: argparse.Namespace) -> None:
        self.stack = stack
        self.args = args
        self.figures: dict[str, list[float]] = {}
        self.non_2xx: dict[str, int] = {}
        self.foreign: list[float] = []
        self.extra_groups: dict[str, int] = {}
        self.versions: list[str] = []  # of what a phase started beside the stack, for the heading

    def add(self, key: str, value: float) -> None:
        self.figures.setdefault(key, []).append(value)

    def groups(self) -> dict[str, int]:
        return {**self.stack.groups(), **self.extra_groups}

    def measure(
        self,
        label: str,
        url: str,
        bodies: Path,
        *,
        connections: int,
        cycle: bool,
        cores: str | None = None,
        metrics_of: str | None = None,
    ) -> Measured:
        """One wrk run; CPU of every role of the stack and the upstream calls of `metrics_of` charged
        per request."""
        groups = self.groups()
        before_cpu = {role: cpu_seconds(pid) for role, pid in groups.items()}
        before_calls = upstream_counts(metrics_of, self.stack.emulator_url) if metrics_of else {}
        before_machine, before_ours = machine_busy_seconds(), own_and_children_cpu()
        started = time.monotonic()
        run = wrk(url, bodies, connections=connections, seconds=self.args.seconds, cycle=cycle, cores=cores)
        wall = time.monotonic() - started
        used = {role: cpu_seconds(pid) - before_cpu[role] for role, pid in groups.items()}
        machine = machine_busy_seconds() - before_machine
        ours = sum(used.values()) + own_and_children_cpu() - before_ours
        foreign = max(0.0, machine - ours) / (wall * (os.cpu_count() or 1))
        self.foreign.append(foreign)
        calls: dict[str, float] = {}
        if metrics_of:
            after = settled_counts(metrics_of, self.stack.emulator_url)
            # Per request the bridge answered, counted by itself once the requests still in flight when
            # wrk stopped are done: their calls were counted, and wrk's count leaves them out (that
            # alone made a first sign-in look like 2.2 admin calls instead of 2).
            answered = max(1.0, after["answered"] - before_calls["answered"])
            calls = {k: (after[k] - before_calls[k]) / answered for k in after if k != "answered"}
        self.non_2xx[label] = self.non_2xx.get(label, 0) + run.non_2xx
        return Measured(
            run=run,
            cpu_ms={role: seconds * 1000 / max(1, run.requests) for role, seconds in used.items()},
            calls=calls,
            foreign=foreign,
        )


# ------------------------------------------------------------------------------------- workload


def new_tokens(emulator_url: str, count: int) -> list[tuple[str, str]]:
    """`count` fresh TikTok users of the emulator, each with a token: (open_id, token)."""
    made = []
    with httpx2.Client(base_url=emulator_url) as client:
        for _ in range(count):
            open_id = client.post("/_emulator/users", json={}).json()["open_id"]
            token = client.post("/_emulator/tokens", json={"open_id": open_id}).json()["access_token"]
            made.append((open_id, token))
    return made


def write_bodies(path: Path, forms: list[dict[str, str]]) -> Path:
    path.write_text("".join(urlencode(form) + "\n" for form in forms))
    return path


def exchange_forms(tokens: list[str]) -> list[dict[str, str]]:
    return [{**EXCHANGE, "subject_token": token} for token in tokens]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="paired runs per figure (median and spread)")
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--workers", type=int, default=2, help="bridge worker processes")
    parser.add_argument("--connections", type=int, default=16, help="concurrency of the main comparison")
    parser.add_argument("--sweep", default="1,8,32,128", help="concurrency levels of the sweep")
    parser.add_argument("--warm-users", type=int, default=50)
    parser.add_argument("--soak", type=int, default=0, help="also run N warm exchanges and report RSS growth")
    parser.add_argument(
        "--skip", default="", help=f"comma-separated parts to leave out: {', '.join(SKIPPABLE)}"
    )
    parser.add_argument(
        "--rate-limits",
        action="store_true",
        help="rate limits on (raised so nothing is refused), as a deployment pays for them",
    )
    parser.add_argument("--previous", type=Path, help="results file to compare with (default: the newest)")
    parser.add_argument("--no-save", action="store_true", help="write no results file and no PNG")
    parser.add_argument(
        "--update-readme", action="store_true", help="write the results table into bench/README.md"
    )
    args = parser.parse_args()
    args.skip = {part for part in args.skip.split(",") if part}
    if unknown := args.skip - set(SKIPPABLE):
        parser.error(f"--skip: unknown {sorted(unknown)}")
    if args.runs < 1 or args.seconds < 1:
        parser.error("--runs and --seconds must be at least 1")
    require_wrk()
    if not TWO_CORES:
        progress("one CPU only: the pinned and bridge-only runs are left out")
        args.skip |= {"pinned", "bridge-only"}

    # Stopped by a signal, the stack is still torn down: SIGTERM (and SIGINT, which a shell ignores in
    # background jobs) unwind through the `finally` blocks instead of killing this process outright.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    previous = load_previous(args.previous)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    key_file = work / "signing-key.pem"
    key_file.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    load_before = os.getloadavg()
    with reusable_instance_dir("bench") as instance_dir:
        progress("starting the stack")
        stack = start_stack(work, key_file, args.workers, instance_dir, rate_limits=args.rate_limits)
        try:
            bench = Bench(stack, args)
            sweep = measure_all(bench, key_file)
        finally:
            stack.stop()
            shutil.rmtree(work, ignore_errors=True)
    results = summarise(bench, sweep, load_before, time.monotonic() - started)
    print()
    print(render_text(results, previous))
    if not args.no_save:
        path = save(results)
        progress(f"results written to {path.relative_to(ROOT)}")
        plot(results, ROOT / "bench" / "sweep.png")
    if args.update_readme:
        update_readme(render_markdown(results, previous))
        progress("bench/README.md: results section replaced")


def measure_all(bench: Bench, key_file: Path) -> list[dict[str, float]]:
    stack, args = bench.stack, bench.args
    assert stack.bridge is not None
    token_url = f"{stack.bridge_url}/token"
    grant_url = f"{stack.keycloak.url}/realms/{REALM}/protocol/openid-connect/token"

    progress(f"provisioning {args.warm_users} returning users")
    warm = new_tokens(stack.emulator_url, args.warm_users)
    user_ids: dict[str, str] = {}  # open_id -> Keycloak user id, for the bridge-only run's stand-in
    with httpx2.Client(timeout=30) as client:
        for open_id, token in warm:
            # A Keycloak fresh from start-up (cold JIT) on a loaded machine may exceed the bridge's 5 s
            # timeout: the bridge then answers 503 and the sign-in is tried again, a bounded number of times.
            for attempt in range(PROVISION_ATTEMPTS):
                answer = client.post(token_url, data={**EXCHANGE, "subject_token": token})
                if answer.status_code != 503 or attempt == PROVISION_ATTEMPTS - 1:
                    break
                time.sleep(2)
            if answer.status_code != 200:
                raise RuntimeError(
                    f"provisioning a returning user: HTTP {answer.status_code} {answer.text[:300]}"
                )
            user_ids[open_id] = token_subject(answer.json()["access_token"])
        audience = client.get(f"{stack.keycloak.url}/realms/{REALM}/.well-known/openid-configuration").json()[
            "issuer"
        ]
    warm_bodies = write_bodies(stack.work / "warm.txt", exchange_forms([t for _, t in warm]))
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
        return write_bodies(stack.work / "baseline.txt", forms)

    def baseline_run() -> Path:
        return baseline_bodies(ASSERTIONS_PER_SECOND * args.seconds)

    progress("warming up")
    wrk(token_url, warm_bodies, connections=args.connections, seconds=3, cycle=True, cores=None)
    wrk(grant_url, baseline_bodies(3000), connections=args.connections, seconds=3, cycle=False, cores=None)

    # Co-located, as a one-machine deployment runs: both sides share all cores.
    for run in range(args.runs):
        progress(f"run {run + 1}/{args.runs}: Keycloak's grant, then warm exchanges (co-located)")
        base = bench.measure("baseline", grant_url, baseline_run(), connections=args.connections, cycle=False)
        bench.add("kc_per_s", base.run.per_second)
        bench.add("kc_cpu_ms", base.cpu_ms["keycloak"])
        bench.add("kc_p99_ms", base.run.p99_ms)
        warm_run = bench.measure(
            "warm",
            token_url,
            warm_bodies,
            connections=args.connections,
            cycle=True,
            metrics_of=stack.bridge_url,
        )
        bench.add("warm_per_s", warm_run.run.per_second)
        bench.add("warm_p99_ms", warm_run.run.p99_ms)
        bench.add("warm_cpu_ms", warm_run.cpu_ms["bridge"])
        bench.add("ratio_colocated", warm_run.run.per_second / base.run.per_second)
        for name, value in warm_run.calls.items():
            bench.add(f"warm_{name}", value)

    phases: dict[str, Callable[[], None]] = {
        "one-worker": lambda: one_worker(bench, grant_url, warm_bodies, baseline_run),
        "pinned": lambda: pinned(bench, grant_url, token_url, warm_bodies, baseline_run),
        "bridge-only": lambda: bridge_only(bench, grant_url, signer, audience, warm_bodies, warm, user_ids),
        # "first" leaves out the first sign-ins on both Keycloaks, "first-postgres" the PostgreSQL half.
        "first": lambda: first_sign_ins(bench, postgres="first-postgres" not in args.skip),
        "refresh": lambda: refreshes(bench, token_url, [t for _, t in warm]),
    }
    for name, phase in phases.items():
        if name not in args.skip:
            phase()
    sweep: list[dict[str, float]] = []
    if "sweep" not in args.skip:
        sweep = concurrency_sweep(bench, grant_url, token_url, warm_bodies, baseline_bodies)

    if args.soak:
        soak(bench, token_url, warm_bodies)
    bench.add("rss_mb", peak_rss_mb(stack.bridge.pid))
    return sweep


def soak(bench: Bench, token_url: str, warm_bodies: Path) -> None:
    stack, args = bench.stack, bench.args
    assert stack.bridge is not None
    progress(f"soak: {args.soak} warm exchanges")
    bench.add("rss_before_soak_mb", peak_rss_mb(stack.bridge.pid))
    done = 0
    deadline = time.monotonic() + 3600  # bounded even if the bridge slows to a crawl
    while done < args.soak and time.monotonic() < deadline:
        done += wrk(
            token_url, warm_bodies, connections=args.connections, seconds=10, cycle=True, cores=None
        ).requests
    bench.add("soak_exchanges", done)


def one_worker(
    bench: Bench,
    grant_url: str,
    warm_bodies: Path,
    baseline_run: Any,  # noqa: ANN401 - a zero-argument callable returning fresh baseline bodies
) -> None:
    """The co-located pairs again with a bridge of one worker, as docs/operations.md ("Several workers in one container") sizes a
    bridge that shares its cores with Keycloak. A worker held to Keycloak's pace waits between the
    steps of each exchange, and a waiting worker spends more CPU per exchange than a busy one (bench
    README, "A waiting bridge costs more than a busy one"): one busier worker costs less than two idler
    ones."""
    stack, args = bench.stack, bench.args
    if args.workers == 1:
        return  # the main pairs' bridge is that already
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The same Redis and Keycloak as the main bridge: the returning users' cache entries are there.
    lone = start_bridge(stack.bridge_env, port, 1, stack.work / "prometheus-one-worker", [])
    bench.extra_groups = {"one_worker": lone.pid}
    try:
        wait_http(f"{url}/healthz", timeout=BRIDGE_START_TIMEOUT)
        progress(f"co-located, one worker: warming up ({url})")
        wrk(f"{url}/token", warm_bodies, connections=args.connections, seconds=3, cycle=True, cores=None)
        for run in range(args.runs):
            progress(f"run {run + 1}/{args.runs}: Keycloak's grant, then a one-worker bridge (co-located)")
            base = bench.measure(
                "baseline", grant_url, baseline_run(), connections=args.connections, cycle=False
            )
            warm_run = bench.measure(
                "warm, one worker", f"{url}/token", warm_bodies, connections=args.connections, cycle=True
            )
            bench.add("one_worker_cpu_ms", warm_run.cpu_ms["one_worker"])
            bench.add("ratio_colocated_one_worker", warm_run.run.per_second / base.run.per_second)
    finally:
        bench.extra_groups = {}
        lone.terminate()
        lone.wait(timeout=30)


def pinned(
    bench: Bench,
    grant_url: str,
    token_url: str,
    warm_bodies: Path,
    baseline_run: Any,  # noqa: ANN401 - a zero-argument callable returning fresh baseline bodies
) -> None:
    """Keycloak alone on one core; the bridge, its Redis and emulator and wrk on the other."""
    stack, args = bench.stack, bench.args
    groups = stack.groups()
    pin(groups["keycloak"], KC_CORE)
    for role in ("bridge", "redis", "emulator"):
        pin(groups[role], BRIDGE_CORE)

    def pair(connections: int) -> tuple[Measured, Measured]:
        """Keycloak's grant, then warm exchanges, with wrk on the bridge's core."""
        base = bench.measure(
            "baseline, pinned",
            grant_url,
            baseline_run(),
            connections=connections,
            cycle=False,
            cores=BRIDGE_CORE,
        )
        warm_run = bench.measure(
            "warm, pinned", token_url, warm_bodies, connections=connections, cycle=True, cores=BRIDGE_CORE
        )
        return base, warm_run

    try:
        for run in range(args.runs):
            progress(
                f"run {run + 1}/{args.runs}: pinned, Keycloak on core {KC_CORE}, the rest on {BRIDGE_CORE}"
            )
            base, warm_run = pair(args.connections)
            bench.add("pinned_kc_per_s", base.run.per_second)
            bench.add("pinned_warm_per_s", warm_run.run.per_second)
            bench.add("pinned_warm_cpu_ms", warm_run.cpu_ms["bridge"])
            bench.add("ratio_pinned", warm_run.run.per_second / base.run.per_second)
            # The latency goal (p99 at 32 connections within 5 ms of Keycloak's) where the
            # bridge does not take its CPU from Keycloak's cores. Under wrk's closed loop, latency is
            # connections / throughput, so co-located the p99 follows the co-located ratio; pinned,
            # it says what the bridge adds to a request itself.
            progress(f"run {run + 1}/{args.runs}: pinned, {PINNED_P99_CONNECTIONS} connections")
            base, warm_run = pair(PINNED_P99_CONNECTIONS)
            bench.add("pinned32_kc_p99_ms", base.run.p99_ms)
            bench.add("pinned32_warm_p99_ms", warm_run.run.p99_ms)
            bench.add("pinned32_added_p99_ms", warm_run.run.p99_ms - base.run.p99_ms)
    finally:
        for pid in groups.values():
            pin(pid, ALL_CORES)


def start_stub_upstream(
    work: Path, answer: bytes, user_ids: dict[str, str], audience: str, *, core: str | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`bench.stub_upstream` answering `answer` (a real Keycloak token answer, given each user's own
    `sub`), pinned to `core` if given: the process and its URL. Shared with `bench.ab`."""
    answer_file = work / "token-answer.json"
    answer_file.write_bytes(answer)
    users_file = work / "users.json"
    users_file.write_text(json.dumps(user_ids))
    port = free_port()
    command = [sys.executable, "-m", "bench.stub_upstream", "--port", str(port)]
    command += ["--answer-file", str(answer_file), "--users", str(users_file), "--issuer", audience]
    pinned = ["taskset", "-c", core] if core is not None else []
    return subprocess.Popen([*pinned, *command], cwd=ROOT, **QUIET), f"http://127.0.0.1:{port}"


def bridge_only(
    bench: Bench,
    grant_url: str,
    signer: AssertionSigner,
    audience: str,
    warm_bodies: Path,
    warm: list[tuple[str, str]],
    user_ids: dict[str, str],
) -> None:
    """One bridge worker alone on one core, against a stand-in answering a real Keycloak token (captured
    once here, and given each user's own `sub`) at almost no cost on the other core: the bridge's own
    ceiling per core."""
    stack, args = bench.stack, bench.args
    answer = httpx2.post(
        grant_url,
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": signer.mint(warm[0][0], audience),
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": "openid",
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    stub, stub_url = start_stub_upstream(stack.work, answer.content, user_ids, audience, core=KC_CORE)
    bridge_port = free_port()
    bridge_url = f"http://127.0.0.1:{bridge_port}"
    # Same Redis as the main bridge: the returning users' cache entries are already there.
    lone = start_bridge(
        {**stack.bridge_env, "BRIDGE_KEYCLOAK_URL": stub_url},
        bridge_port,
        1,
        stack.work / "prometheus-bridge-only",
        ["taskset", "-c", BRIDGE_CORE],
    )
    bench.extra_groups = {"stub": stub.pid, "bridge_only": lone.pid}
    # The bench turns the rate limits off (all its load comes from one address); a deployment has them
    # on. A second lone worker with them on (raised so nothing is refused), measured in turns with the
    # first, says what they add per exchange, paired. Idle, it costs its core next to nothing.
    limited_url = ""
    limited: subprocess.Popen[bytes] | None = None
    if not args.rate_limits:
        limited_port = free_port()
        limited_url = f"http://127.0.0.1:{limited_port}"
        limited = start_bridge(
            {**stack.bridge_env, "BRIDGE_KEYCLOAK_URL": stub_url, "BRIDGE_RATE_LIMIT_ENABLED": "true"},
            limited_port,
            1,
            stack.work / "prometheus-bridge-only-limits",
            ["taskset", "-c", BRIDGE_CORE],
        )
        bench.extra_groups["bridge_only_limits"] = limited.pid
    groups = stack.groups()
    for pid in groups.values():
        pin(pid, KC_CORE)
    try:
        wait_http(f"{stub_url}/_stub/stats")
        for url in filter(None, (bridge_url, limited_url)):
            wait_http(f"{url}/healthz", timeout=BRIDGE_START_TIMEOUT)
            progress(f"bridge-only: warming up one worker pinned alone on its core ({url})")
            wrk(
                f"{url}/token",
                warm_bodies,
                connections=args.connections,
                seconds=3,
                cycle=True,
                cores=KC_CORE,
            )
        for run in range(args.runs):
            progress(f"run {run + 1}/{args.runs}: bridge-only, one worker on core {BRIDGE_CORE}")
            if limited_url and run % 2:  # turns: without, with; with, without; ...
                with_limits = bridge_only_with_limits(bench, limited_url, warm_bodies)
            measured = bench.measure(
                "bridge-only",
                f"{bridge_url}/token",
                warm_bodies,
                connections=args.connections,
                cycle=True,
                cores=KC_CORE,
                metrics_of=bridge_url,
            )
            if limited_url and not run % 2:
                with_limits = bridge_only_with_limits(bench, limited_url, warm_bodies)
            if limited_url:
                bench.add("bridge_only_limits_ratio", with_limits / measured.cpu_ms["bridge_only"])
            bench.add("bridge_only_per_s", measured.run.per_second)
            bench.add("bridge_only_cpu_ms", measured.cpu_ms["bridge_only"])
            bench.add("bridge_only_kc_token", measured.calls["keycloak_token"])
            bench.add("bridge_only_admin", measured.calls["keycloak_admin"])
            # Busy share of its core: below ~0.95 the worker was waiting on the other side, not saturated.
            bench.add(
                "bridge_only_core_busy",
                measured.cpu_ms["bridge_only"] * measured.run.per_second / 1000,
            )
    finally:
        bench.extra_groups = {}
        for process in (lone, limited, stub):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
        for pid in groups.values():
            pin(pid, ALL_CORES)


def bridge_only_with_limits(bench: Bench, url: str, warm_bodies: Path) -> float:
    """One run of the lone worker with the rate limits on: its CPU ms per warm exchange."""
    measured = bench.measure(
        "bridge-only, rate limits on",
        f"{url}/token",
        warm_bodies,
        connections=bench.args.connections,
        cycle=True,
        cores=KC_CORE,
    )
    cpu_ms = measured.cpu_ms["bridge_only_limits"]
    bench.add("bridge_only_limits_cpu_ms", cpu_ms)
    return cpu_ms


@dataclass
class FirstSide:
    """One Keycloak that first sign-ins are measured against: the bridge in front of it, the roles whose
    CPU is charged to it (`Bench.groups`), and the prefix of its figures."""

    prefix: str
    bridge_url: str
    bridge_role: str
    keycloak_role: str
    database_role: str | None = None


@contextmanager
def postgres_side(bench: Bench) -> Iterator[FirstSide]:
    """A PostgreSQL server (data under the cache folder, or a private folder when run as root), a second
    Keycloak keeping its data there, and a bridge of its own in front: started, then stopped however the
    phase ends. The bridge shares the stack's emulator, Redis server and signing key, and Keycloak trusts
    the stack bridge's JWKS as the first one does; its cache is another Redis database, since a Keycloak
    user id cached against one Keycloak means nothing to the other."""
    stack, args = bench.stack, bench.args
    with running_postgres("bench") as postgres, reusable_instance_dir("bench-postgres") as instance_dir:
        keycloak = KeycloakServer(
            instance_dir=instance_dir,
            realm_env=realm_variables(
                realm=REALM,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                issuer=stack.bridge_url,
                admin_client_secret=ADMIN_CLIENT_SECRET,
            ),
            database=postgres.create_database("keycloak"),
        )
        port = free_port()
        bridge: subprocess.Popen[bytes] | None = None
        try:
            keycloak.prepare(fetch_distribution())
            keycloak.start(find_java_home())
            keycloak.wait_ready(timeout=KEYCLOAK_START_TIMEOUT)
            env = {
                **stack.bridge_env,
                "BRIDGE_KEYCLOAK_URL": keycloak.url,
                "BRIDGE_REDIS_URL": stack.redis.url.removesuffix("/0") + "/1",
            }
            bridge = start_bridge(env, port, args.workers, stack.work / "prometheus-postgres", [])
            wait_http(f"http://127.0.0.1:{port}/healthz", timeout=BRIDGE_START_TIMEOUT)
            assert keycloak.process is not None
            assert postgres.process is not None
            bench.extra_groups = {
                "pg_bridge": bridge.pid,
                "pg_keycloak": keycloak.process.pid,
                "postgres": postgres.process.pid,
            }
            # Its answer reads: postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1).
            version = re.search(
                r"\(PostgreSQL\) (\S+)",
                subprocess.run(
                    [str(postgres.binaries / "postgres"), "--version"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout,
            )
            bench.versions.append(f"PostgreSQL {version.group(1) if version else '?'} (first sign-ins)")
            yield FirstSide(
                prefix="pg_first",
                bridge_url=f"http://127.0.0.1:{port}",
                bridge_role="pg_bridge",
                keycloak_role="pg_keycloak",
                database_role="postgres",
            )
        finally:
            bench.extra_groups = {}
            if bridge is not None:
                bridge.terminate()
                bridge.wait(timeout=30)
            keycloak.stop()


def warm_up_first_sign_ins(bench: Bench, side: FirstSide) -> None:
    """`FIRST_WARM_UP_SIGN_INS` unmeasured first sign-ins against `side`, in rounds (bounded in time)."""
    stack, args = bench.stack, bench.args
    seconds, users = FIRST_WARM_UP_ROUND
    done, started = 0, time.monotonic()
    while done < FIRST_WARM_UP_SIGN_INS and time.monotonic() - started < FIRST_WARM_UP_LIMIT_SECONDS:
        fresh = new_tokens(stack.emulator_url, users)
        bodies = write_bodies(stack.work / "fresh.txt", exchange_forms([t for _, t in fresh]))
        done += wrk(
            f"{side.bridge_url}/token",
            bodies,
            connections=args.connections,
            seconds=seconds,
            cycle=False,
            cores=None,
        ).requests
        progress(f"warming up {side.prefix}: {done} first sign-ins")


def first_sign_ins(bench: Bench, *, postgres: bool) -> None:
    """New TikTok users signing in: against the stack's Keycloak (H2 in memory) and, with `postgres`,
    against one keeping its data in PostgreSQL, in turns within each run (the order swapped every run),
    so that both see the same machine."""
    stack, args = bench.stack, bench.args
    with ExitStack() as started:
        measured_sides = [FirstSide("first", stack.bridge_url, "bridge", "keycloak")]
        if postgres:
            progress("first sign-ins on PostgreSQL: starting PostgreSQL, a Keycloak on it and a bridge")
            measured_sides.append(started.enter_context(postgres_side(bench)))
        for side in measured_sides:
            warm_up_first_sign_ins(bench, side)
        for run in range(args.runs):
            per_second: dict[str, float] = {}
            keycloak_cpu: dict[str, float] = {}
            for side in measured_sides if run % 2 == 0 else measured_sides[::-1]:
                count = FRESH_USERS_PER_SECOND * args.seconds
                progress(
                    f"run {run + 1}/{args.runs}: {side.prefix} sign-ins ({count} new TikTok users made first)"
                )
                fresh = new_tokens(stack.emulator_url, count)
                bodies = write_bodies(stack.work / "fresh.txt", exchange_forms([t for _, t in fresh]))
                measured = bench.measure(
                    side.prefix,
                    f"{side.bridge_url}/token",
                    bodies,
                    connections=args.connections,
                    cycle=False,
                    metrics_of=side.bridge_url,
                )
                if measured.run.seconds < args.seconds - 1:
                    progress(
                        f"  all {count} new users signed in after {measured.run.seconds:.1f} s; "
                        "rate from that time"
                    )
                bench.add(f"{side.prefix}_per_s", measured.run.per_second)
                bench.add(f"{side.prefix}_cpu_ms", measured.cpu_ms[side.bridge_role])
                bench.add(f"{side.prefix}_kc_cpu_ms", measured.cpu_ms[side.keycloak_role])
                per_second[side.prefix] = measured.run.per_second
                # What Keycloak's storage costs belongs to Keycloak's side: PostgreSQL's own CPU added.
                keycloak_cpu[side.prefix] = measured.cpu_ms[side.keycloak_role]
                if side.database_role is not None:
                    bench.add(f"{side.prefix}_db_cpu_ms", measured.cpu_ms[side.database_role])
                    keycloak_cpu[side.prefix] += measured.cpu_ms[side.database_role]
                for name, value in measured.calls.items():
                    bench.add(f"{side.prefix}_{name}", value)
            if {"first", "pg_first"} <= per_second.keys():
                bench.add("pg_first_over_h2", per_second["pg_first"] / per_second["first"])
                bench.add("pg_first_kc_db_over_h2", keycloak_cpu["pg_first"] / keycloak_cpu["first"])
    if bench.figures.get("first_per_s"):
        bench.add(
            "first_over_warm",
            statistics.median(bench.figures["first_per_s"]) / statistics.median(bench.figures["warm_per_s"]),
        )


def refreshes(bench: Bench, token_url: str, warm: list[str]) -> None:
    """Session refreshes (grant_type=refresh_token): one Keycloak grant each, no TikTok, no admin call."""
    stack, args = bench.stack, bench.args
    for run in range(args.runs):
        count = REFRESHES_PER_SECOND * args.seconds
        progress(f"run {run + 1}/{args.runs}: refreshes ({count} sessions started first)")
        tokens: list[str] = []
        with httpx2.Client(timeout=30) as client:
            while len(tokens) < count:
                answer = client.post(
                    token_url, data={**EXCHANGE, "subject_token": warm[len(tokens) % len(warm)]}
                )
                if answer.status_code == 200:
                    tokens.append(answer.json()["refresh_token"])
        forms = [{"grant_type": "refresh_token", "refresh_token": token} for token in tokens]
        bodies = write_bodies(stack.work / "refresh.txt", forms)
        measured = bench.measure(
            "refresh",
            token_url,
            bodies,
            connections=args.connections,
            cycle=False,
            metrics_of=stack.bridge_url,
        )
        bench.add("refresh_per_s", measured.run.per_second)
        bench.add("refresh_cpu_ms", measured.cpu_ms["bridge"])
        if bench.figures.get("kc_per_s"):
            bench.add(
                "refresh_over_kc", measured.run.per_second / statistics.median(bench.figures["kc_per_s"])
            )
        for name, value in measured.calls.items():
            bench.add(f"refresh_{name}", value)


def concurrency_sweep(
    bench: Bench,
    grant_url: str,
    token_url: str,
    warm_bodies: Path,
    baseline_bodies: Any,  # noqa: ANN401 - a callable: count -> fresh baseline bodies
) -> list[dict[str, float]]:
    """Throughput and p99 against connections, bridge and baseline paired at each level."""
    args = bench.args
    levels = [int(c) for c in args.sweep.split(",")]
    sweep = []
    for connections in levels:
        base_runs: list[Run] = []
        warm_runs: list[Run] = []
        for run in range(args.runs):
            progress(f"sweep, {connections} connections: run {run + 1}/{args.runs}")
            base_runs.append(
                bench.measure(
                    f"baseline, sweep {connections}",
                    grant_url,
                    baseline_bodies(ASSERTIONS_PER_SECOND * args.seconds),
                    connections=connections,
                    cycle=False,
                ).run
            )
            warm_runs.append(
                bench.measure(
                    f"warm, sweep {connections}", token_url, warm_bodies, connections=connections, cycle=True
                ).run
            )
        added_p50 = [w.p50_ms - b.p50_ms for w, b in zip(warm_runs, base_runs, strict=True)]
        added_p99 = [w.p99_ms - b.p99_ms for w, b in zip(warm_runs, base_runs, strict=True)]
        point: dict[str, float] = {"connections": connections}
        for key, values in (
            ("kc_per_s", [r.per_second for r in base_runs]),
            ("kc_p99_ms", [r.p99_ms for r in base_runs]),
            ("warm_per_s", [r.per_second for r in warm_runs]),
            ("warm_p99_ms", [r.p99_ms for r in warm_runs]),
            ("added_p50_ms", added_p50),
            ("added_p99_ms", added_p99),
        ):
            point[key] = statistics.median(values)
            point[f"{key}_min"], point[f"{key}_max"] = min(values), max(values)
            bench.figures[f"sweep{connections}_{key}"] = values
        sweep.append(point)
    return sweep


# ------------------------------------------------------------------------------------- reporting

# (key, label, goal text, how the value prints). The order is the table's.
ROWS: list[tuple[str, str, str, str]] = [
    ("warm_cpu_ms", "bridge CPU per warm exchange, ms", "<= 0.6 (1.0 at least)", "{:.2f}"),
    ("ratio_colocated", "warm throughput / Keycloak grant, co-located, paired", ">= 0.8", "{:.2f}"),
    ("one_worker_cpu_ms", "the same with a one-worker bridge: CPU per warm exchange, ms", "", "{:.2f}"),
    ("ratio_colocated_one_worker", "the same with a one-worker bridge: warm / Keycloak grant", "", "{:.2f}"),
    ("ratio_pinned", "warm throughput / Keycloak grant, pinned (1 core each), paired", "", "{:.2f}"),
    ("kc_per_s", "Keycloak grants/s, co-located (baseline)", "", "{:.0f}"),
    ("warm_per_s", "bridge warm exchanges/s, co-located", "", "{:.0f}"),
    ("pinned_kc_per_s", "Keycloak grants/s, Keycloak alone on 1 core", "", "{:.0f}"),
    ("pinned_warm_per_s", "bridge warm exchanges/s, Keycloak alone on 1 core", "", "{:.0f}"),
    ("kc_cpu_ms", "Keycloak CPU per grant, ms", "", "{:.2f}"),
    ("kc_per_core", "Keycloak grants per second per core (1000 / CPU per grant)", "", "{:.0f}"),
    ("bridge_only_cpu_ms", "bridge-only: CPU per warm exchange, 1 worker, ms", "", "{:.2f}"),
    ("bridge_per_core", "bridge exchanges per second per core (1000 / CPU per exchange)", "", "{:.0f}"),
    ("bridge_only_per_s", "bridge-only: exchanges/s achieved on its core", "", "{:.0f}"),
    (
        "bridge_only_limits_cpu_ms",
        "bridge-only, rate limits on as deployed (raised): CPU per warm exchange, ms",
        "",
        "{:.2f}",
    ),
    ("bridge_only_limits_ratio", "bridge-only: rate limits on / off, paired", "", "{:.2f}"),
    ("bridge_only_core_busy", "bridge-only: busy share of its core", "~1.0 = saturated", "{:.2f}"),
    ("bridge_per_kc_core", "bridge exchanges per Keycloak grant, per core", ">= 5", "{:.1f}"),
    ("first_cpu_ms", "bridge CPU per first sign-in, ms", "<= 3", "{:.2f}"),
    ("first_keycloak_admin", "Keycloak admin calls per first sign-in", "2 when the lock is free", "{:.2f}"),
    ("first_redis", "Redis commands per first sign-in", "", "{:.2f}"),
    ("first_tiktok_user_info", "TikTok user-info calls per first sign-in", "1", "{:.2f}"),
    ("first_per_s", "first sign-ins/s, co-located", "", "{:.0f}"),
    ("first_over_warm", "first sign-ins / warm throughput", ">= 0.35", "{:.2f}"),
    ("first_kc_cpu_ms", "Keycloak CPU per first sign-in (search, create, grant), ms", "", "{:.2f}"),
    ("first_kc_in_grants", "Keycloak CPU per first sign-in / per grant", "", "{:.1f}"),
    ("pg_first_cpu_ms", "Keycloak on PostgreSQL: bridge CPU per first sign-in, ms", "", "{:.2f}"),
    (
        "pg_first_keycloak_admin",
        "Keycloak on PostgreSQL: Keycloak admin calls per first sign-in",
        "2 when the lock is free",
        "{:.2f}",
    ),
    ("pg_first_per_s", "Keycloak on PostgreSQL: first sign-ins/s, co-located", "", "{:.0f}"),
    ("pg_first_kc_cpu_ms", "Keycloak on PostgreSQL: Keycloak CPU per first sign-in, ms", "", "{:.2f}"),
    ("pg_first_db_cpu_ms", "Keycloak on PostgreSQL: PostgreSQL CPU per first sign-in, ms", "", "{:.2f}"),
    ("pg_first_over_h2", "first sign-ins/s, Keycloak on PostgreSQL / on H2, paired", "", "{:.2f}"),
    (
        "pg_first_kc_db_over_h2",
        "Keycloak + PostgreSQL CPU per first sign-in / Keycloak's on H2, paired",
        "",
        "{:.2f}",
    ),
    ("refresh_per_s", "session refreshes/s, co-located", "", "{:.0f}"),
    ("refresh_over_kc", "refresh throughput / Keycloak grant (same run)", "", "{:.2f}"),
    ("refresh_cpu_ms", "bridge CPU per refresh, ms", "", "{:.2f}"),
    ("refresh_keycloak_token", "Keycloak token calls per refresh", "1", "{:.2f}"),
    ("refresh_keycloak_admin", "Keycloak admin calls per refresh", "0", "{:.2f}"),
    ("refresh_tiktok_user_info", "TikTok user-info calls per refresh", "0", "{:.2f}"),
    ("refresh_redis", "Redis commands per refresh", "", "{:.2f}"),
    ("warm_keycloak_admin", "Keycloak admin calls per warm exchange", "0", "{:.2f}"),
    ("warm_keycloak_token", "Keycloak token calls per warm exchange", "1", "{:.2f}"),
    ("warm_redis", "Redis commands per warm exchange", "", "{:.2f}"),
    ("warm_tiktok_user_info", "TikTok user-info calls per warm exchange", "0", "{:.2f}"),
    ("sweep32_warm_p99_ms", "warm p99 at 32 connections, ms", "<= Keycloak's + 5", "{:.1f}"),
    ("sweep32_kc_p99_ms", "Keycloak grant p99 at 32 connections, ms", "", "{:.1f}"),
    ("pinned32_warm_p99_ms", "warm p99 at 32 connections, pinned (1 core each), ms", "", "{:.1f}"),
    ("pinned32_kc_p99_ms", "Keycloak grant p99 at 32 connections, pinned, ms", "", "{:.1f}"),
    ("pinned32_added_p99_ms", "added p99 at 32 connections, pinned, paired, ms", "<= 5", "{:.1f}"),
    ("sweep1_added_p50_ms", "added p50 at 1 connection, ms", "", "{:.2f}"),
    ("sweep1_added_p99_ms", "added p99 at 1 connection, ms", "", "{:.2f}"),
    ("rss_mb", "peak RSS of one bridge worker, MB", "< 100", "{:.0f}"),
    ("foreign_cpu", "machine CPU used by processes outside the bench", "~0 on a quiet machine", "{:.0%}"),
]


def summarise(
    bench: Bench, sweep: list[dict[str, float]], load_before: tuple[float, ...], took: float
) -> dict[str, Any]:
    figures = {k: list(v) for k, v in bench.figures.items()}
    figures["foreign_cpu"] = bench.foreign
    # Per-core capacities, derived run by run so their spread is real.
    if "kc_cpu_ms" in figures:
        figures["kc_per_core"] = [1000 / v for v in figures["kc_cpu_ms"] if v > 0]
    if "bridge_only_cpu_ms" in figures:
        figures["bridge_per_core"] = [1000 / v for v in figures["bridge_only_cpu_ms"] if v > 0]
        if figures.get("kc_per_core"):
            kc = statistics.median(figures["kc_per_core"])
            figures["bridge_per_kc_core"] = [v / kc for v in figures["bridge_per_core"]]
    if figures.get("kc_cpu_ms") and figures.get("first_kc_cpu_ms"):
        # How many grants' worth of Keycloak CPU a first sign-in takes: with a bridge that cost nothing,
        # first sign-ins / warm throughput on shared cores would be one over this.
        grant = statistics.median(figures["kc_cpu_ms"])
        figures["first_kc_in_grants"] = [v / grant for v in figures["first_kc_cpu_ms"]]
    summary = {
        key: {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}
        for key, values in figures.items()
        if values
    }
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2]
    args = bench.args
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": commit or "unknown",
        "command": "scripts/bench " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "versions": f"Keycloak {KEYCLOAK_VERSION}, redis-server {redis_version.removeprefix('v=')}, "
        + ", ".join(
            [
                *(
                    f"{name} {metadata.version(name)}"
                    for name in ("starlette", "uvicorn", "httpx2", "redis", "joserfc")
                ),
                *bench.versions,
            ]
        ),
        "setup": f"{args.runs} paired runs of {args.seconds} s; bridge workers {args.workers}; "
        f"wrk, {args.connections} connections" + ("; rate limits on (raised)" if args.rate_limits else ""),
        "load_average_before": [round(v, 2) for v in load_before],
        "took_seconds": round(took),
        "non_2xx": bench.non_2xx,
        "figures": summary,
        "sweep": sweep,
    }


def cell(entry: dict[str, float] | None, form: str) -> str:
    if not entry:
        return "-"
    if entry.get("n", 2) == 1 or entry["min"] == entry["max"]:
        return form.format(entry["median"])
    return f"{form.format(entry['median'])} ({form.format(entry['min'])}-{form.format(entry['max'])})"


def rows(results: dict[str, Any], previous: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    old = (previous or {}).get("figures", {})
    return [
        (label, cell(results["figures"].get(key), form), cell(old.get(key), form), goal)
        for key, label, goal, form in ROWS
        if key in results["figures"] or key in old
    ]


def heading(results: dict[str, Any], previous: dict[str, Any] | None) -> list[str]:
    lines = [
        f"run: {results['date']}, commit {results['commit']}, `{results['command']}` ({results['took_seconds']} s)",
        f"machine: {results['machine']}; load average before: {results['load_average_before']}",
        results["versions"],
        results["setup"],
    ]
    if previous:
        lines.append(
            f"previous: {previous['date']}, commit {previous['commit']}: {previous.get('setup', '')}"
        )
        if note := previous.get("note"):
            lines.append(f"  ({note})")
    if errors := {k: v for k, v in results["non_2xx"].items() if v}:
        lines.append(f"NON-2xx ANSWERS: {errors}")
    return lines


def render_text(results: dict[str, Any], previous: dict[str, Any] | None) -> str:
    out = heading(results, previous)
    out.append("")
    out.append(f"{'figure':<66} {'this run: median (spread)':>28} {'previous':>22}  goal")
    out.extend(
        f"{label:<66} {now:>28} {old:>22}  {goal}" for label, now, old, goal in rows(results, previous)
    )
    if results["sweep"]:
        out.append("")
        out.append(
            f"{'sweep (warm vs baseline)':<26} {'bridge req/s':>14} {'bridge p99':>11} {'Keycloak req/s':>15} {'Keycloak p99':>13}"
        )
        for point in results["sweep"]:
            out.append(
                f"{int(point['connections']):<26} {point['warm_per_s']:>14.0f} {point['warm_p99_ms']:>11.1f} "
                f"{point['kc_per_s']:>15.0f} {point['kc_p99_ms']:>13.1f}"
            )
    return "\n".join(out)


def render_markdown(results: dict[str, Any], previous: dict[str, Any] | None) -> str:
    out = [f"### {results['date']}: `{results['command']}` (commit {results['commit']})", ""]
    out.extend(f"- {line}" for line in heading(results, previous)[1:])
    out.extend(["", "| figure | this run: median (spread) | previous | goal |", "| --- | --- | --- | --- |"])
    out.extend(f"| {label} | {now} | {old} | {goal} |" for label, now, old, goal in rows(results, previous))
    if results["sweep"]:
        out.extend(
            [
                "",
                "| connections | bridge req/s | bridge p99 ms | Keycloak req/s | Keycloak p99 ms |",
                "| --- | --- | --- | --- | --- |",
            ]
        )
        out.extend(
            f"| {int(p['connections'])} | {p['warm_per_s']:.0f} | {p['warm_p99_ms']:.1f} | {p['kc_per_s']:.0f} | "
            f"{p['kc_p99_ms']:.1f} |"
            for p in results["sweep"]
        )
        out.extend(["", "![concurrency sweep](sweep.png)"])
    return "\n".join(out)


def load_previous(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        found = sorted(RESULTS_DIR.glob("*.json"))
        if not found:
            return None
        path = found[-1]
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def save(results: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = results["date"].replace(" ", "-").replace(":", "")
    path = RESULTS_DIR / f"{stamp}-{results['commit']}.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return path


def plot(results: dict[str, Any], path: Path) -> None:
    """The sweep as a PNG: throughput and p99 against connections, the bridge beside Keycloak."""
    if not results["sweep"]:
        return
    try:
        import matplotlib as mpl  # noqa: PLC0415 - optional (bench extra)

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        progress("matplotlib missing (uv sync --extra bench): no PNG drawn")
        return
    sweep = results["sweep"]
    runs = results["figures"].get("sweep1_kc_per_s", results["figures"].get("kc_per_s", {})).get("n", "?")
    x = [p["connections"] for p in sweep]
    figure, (rate, p99) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for key, label, style in (
        ("kc_per_s", "Keycloak grant (baseline)", "o-"),
        ("warm_per_s", "bridge, warm", "s-"),
    ):
        rate.plot(x, [p[key] for p in sweep], style, label=label)
        rate.fill_between(x, [p[f"{key}_min"] for p in sweep], [p[f"{key}_max"] for p in sweep], alpha=0.2)
    for key, label, style in (
        ("kc_p99_ms", "Keycloak grant (baseline)", "o-"),
        ("warm_p99_ms", "bridge, warm", "s-"),
    ):
        p99.plot(x, [p[key] for p in sweep], style, label=label)
        p99.fill_between(x, [p[f"{key}_min"] for p in sweep], [p[f"{key}_max"] for p in sweep], alpha=0.2)
    for axes, title, unit in ((rate, "throughput", "requests/s"), (p99, "p99 latency", "ms")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(x, [str(int(c)) for c in x])
        axes.set_xlabel("connections (wrk)")
        axes.set_ylabel(unit)
        axes.set_title(f"{title}: median; band: min-max of {runs} runs", fontsize=10)
        axes.grid(visible=True, alpha=0.3)
        axes.legend()
    p99.set_yscale("log")
    figure.suptitle(f"{results['date']}, commit {results['commit']}: {results['machine']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    progress(f"sweep drawn in {path}")


def update_readme(markdown: str) -> None:
    text = README.read_text()
    begin, end = text.find(RESULTS_BEGIN), text.find(RESULTS_END)
    if begin < 0 or end < begin:
        sys.exit(f"bench/README.md has no {RESULTS_BEGIN} ... {RESULTS_END} section to fill")
    README.write_text(text[: begin + len(RESULTS_BEGIN)] + "\n" + markdown + "\n" + text[end:])


if __name__ == "__main__":
    main()
