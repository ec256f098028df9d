"""TikTok's deauthorization webhook end to end: the emulator delivers a signed `authorization.removed`
to `bridge serve`, which disables the Keycloak user and forgets the cached profile."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import httpx2

from tests.conftest import start_bridge_process
from tests.e2e.test_served_bridge import exchange
from tests.integration.test_exchange import linked_users

if TYPE_CHECKING:
    from devstack.threaded import ThreadedServer
    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import Stack


def test_emulated_tiktok_delivery_disables_the_user_and_drops_the_cache(
    stack: Stack, emulator: TikTokEmulator, tiktok_server: ThreadedServer, flushed_redis: None
) -> None:
    process, base = start_bridge_process(
        stack, BRIDGE_TIKTOK_API_URL=tiktok_server.url, BRIDGE_DEAUTHORIZATION_POLICY="disable"
    )
    emulator.webhook_url = f"{base}/webhooks/tiktok"
    user = emulator.create_user()
    token = emulator.issue_access_token(user.open_id)
    try:
        assert exchange(base, token).status_code == 200  # provisions the user, caches the profile
        [account] = linked_users(stack, user.open_id)
        assert account["enabled"]

        # The user removes the app in TikTok: the emulator delivers the signed event to the bridge.
        control = f"{tiktok_server.url}/_emulator/users/{user.open_id}/deauthorize"
        delivered = httpx2.post(control, json={"reason": 1}, timeout=30).json()
        assert delivered == {"deliveries": [200]}

        deadline = time.monotonic() + 10  # the policy is applied after the 200, in the background
        while linked_users(stack, user.open_id)[0]["enabled"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not linked_users(stack, user.open_id)[0]["enabled"]

        # The cached profile was dropped, so the revoked token is checked with TikTok again and refused.
        revoked = exchange(base, token)
        assert revoked.status_code == 400
        assert "invalid or expired" in revoked.json()["error_description"]
        # Signing in with TikTok again does not bring the account back: it stays disabled.
        again = exchange(base, emulator.issue_access_token(user.open_id))
        assert again.status_code == 400
        assert again.json()["error_description"] == "The account is disabled."
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert '"outcome": "disabled"' in stderr.decode()


def test_emulator_redelivers_until_it_gets_a_200(
    emulator: TikTokEmulator, tiktok_server: ThreadedServer
) -> None:
    """A receiver that does not answer 200 gets the event again, each time freshly signed."""
    emulator.webhook_url = f"{tiktok_server.url}/nowhere"  # the emulator itself answers 404 there
    user = emulator.create_user()
    control = f"{tiktok_server.url}/_emulator/users/{user.open_id}/deauthorize"
    assert httpx2.post(control, json={}, timeout=30).json() == {"deliveries": [404, 404, 404]}
