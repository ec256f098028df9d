"""Prometheus metrics (served at GET /metrics by `endpoints.metrics`).

With several worker processes set PROMETHEUS_MULTIPROC_DIR (an empty directory, wiped at each start)
and the endpoint aggregates every worker's values (prometheus-client's multiprocess mode).
Labels never carry a token, code, user id or any other unbounded value.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

if TYPE_CHECKING:
    from collections.abc import Iterator

EXCHANGES = Counter(
    "bridge_exchanges_total",
    "Exchanges by endpoint and outcome (issued, or the OAuth error code)",
    ["endpoint", "outcome"],
)
UPSTREAM_SECONDS = Histogram(
    "bridge_upstream_request_seconds",
    "Outbound call latency by upstream, operation and result",
    ["upstream", "operation", "result"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CACHE_LOOKUPS = Counter("bridge_cache_lookups_total", "Cache lookups by kind and result", ["kind", "result"])
LOCK_WAIT_SECONDS = Histogram(
    "bridge_provisioning_lock_wait_seconds",
    "Time spent waiting for the single-flight provisioning lock",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
)
RATE_LIMITED = Counter("bridge_rate_limit_rejections_total", "Requests refused by a rate limit", ["limit"])
USERS_PROVISIONED = Counter("bridge_users_provisioned_total", "Keycloak users created by the bridge")
SESSIONS = Counter(
    "bridge_sessions_total",
    "Bridge session events: started, refreshed, retried_in_grace, ended_<reason>",
    ["event"],
)
OVERLOAD_REFUSALS = Counter(
    "bridge_overload_refusals_total",
    "Connections refused at the worker's concurrency limit: answered 503, or closed unread past twice it",
    ["action"],
)
CIRCUIT_OPENED = Counter("bridge_circuit_opened_total", "Times a circuit breaker opened", ["upstream"])
# 1 while a breaker is open or half-open in some live worker (the alert "circuit open" reads it); set on
# the transitions only, so a call through a closed breaker costs nothing more.
CIRCUIT_OPEN = Gauge(
    "bridge_circuit_open",
    "1 while the circuit breaker of an upstream is open in at least one live worker, else 0",
    ["upstream"],
    multiprocess_mode="livemax",
)
# Deauthorizations TikTok sent that Keycloak has not taken yet (retried with back-off): read from the
# queue by each retry pass, so every live worker reports the same count and the maximum is the truth.
DEAUTHORIZATIONS_PENDING = Gauge(
    "bridge_deauthorizations_pending",
    "TikTok deauthorizations waiting for another attempt against Keycloak",
    multiprocess_mode="livemax",
)
KEYCLOAK_ADMIN_API_REFUSED = Counter(
    "bridge_keycloak_admin_api_refused_total",
    "Admin API calls Keycloak refused the service account's token for, even after renewing it: a "
    "configuration problem (unauthorized: on Keycloak 26.8.2+ the admin client lacks the kc-admin-api "
    "client scope; run `bridge keycloak apply`)",
    ["reason"],
)
# Ending writes (revocations, tombstones, identities' end times) that too few Redis replicas confirmed
# within BRIDGE_REDIS_WAIT_TIMEOUT: answered 503 so that the caller retries (SECURITY.md, "Data loss").
CACHE_WRITES_UNCONFIRMED = Counter(
    "bridge_cache_writes_unconfirmed_total",
    "Durable cache writes that too few Redis replicas confirmed in time (the request was answered 503)",
    ["operation"],
)

# Token vault answers (docs/vault.md): the client label is an authenticated confidential client's id (or
# "unauthenticated"), so its values are bounded by BRIDGE_CONFIDENTIAL_CLIENTS.
VAULT_ANSWERS = Counter(
    "bridge_vault_answers_total",
    "Token vault answers by client and outcome (issued, refreshed, or the OAuth error code)",
    ["client", "outcome"],
)


# The labelled children of UPSTREAM_SECONDS, by labels: `labels()` validates and locks on every call,
# and `timed` runs four times per exchange. Bounded: upstream, operation and result are named in code.
_UPSTREAM_TIMERS: dict[tuple[str, str, str], Histogram] = {}
# The same for counters counted on every request (`count`); their labels are named in code too.
_COUNTER_CHILDREN: dict[tuple[int, tuple[str, ...]], Counter] = {}


def count(counter: Counter, *labels: str) -> None:
    """`counter.labels(*labels).inc()`, without validating and locking the labels on every request."""
    key = (id(counter), labels)  # the counters are module-level: their ids live as long as the process
    child = _COUNTER_CHILDREN.get(key)
    if child is None:
        child = _COUNTER_CHILDREN[key] = counter.labels(*labels)
    child.inc()


@contextmanager
def timed(upstream: str, operation: str) -> Iterator[dict[str, str]]:
    """Time a call; the caller sets outcome["result"] (default "error" if it raised)."""
    outcome = {"result": "error"}
    started = time.perf_counter()
    try:
        yield outcome
    finally:
        elapsed = time.perf_counter() - started
        key = (upstream, operation, outcome["result"])
        timer = _UPSTREAM_TIMERS.get(key)
        if timer is None:
            timer = _UPSTREAM_TIMERS[key] = UPSTREAM_SECONDS.labels(*key)
        timer.observe(elapsed)


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric (of every worker, in multiprocess mode) and its media type."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
