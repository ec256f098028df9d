"""Property-based tests: hostile and arbitrary input to every parser facing the outside world.

Budget: the "default" profile (300 examples per test) runs in the normal test command; a longer one
is `scripts/test --hypothesis-profile=long tests/unit/test_properties.py` (20,000 examples per test).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from typing import Any

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from bridge.domain.errors import (
    BridgeError,
    NoAccessToken,
    OAuthError,
    UpstreamError,
    WebhookSignatureRejected,
)
from bridge.domain.model import ExternalIdentity, IssuedToken, ProviderGrant
from bridge.keycloak.client import parse_grant_answer
from bridge.protocol.rfc6749 import parse_form
from bridge.protocol.rfc8693 import (
    GRANT_TYPE_TOKEN_EXCHANGE,
    TOKEN_TYPE_ACCESS_TOKEN,
    CodeExchange,
    ExchangeRequest,
    parse_exchange_request,
)
from bridge.providers.tiktok.client import parse_token_answer, parse_user_info
from bridge.providers.tiktok.tokens import SUBJECT_TOKEN_TYPES, TOKEN_TYPE_TIKTOK_CODE
from bridge.web.strapi import _access_token
from bridge.web.webhook import _reason, verify_signature

FORM = "application/x-www-form-urlencoded"
NAMES = st.sampled_from(
    [
        "grant_type",
        "subject_token",
        "subject_token_type",
        "requested_token_type",
        "scope",
        "audience",
        "resource",
        "actor_token",
        "code_verifier",
        "redirect_uri",
        "client_id",
        "x",
    ]
)
VALUES = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        [
            "urn:ietf:params:oauth:grant-type:token-exchange",
            TOKEN_TYPE_ACCESS_TOKEN,
            "urn:ietf:params:oauth:token-type:id_token",
            "act.abc!1234.va",
            "a" * 43,
            "https://app.example/cb",
            "",
        ]
    ),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@given(body=st.binary(max_size=2000), content_type=st.one_of(st.none(), st.just(FORM), st.text(max_size=40)))
def test_any_body_is_parsed_or_refused_with_an_oauth_error(body: bytes, content_type: str | None) -> None:
    """Arbitrary bytes and content types never raise anything but an RFC 6749 error."""
    refusal: OAuthError | None = None
    try:
        parse_exchange_request(parse_form(body, content_type), SUBJECT_TOKEN_TYPES)
    except OAuthError as error:
        refusal = error
    if refusal is not None:
        assert refusal.status_code in {400, 401, 413}
        assert refusal.error


# Mostly tokens of the printable characters the parser accepts, sometimes anything at all.
TOKENS = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=300),
    st.text(min_size=1, max_size=300),
)
# Valid requests of both kinds, so that extra parameters are mixed into forms that would otherwise pass:
# random pairs alone almost never make an acceptable request, and the accepted branch would go untested.
VALID_CORES = st.one_of(
    st.builds(
        lambda token: [
            ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
            ("subject_token", token),
            ("subject_token_type", TOKEN_TYPE_ACCESS_TOKEN),
        ],
        TOKENS,
    ),
    st.builds(
        lambda code, verifier: [
            ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
            ("subject_token", code),
            ("subject_token_type", TOKEN_TYPE_TIKTOK_CODE),
            ("code_verifier", verifier),
            ("redirect_uri", "https://app.example/cb"),
        ],
        TOKENS,
        st.from_regex(r"[A-Za-z0-9\-._~]{43,128}", fullmatch=True),
    ),
)


@st.composite
def forms(draw: st.DrawFn) -> list[tuple[str, str]]:
    core = draw(st.one_of(st.just([]), VALID_CORES))
    extra = draw(st.lists(st.tuples(NAMES, VALUES), max_size=3 if core else 12))
    return draw(st.permutations(core + extra))


@given(pairs=forms())
def test_any_parameter_combination_is_parsed_or_refused(pairs: list[tuple[str, str]]) -> None:
    """Well-formed forms with any mix of known, repeated, empty and odd parameters: accepted or refused."""
    from urllib.parse import urlencode  # noqa: PLC0415

    try:
        request = parse_exchange_request(parse_form(urlencode(pairs).encode(), FORM), SUBJECT_TOKEN_TYPES)
    except OAuthError as error:
        event(f"refused: {error.description[:40]}")
        return
    event("accepted")
    # Whatever got through is what the rest of the bridge relies on.
    # The repr (what a log line would show) must not depend on any credential: swapping them all for
    # other values leaves it unchanged. (Searching the repr for the token fails on one-letter tokens.)
    if isinstance(request, CodeExchange):
        assert request.code
        assert request.subject_token_type == TOKEN_TYPE_TIKTOK_CODE
        swapped: ExchangeRequest = replace(
            request, code="other", code_verifier="v" * 43, client_secret="other"
        )
    else:
        assert request.access_token
        assert request.subject_token_type == TOKEN_TYPE_ACCESS_TOKEN
        swapped = replace(request, access_token="other", client_secret="other")
    assert repr(swapped) == repr(request)


def _body(payload: Any) -> bytes:  # noqa: ANN401
    return json.dumps(payload).encode()


@given(
    status=st.sampled_from([200, 400, 401, 403, 404, 429, 500, 502, 503]),
    payload=st.one_of(
        JSON,
        st.fixed_dictionaries({"data": JSON, "error": JSON}),
        st.fixed_dictionaries(
            {
                "data": st.fixed_dictionaries({"user": JSON}),
                "error": st.fixed_dictionaries({"code": st.text(max_size=30)}),
            }
        ),
        st.fixed_dictionaries(
            {
                "data": st.fixed_dictionaries(
                    {
                        "user": st.dictionaries(
                            st.sampled_from(
                                [
                                    "open_id",
                                    "union_id",
                                    "display_name",
                                    "username",
                                    "is_verified",
                                    "avatar_url",
                                ]
                            ),
                            JSON,
                        )
                    }
                ),
                "error": st.just({"code": "ok"}),
            }
        ),
    ),
    garbage=st.booleans(),
)
def test_any_user_info_answer_is_a_profile_or_a_bridge_error(
    status: int,
    payload: Any,  # noqa: ANN401 - arbitrary JSON
    garbage: bool,
) -> None:
    """Truncated, wrongly typed or surprising TikTok answers give a valid profile or an upstream error
    (the adapter never raises a client's error itself)."""
    body = _body(payload)[:-3] if garbage else _body(payload)
    try:
        profile = parse_user_info(status, body)
    except UpstreamError:
        return
    assert isinstance(profile, ExternalIdentity)
    assert isinstance(profile.open_id, str)
    assert profile.open_id
    assert profile.is_verified in {True, False, None}


@given(
    status=st.sampled_from([200, 400, 401, 429, 500, 503]),
    payload=st.one_of(
        JSON,
        st.dictionaries(
            st.sampled_from(
                ["access_token", "open_id", "scope", "expires_in", "error", "error_description", "log_id"]
            ),
            JSON,
        ),
    ),
)
def test_any_token_answer_is_a_grant_or_a_bridge_error(status: int, payload: Any) -> None:  # noqa: ANN401  # noqa: ANN401
    """TikTok token-endpoint answers of any shape give a usable grant or an upstream error."""
    try:
        grant = parse_token_answer(status, _body(payload))
    except UpstreamError:
        return
    assert isinstance(grant, ProviderGrant)
    assert grant.access_token
    assert grant.open_id
    assert all(isinstance(scope, str) for scope in grant.scopes)


@given(
    status=st.sampled_from([200, 201, 400, 401, 403, 404, 429]),
    payload=st.one_of(
        JSON,
        st.dictionaries(
            st.sampled_from(
                [
                    "access_token",
                    "expires_in",
                    "scope",
                    "id_token",
                    "error",
                    "error_description",
                    "token_type",
                ]
            ),
            st.one_of(JSON, st.sampled_from(["invalid_grant", "invalid_scope", "User not found", "a.b.c"])),
        ),
    ),
    garbage=st.booleans(),
)
def test_any_keycloak_grant_answer_is_a_token_or_a_bridge_error(
    status: int,
    payload: Any,  # noqa: ANN401 - arbitrary JSON
    garbage: bool,
) -> None:
    """Keycloak's answers to the JWT grant, of any shape, give an issued token or a bridge error."""
    body = _body(payload)[:-2] if garbage else _body(payload)
    try:
        issued = parse_grant_answer(status, body)
    except BridgeError:
        return
    assert isinstance(issued, IssuedToken)
    assert isinstance(issued.access_token, str)
    assert issued.subject is None or isinstance(issued.subject, str)


@given(body=st.one_of(st.binary(max_size=500), JSON.map(lambda v: json.dumps(v).encode())))
def test_any_strapi_body_gives_a_token_or_the_plugins_refusal(body: bytes) -> None:
    """The Strapi body reader gives a usable token or refuses with "No access token provided.", and
    raises nothing else."""
    try:
        token = _access_token(body)
    except NoAccessToken:
        event("refused")
        return
    assert token.strip() == token
    assert token


@given(size=st.integers(min_value=1, max_value=3_000_000))
@settings(max_examples=20)
def test_enormous_tiktok_answers_are_refused_before_parsing(size: int) -> None:
    """Big but valid answers under the client's size cap still parse (larger ones are cut off before
    parsing: test_tiktok_client.test_enormous_answer_is_cut_off)."""
    user = {"open_id": "-000a", "display_name": "x" * min(size, 200_000)}
    profile = parse_user_info(200, _body({"data": {"user": user}, "error": {"code": "ok"}}))
    assert profile.open_id == "-000a"


@given(content=st.one_of(JSON, st.text(max_size=200), JSON.map(json.dumps)))
def test_webhook_event_content_of_any_shape_is_read_or_ignored(content: Any) -> None:  # noqa: ANN401
    """TikTok's `content` field, whatever its type: a reason or None, never an exception (a number once
    raised TypeError, a 500 found by the contract fuzzing)."""
    reason = _reason(content)
    if reason is not None:
        assert isinstance(content, str)
        assert json.loads(content)["reason"] == reason


LATIN_1 = st.characters(codec="latin-1")  # what Starlette decodes header bytes as
NOW = 1_700_000_000
TIMESTAMPS = st.one_of(
    st.just(str(NOW)),  # fresh, so the signature itself is compared
    st.text(alphabet="0123456789\u00b9\u00b2\u00b3", min_size=1, max_size=12),  # str.isdigit(), not int()
    st.text(alphabet=LATIN_1, max_size=20),
)
HEX_64 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
SIGNATURES = st.one_of(
    HEX_64,
    st.tuples(HEX_64, st.integers(0, 63), LATIN_1).map(lambda h: h[0][: h[1]] + h[2] + h[0][h[1] + 1 :]),
    st.text(alphabet=LATIN_1, max_size=80),
)


@given(t=TIMESTAMPS, s=SIGNATURES, extra=st.text(alphabet=LATIN_1, max_size=30))
def test_any_signature_header_is_accepted_or_refused(t: str, s: str, extra: str) -> None:
    """Any TikTok-Signature header text ("t=\u00b2" and non-ASCII signatures were 500s) is refused with
    WebhookSignatureRejected; it is never an exception of another kind."""
    event("fresh timestamp" if t == str(NOW) else "other timestamp")
    with contextlib.suppress(WebhookSignatureRejected):
        verify_signature(f"t={t},s={s}{extra}", b"{}", "secret", max_age=300, now=NOW)


# ------------------------------------------------------------------------------ the HTTP/1.1 protocol

# Pieces of requests, well-formed and hostile, that arbitrary byte strings are mixed with.
REQUEST_PIECES = st.sampled_from(
    [
        b"POST /token HTTP/1.1\r\n",
        b"GET /healthz HTTP/1.1\r\n",
        b"GET / HTTP/1.0\r\n",
        b"Host: bridge\r\n",
        b"Host: bridge\r\n\r\n",
        b"Host: bridge\r\n\r\nGET /healthz HTTP/1.1\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: 5000\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Connection: Upgrade\r\nUpgrade: h2c\r\n",
        b"Expect: 100-continue\r\n",
        b"X-Big: " + b"a" * 6000 + b"\r\n",
        b" folded\r\n",
        b"\r\n",
        b"\n",
        b"abcde",
        b"0\r\n\r\n",
    ]
)


class _Transport:
    """Stands in for the connection's socket: keeps what is written and whether it was closed."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("192.0.2.1", 1234), "sockname": ("127.0.0.1", 8000)}.get(name, default)


async def _answer_ok(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401 - a bare ASGI app
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _served(chunks: list[bytes]) -> tuple[bytes, bool, int]:
    """What `BridgeHttpProtocol` writes for `chunks` received in turn, whether it closed the connection,
    and the header bytes it holds at the end, with a trivial app behind it."""
    import uvicorn  # noqa: PLC0415 - only these tests build a protocol
    from uvicorn.server import ServerState  # noqa: PLC0415

    from bridge.web.server import BridgeHttpProtocol  # noqa: PLC0415

    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(
            app=_answer_ok, ws="none", log_config=None, proxy_headers=False, lifespan="off"
        )
        config.load()
        protocol = BridgeHttpProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        transport = _Transport()

        async def feed() -> bool:
            protocol.connection_made(transport)  # type: ignore[arg-type]
            for chunk in chunks:
                if transport.closed:
                    break
                protocol.data_received(chunk)
                for _ in range(5):  # let the app answer and the coalesced writes leave
                    await asyncio.sleep(0)
            return transport.closed  # as the server left it, before the client goes away

        closed = loop.run_until_complete(feed())
        held = protocol._header_bytes
        protocol.connection_lost(None)
        return bytes(transport.written), closed, held
    finally:
        loop.close()


@given(
    first=st.sampled_from([b"POST /token HTTP/1.1\r\n", b"GET /healthz HTTP/1.1\r\n", b""]),
    pieces=st.lists(REQUEST_PIECES | st.binary(max_size=24), max_size=14),
    cuts=st.lists(st.integers(min_value=1, max_value=20_000), max_size=6),
)
@example(first=b"GET /healthz HTTP/1.1\r\n", pieces=[b"Host: bridge\r\n\r\n"] * 2, cuts=[5, 30])
@example(first=b"POST /token HTTP/1.1\r\n", pieces=[b"X-Big: " + b"a" * 6000 + b"\r\n"] * 3, cuts=[7000])
@example(
    first=b"POST /token HTTP/1.1\r\n",
    pieces=[b"Host: bridge\r\n", b"Expect: 100-continue\r\n", b"Content-Length: 5\r\n", b"\r\n", b"abcde"],
    cuts=[60],
)
def test_any_bytes_get_http_answers_or_a_json_refusal_never_an_exception(
    first: bytes, pieces: list[bytes], cuts: list[int]
) -> None:
    """Whatever arrives, in whatever pieces: the protocol raises nothing, everything it writes is an
    HTTP/1.1 answer, a refusal is the bridge's JSON error followed by the end of the connection, and no
    more than MAX_HEADER_BYTES of an unfinished header block is held on an open connection."""
    from bridge.web.app import MAX_HEADER_BYTES  # noqa: PLC0415

    stream = first + b"".join(pieces)
    bounds = sorted({c for c in cuts if c < len(stream)})
    chunks = [stream[a:b] for a, b in zip([0, *bounds], [*bounds, len(stream)], strict=True) if b > a]
    written, closed, held = _served(chunks)

    answers = written.split(b"HTTP/1.1 ")
    assert answers[0] == b"", written[:80]
    for answer in answers[1:]:
        status = int(answer[:3])
        event(f"status {status}")
        assert status in {100, 200, 400, 431}, answer[:80]
        if status in {400, 431}:
            # A refusal is the last thing written, and the connection ends with it.
            assert answer is answers[-1]
            assert closed
            head, _, body = answer.partition(b"\r\n\r\n")
            assert b"content-type: application/json" in head
            assert (
                json.loads(body)["error"] in {"invalid_request", "invalid_request_header_fields"}
                or status == 431
            )
    # Past the limit an unfinished header block is refused and the connection closed.
    assert closed or held <= MAX_HEADER_BYTES
