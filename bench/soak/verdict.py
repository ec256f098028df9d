"""The soak's verdict, computed from what the run recorded: pure functions, no I/O (unit-tested in
tests/unit/test_soak_verdict.py).

A request is a `Record`; a fault is a `FaultWindow` (from the fault's start until the stack has
recovered, plus a grace period for breakers and connection pools); memory is a series of `MemorySample`s.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

SERVER_ERROR = 500
UNAVAILABLE = 503
BIN_SECONDS = 10.0
ROLLING = "rolling-restart"
KILL = "replica-kill"
# A slope below this over the last half is called flat (a worker's RSS moves by a few MB as its
# allocator settles; a leak of one session record per request would be hundreds of MB an hour).
FLAT_MB_PER_HOUR = 50.0
MIN_SLOPE_SAMPLES = 6


@dataclass(frozen=True)
class Record:
    """One request the load generator sent through the proxy."""

    start: float  # seconds since the run began
    seconds: float
    kind: str
    status: int | None  # None: no HTTP answer (connection refused, reset, timed out)
    retry_after: bool = False
    error: str = ""  # the transport error's name, or the answer's OAuth error
    wrong_user: bool = False


@dataclass(frozen=True)
class FaultWindow:
    name: str
    start: float
    end: float

    def holds(self, moment: float) -> bool:
        return self.start <= moment <= self.end


@dataclass(frozen=True)
class MemorySample:
    at: float
    replica: str
    pid: int
    rss_mb: float


@dataclass
class EndChecks:
    """What the end of the run found by asking the stack itself."""

    ended_sessions_checked: int = 0
    ended_sessions_usable: list[str] = field(default_factory=list)  # "revoked"/"deauthorized" + index
    live_sessions_checked: int = 0
    live_sessions_refused: int = 0
    keycloak_users: int = 0
    duplicate_users: dict[str, int] = field(default_factory=dict)  # open_id -> users linked to it
    redis_used_memory_mb: float | None = None
    redis_keys: int | None = None
    problems: list[str] = field(default_factory=list)  # an end check that could not be made


def _window_of(record: Record, windows: list[FaultWindow]) -> FaultWindow | None:
    # A request belongs to a window if it was in flight at any moment of it.
    for window in windows:
        if record.start <= window.end and record.start + record.seconds >= window.start:
            return window
    return None


def is_documented_unavailable(record: Record, windows: list[FaultWindow]) -> bool:
    """A 503 with Retry-After while a fault held: what the bridge promises to answer then."""
    return record.status == UNAVAILABLE and record.retry_after and _window_of(record, windows) is not None


def unexpected_server_errors(records: list[Record], windows: list[FaultWindow]) -> list[Record]:
    return [
        r
        for r in records
        if r.status is not None and r.status >= SERVER_ERROR and not is_documented_unavailable(r, windows)
    ]


def rolling_restart_failures(records: list[Record], windows: list[FaultWindow]) -> list[Record]:
    """Requests in flight during a rolling restart that got no answer or a 5xx: a graceful drain and a
    load balancer that skips a closed replica leave none."""
    rolling = [w for w in windows if w.name == ROLLING]
    killed = [w for w in windows if w.name == KILL]
    return [
        r
        for r in records
        if (r.status is None or r.status >= SERVER_ERROR)
        and _window_of(r, rolling) is not None
        # In flight when the next fault killed its replica: lost to the kill, not to the drain.
        and not (r.status is None and _window_of(r, killed) is not None)
    ]


def transport_failures(records: list[Record], windows: list[FaultWindow]) -> tuple[int, int]:
    """(lost to the SIGKILL of a replica: in flight on it, expected; any other request without answer)."""
    killed = [w for w in windows if w.name == KILL]
    lost = [r for r in records if r.status is None]
    in_kill = sum(1 for r in lost if _window_of(r, killed) is not None)
    return in_kill, len(lost) - in_kill


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (`share` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Bin:
    start: float
    requests: int
    per_second: float
    p50_ms: float | None
    p99_ms: float | None
    server_errors: int  # 5xx, documented 503s included
    no_answer: int


def bins(records: list[Record], length: float, width: float = BIN_SECONDS) -> list[Bin]:
    """Requests by the `width`-second slice they started in, over a run of `length` seconds."""
    count = max(1, math.ceil(length / width))
    slices: list[list[Record]] = [[] for _ in range(count)]
    for record in records:
        slices[min(count - 1, max(0, int(record.start // width)))].append(record)
    out = []
    for index, chunk in enumerate(slices):
        answered = [r.seconds * 1000 for r in chunk if r.status is not None]
        out.append(
            Bin(
                start=index * width,
                requests=len(chunk),
                per_second=len(chunk) / width,
                p50_ms=percentile(answered, 0.5) if answered else None,
                p99_ms=percentile(answered, 0.99) if answered else None,
                server_errors=sum(1 for r in chunk if r.status is not None and r.status >= SERVER_ERROR),
                no_answer=sum(1 for r in chunk if r.status is None),
            )
        )
    return out


def slope_mb_per_hour(samples: list[MemorySample]) -> float | None:
    """Least-squares slope of RSS over time, in MB an hour (None with too few samples)."""
    if len(samples) < MIN_SLOPE_SAMPLES:
        return None
    times = [s.at for s in samples]
    if max(times) - min(times) <= 0:
        return None
    slope = statistics.linear_regression(times, [s.rss_mb for s in samples]).slope
    return slope * 3600


def memory_summary(samples: list[MemorySample], length: float) -> dict[str, dict[str, Any]]:
    """Per replica: RSS at the end and its slope over the last half of the run, taken over the longest
    life of one process there (a restarted replica is a new process, whose RSS starts again)."""
    summary: dict[str, dict[str, Any]] = {}
    for replica in sorted({s.replica for s in samples}):
        own = [s for s in samples if s.replica == replica]
        late = [s for s in own if s.at >= length / 2]
        by_pid: dict[int, list[MemorySample]] = {}
        for sample in late:
            by_pid.setdefault(sample.pid, []).append(sample)
        longest = max(by_pid.values(), key=len, default=[])
        slope = slope_mb_per_hour(longest)
        summary[replica] = {
            "rss_end_mb": round(own[-1].rss_mb, 1) if own else None,
            "rss_max_mb": round(max(s.rss_mb for s in own), 1) if own else None,
            "slope_last_half_mb_per_hour": None if slope is None else round(slope, 1),
            "slope_samples": len(longest),
            "flat": None if slope is None else abs(slope) < FLAT_MB_PER_HOUR,
        }
    return summary


def verdict(
    records: list[Record],
    windows: list[FaultWindow],
    memory: list[MemorySample],
    checks: EndChecks,
    length: float,
) -> dict[str, Any]:
    """The verdict as JSON-ready data; `passed` holds when every must-be-zero count is zero."""
    unexpected = unexpected_server_errors(records, windows)
    rolling = rolling_restart_failures(records, windows)
    lost_to_kill, lost_elsewhere = transport_failures(records, windows)
    wrong = [r for r in records if r.wrong_user]
    documented = [r for r in records if is_documented_unavailable(r, windows)]
    by_kind: dict[str, Counter[str]] = {}
    for record in records:
        answer = " ".join(str(part) for part in (record.status, record.error) if part)
        by_kind.setdefault(record.kind, Counter())[answer or "none"] += 1
    must_be_zero = {
        "unexpected_5xx": len(unexpected),
        "rolling_restart_failures": len(rolling),
        "no_answer_outside_replica_kill": lost_elsewhere,
        "duplicate_keycloak_users": len(checks.duplicate_users),
        "ended_sessions_usable": len(checks.ended_sessions_usable),
        "wrong_user_tokens": len(wrong),
    }
    return {
        "passed": all(value == 0 for value in must_be_zero.values())
        and checks.ended_sessions_checked > 0
        and not checks.problems,
        "end_check_problems": checks.problems,
        "must_be_zero": must_be_zero,
        "requests": len(records),
        "seconds": round(length, 1),
        "documented_503_in_faults": len(documented),
        "no_answer_in_replica_kill": lost_to_kill,
        "unexpected_5xx_examples": [asdict(r) for r in unexpected[:10]],
        "rolling_restart_failure_examples": [asdict(r) for r in rolling[:10]],
        "answers_by_kind": {kind: dict(sorted(c.items())) for kind, c in sorted(by_kind.items())},
        "ended_sessions_checked": checks.ended_sessions_checked,
        "ended_sessions_usable": checks.ended_sessions_usable[:20],
        "live_sessions_checked": checks.live_sessions_checked,
        "live_sessions_refused": checks.live_sessions_refused,
        "keycloak_users": checks.keycloak_users,
        "duplicate_users": dict(list(checks.duplicate_users.items())[:20]),
        "memory_per_worker": memory_summary(memory, length),
        "redis_used_memory_mb": checks.redis_used_memory_mb,
        "redis_keys": checks.redis_keys,
        "faults": [asdict(w) for w in windows],
    }
