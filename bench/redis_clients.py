"""CPU per Redis command of each maintained asyncio Redis client for Python, against one redis-server.

A warm exchange spends about a fifth of its CPU in its two Redis commands, nearly all of it in the
client's Python, not the wire: this measures whether another client would cost less. Each candidate
sends sequential GETs of a 200-byte value and MGETs of two keys (the warm path's read) over one
connection on uvloop; a plain asyncio stream writing the same RESP bytes is the floor (a yardstick,
not a candidate: the project does not hand-write protocol clients). Rounds rotate the order.

The bridge's client (redis-py) is in the environment; the others are not dependencies. To compare
them, install them into a throwaway environment beside the bridge's packages:

    uv venv /tmp/redis-clients && uv pip install -p /tmp/redis-clients/bin/python -e . coredis valkey-glide
    /tmp/redis-clients/bin/python -m bench.redis_clients [--calls 20000] [--rounds 3]

A candidate that is not installed is listed as such.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack.redis import RedisServer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

VALUE = b"x" * 200


async def _cpu_per_call(op: Callable[[], Awaitable[Any]], calls: int) -> float:
    for _ in range(calls // 10):  # warm the connection and the interpreter
        await op()
    started = time.process_time()
    for _ in range(calls):
        await op()
    return 1e6 * (time.process_time() - started) / calls


async def _redis_py(port: int, calls: int) -> dict[str, float]:
    import redis.asyncio as redis_asyncio  # noqa: PLC0415 - each candidate imported only when measured

    client = redis_asyncio.Redis(port=port)
    try:
        await client.set("a", VALUE)
        return {
            "GET": await _cpu_per_call(lambda: client.get("a"), calls),
            "MGET": await _cpu_per_call(lambda: client.mget("a", "b"), calls),
        }
    finally:
        await client.aclose()


async def _coredis(port: int, calls: int) -> dict[str, float]:
    import coredis  # type: ignore[import-not-found]  # noqa: PLC0415

    client: Any = coredis.Redis(port=port)
    async with client:
        await client.set("a", VALUE)
        return {
            "GET": await _cpu_per_call(lambda: client.get("a"), calls),
            "MGET": await _cpu_per_call(lambda: client.mget(["a", "b"]), calls),
        }


async def _glide(port: int, calls: int) -> dict[str, float]:
    from glide import GlideClient, GlideClientConfiguration, NodeAddress  # type: ignore[import-not-found]  # noqa: PLC0415

    client: Any = await GlideClient.create(GlideClientConfiguration([NodeAddress("127.0.0.1", port)]))
    try:
        await client.set("a", VALUE)
        return {
            "GET": await _cpu_per_call(lambda: client.get("a"), calls),
            "MGET": await _cpu_per_call(lambda: client.mget(["a", "b"]), calls),
        }
    finally:
        await client.close()


async def _raw_stream(port: int, calls: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def get() -> None:
        writer.write(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n")
        await reader.readuntil(b"\r\n")
        await reader.readexactly(len(VALUE) + 2)

    try:
        writer.write(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$%d\r\n%s\r\n" % (len(VALUE), VALUE))
        await reader.readuntil(b"\r\n")
        return {"GET": await _cpu_per_call(get, calls)}
    finally:
        writer.close()


CANDIDATES: dict[str, tuple[str, Callable[[int, int], Coroutine[Any, Any, dict[str, float]]]]] = {
    "redis-py (the bridge's)": ("redis", _redis_py),
    "coredis": ("coredis", _coredis),
    "valkey-glide (Rust core)": ("glide", _glide),
    "raw asyncio stream (floor)": ("asyncio", _raw_stream),
}


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    found = []
    for package in ("redis", "coredis", "valkey-glide", "uvloop"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import uvloop  # noqa: PLC0415 - the bridge's loop where it installs

    present = {name: run for name, (module, run) in CANDIDATES.items() if importlib.util.find_spec(module)}
    samples: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as work:
        server = RedisServer(work_dir=Path(work))
        server.start()
        try:
            names = list(present)
            for round_ in range(args.rounds):
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    for command, cpu in uvloop.run(present[name](server.port, args.calls)).items():
                        samples.setdefault((name, command), []).append(cpu)
        finally:
            server.stop()
    print(f"{_versions()}; {args.rounds} rounds x {args.calls} sequential calls, one connection, uvloop")
    print(f"{'client':<30} {'command':<6} CPU us/call median (spread)")
    for (name, command), values in samples.items():
        print(
            f"{name:<30} {command:<6} {statistics.median(values):7.0f} ({min(values):.0f}-{max(values):.0f})"
        )
    for name in CANDIDATES.keys() - present.keys():
        print(f"{name:<30} not installed")


if __name__ == "__main__":
    main()
