"""Paired A/B of the bridge's CPU per exchange: a base revision against this checkout.

    .venv/bin/python -m bench.ab [--base main] [--case warm|first|refresh] [--runs 6] [--seconds 5]
                                 [--upstream stub|keycloak] [--b-python OTHER_VENV/bin/python]

What a change to the hot path buys, measured so that machine noise hides little: both versions run at
once on one stack, as `bridge serve --workers 1` from two source trees (the base exported with
`git archive`, and this working tree) with the same Python environment, so only the code differs. Runs
alternate A, B, B, A, ... and each reports the bridge's user+system CPU from /proc divided by the
exchanges it answered; the ratio B/A is taken within each pair. Upstream calls per exchange come from
each bridge's own /metrics (TikTok's from the emulator's count).

`--case warm` (the default) measures returning users with a warm cache: one outbound call each, the
JWT grant. `--case first` measures first sign-ins: before each run, fresh TikTok users are made in the
emulator (as `bench/run.py`'s first-sign-in rows do), so every exchange of the run fetches the TikTok
profile, searches Keycloak's admin API, creates the user and then asks for its token; a run ends early
if its users run out (the rate is taken over the time it lasted).

`--case refresh` measures session refreshes: before each run, sessions are started through the bridge
measured (warm exchanges of the returning users, not counted), and each is refreshed once.

`--upstream stub` (the default for warm exchanges and refreshes) points both bridges at `bench.stub_upstream`
answering a real Keycloak token answer captured once, as `scripts/bench`'s bridge-only run does: the
bridge's own cost, with the JVM idle. `--upstream keycloak` (the default, and the only choice, for
first sign-ins: the stub has no admin API) sends the calls to the real Keycloak (co-located, as deployed
on one machine). Returning users are provisioned once through the stack's own bridge; each version then
warms its own cache entries (or, for first sign-ins, signs in users of its own) before it is measured.

`--b-python` runs B with another interpreter: the same code with one more package (uvloop, hiredis)
installed in another environment, say, with `--base HEAD` for A.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
from joserfc.jwk import ECKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (
    ADMIN_URLS,
    BRIDGE_START_TIMEOUT,
    CLIENT_ID,
    CLIENT_SECRET,
    EXCHANGE,
    REALM,
    cpu_seconds,
    exchange_forms,
    new_tokens,
    require_wrk,
    settled_counts,
    start_stack,
    start_stub_upstream,
    upstream_counts,
    wait_http,
    write_bodies,
    wrk,
)
from bench.stub_upstream import token_subject
from bridge.keycloak.assertions import AssertionSigner, load_key
from devstack.keycloak import free_port, progress, reusable_instance_dir


@dataclass
class Variant:
    name: str
    tree: Path
    python: str = sys.executable
    url: str = ""
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    cpu_ms: list[float] = field(default_factory=list)
    per_s: list[float] = field(default_factory=list)
    calls: dict[str, list[float]] = field(default_factory=dict)
    non_2xx: int = 0


# Fresh users made before each first-sign-in run, per second of it: well above the rate a co-located
# Keycloak creates users at (~90/s), so a run rarely runs out, without making thousands never used.
FIRST_USERS_PER_SECOND = 150
# Sessions started before each refresh run, per second of it (each refreshed once; a run that uses them
# all up ends early, and its rate is taken over the time it lasted).
REFRESH_SESSIONS_PER_SECOND = 800
CASES = {"warm": "warm exchange", "first": "first sign-in", "refresh": "session refresh"}
# Failed answers a run may have and still count (reported beside the figures): a stray 503 from a
# kept-alive connection closed by an upstream at the wrong moment is what a deployment sees too; more
# than this says the set-up is broken, and the run stops with the failing bridge's log. (A run of
# first sign-ins on a loaded machine may be only ~50 exchanges, hence the floor.)
MAX_FAILED_SHARE, MAX_FAILED_FLOOR = 0.01, 3


def export_tree(revision: str, target: Path) -> Path:
    """The checkout's `revision` as plain files (no git metadata is touched)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision], capture_output=True, check=True
    ).stdout
    target.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def start_variant(variant: Variant, env: dict[str, str], work: Path) -> None:
    port, admin_port = free_port(), free_port()
    variant.url = f"http://127.0.0.1:{port}"
    ADMIN_URLS[variant.url] = f"http://127.0.0.1:{admin_port}"
    metrics = work / f"prometheus-{variant.name}"
    metrics.mkdir()
    data = work / f"data-{variant.name}"
    data.mkdir()
    variant.log = work / f"bridge-{variant.name}.log"
    variant.process = subprocess.Popen(
        [
            variant.python,
            "-m",
            "bridge",
            "serve",
            "--port",
            str(port),
            "--workers",
            "1",
            "--admin-port",
            str(admin_port),
        ],
        cwd=variant.tree,  # `python -m bridge` imports the bridge of this tree, first on sys.path
        env={
            **env,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            "BRIDGE_DATA_DIR": str(data),
            "PYTHONDONTWRITEBYTECODE": "1",
        },
        stdout=subprocess.DEVNULL,
        stderr=variant.log.open("wb"),
    )


def capture_answer(stack_keycloak_url: str, signer: AssertionSigner, open_id: str, audience: str) -> bytes:
    answer = httpx2.post(
        f"{stack_keycloak_url}/realms/{REALM}/protocol/openid-connect/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": signer.mint(open_id, audience),
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": "openid",
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.content


def run_bodies(
    case: str, emulator_url: str, warm_bodies: Path, seconds: int, *, bridge_url: str, warm_tokens: list[str]
) -> Path:
    """A run's request bodies: the returning users' (cycled through); for first sign-ins fresh TikTok
    users made now, never seen by a bridge; for refreshes sessions started now through this bridge,
    each refreshed once (made before the run's readings start: that work is not the run's)."""
    if case == "warm":
        return warm_bodies
    if case == "refresh":
        tokens: list[str] = []
        with httpx2.Client(timeout=30) as client:
            while len(tokens) < REFRESH_SESSIONS_PER_SECOND * seconds:
                subject = warm_tokens[len(tokens) % len(warm_tokens)]
                answer = client.post(f"{bridge_url}/token", data={**EXCHANGE, "subject_token": subject})
                assert answer.status_code == 200, answer.text
                tokens.append(answer.json()["refresh_token"])
        forms = [{"grant_type": "refresh_token", "refresh_token": token} for token in tokens]
        return write_bodies(warm_bodies.with_name("refresh.txt"), forms)
    fresh = new_tokens(emulator_url, FIRST_USERS_PER_SECOND * seconds)
    return write_bodies(warm_bodies.with_name("fresh.txt"), exchange_forms([token for _, token in fresh]))


def cell(values: list[float], form: str = "{:.3f}") -> str:
    if not values:
        return "-"
    return f"{form.format(statistics.median(values))} ({form.format(min(values))}-{form.format(max(values))})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="main", help="git revision of version A (default: main)")
    parser.add_argument("--case", choices=tuple(CASES), default="warm", help="what each run measures")
    parser.add_argument("--runs", type=int, default=6, help="measured runs of each version")
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--warm-users", type=int, default=50)
    parser.add_argument(
        "--upstream", choices=("stub", "keycloak"), help="default: keycloak for first, else stub"
    )
    parser.add_argument("--b-python", default=sys.executable, help="interpreter of version B")
    parser.add_argument(
        "--rate-limits", action="store_true", help="both versions with the rate limits on, raised (bench.run)"
    )
    args = parser.parse_args()
    if args.upstream is None:
        args.upstream = "keycloak" if args.case == "first" else "stub"
    if args.case == "first" and args.upstream == "stub":
        parser.error("--case first needs --upstream keycloak: the stub has no admin API")
    return args


def main() -> None:
    args = parse_args()
    require_wrk()
    work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    key_file = work / "signing-key.pem"
    key_file.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    variants = [
        Variant("A", export_tree(args.base, work / "tree-a")),
        Variant("B", ROOT, args.b_python),
    ]
    extra: list[subprocess.Popen[bytes]] = []
    stub_stats: dict[str, int] = {}
    with reusable_instance_dir("bench") as instance_dir:
        progress("starting the stack")
        stack = start_stack(work, key_file, 1, instance_dir, rate_limits=args.rate_limits)
        try:
            progress(f"provisioning {args.warm_users} returning users")
            # (First sign-ins are measured on users of their own; these warm the stack up all the same.)
            warm = new_tokens(stack.emulator_url, args.warm_users)
            user_ids = {}  # open_id -> Keycloak user id: the stub answers each user's own token
            with httpx2.Client(timeout=30) as client:
                for open_id, token in warm:
                    answer = client.post(
                        f"{stack.bridge_url}/token", data={**EXCHANGE, "subject_token": token}
                    )
                    assert answer.status_code == 200, answer.text
                    user_ids[open_id] = token_subject(answer.json()["access_token"])
                audience = client.get(
                    f"{stack.keycloak.url}/realms/{REALM}/.well-known/openid-configuration"
                ).json()["issuer"]
            bodies = write_bodies(work / "warm.txt", exchange_forms([t for _, t in warm]))
            env = dict(stack.bridge_env)
            if args.upstream == "stub":
                signer = AssertionSigner(key=load_key(key_file), issuer=stack.bridge_url, lifetime=110)
                answer = capture_answer(stack.keycloak.url, signer, warm[0][0], audience)
                stub, stub_url = start_stub_upstream(work, answer, user_ids, audience)
                extra.append(stub)
                env["BRIDGE_KEYCLOAK_URL"] = stub_url
                wait_http(f"{stub_url}/_stub/stats")
            for variant in variants:
                start_variant(variant, env, work)
                assert variant.process is not None
                extra.append(variant.process)
            for variant in variants:
                wait_http(f"{variant.url}/healthz", timeout=BRIDGE_START_TIMEOUT)
                progress(f"warming up {variant.name} ({variant.tree})")
                wrk(
                    f"{variant.url}/token",
                    run_bodies(
                        args.case,
                        stack.emulator_url,
                        bodies,
                        3,
                        bridge_url=variant.url,
                        warm_tokens=[t for _, t in warm],
                    ),
                    connections=args.connections,
                    seconds=3,
                    cycle=args.case == "warm",
                    cores=None,
                )
            for run in range(args.runs):
                order = variants if run % 2 == 0 else variants[::-1]
                for variant in order:
                    assert variant.process is not None
                    run_file = run_bodies(
                        args.case,
                        stack.emulator_url,
                        bodies,
                        args.seconds,
                        bridge_url=variant.url,
                        warm_tokens=[t for _, t in warm],
                    )
                    before_cpu = cpu_seconds(variant.process.pid)
                    before_calls = upstream_counts(variant.url, stack.emulator_url)
                    measured = wrk(
                        f"{variant.url}/token",
                        run_file,
                        connections=args.connections,
                        seconds=args.seconds,
                        cycle=args.case == "warm",
                        cores=None,
                    )
                    used = cpu_seconds(variant.process.pid) - before_cpu
                    after_calls = settled_counts(variant.url, stack.emulator_url)
                    # Per request the bridge answered, once those in flight when wrk stopped are done.
                    answered = max(1.0, after_calls.pop("answered") - before_calls["answered"])
                    variant.non_2xx += measured.non_2xx
                    if measured.non_2xx > max(MAX_FAILED_FLOOR, MAX_FAILED_SHARE * measured.requests):
                        assert variant.log is not None
                        sys.exit(
                            f"{variant.name}: {measured.non_2xx} non-2xx answers; its log ends:\n"
                            + variant.log.read_text()[-3000:]
                        )
                    variant.cpu_ms.append(used * 1000 / max(1, measured.requests))
                    variant.per_s.append(measured.per_second)
                    for name, value in after_calls.items():
                        variant.calls.setdefault(name, []).append((value - before_calls[name]) / answered)
                    progress(
                        f"run {run + 1}/{args.runs} {variant.name}: {variant.cpu_ms[-1]:.3f} ms CPU per "
                        f"{CASES[args.case]}, {measured.per_second:.0f}/s over {measured.seconds:.1f} s, "
                        f"{variant.calls['keycloak_admin'][-1]:.2f} admin calls each, "
                        f"{measured.non_2xx} non-2xx"
                    )
            if args.upstream == "stub":
                # Connections the two bridges opened to the stand-in over every run: a handful each,
                # not one per exchange.
                stub_stats = httpx2.get(f"{env['BRIDGE_KEYCLOAK_URL']}/_stub/stats").json()
        finally:
            for process in extra:
                process.terminate()
            for process in extra:
                process.wait(timeout=30)
            stack.stop()
            shutil.rmtree(work, ignore_errors=True)
    report(variants, args, stub_stats)


def report(variants: list[Variant], args: argparse.Namespace, stub_stats: dict[str, int]) -> None:
    a, b = variants
    ratios = [y / x for x, y in zip(a.cpu_ms, b.cpu_ms, strict=True)]
    what = CASES[args.case]
    whats = what + ("es" if what.endswith("sh") else "s")
    print()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}: A = {args.base}, B = this working tree ({args.b_python})")
    print(
        f"{whats}, upstream {args.upstream}; {args.runs} runs of {args.seconds} s each, alternating, "
        f"wrk {args.connections} connections, 1 worker"
    )
    print(f"{'':36} {'A':>22} {'B':>22}")
    print(f"{'bridge CPU per ' + what + ', ms':36} {cell(a.cpu_ms):>22} {cell(b.cpu_ms):>22}")
    print(f"{whats + '/s':36} {cell(a.per_s, '{:.0f}'):>22} {cell(b.per_s, '{:.0f}'):>22}")
    for name in ("keycloak_token", "keycloak_admin", "redis", "tiktok_user_info"):
        print(
            f"{name + ' per ' + what:36} {cell(a.calls[name], '{:.2f}'):>22} {cell(b.calls[name], '{:.2f}'):>22}"
        )
    print(f"{'non-2xx answers, all runs':36} {a.non_2xx:>22} {b.non_2xx:>22}")
    if stub_stats:
        print(
            f"stand-in token endpoint: {stub_stats['requests']} requests over "
            f"{stub_stats['connections']} TCP connections (both bridges, warm-ups included)"
        )
    print(
        f"CPU ratio B/A, paired: median {statistics.median(ratios):.3f} (spread {min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
