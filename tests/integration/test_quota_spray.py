"""Under a spray of made-up TikTok tokens the bridge keeps signing real users in (an outside attack test's
finding; SECURITY.md, "Found and fixed under attack"): TikTok's user-info quota is spent deliberately, with a
share kept for requests that are likely real. Real Keycloak and Redis; the emulator models TikTok's per-app
quota and its 429."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import TYPE_CHECKING

import httpx2

from bridge.web.app import create_app
from tests.conftest import TIKTOK_API, Stack

if TYPE_CHECKING:
    from devstack.tiktok_emulator import TikTokEmulator

QUOTA = 36  # the bridge's share of TIKTOK_QUOTA, kept below it as in production (580 of 600)
TIKTOK_QUOTA = 40  # TikTok's real one is 600 a minute; smaller here so the test stays short
REDIRECT = "https://app.example/callback"
CODE_TYPE = "urn:tiktok-keycloak-bridge:params:oauth:token-type:tiktok-authorization-code"
EXCHANGE = {
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
}


async def test_a_spray_of_made_up_tokens_locks_no_real_user_out(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """300 distinct garbage tokens from 13 addresses spend at most the unproven half of the quota
    (refused 503 past it; TikTok is kept below its limit and never answers 429), while a returning
    address's new token and a code sign-in from a new address both succeed during the spray."""
    emulator.user_info_rate_limit_per_minute = TIKTOK_QUOTA
    settings = stack.settings(
        tiktok_user_info_quota=f"{QUOTA}/minute",
        tiktok_unproven_share=0.5,
        rate_limit_per_ip="10000/minute",
        tiktok_redirect_uris=(REDIRECT,),
    )
    app = create_app(settings, mounts={TIKTOK_API: httpx2.ASGITransport(app=emulator.app)})

    def client_from(address: str) -> httpx2.AsyncClient:
        transport = httpx2.ASGITransport(app=app, client=(address, 40000))
        return httpx2.AsyncClient(transport=transport, base_url="http://bridge.test")

    async with app.router.lifespan_context(app):
        returning, newcomer = client_from("198.51.100.1"), client_from("198.51.100.2")
        sprayers = [client_from(f"203.0.113.{i}") for i in range(1, 14)]
        user = emulator.create_user()
        first = await returning.post(
            "/token", data={**EXCHANGE, "subject_token": emulator.issue_access_token(user.open_id)}
        )
        assert first.status_code == 200, first.text

        async def spray(i: int) -> int:
            garbage = f"act.{secrets.token_urlsafe(40)}!{i:04d}.va"
            response = await sprayers[i % 13].post("/token", data={**EXCHANGE, "subject_token": garbage})
            return response.status_code

        spraying = asyncio.gather(*(spray(i) for i in range(300)))
        # Real users, while the spray runs.
        again = await returning.post(
            "/token", data={**EXCHANGE, "subject_token": emulator.issue_access_token(user.open_id)}
        )
        other = emulator.create_user()
        verifier = secrets.token_urlsafe(48)
        code = emulator.issue_authorization_code(
            other.open_id, redirect_uri=REDIRECT, code_challenge=hashlib.sha256(verifier.encode()).hexdigest()
        )
        by_code = await newcomer.post(
            "/token",
            data={
                **EXCHANGE,
                "subject_token": code,
                "subject_token_type": CODE_TYPE,
                "code_verifier": verifier,
                "redirect_uri": REDIRECT,
            },
        )
        statuses = await spraying
        for client in (returning, newcomer, *sprayers):
            await client.aclose()

    assert again.status_code == 200, again.text
    assert by_code.status_code == 200, by_code.text
    assert set(statuses) <= {400, 503}
    # The unproven half of the quota, counted in Redis, and, should Redis time out under the spray (it
    # does, on one busy event loop), counted again in this process's memory: twice that at the most.
    assert statuses.count(503) >= 300 - 2 * (QUOTA // 2)
    # The first sign-in, the spray's share, the two real users: below what TikTok allows, so no 429.
    assert emulator.calls["user_info"] <= 1 + 2 * (QUOTA // 2) + 2 < TIKTOK_QUOTA


async def test_addresses_whose_tokens_tiktok_keeps_refusing_lose_their_share_of_the_quota(
    stack: Stack, emulator: TikTokEmulator, flushed_redis: None
) -> None:
    """SECURITY.md's spray, with the default settings: 13 addresses each send made-up bare tokens at the
    per-address limit (60 a minute), enough to spend the unproven half of TikTok's quota (290 calls)
    more than twice over. Each address is cut off after 10 refusals in a row (429 with Retry-After, TikTok
    not asked), so TikTok sees at most 130 of them, and 5 of 5 real users from addresses never seen
    before sign in with bare tokens while the spray goes on."""
    settings = stack.settings()
    assert (settings.rate_limit_per_ip, settings.tiktok.user_info_quota) == ("60/minute", "580/minute")
    app = create_app(settings, mounts={TIKTOK_API: httpx2.ASGITransport(app=emulator.app)})

    def client_from(address: str) -> httpx2.AsyncClient:
        transport = httpx2.ASGITransport(app=app, client=(address, 40000))
        return httpx2.AsyncClient(transport=transport, base_url="http://bridge.test")

    sent, enough = [0], asyncio.Event()
    garbage_statuses: list[int] = []
    retry_afters: set[str] = set()

    async def spray(address: str) -> None:
        # One request at a time per address, as fast as it is answered: the per-address limit is
        # what bounds it (the 61st in a minute is a 429 from the per-address rate limit).
        async with client_from(address) as client:
            for i in range(60):
                garbage = f"act.{secrets.token_urlsafe(40)}!{i:04d}.va"
                response = await client.post("/token", data={**EXCHANGE, "subject_token": garbage})
                garbage_statuses.append(response.status_code)
                if response.status_code == 429:
                    retry_afters.add(response.headers["retry-after"])
                sent[0] += 1
                if sent[0] >= 400:
                    enough.set()

    async with app.router.lifespan_context(app):
        spraying = asyncio.gather(*(spray(f"203.0.113.{i}") for i in range(1, 14)))
        # Past 290 made-up tokens, the unproven half would be spent if each reached TikTok.
        await asyncio.wait_for(enough.wait(), timeout=60)
        real: list[httpx2.Response] = []
        for n in range(5):
            user = emulator.create_user()
            async with client_from(f"198.51.100.{10 + n}") as newcomer:
                token = emulator.issue_access_token(user.open_id)
                real.append(await newcomer.post("/token", data={**EXCHANGE, "subject_token": token}))
        await spraying

    assert [response.status_code for response in real] == [200] * 5, [r.text for r in real]
    assert len(garbage_statuses) == 13 * 60
    assert set(garbage_statuses) == {400, 429}
    # Ten refusals per address reached TikTok; every later one was refused before it, with the time
    # left in the address's window (at most an hour) as Retry-After.
    assert garbage_statuses.count(400) <= 13 * 10
    assert emulator.calls["user_info"] <= 13 * 10 + 5
    assert all(0 < int(seconds) <= 3600 for seconds in retry_afters)
