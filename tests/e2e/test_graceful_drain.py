"""A rolling deploy stops replicas with SIGTERM: every request already in flight is answered, new
connections are refused at the socket (the load balancer's cue to try another replica), and the process
exits within its drain deadline. Real process, real Keycloak and Redis, TikTok slowed by the emulator."""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx2
import pytest

from tests.conftest import start_bridge_process
from tests.e2e.test_served_bridge import exchange

if TYPE_CHECKING:
    from devstack.threaded import ThreadedServer
    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import Stack

TIKTOK_LATENCY = 3.0
IN_FLIGHT = 8


def accepts_connections(base: str) -> bool:
    parts = urlsplit(base)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_answers_what_is_in_flight_and_refuses_new_connections(
    stack: Stack,
    emulator: TikTokEmulator,
    tiktok_server: ThreadedServer,
    flushed_redis: None,
    workers: int,
) -> None:
    """Exchanges waiting on a slow TikTok when SIGTERM lands all get their token; new connections are
    refused, none is answered 5xx, and the process ends by itself well within its 20-second deadline."""
    process, base = start_bridge_process(
        stack, args=("--workers", str(workers)), BRIDGE_TIKTOK_API_URL=tiktok_server.url
    )
    users = [emulator.create_user(display_name=f"Drain {n}") for n in range(IN_FLIGHT)]
    # Returning users: their accounts exist, so what is in flight at SIGTERM is TikTok's slow answer
    # and Keycloak's grant, the path of nearly every exchange.
    for user in users:
        assert exchange(base, emulator.issue_access_token(user.open_id)).status_code == 200
    tokens = [emulator.issue_access_token(user.open_id) for user in users]
    answers: list[httpx2.Response | Exception] = []
    emulator.set_latency(TIKTOK_LATENCY)

    def send(token: str) -> None:
        try:
            answers.append(exchange(base, token))
        except httpx2.HTTPError as exc:
            answers.append(exc)

    try:
        threads = [threading.Thread(target=send, args=(token,)) for token in tokens]
        for thread in threads:
            thread.start()
        time.sleep(TIKTOK_LATENCY / 2)  # every request has reached TikTok and waits for it
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while accepts_connections(base) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not accepts_connections(base), "a draining process must stop accepting connections"
        for thread in threads:
            thread.join(timeout=30)
        process.wait(timeout=25)
        stopped_after = time.monotonic() - signalled
    finally:
        emulator.set_latency(0)
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=30)

    assert len(answers) == IN_FLIGHT
    failures = [answer for answer in answers if isinstance(answer, Exception) or answer.status_code != 200]
    assert failures == [], (
        [str(a) if isinstance(a, Exception) else a.text for a in failures],
        stderr.decode()[-4000:],
    )
    assert all(isinstance(a, httpx2.Response) and a.json()["access_token"] for a in answers)
    # In flight for about another second of TikTok latency, then gone: not held to the deadline.
    assert stopped_after < 15, stopped_after
    assert process.returncode in {0, -signal.SIGTERM}
    assert b"Traceback" not in stderr
