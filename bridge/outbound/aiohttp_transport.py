"""An httpx2 transport over aiohttp: httpx2 stays the client API, aiohttp carries the bytes.

Every outbound call but the JWT grant goes through one `httpx2.AsyncClient` (`Resources.http`): TikTok's
user info and token endpoints, Keycloak's discovery, service-account token and admin API. Its clients
(`TikTokClient`, `KeycloakClient`) keep httpx2's requests, responses, exceptions and test seams
(`mounts`, respx); underneath, aiohttp's connection pool and C HTTP/1.1 parser replace httpcore2's,
which cost about half of httpx2's CPU per call: 1.56 ms per call over httpcore2, 0.77 ms over this
transport on the shared machine, and 0.675 of the bridge's CPU per first sign-in, paired
(bench/README.md, "History").

It behaves as httpx2's own transport does, so that nothing above it can tell:

- Headers go out as httpx2 made them, in its order and case, repeated names included: aiohttp adds
  no User-Agent, Accept, Accept-Encoding or Content-Type of its own (`skip_auto_headers`). One
  difference: aiohttp sends `Content-Length: 0` on a body-less DELETE, where httpx2 sends none.
- Bodies come back as sent (`auto_decompress=False`): httpx2 decodes Content-Encoding itself, and
  decoding here too would decode twice. They stream: a reader may stop early (TikTok's size cap), and
  closing the stream hands the connection back, or closes it if the body was not read to its end.
- No cookie jar (one user's cookies must never ride along on another's call), no redirects followed,
  no status raised: httpx2's client decides all three.
- Timeouts per request, from httpx2's `timeout` extension: `read` is aiohttp's `sock_read` (waiting
  for the answer's head, then each read of its body), `connect` its `sock_connect`, and pool + connect
  its `connect` (getting a connection, pooled or new). aiohttp has no write timeout: its read timer
  starts once the body is written, and the small bodies sent here fit in the socket's buffer, so
  writing them never waits on the peer.
- A connection closed before the answer came: aiohttp sends an idempotent request (GET, PUT, DELETE)
  once more on another connection (RFC 9112 9.3.1: usually a kept-alive connection the server closed
  just then), where httpcore2 raises at once. A POST is never sent twice.
- Proxies: HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY, as httpx2 obeys them, read once per
  origin (httpx2 reads them once per client; aiohttp's `trust_env` would read them, and ~/.netrc, in
  a thread on every request).
- TLS: verified by default against the system's CA store (or SSL_CERT_FILE / SSL_CERT_DIR), as the
  JWT grant's session (`resources.token_session`) does.
- Pool: `httpx2.Limits.max_connections` connections at most, idle ones closed after
  `keepalive_expiry`. aiohttp does not cap the idle ones by number (`max_keepalive_connections`): they
  only age out.

aiohttp's errors become the httpx2 exceptions of the same meaning, carrying the request, so the callers'
mapping is unchanged (a timeout is never repeated, a connection that could not be made may be):

    aiohttp                                       httpx2
    ConnectionTimeoutError, within connect        ConnectTimeout
    ConnectionTimeoutError, past pool + connect   PoolTimeout   (waited for a pooled connection)
    other TimeoutError (SocketTimeoutError)       ReadTimeout
    ClientConnectorError (refused, DNS, TLS,
      proxy unreachable)                          ConnectError
    ClientHttpProxyError (proxy refused CONNECT)  ProxyError
    ServerDisconnectedError, ClientPayloadError,
      ClientResponseError (a malformed answer)    RemoteProtocolError
    ClientConnectionResetError (while sending)    WriteError
    ClientOSError (a connection reset)            ReadError
    NonHttpUrlClientError                         UnsupportedProtocol
    InvalidURL, ValueError (a request aiohttp
      will not send as given)                     LocalProtocolError
    any other ClientError                         TransportError
"""

from __future__ import annotations

import asyncio
import functools
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Final

import aiohttp
import httpx2
import yarl

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator

__all__ = ["AiohttpTransport", "env_proxy"]

# httpx2's own default pool: 100 connections, idle ones closed after 5 s.
_HTTPX2_LIMITS: Final = httpx2.Limits(max_connections=100, max_keepalive_connections=20)
# Headers aiohttp would add when a request lacks them; httpx2 has set the ones it wants already.
_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# Origins whose proxy is remembered: the bridge calls a handful (TikTok, Keycloak); past this many,
# a new origin's proxy is looked up on every call rather than growing the table.
_PROXY_CACHE_SIZE: Final = 64


def env_proxy(url: str) -> str | None:
    """The proxy that HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY name for `url`, if any, as httpx2
    obeys them for its own transport."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


@functools.lru_cache(maxsize=32)
def _client_timeout(pool: float | None, connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for httpx2's (see the module docstring); a client uses a few, made once.

    aiohttp bounds the wait for a pooled connection only together with the connect and name lookup
    that may follow it (`connect`), so that bound is pool + connect, and `sock_connect` bounds the
    connect alone. Without a pool timeout the wait is unbounded, as in httpx2; without a connect
    timeout, the pool timeout bounds the connect too."""
    acquire = None if pool is None else pool + (connect or 0.0)
    return aiohttp.ClientTimeout(total=None, connect=acquire, sock_connect=connect, sock_read=read)


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """httpx2's transport interface over one aiohttp session; one per process, made in the lifespan
    (an aiohttp session belongs to the running event loop) and closed by the client's `aclose`."""

    def __init__(
        self, *, limits: httpx2.Limits = _HTTPX2_LIMITS, verify: ssl.SSLContext | bool = True
    ) -> None:
        connector = aiohttp.TCPConnector(
            limit=limits.max_connections or 0,  # 0: no limit, as None is for httpx2
            keepalive_timeout=limits.keepalive_expiry,
            ssl=verify,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=_AUTO_HEADERS,
            raise_for_status=False,
            trust_env=False,  # proxies: `_proxy_for`
            timeout=aiohttp.ClientTimeout(total=None),  # each request brings its own (`_client_timeout`)
        )
        self._proxies: dict[tuple[str, str], str | None] = {}

    @property
    def closed(self) -> bool:
        return self._session.closed

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts = request.extensions.get("timeout", {})
        pool, connect = timeouts.get("pool"), timeouts.get("connect")
        timeout = _client_timeout(pool, connect, timeouts.get("read"))
        url = yarl.URL(str(request.url), encoded=True)  # httpx2 has encoded it already
        if url.raw_user is not None:
            # httpx2 turned the URL's credentials into an Authorization header already; aiohttp would
            # refuse a request carrying both.
            url = url.with_user(None)
        body = await request.aread()
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw]
        if "transfer-encoding" in request.headers:
            # A body of unknown length, announced as chunked; it has been read whole, so it goes with
            # its length instead (aiohttp would otherwise write it unframed under a chunked header).
            headers = [(name, value) for name, value in headers if name.lower() != "transfer-encoding"]
            headers.append(("Content-Length", str(len(body))))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            answer = await self._session.request(
                request.method,
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                proxy=self._proxy_for(url),
                timeout=timeout,
            )
        except aiohttp.ConnectionTimeoutError as exc:
            # Both deadlines of getting a connection end here (`_client_timeout`). A connect cut off by
            # `sock_connect` ends before pool + connect; reaching that whole takes a wait for a free
            # connection longer than `pool` (or a name lookup that long). The millisecond allows for a
            # timer firing a hair early.
            if timeout.connect is not None and loop.time() - started >= timeout.connect - 0.001:
                raise httpx2.PoolTimeout(f"no free connection within {pool} s", request=request) from exc
            raise httpx2.ConnectTimeout(f"not connected within {connect} s", request=request) from exc
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise _mapped(exc, request) from exc
        return httpx2.Response(
            answer.status,
            headers=answer.raw_headers,
            stream=_ResponseStream(answer, request),
            extensions={
                "http_version": b"HTTP/1.0" if answer.version == aiohttp.HttpVersion10 else b"HTTP/1.1",
                "reason_phrase": (answer.reason or "").encode("latin-1", "replace"),
            },
        )

    def _proxy_for(self, url: yarl.URL) -> str | None:
        key = (url.scheme, url.raw_host or "")
        try:
            return self._proxies[key]
        except KeyError:
            proxy = env_proxy(f"{url.scheme}://{url.raw_host}")
            if len(self._proxies) < _PROXY_CACHE_SIZE:
                self._proxies[key] = proxy
            return proxy

    async def aclose(self) -> None:
        await self._session.close()

    def detach(self) -> None:
        """Drop the session unclosed, without the "unclosed client session" warning: only for a
        transport that never sent a request (a setting refused while the clients were being built)."""
        self._session.detach()


class _ResponseStream(httpx2.AsyncByteStream):
    """An answer's body as aiohttp receives it, chunk by chunk, for httpx2 to decode and read."""

    def __init__(self, answer: aiohttp.ClientResponse, request: httpx2.Request) -> None:
        self._answer = answer
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._answer.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _mapped(exc, self._request) from exc

    async def aclose(self) -> None:
        # Back to the pool once read to the end; closed instead if unread bytes remain on it.
        self._answer.release()
        await self._answer.wait_for_close()


def _mapped(exc: Exception, request: httpx2.Request) -> httpx2.TransportError:
    """The httpx2 exception meaning what `exc` means (the table in the module docstring)."""
    message = str(exc) or type(exc).__name__
    mapped: type[httpx2.TransportError]
    if isinstance(exc, TimeoutError):
        mapped = httpx2.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        mapped = httpx2.ConnectError
    elif isinstance(exc, aiohttp.ClientHttpProxyError):
        mapped = httpx2.ProxyError
    elif isinstance(
        exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError)
    ):
        mapped = httpx2.RemoteProtocolError
    elif isinstance(exc, aiohttp.ClientConnectionResetError):
        mapped = httpx2.WriteError
    elif isinstance(exc, aiohttp.ClientOSError):
        mapped = httpx2.ReadError
    elif isinstance(exc, aiohttp.NonHttpUrlClientError):
        mapped = httpx2.UnsupportedProtocol
    elif isinstance(exc, aiohttp.ClientError) and not isinstance(exc, aiohttp.InvalidURL):
        mapped = httpx2.TransportError
    else:  # InvalidURL or another ValueError: aiohttp refused to send the request as given
        mapped = httpx2.LocalProtocolError
    return mapped(message, request=request)
