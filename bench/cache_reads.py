"""The Redis reads of a warm exchange, alone: what one read of the cached user id costs in wall and CPU
time, as a plain GET and as the MGET of the user id and its deauthorization tombstone that the bridge
makes (one round trip, one hash slot). Starts its own redis-server on a free loopback port.

    .venv/bin/python -m bench.cache_reads [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.storage.cache import RedisCache
from bridge.storage.redis_connection import RedisConnection
from devstack.redis import RedisServer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

USER_KEY, REVOKED_KEY = "tkb:v1:user:{tiktok:o}", "tkb:v1:revoked:{tiktok:o}"


async def measure(url: str, calls: int) -> None:
    redis = RedisConnection.from_url(url, timeout=2)
    cache = RedisCache(redis.client)
    await cache.set(USER_KEY, b'{"id":"00000000-0000-0000-0000-000000000000","fp":"f"}', 600)
    cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("GET user id", lambda: cache.get(USER_KEY)),
        ("MGET user id + tombstone", lambda: cache.get_many(USER_KEY, REVOKED_KEY)),
    ]
    try:
        for label, read in cases:
            for _ in range(calls // 10):  # warm the connection and the interpreter
                await read()
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(calls):
                await read()
            wall_us = 1e6 * (time.perf_counter() - wall) / calls
            cpu_us = 1e6 * (time.process_time() - cpu) / calls
            print(f"{label:<26} {wall_us:7.1f} us wall {cpu_us:7.1f} us CPU per read")
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        server = RedisServer(work_dir=Path(work))
        server.start()
        try:
            asyncio.run(measure(server.url, args.calls))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
