"""The TikTok emulator as the soak runs it: its own process, TikTok's current token lifetimes.

`python -m devstack.tiktok_emulator` keeps the emulator's defaults (24-hour access tokens, one-year
refresh tokens); TikTok now issues 2-hour access tokens and 180-day refresh tokens that rotate on every
use (the emulator retires a refresh token when it answers it: strict rotation). A process of its own, so
its work never competes with the load generator for one interpreter lock.
"""

from __future__ import annotations

import argparse

import uvicorn

from devstack.tiktok_emulator import TikTokEmulator

ACCESS_TOKEN_TTL = 2 * 3600
REFRESH_TOKEN_TTL = 180 * 86400
# TikTok retries a webhook for 72 hours; here often enough to outlast a fault window of the soak.
WEBHOOK_ATTEMPTS = 30
WEBHOOK_RETRY_DELAY = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak.emulator", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-key", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", required=True)
    parser.add_argument("--webhook-url", required=True)
    args = parser.parse_args()
    emulator = TikTokEmulator(
        client_key=args.client_key,
        client_secret=args.client_secret,
        redirect_uris=(args.redirect_uri,),
        access_token_ttl=ACCESS_TOKEN_TTL,
        refresh_token_ttl=REFRESH_TOKEN_TTL,
        # TikTok's quota is per app and scales with it; the soak's load comes from one app at a rate a
        # large deployment sees, so the quota (emulated and the bridge's own) is lifted, as in bench/.
        user_info_rate_limit_per_minute=10**9,
        webhook_url=args.webhook_url,
        webhook_attempts=WEBHOOK_ATTEMPTS,
        webhook_retry_delay=WEBHOOK_RETRY_DELAY,
    )
    uvicorn.run(emulator.app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
