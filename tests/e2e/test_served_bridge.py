"""`python -m bridge serve` started as a process and driven over HTTP, with real Keycloak and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from devstack.keycloak import free_port
from devstack.threaded import ThreadedServer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import Stack


@pytest.fixture
def tiktok_server(emulator: TikTokEmulator) -> Iterator[ThreadedServer]:
    server = ThreadedServer(emulator.app)
    server.start()
    yield server
    server.stop()


def test_served_bridge_exchanges_a_token_and_shuts_down_cleanly(
    stack: Stack, emulator: TikTokEmulator, tiktok_server: ThreadedServer, flushed_redis: None
) -> None:
    """The real process serves health, metadata and an exchange, logs no token, and stops on SIGTERM."""
    port = free_port()
    env = {**os.environ, **stack.env(BRIDGE_TIKTOK_API_URL=tiktok_server.url)}
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    user = emulator.create_user(display_name="Process Test")
    token = emulator.issue_access_token(user.open_id)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx2.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert process.poll() is None, "bridge exited during start-up"
            assert time.monotonic() < deadline, "bridge did not start"
            time.sleep(0.1)

        metadata = httpx2.get(f"{base}/.well-known/oauth-authorization-server").json()
        assert metadata["token_endpoint"] == f"{stack.issuer}/token"
        ready = httpx2.get(f"{base}/readyz")
        assert ready.json() == {"status": "ready", "checks": {"keycloak": "ok", "cache": "ok"}}

        response = httpx2.post(
            f"{base}/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": token,
                "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"]
        certs = httpx2.get(f"{stack.keycloak.url}/realms/{stack.realm}/protocol/openid-connect/certs").json()
        claims = jwt.decode(response.json()["access_token"], KeySet.import_key_set(certs)).claims
        assert claims["tiktok_open_id"] == user.open_id

        bad = httpx2.post(f"{base}/token", content=b"{}", headers={"content-type": "application/json"})
        assert bad.status_code == 400
        assert bad.json()["error"] == "invalid_request"
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
