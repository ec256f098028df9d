"""The soak's verdict (bench/soak/verdict.py): which answers count against the bridge, and how memory
and the per-10-second picture are summarised."""

from __future__ import annotations

import pytest

from bench.soak.verdict import (
    Bin,
    EndChecks,
    FaultWindow,
    MemorySample,
    Record,
    bins,
    memory_summary,
    percentile,
    rolling_restart_failures,
    transport_failures,
    unexpected_server_errors,
    verdict,
)

KEYCLOAK = FaultWindow("keycloak-restart", 100.0, 160.0)
ROLLING = FaultWindow("rolling-restart", 200.0, 230.0)
KILL = FaultWindow("replica-kill", 300.0, 310.0)
WINDOWS = [KEYCLOAK, ROLLING, KILL]


def record(start: float, status: int | None, *, retry_after: bool = False, seconds: float = 0.1) -> Record:
    return Record(start=start, seconds=seconds, kind="warm", status=status, retry_after=retry_after)


def test_a_503_with_retry_after_inside_a_fault_is_documented() -> None:
    """A 503 carrying Retry-After while Keycloak restarts is what the bridge promises, not a failure."""
    assert unexpected_server_errors([record(120, 503, retry_after=True)], WINDOWS) == []


@pytest.mark.parametrize(
    "answer",
    [
        record(50, 503, retry_after=True),  # outside every fault
        record(120, 503),  # inside, but without Retry-After
        record(120, 500, retry_after=True),  # inside, but not a 503
        record(120, 502),
    ],
)
def test_other_server_errors_count_against_the_bridge(answer: Record) -> None:
    """A 503 outside a fault, one without Retry-After, and any other 5xx are unexpected."""
    assert unexpected_server_errors([answer], WINDOWS) == [answer]


def test_a_request_in_flight_when_a_fault_begins_belongs_to_it() -> None:
    """A request that started before the window and was still in flight when it opened is judged by it."""
    started_before = record(95, 503, retry_after=True, seconds=10)
    assert unexpected_server_errors([started_before], WINDOWS) == []


def test_rolling_restart_failures_are_unanswered_or_5xx_requests_during_it() -> None:
    """During the rolling restart, a request without answer or with any 5xx (even a documented 503)
    is a failure of the drain; a 4xx or a 200 is not, and neither is a failure outside it."""
    failed = [record(210, None), record(215, 503, retry_after=True)]
    fine = [record(211, 200), record(212, 400), record(120, None)]
    assert rolling_restart_failures(failed + fine, WINDOWS) == failed


def test_unanswered_requests_are_expected_only_while_a_replica_is_killed() -> None:
    """Requests in flight on a SIGKILLed replica are lost by design; elsewhere each one counts."""
    assert transport_failures([record(305, None), record(306, None), record(50, None)], WINDOWS) == (2, 1)


def test_percentile_is_nearest_rank() -> None:
    """p50 of 1..100 is 50 and p99 is 99 (nearest rank, no interpolation)."""
    values = [float(v) for v in range(100, 0, -1)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile([7.0], 0.99)) == (50.0, 99.0, 7.0)


def test_bins_count_requests_latency_and_errors_per_slice() -> None:
    """Each 10-second slice holds the requests that started in it; latency is of answered ones only."""
    records = [record(1, 200, seconds=0.010), record(2, 503, seconds=0.030), record(15, None, seconds=5)]
    assert bins(records, 20.0) == [
        Bin(start=0.0, requests=2, per_second=0.2, p50_ms=10.0, p99_ms=30.0, server_errors=1, no_answer=0),
        Bin(start=10.0, requests=1, per_second=0.1, p50_ms=None, p99_ms=None, server_errors=0, no_answer=1),
    ]


def test_memory_slope_is_taken_over_the_last_half_of_the_longest_life() -> None:
    """A worker growing 1 MB a minute in the second half has a slope of 60 MB/hour; its first life
    (before a restart) and the first half of the run are left out."""
    first_life = [MemorySample(float(t), "replica-1", 10, 500.0) for t in range(0, 600, 30)]
    second_life = [
        MemorySample(float(t), "replica-1", 11, 100.0 + (t - 600) / 60) for t in range(600, 1200, 30)
    ]
    summary = memory_summary(first_life + second_life, 1200.0)["replica-1"]
    assert summary["slope_last_half_mb_per_hour"] == pytest.approx(60.0)
    assert summary["slope_samples"] == 20
    assert summary["flat"] is False
    assert summary["rss_max_mb"] == 500.0


def test_a_flat_worker_is_called_flat_and_too_few_samples_give_no_slope() -> None:
    """Constant RSS is flat; fewer than six samples in the last half give no slope at all."""
    flat = [MemorySample(float(t), "replica-2", 20, 150.0) for t in range(0, 1200, 30)]
    sparse = [MemorySample(float(t), "replica-3", 30, 150.0) for t in (700, 800, 900)]
    summary = memory_summary(flat + sparse, 1200.0)
    assert summary["replica-2"]["flat"] is True
    assert summary["replica-3"]["slope_last_half_mb_per_hour"] is None


def test_the_verdict_passes_only_when_every_must_be_zero_count_is_zero() -> None:
    """A clean run passes; one wrong-user token, one usable revoked session or one duplicate user fails."""
    clean = [record(10, 200), record(120, 503, retry_after=True), record(305, None)]
    checks = EndChecks(ended_sessions_checked=5)
    passed = verdict(clean, WINDOWS, [], checks, 400.0)
    assert passed["passed"] is True
    assert passed["documented_503_in_faults"] == 1
    assert passed["no_answer_in_replica_kill"] == 1

    wrong = Record(start=10, seconds=0.1, kind="refresh", status=200, wrong_user=True)
    assert verdict([*clean, wrong], WINDOWS, [], checks, 400.0)["must_be_zero"]["wrong_user_tokens"] == 1
    usable = EndChecks(ended_sessions_checked=5, ended_sessions_usable=["revoked session of x: refreshed"])
    assert verdict(clean, WINDOWS, [], usable, 400.0)["passed"] is False
    duplicated = EndChecks(ended_sessions_checked=5, duplicate_users={"-000abc": 2})
    assert verdict(clean, WINDOWS, [], duplicated, 400.0)["must_be_zero"]["duplicate_keycloak_users"] == 1


def test_a_run_that_ended_no_session_does_not_pass() -> None:
    """With nothing revoked or deauthorized there was nothing to check: the verdict cannot pass."""
    assert verdict([record(10, 200)], WINDOWS, [], EndChecks(), 400.0)["passed"] is False


def test_an_end_check_that_could_not_be_made_fails_the_verdict() -> None:
    """Keycloak's users unread (say it was down at the end) is no evidence of no duplicates: not passed."""
    checks = EndChecks(ended_sessions_checked=5, problems=["Keycloak's users could not be read"])
    assert verdict([record(10, 200)], WINDOWS, [], checks, 400.0)["passed"] is False


def test_a_request_lost_to_a_kill_just_after_the_rolling_restart_is_the_kill_s() -> None:
    """No answer for a request in flight across the end of the rolling window and the SIGKILL that
    follows it is charged to the kill, not to the drain."""
    rolling = FaultWindow("rolling-restart", 200.0, 300.0)
    across = record(299.9, None, seconds=0.2)
    assert rolling_restart_failures([across], [rolling, KILL]) == []
    assert transport_failures([across], [rolling, KILL]) == (1, 0)
