"""`scripts/soak`: the bridge's stack on this machine under the traffic mix of real apps and a schedule of
faults, with a verdict at the end (docs/soak.md).

Phases: start the stack (bench/soak/stack.py); prepare the realm (an app client for password users, a
few such users); sign a few TikTok users in; measure capacity with a short closed-loop ramp of the mix
(unless `--rate`); then `--minutes` of open-loop traffic at half of it while the faults run on their
schedule; then the end checks (every ended session refused, no duplicate Keycloak users, Redis memory);
then the verdict, printed and written as JSON, and the PNG. Ctrl-C (or SIGTERM) at any point stops
everything the soak started.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import queue
import random
import secrets
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


import httpx2

from bench.soak import plot
from bench.soak.stack import ACCOUNT_APP, REALM, REDIRECT_URI, SoakStack
from bench.soak.traffic import Driver, PasswordUser
from bench.soak.verdict import EndChecks, FaultWindow, MemorySample, bins, verdict
from devstack.keycloak import progress

if TYPE_CHECKING:
    from collections.abc import Callable

    from bench.soak.traffic import Session

# A folder of its own: bench/run.py takes the newest bench/results/*.json for its previous figures.
RESULTS_DIR = ROOT / "bench" / "results" / "soak"
PASSWORD_USERS = 60
SEED_USERS = 20
RAMP_CONCURRENCY = (2, 4, 8, 16, 32)
MAX_IN_FLIGHT = 200
MEMORY_EVERY = 5.0
# After a fault's end, how long its effects may last: breakers close after their cool-down, replicas
# find the new Redis master, connection pools reconnect.
# The bridge's breaker stays open 10 s; a half-open trial that fails opens it again. Keycloak's first
# calls after a restart may fail so (two cool-downs); TikTok's faults still queued when the window ends
# (one per endpoint) may each fail a trial (three cool-downs, and a margin).
GRACE = {"keycloak-restart": 25.0, "redis-failover": 20.0, "tiktok-5xx-slow": 35.0}
DEFAULT_GRACE = 5.0
TIKTOK_LATENCY = 2.0  # seconds; under the bridge's 5-second timeout of an outbound call
END_CHECK_CONCURRENCY = 16
IDP_LOOKUPS = 2000


# ---------------------------------------------------------------------------------- blocking work


class Launcher:
    """One daemon thread that does all blocking stack work (restarts, waits) for the whole run.

    One thread, alive until the soak exits, because of how the processes it starts are tied to the
    soak: `die_with_parent` asks the kernel to signal a child when the *thread* that started it ends,
    not the process; a process started from a short-lived thread would be stopped the moment that
    thread finished. A daemon thread, so Ctrl-C never waits for a Keycloak start to finish (and
    `SoakStack` refuses to start anything new once it is closing)."""

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="soak-launcher", daemon=True).start()

    def _serve(self) -> None:
        while True:
            self._work.get()()

    async def run(self, work: Callable[[], Any]) -> Any:  # noqa: ANN401
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, failure: BaseException | None) -> None:  # noqa: ANN401
            if done.done():  # the waiting coroutine was cancelled (Ctrl-C)
                return
            if failure is not None:
                done.set_exception(failure)
            else:
                done.set_result(result)

        def job() -> None:
            try:
                result = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, result, None)

        self._work.put(job)
        return await done


_launcher: Launcher | None = None


async def in_thread(work: Callable[[], Any]) -> Any:  # noqa: ANN401
    """`work` on the launcher thread, awaited."""
    global _launcher  # noqa: PLW0603 - one launcher thread per soak process
    if _launcher is None:
        _launcher = Launcher()
    return await _launcher.run(work)


# ---------------------------------------------------------------------------------- faults


@dataclass
class Faults:
    stack: SoakStack
    driver: Driver
    windows: list[FaultWindow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    async def window(self, name: str, action: Callable[[], Any]) -> None:
        start = self.driver.now()
        progress(f"fault: {name}")
        try:
            note = await action()
        except Exception as exc:  # noqa: BLE001 - a fault that could not be thrown is reported, not fatal
            note = f"failed: {type(exc).__name__}: {exc}"
        end = self.driver.now()
        self.windows.append(FaultWindow(name, start, end + GRACE.get(name, DEFAULT_GRACE)))
        self.notes.append(f"{name} at {start:.0f} s, {end - start:.1f} s{': ' + note if note else ''}")
        progress(f"fault over: {name} ({end - start:.1f} s){': ' + note if note else ''}")

    async def keycloak_restart(self) -> str:
        await in_thread(self.stack.restart_keycloak)
        return ""

    async def redis_failover(self) -> str:
        took = await in_thread(self.stack.fail_over_redis)
        return f"sentinels promoted the replica in {took:.1f} s"

    async def rolling_restart(self) -> str:
        for replica in self.stack.replicas:
            await in_thread(functools.partial(self.stack.stop_replica, replica, signal.SIGTERM))
            await in_thread(functools.partial(self.stack.start_replica, replica))
            await asyncio.sleep(2)
        return ""

    async def replica_kill(self) -> str:
        replica = self.stack.replicas[1]
        await in_thread(lambda: self.stack.stop_replica(replica, signal.SIGKILL))
        await asyncio.sleep(2)
        await in_thread(lambda: self.stack.start_replica(replica))
        return f"{replica.name} killed"

    async def tiktok_fault(self, seconds: float) -> str:
        emulator = self.driver.emulator
        await emulator.post("/_emulator/latency", json={"seconds": TIKTOK_LATENCY})
        try:
            end = time.monotonic() + seconds
            # One failure of each endpoint every half second, queued; what the bridge has not consumed
            # by the end (its breaker open, it calls TikTok less) is dropped when the window closes.
            while time.monotonic() < end:
                for endpoint in ("user_info", "token"):
                    await emulator.post(
                        "/_emulator/faults",
                        json={"endpoint": endpoint, "code": "internal_error", "http_status": 500, "count": 1},
                    )
                await asyncio.sleep(0.5)
        finally:
            await emulator.post("/_emulator/latency", json={"seconds": 0})
            await emulator.delete("/_emulator/faults")
        return f"{TIKTOK_LATENCY:.0f} s slower, 5xx on 2 calls of each endpoint a second"

    async def run(self, length: float) -> None:
        """The schedule, as shares of the run: restarts in the first half, so the memory slope of the
        second half follows each worker through one life."""
        tiktok_seconds = min(60.0, max(15.0, length / 10))
        schedule: list[tuple[float, str, Callable[[], Any]]] = [
            (0.10, "keycloak-restart", self.keycloak_restart),
            (0.25, "rolling-restart", self.rolling_restart),
            (0.40, "replica-kill", self.replica_kill),
            (0.55, "redis-failover", self.redis_failover),
            (0.70, "tiktok-5xx-slow", lambda: self.tiktok_fault(tiktok_seconds)),
        ]
        for share, name, action in schedule:
            # Never before the previous window closed: each fault's answers are judged by its own window.
            previous_end = self.windows[-1].end if self.windows else 0.0
            wait = max(share * length, previous_end) - self.driver.now()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.window(name, action)


# ---------------------------------------------------------------------------------- load


async def open_loop(driver: Driver, rate: float, seconds: float) -> None:
    """Poisson arrivals at `rate` a second for `seconds`: the load does not slow down when the bridge
    does (past MAX_IN_FLIGHT requests in flight, arrivals are counted as shed instead)."""
    tasks: set[asyncio.Task[None]] = set()
    next_at = time.monotonic()
    end = next_at + seconds
    while (now := time.monotonic()) < end:
        if now < next_at:
            await asyncio.sleep(next_at - now)
            continue
        next_at += driver.rng.expovariate(rate)
        if len(tasks) >= MAX_IN_FLIGHT:
            driver.shed += 1
            continue
        task = asyncio.create_task(driver.one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


async def closed_loop(driver: Driver, concurrency: int, seconds: float) -> float:
    """Successful requests a second with `concurrency` requests always in flight."""
    end = time.monotonic() + seconds
    before = len(driver.records)

    async def worker() -> None:
        while time.monotonic() < end:
            await driver.one()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    ok = sum(1 for r in driver.records[before:] if r.status is not None and r.status < 400)
    return ok / (time.monotonic() - started)


async def ramp(driver: Driver, step: float) -> tuple[float, list[dict[str, float]]]:
    """The mix's capacity: the best throughput of a closed-loop ramp, stopping once doubling the
    concurrency no longer adds a tenth."""
    steps: list[dict[str, float]] = []
    best = 0.0
    for concurrency in RAMP_CONCURRENCY:
        rate = await closed_loop(driver, concurrency, step)
        steps.append({"concurrency": concurrency, "per_second": round(rate, 1)})
        progress(f"ramp: {concurrency} in flight, {rate:.1f} answered/s")
        if rate < best * 1.1:
            best = max(best, rate)
            break
        best = rate
    return best, steps


async def sample_memory(stack: SoakStack, driver: Driver, samples: list[MemorySample]) -> None:
    while True:
        for replica in stack.replicas:
            process = replica.process
            if process is None or process.poll() is not None:
                continue
            if (rss := rss_mb(process.pid)) is not None:
                samples.append(MemorySample(driver.now(), replica.name, process.pid, rss))
        await asyncio.sleep(MEMORY_EVERY)


def rss_mb(pid: int) -> float | None:
    """Resident set of one process from /proc (psutil is not a dependency of the project)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


# ---------------------------------------------------------------------------------- set-up, end


def prepare_realm(stack: SoakStack, driver: Driver) -> None:
    """The existing app whose password users link TikTok (a public client with direct access grants),
    and its users, in the bridge's group as accounts must be to link."""
    with stack.admin() as admin:
        created = admin.post(
            "/clients",
            json={
                "clientId": ACCOUNT_APP,
                "publicClient": True,
                "directAccessGrantsEnabled": True,
                "standardFlowEnabled": False,
            },
        )
        assert created.status_code in {201, 409}, created.text
        for _ in range(PASSWORD_USERS):
            username, password = f"pw-{secrets.token_hex(6)}", secrets.token_urlsafe(12)
            made = admin.post(
                "/users",
                json={
                    "username": username,
                    "enabled": True,
                    "credentials": [{"type": "password", "value": password, "temporary": False}],
                    "groups": ["/tiktok-users"],
                },
            )
            assert made.status_code == 201, made.text
            user_id = made.headers["Location"].rsplit("/", 1)[1]
            driver.password_users.append(PasswordUser(user_id, username, password))


async def end_checks(stack: SoakStack, driver: Driver) -> EndChecks:
    checks = EndChecks()
    gate = asyncio.Semaphore(END_CHECK_CONCURRENCY)

    async def ended(reason: str, session: Session) -> None:
        async with gate:
            refused = await driver.refresh_refused(session)
        if refused is not True:
            checks.ended_sessions_usable.append(
                f"{reason} session of {session.open_id[:12]}: {'refreshed' if refused is False else 'no clear answer'}"
            )

    checks.ended_sessions_checked = len(driver.ended)
    await asyncio.gather(*(ended(reason, s) for reason, s in driver.ended))
    live = [s for s in driver.sessions if not s.busy]
    live = driver.rng.sample(live, min(200, len(live)))

    async def alive(session: Session) -> None:
        async with gate:
            if await driver.refresh_refused(session) is not False:
                checks.live_sessions_refused += 1

    checks.live_sessions_checked = len(live)
    await asyncio.gather(*(alive(s) for s in live))
    try:
        checks.keycloak_users, checks.duplicate_users = await in_thread(
            lambda: duplicate_users(stack, driver)
        )
    except (httpx2.HTTPError, ValueError, KeyError) as exc:
        checks.problems.append(f"Keycloak's users could not be read: {type(exc).__name__}: {exc}")
    try:
        checks.redis_used_memory_mb, checks.redis_keys = stack.redis_memory()
    except (OSError, AssertionError, KeyError) as exc:
        checks.problems.append(f"Redis memory could not be read: {type(exc).__name__}: {exc}")
    return checks


def duplicate_users(stack: SoakStack, driver: Driver) -> tuple[int, dict[str, int]]:
    """Every user of the realm read through the Admin API: open_ids held by more than one user, by their
    tiktok_open_id attribute and by their TikTok link (the identity provider's user id)."""
    holders: dict[str, set[str]] = {}
    total = 0
    with stack.admin() as admin:
        first = 0
        while True:
            page = admin.get(
                "/users", params={"first": first, "max": 500, "briefRepresentation": "false"}
            ).json()
            for user in page:
                for open_id in (user.get("attributes") or {}).get("tiktok_open_id", []):
                    holders.setdefault(open_id, set()).add(user["id"])
            total += len(page)
            if len(page) < 500:
                break
            first += 500
        known = list(driver.identities.subject_of)
        for open_id in random.sample(known, min(IDP_LOOKUPS, len(known))):
            linked = admin.get("/users", params={"idpAlias": "tiktok", "idpUserId": open_id}).json()
            holders.setdefault(open_id, set()).update(u["id"] for u in linked)
    return total, {open_id: len(ids) for open_id, ids in holders.items() if len(ids) > 1}


# ---------------------------------------------------------------------------------- the run


async def soak(stack: SoakStack, args: argparse.Namespace) -> dict[str, Any]:
    length = args.minutes * 60
    async with Driver(
        bridge_url=stack.url,
        emulator_url=stack.emulator_url,
        keycloak_url=stack.keycloak.url if stack.keycloak else "",
        realm=REALM,
        account_app=ACCOUNT_APP,
        redirect_uri=REDIRECT_URI,
    ) as driver:
        await in_thread(lambda: prepare_realm(stack, driver))
        driver.recording = True
        for _ in range(SEED_USERS):
            await driver.one("first")
        steps: list[dict[str, float]] = []
        if args.rate:
            rate = args.rate
        else:
            capacity, steps = await ramp(driver, args.ramp_seconds)
            rate = max(1.0, capacity / 2)
        progress(f"soak: {args.minutes} min at {rate:.1f} requests/s with faults")
        # The verdict covers the soak itself: the set-up and ramp's records are left out.
        driver.records.clear()
        driver.started = time.monotonic()
        memory: list[MemorySample] = []
        faults = Faults(stack, driver)
        sampler = asyncio.create_task(sample_memory(stack, driver, memory))
        schedule = asyncio.create_task(faults.run(length))
        try:
            await open_loop(driver, rate, length)
            await schedule  # a fault still under way ends first
        finally:
            sampler.cancel()
            schedule.cancel()
        run_length = driver.now()
        progress("end checks: ended sessions, live sessions, Keycloak users, Redis memory")
        driver.recording = False
        checks = await end_checks(stack, driver)
        result = verdict(driver.records, faults.windows, memory, checks, run_length)
        slices = bins(driver.records, run_length)
        result.update(
            {
                "minutes": args.minutes,
                "rate_per_second": round(rate, 1),
                "capacity_ramp": steps,
                "shed_by_generator": driver.shed,
                "generator_errors": driver.generator_errors[:20],
                "fault_notes": faults.notes,
                "stack": stack.describe(),
                "load_average_at_end": os.getloadavg(),
                "bins": [asdict(b) for b in slices],
                "memory_samples": [asdict(m) for m in memory],
            }
        )
        if not args.no_picture:
            png = args.out.with_suffix(".png")
            title = f"soak: {args.minutes} min at {rate:.0f} req/s, 3 replicas; passed={result['passed']}"
            plot.draw(png, slices, memory, faults.windows, title)
            result["picture"] = str(png.relative_to(ROOT) if png.is_relative_to(ROOT) else png)
        return result


def verdict_text(result: dict[str, Any]) -> str:
    lines = [
        f"soak verdict: {'PASSED' if result['passed'] else 'FAILED'}",
        f"  {result['requests']} requests in {result['seconds']:.0f} s at {result['rate_per_second']}/s",
    ]
    lines += [f"  {name}: {value}  (must be 0)" for name, value in result["must_be_zero"].items()]
    lines += [
        f"  ended sessions checked: {result['ended_sessions_checked']} (revoked, deauthorized, unlinked)",
        f"  live sessions refused at the end: {result['live_sessions_refused']} of {result['live_sessions_checked']}",
        f"  documented 503s in fault windows: {result['documented_503_in_faults']}",
        f"  no answer while a replica was killed: {result['no_answer_in_replica_kill']}",
        f"  Keycloak users: {result['keycloak_users']}",
        f"  Redis at the end: {result['redis_used_memory_mb']} MB used, {result['redis_keys']} keys",
    ]
    lines += [f"  END CHECK NOT MADE: {problem}" for problem in result["end_check_problems"]]
    for replica, memory in result["memory_per_worker"].items():
        lines.append(
            f"  {replica}: RSS {memory['rss_end_mb']} MB at the end, "
            f"slope over the last half {memory['slope_last_half_mb_per_hour']} MB/hour"
        )
    lines += [f"  fault: {note}" for note in result["fault_notes"]]
    return "\n".join(lines)


def _interrupt(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="scripts/soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--minutes", type=float, default=10, help="length of the soak (default 10; 60 for the full one)"
    )
    parser.add_argument(
        "--rate", type=float, help="requests a second (default: half the capacity the ramp measures)"
    )
    parser.add_argument(
        "--ramp-seconds", type=float, default=8, help="length of each step of the capacity ramp"
    )
    parser.add_argument("--out", type=Path, help="the verdict's JSON file (the PNG goes beside it)")
    parser.add_argument("--no-picture", action="store_true", help="write no PNG")
    args = parser.parse_args()
    if args.minutes <= 0 or (args.rate is not None and args.rate <= 0):
        parser.error("--minutes and --rate must be positive")
    if args.out is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        args.out = RESULTS_DIR / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    # SIGTERM ends the soak as Ctrl-C does: through the finally below, which stops the stack.
    signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C even where the soak was started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stack = SoakStack(work=Path(tempfile.mkdtemp(prefix="soak-")))
    try:
        stack.start()
        result = asyncio.run(soak(stack, args))
    except KeyboardInterrupt:
        stack.close()
        progress("interrupted: everything the soak started is stopped")
        sys.exit(130)
    finally:
        stack.close()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    text = verdict_text(result)
    # The same lines for a page to include (docs/soak.md includes the committed run's).
    load = ", ".join(f"{value:.1f}" for value in result["load_average_at_end"])
    args.out.with_suffix(".md").write_text(
        f"`scripts/soak --minutes {result['minutes']:g}`, load average at the end {load}:\n\n"
        f"```text\n{text}\n```\n"
    )
    print(text)
    print(f"verdict: {args.out}")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
