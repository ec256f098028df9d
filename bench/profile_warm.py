"""Profile the bridge's warm path (returning user, cached profile) with pyinstrument.

Runs the app in-process against a real Keycloak and redis-server and the TikTok emulator, makes
`--exchanges` warm exchanges, and prints the profile of the bridge's own frames (`scripts/bench`'s
stack, minus the load generator). Usage: .venv/bin/python bench/profile_warm.py [--exchanges 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx2
from joserfc.jwk import ECKey
from pyinstrument import Profiler

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import CLIENT_ID, CLIENT_SECRET, EXCHANGE, REALM, new_tokens, start_stack
from bridge.settings import Settings
from bridge.web.app import create_app
from devstack.keycloak import reusable_instance_dir


async def drive(settings: Settings, tokens: list[str], exchanges: int) -> None:
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://bridge") as http,
    ):
        for token in tokens:  # warm the caches
            assert (await http.post("/token", data={**EXCHANGE, "subject_token": token})).status_code == 200
        # async_mode "disabled": time spent waiting shows as the event loop's select, the rest is CPU.
        profiler = Profiler(async_mode="disabled", interval=0.0005)
        cpu_started = time.process_time()
        started = time.perf_counter()
        with profiler:
            for i in range(exchanges):
                await http.post("/token", data={**EXCHANGE, "subject_token": tokens[i % len(tokens)]})
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    print(
        f"{exchanges} warm exchanges in {elapsed:.2f} s ({elapsed / exchanges * 1000:.2f} ms each, sequential)"
    )
    print(
        f"CPU of this process (bridge + its in-process client): {cpu / exchanges * 1000:.2f} ms per exchange"
    )
    print(profiler.output_text(unicode=False, color=False, show_all=False, short_mode=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exchanges", type=int, default=2000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="profile-"))
    key_file = work / "signing-key.pem"
    key_file.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    with reusable_instance_dir("bench") as instance_dir:
        stack = start_stack(work, key_file, 1, instance_dir)
        try:
            tokens = [token for _, token in new_tokens(stack.emulator_url, 20)]
            settings = Settings(
                tiktok_client_key="emulated-client-key",
                tiktok_client_secret="emulated-client-secret",
                tiktok_api_url=stack.emulator_url,
                keycloak_url=stack.keycloak.url,
                keycloak_realm=REALM,
                keycloak_client_id=CLIENT_ID,
                keycloak_client_secret=CLIENT_SECRET,
                issuer=stack.bridge_url,  # the issuer Keycloak trusts; its JWKS is served by the stack's bridge
                signing_key_file=key_file,
                redis_url=stack.redis.url,
                rate_limit_enabled=False,
                log_level="WARNING",
            )
            asyncio.run(drive(settings, tokens, args.exchanges))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
