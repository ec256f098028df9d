"""Running the app under uvicorn: the settings of `bridge serve`, and one fix to uvicorn's sockets.

With `--workers N` uvicorn binds the listening socket itself as `socket.socket(family=...)`, whose
protocol number is 0; asyncio only sets TCP_NODELAY on sockets whose protocol is IPPROTO_TCP, so every
accepted connection keeps Nagle's algorithm. A response is written as headers, then body: the second
write waits for the client's delayed ACK, and every request took 40 ms more (measured: 44 ms for a 405
with two workers, 0.17 ms with one). Setting TCP_NODELAY per connection restores single-worker latency.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    import asyncio


class NoDelayH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in {socket.AF_INET, socket.AF_INET6}:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def serve(*, host: str, port: int, workers: int, forwarded_allow_ips: str) -> None:
    uvicorn.run(
        "bridge.app:serve_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=NoDelayH11Protocol,
        log_config=None,  # keep our JSON logging
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        timeout_graceful_shutdown=20,
        server_header=False,
    )
