"""A round-robin TCP proxy: the one address in front of the soak's bridge replicas.

What a load balancer does for a rolling deploy, and no more: each new client connection goes to the
next replica; a replica that refuses the connection (stopped, or draining after SIGTERM: it closes its
listening socket) is skipped and the next one tried, so the refusal never reaches the client. Bytes are
copied both ways until either side closes. nginx would do the same (deploy/nginx.conf), but is not
installed on every machine the soak runs on; this needs nothing but Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools

CHUNK = 65536
CONNECT_TIMEOUT = 2.0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            writer.close()


class RoundRobin:
    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self._next = itertools.cycle(range(len(backends)))

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the next replica that accepts one; None when none does."""
        for _ in self.backends:
            port = self.backends[next(self._next)]
            try:
                return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT)
            except (OSError, TimeoutError):
                continue
        return None

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream = await self.connect()
        if upstream is None:
            client_writer.close()
            return
        upstream_reader, upstream_writer = upstream
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))


async def serve(port: int, backends: list[int]) -> None:
    balancer = RoundRobin(backends)
    server = await asyncio.start_server(balancer.handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak.proxy", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", type=int, action="append", required=True, help="a replica's port")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.backend))


if __name__ == "__main__":
    main()
