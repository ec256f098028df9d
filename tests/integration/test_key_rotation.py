"""Rotating the bridge's signing key against the real Keycloak, following the runbook in
docs/operations.md, with replicas of adjacent steps side by side and no failed exchange at any point.

The test temporarily replaces the JWKS that the realm's `tiktok` identity provider fetches (the
session's bridge on the issuer's port) and restores it afterwards.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from joserfc.jwk import ECKey

from bridge.keycloak.assertions import load_key
from devstack.threaded import ThreadedServer
from tests.conftest import running_bridge
from tests.integration.test_exchange import verified_claims

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from bridge.settings import Settings
    from devstack.tiktok_emulator import TikTokEmulator
    from tests.conftest import BridgeClient, Stack


@contextlib.contextmanager
def published_jwks(stack: Stack, settings: Settings) -> Iterator[None]:
    """Serve the JWKS of a bridge with `settings` where Keycloak fetches it (the issuer's port)."""
    from bridge.web.app import create_app  # noqa: PLC0415

    port = int(stack.issuer.rsplit(":", 1)[1])
    server = ThreadedServer(create_app(settings), port=port)
    server.start()
    try:
        yield
    finally:
        server.stop()


def clear_keycloak_keys_cache(stack: Stack) -> None:
    """What the operator does after pre-publishing (runbook step 2): Keycloak forgets the keys it
    cached, so its next verification fetches the JWKS that now holds the next key."""
    with stack.admin() as admin:
        response = admin.post("/clear-keys-cache")
        assert response.status_code == 204, response.text


async def exchange_ok(replica: BridgeClient, token: str, stack: Stack, keycloak_user: str | None) -> str:
    response = await replica.exchange(token)
    assert response.status_code == 200, response.text
    subject = str(verified_claims(stack, response.json()["access_token"])["sub"])
    assert keycloak_user in {None, subject}
    return subject


async def published_kids(replica: BridgeClient) -> set[str]:
    """The key ids a replica publishes in its JWKS, the set Keycloak verifies assertions against."""
    response = await replica.http.get("/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    return {str(key["kid"]) for key in response.json()["keys"]}


async def test_signing_key_rotates_without_a_failed_exchange(
    stack: Stack, emulator: TikTokEmulator, tmp_path: Path, flushed_redis: None
) -> None:
    old = stack.signing_key_file
    new = tmp_path / "next.pem"
    new.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))

    def step(signing: Path, *published: Path) -> Settings:
        return stack.settings(
            signing_key_file=signing, published_key_files=published, rate_limit_enabled=False
        )

    old_kid, new_kid = load_key(old).kid, load_key(new).kid
    user = emulator.create_user()
    token = emulator.issue_access_token(user.open_id)
    before, prepublished, switched, retired = step(old), step(old, new), step(new, old), step(new)

    assert stack.jwks_server is not None
    stack.jwks_server.stop()  # the session's JWKS; restored at the end
    try:
        # 1. Every replica publishes the next key; all still sign with the old one. Keycloak has cached
        #    the old key set: replicas of "before" and "prepublished" run side by side.
        with published_jwks(stack, prepublished):
            async for old_replica in running_bridge(before, emulator):
                subject = await exchange_ok(old_replica, token, stack, None)
            async for rolling in running_bridge(prepublished, emulator):
                assert await published_kids(rolling) == {old_kid, new_kid}
                await exchange_ok(rolling, token, stack, subject)
            # 2. The operator clears Keycloak's keys cache, so it learns the next key before it signs.
            clear_keycloak_keys_cache(stack)
            async for rolling in running_bridge(prepublished, emulator):
                await exchange_ok(rolling, token, stack, subject)

        # 3. Replicas switch to the new key one by one, keeping the old one published: both kinds
        #    sign side by side, and neither kind's exchanges fail whichever JWKS Keycloak fetched.
        with published_jwks(stack, switched):
            async for old_replica in running_bridge(prepublished, emulator):
                async for new_replica in running_bridge(switched, emulator):
                    for _ in range(3):
                        await exchange_ok(new_replica, token, stack, subject)
                        await exchange_ok(old_replica, token, stack, subject)

        # 4. Once no replica signs with the old key and its last assertions have expired, it is retired.
        with published_jwks(stack, retired):
            async for new_replica in running_bridge(retired, emulator):
                assert await published_kids(new_replica) == {new_kid}  # the old kid is no longer served
                await exchange_ok(new_replica, token, stack, subject)
                # The retired key is really gone: once Keycloak reloads the JWKS, it refuses it.
                clear_keycloak_keys_cache(stack)
                await exchange_ok(new_replica, token, stack, subject)
            async for stale_replica in running_bridge(before, emulator):
                refused = await stale_replica.exchange(token)
                assert refused.status_code == 500, refused.text  # Keycloak refused our assertion
                assert refused.json()["error"] == "server_error"
    finally:
        from bridge.web.app import create_app  # noqa: PLC0415

        stack.jwks_server = ThreadedServer(
            create_app(stack.settings(redis_url=None)), port=stack.jwks_server.port
        )
        stack.jwks_server.start()
        clear_keycloak_keys_cache(stack)  # so later tests' old-key assertions are checked afresh
