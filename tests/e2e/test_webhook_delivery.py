"""TikTok's deauthorization webhook end to end: the emulator delivers a signed `authorization.removed`
to `bridge serve`, which disables the Keycloak user and refuses profiles cached before the removal."""

from __future__ import annotations

import hashlib
import signal
import time
from typing import TYPE_CHECKING

import httpx2
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from bridge.web.webhook import verify_signature
from devstack.threaded import ThreadedServer
from tests.conftest import CLIENT_KEY, CLIENT_SECRET, start_bridge_process
from tests.e2e.test_served_bridge import exchange
from tests.integration.test_exchange import linked_users

if TYPE_CHECKING:
    from starlette.requests import Request

    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import Stack


def test_emulated_tiktok_delivery_disables_the_user_and_refuses_the_cached_profile(
    stack: Stack, emulator: TikTokEmulator, tiktok_server: ThreadedServer, flushed_redis: None
) -> None:
    """A delivered removal disables the account, and the token's still-cached profile no longer signs in."""
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

        # The token's profile is still cached, but the revocation the bridge recorded for this user
        # refuses any profile verified before it: refused from the cache, without asking TikTok.
        user_info_calls = emulator.calls["user_info"]
        revoked = exchange(base, token)
        assert revoked.status_code == 400
        assert "invalid or expired" in revoked.json()["error_description"]
        assert emulator.calls["user_info"] == user_info_calls
        # Signing in with TikTok again does not bring the account back: it stays disabled.
        again = exchange(base, emulator.issue_access_token(user.open_id))
        assert again.status_code == 400
        assert again.json()["error_description"] == "The account is disabled."
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert '"outcome": "disabled"' in stderr.decode()


def test_emulator_redelivers_the_same_event_signed_anew(
    emulator: TikTokEmulator, tiktok_server: ThreadedServer
) -> None:
    """A receiver not answering 200 gets the byte-identical event again, validly re-signed each time."""
    received: list[tuple[bytes, str | None]] = []

    async def unavailable(request: Request) -> Response:
        received.append((await request.body(), request.headers.get("tiktok-signature")))
        return Response(status_code=503)

    receiver = ThreadedServer(Starlette(routes=[Route("/hook", unavailable, methods=["POST"])]))
    receiver.start()
    emulator.webhook_url = f"{receiver.url}/hook"
    # Attempts spread over more than a second, so an event rebuilt per attempt (a new create_time) or
    # a signature not renewed (the same t) would show.
    emulator.webhook_retry_delay = 0.6
    user = emulator.create_user()
    control = f"{tiktok_server.url}/_emulator/users/{user.open_id}/deauthorize"
    try:
        assert httpx2.post(control, json={}, timeout=30).json() == {"deliveries": [503, 503, 503]}
    finally:
        receiver.stop()

    assert len(received) == 3
    bodies = {body for body, _ in received}
    assert len(bodies) == 1, "a redelivery must carry the very same event"
    assert f'"user_openid": "{user.open_id}"'.encode() in bodies.pop()
    for body, header in received:
        verify_signature(header, body, CLIENT_SECRET, max_age=60)
    timestamps = [dict(part.split("=", 1) for part in str(header).split(","))["t"] for _, header in received]
    assert int(timestamps[-1]) > int(timestamps[0]), "each attempt is signed at its own time"


def test_removing_the_app_voids_the_users_pending_codes_and_tokens(
    emulator: TikTokEmulator, tiktok_server: ThreadedServer
) -> None:
    """Once the user removes the app at TikTok, neither their token nor a code minted earlier works."""
    verifier = "v" * 43
    redirect_uri = "https://app.example/callback"
    user = emulator.create_user()
    token = emulator.issue_access_token(user.open_id)
    challenge = hashlib.sha256(verifier.encode()).hexdigest()
    code = emulator.issue_authorization_code(
        user.open_id, redirect_uri=redirect_uri, code_challenge=challenge
    )
    control = f"{tiktok_server.url}/_emulator/users/{user.open_id}/deauthorize"
    assert httpx2.post(control, json={}, timeout=30).json() == {"deliveries": []}  # no webhook_url

    redeemed = httpx2.post(
        f"{tiktok_server.url}/v2/oauth/token/",
        data={
            "client_key": CLIENT_KEY,
            "client_secret": CLIENT_SECRET,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
        timeout=30,
    ).json()
    assert redeemed.get("error") == "invalid_grant", redeemed
    info = httpx2.get(
        f"{tiktok_server.url}/v2/user/info/",
        params={"fields": "open_id"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert info.json()["error"]["code"] == "access_token_invalid"
