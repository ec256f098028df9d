"""An HTTP/1.1 server on a loopback port, written on asyncio streams, for testing HTTP transports.

It records every request exactly as the bytes arrived (head and body), so a test can compare what two
transports put on the wire, and answers each path with what the test scripted: raw response bytes
(any header, repeated or malformed), in pieces with a pause between them (a streamed body), after a
delay, or not at all (the connection closed). It counts the TCP connections it accepted. An HTTP
library server would normalise exactly what these tests look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from dataclasses import dataclass, field

# What an unscripted path gets.
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


@dataclass(frozen=True)
class Script:
    """The answer to one path: `parts` written in order, after `delay` seconds; `pause` awaited
    between the first part and the rest (a body that is still coming); `drop` closes the connection
    instead of answering, `close` once the parts are written."""

    parts: tuple[bytes, ...] = (OK,)
    delay: float = 0.0
    pause: asyncio.Event | None = None
    drop: bool = False
    close: bool = False


def answer(status: str, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP/1.1 answer with a Content-Length: `answer("201 Created", b"{}", (("X-A", "1"),))`."""
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


@dataclass
class ScriptedUpstream:
    scripts: dict[str, Script] = field(default_factory=dict)
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def heads(self) -> list[bytes]:
        """Each request's head, its Host header made port-independent (two servers compare equal)."""
        return [
            request.replace(f"127.0.0.1:{self.port}".encode(), b"127.0.0.1:PORT") for request in self.requests
        ]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; False once the connection is to be closed."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        self.requests.append(head + await reader.readexactly(length))
        # The path of an origin-form target ("/a?b") or of a proxy's absolute-form one ("http://h/a?b").
        path = urllib.parse.urlsplit(head.split(b" ", 2)[1].decode()).path
        script = self.scripts.get(path, Script())
        if script.delay:
            await asyncio.sleep(script.delay)
        if script.drop:
            return False
        writer.write(script.parts[0])
        await writer.drain()
        if script.pause is not None:
            await script.pause.wait()
        for part in script.parts[1:]:
            writer.write(part)
            await writer.drain()
        return not script.close
