"""`python -m bridge serve` started as a process and driven over HTTP, with real Keycloak and Redis."""

from __future__ import annotations

import signal
import time
from itertools import pairwise
from typing import TYPE_CHECKING

import httpx2
from joserfc import jwt
from joserfc.jwk import KeySet

from bridge.operations.doctor import run_checks
from tests.conftest import _TOKEN_SHAPES, ADMIN_URLS, start_bridge_process
from tests.integration.test_exchange import linked_users

if TYPE_CHECKING:
    from devstack.threaded import ThreadedServer
    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import Stack


def exchange(base: str, token: str) -> httpx2.Response:
    return httpx2.post(
        f"{base}/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        },
        timeout=30,
    )


def test_served_bridge_exchanges_a_token_and_shuts_down_cleanly(
    stack: Stack, emulator: TikTokEmulator, tiktok_server: ThreadedServer, flushed_redis: None
) -> None:
    """The real process serves health, metadata and an exchange, logs no token, and stops on SIGTERM."""
    process, base = start_bridge_process(stack, BRIDGE_TIKTOK_API_URL=tiktok_server.url)
    user = emulator.create_user(display_name="Process Test")
    token = emulator.issue_access_token(user.open_id)
    try:
        metadata = httpx2.get(f"{base}/.well-known/oauth-authorization-server").json()
        assert metadata["token_endpoint"] == f"{stack.issuer}/token"
        admin = ADMIN_URLS[base]
        ready = httpx2.get(f"{admin}/readyz")
        assert ready.json() == {"status": "ready", "checks": {"keycloak": "ok", "cache": "ok"}}
        # The public port answers probes with the verdict only, and has no metrics at all.
        assert httpx2.get(f"{base}/readyz").json() == {"status": "ready"}
        assert httpx2.get(f"{base}/metrics").status_code == 404
        assert httpx2.get(f"{admin}/token").status_code == 404  # nor the admin port the API

        response = exchange(base, token)
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"]
        certs = httpx2.get(f"{stack.keycloak.url}/realms/{stack.realm}/protocol/openid-connect/certs").json()
        claims = jwt.decode(response.json()["access_token"], KeySet.import_key_set(certs)).claims
        assert claims["tiktok_open_id"] == user.open_id

        bad = httpx2.post(f"{base}/token", content=b"{}", headers={"content-type": "application/json"})
        assert bad.status_code == 400
        assert bad.json()["error"] == "invalid_request"
        refused = exchange(base, "act.not-a-token-tiktok-knows-0123456789")
        assert refused.status_code == 400

        # Metrics labels never carry a token, a JWT or a secret (they are scraped by other systems).
        metrics = httpx2.get(f"{admin}/metrics").text
        assert 'bridge_exchanges_total{endpoint="token",outcome="issued"}' in metrics
        for secret in (token, "act.not-a-token", response.json()["access_token"], stack.client_secret):
            assert secret not in metrics
        assert not _TOKEN_SHAPES.search(metrics)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)

    log = stderr.decode()
    # uvicorn re-raises SIGTERM once it has shut down gracefully, so the exit status is -SIGTERM.
    assert process.returncode in {0, -signal.SIGTERM}
    assert "Application shutdown complete." in log
    assert '"msg": "token exchanged"' in log
    assert token not in log
    assert response.json()["access_token"] not in log
    assert stack.client_secret not in log


def test_sigterm_lets_an_in_flight_exchange_finish(
    stack: Stack, emulator: TikTokEmulator, tiktok_server: ThreadedServer, flushed_redis: None
) -> None:
    """SIGTERM during a slow exchange: the exchange still completes with a token, then the process exits."""
    process, base = start_bridge_process(stack, BRIDGE_TIKTOK_API_URL=tiktok_server.url)
    user = emulator.create_user()
    token = emulator.issue_access_token(user.open_id)
    emulator.set_latency(1.5)  # TikTok is slow: the exchange is in flight when the signal arrives
    result: dict[str, httpx2.Response] = {}

    def exchange_in_flight() -> None:
        result["response"] = exchange(base, token)

    import threading  # noqa: PLC0415

    worker = threading.Thread(target=exchange_in_flight)
    worker.start()
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    worker.join(timeout=30)
    _, stderr = process.communicate(timeout=30)

    assert result["response"].status_code == 200, result["response"].text
    assert "Application shutdown complete." in stderr.decode()
    assert len(linked_users(stack, user.open_id)) == 1


async def test_the_admin_listener_answers_the_doctors_checks_and_reruns_them_at_most_once_a_minute(
    stack: Stack, emulator: TikTokEmulator, tiktok_server: ThreadedServer, flushed_redis: None
) -> None:
    """`/readyz?verbose=true` on the admin listener answers every check of `bridge doctor`, passed or
    failed as the doctor judges them (a wrong TikTok secret fails one; the verdict stays ready); asked
    again within the minute it runs no check; the public listener answers the verdict only."""
    wrong_secret = "not-the-tiktok-apps-secret"
    process, base = start_bridge_process(
        stack, BRIDGE_TIKTOK_API_URL=tiktok_server.url, BRIDGE_TIKTOK_CLIENT_SECRET=wrong_secret
    )
    verbose = "/readyz?verbose=true"
    # TikTok app tokens asked for, before and after each call: the doctor's first check asks for one.
    asked = [emulator.calls["token"]]
    try:
        public = httpx2.get(f"{base}{verbose}", timeout=30)
        asked.append(emulator.calls["token"])
        first = httpx2.get(f"{ADMIN_URLS[base]}{verbose}", timeout=60)
        asked.append(emulator.calls["token"])
        second = httpx2.get(f"{ADMIN_URLS[base]}{verbose}", timeout=60)
        asked.append(emulator.calls["token"])
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    doctor = await run_checks(
        stack.settings(tiktok_api_url=tiktok_server.url, tiktok_client_secret=wrong_secret)
    )

    assert (public.status_code, public.json()) == (200, {"status": "ready"})
    assert (first.status_code, first.headers["cache-control"]) == (200, "no-store")
    assert first.json() == {
        "status": "ready",
        "checks": {"keycloak": "ok", "cache": "ok"},
        "deployment": [check.as_dict() for check in doctor],
        "deployment_ok": False,
    }
    assert [check.name for check in doctor if not check.ok] == ["tiktok credentials"]
    assert len(doctor) > 1  # the checks after TikTok's ran, and passed
    # The public call ran no check, the first admin call ran the doctor, the second (within the minute)
    # answered what the first found.
    assert [after - before for before, after in pairwise(asked)] == [0, 1, 0]
    assert second.json() == first.json()
