"""The TikTok client against TikTok's documented wire formats, served by respx."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
import httpx2
import pytest

from bridge.domain.errors import (
    IdentityRefused,
    Refused,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from bridge.domain.model import ExternalIdentity
from bridge.providers.tiktok.client import TikTokClient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import respx

API = "https://open.tiktokapis.com"
USER_INFO = f"{API}/v2/user/info/"
LOG_ID = "20250204154510E36A6DB2990C3D8E8E96"


def envelope(user: dict[str, Any] | None = None, code: str = "ok", message: str = "") -> dict[str, Any]:
    return {
        "data": {"user": user} if user is not None else {},
        "error": {"code": code, "message": message, "log_id": LOG_ID},
    }


@pytest.fixture
async def client() -> AsyncIterator[TikTokClient]:
    async with httpx2.AsyncClient(timeout=1) as http:
        yield TikTokClient(http, base_url=API, client_key="key", client_secret="secret")


async def test_profile_from_documented_success_body(client: TikTokClient, httpx2_mock: respx.Router) -> None:
    """The documented example answer yields the profile, and only basic fields are asked for."""
    route = httpx2_mock.get(USER_INFO).respond(
        200,
        json=envelope(
            {
                "avatar_url": "https://p19-sign.tiktokcdn-us.com/a.jpeg?x-expires=1\u0026x-signature=s",
                "open_id": "723f24d7-e717-40f8-a2b6-cb8464cd23b4",
                "union_id": "c9c60f44-a68e-4f5d-84dd-ce22faeb0ba1",
                "display_name": "Tik Toker",
            }
        ),
    )

    profile = await client.fetch_profile("act.token")

    assert profile == ExternalIdentity(
        open_id="723f24d7-e717-40f8-a2b6-cb8464cd23b4",
        union_id="c9c60f44-a68e-4f5d-84dd-ce22faeb0ba1",
        display_name="Tik Toker",
        avatar_url="https://p19-sign.tiktokcdn-us.com/a.jpeg?x-expires=1&x-signature=s",
    )
    request = route.calls.last.request
    assert request.headers["authorization"] == "Bearer act.token"
    assert request.url.params["fields"] == "open_id,union_id,avatar_url,display_name"


async def test_profile_scope_adds_username_and_verification(
    client: TikTokClient, httpx2_mock: respx.Router
) -> None:
    """With user.info.profile granted, username and is_verified are requested and read."""
    route = httpx2_mock.get(USER_INFO).respond(
        200, json=envelope({"open_id": "-000abc", "username": "tiktoker", "is_verified": True})
    )
    profile = await client.fetch_profile("act.token", ["user.info.basic", "user.info.profile"])
    assert (profile.username, profile.is_verified, profile.union_id) == ("tiktoker", True, None)
    assert route.calls.last.request.url.params["fields"].endswith(",username,is_verified")


@pytest.mark.httpx2(assert_all_called=False)
async def test_missing_basic_scope_is_refused_before_calling(
    client: TikTokClient, httpx2_mock: respx.Router
) -> None:
    """Without user.info.basic there is nothing to identify the user by, so TikTok is not called."""
    route = httpx2_mock.get(USER_INFO)
    with pytest.raises(IdentityRefused, check=lambda e: e.refused is Refused.SCOPE):
        await client.fetch_profile("act.token", ["user.info.profile"])
    assert not route.called


@pytest.mark.parametrize("status", [401, 200])
async def test_invalid_token_with_either_status(
    client: TikTokClient, httpx2_mock: respx.Router, status: int
) -> None:
    """access_token_invalid is a rejected subject token whether TikTok sends 401 or 200."""
    httpx2_mock.get(USER_INFO).respond(
        status,
        json=envelope(code="access_token_invalid", message="The access token is invalid or not found."),
    )
    with pytest.raises(IdentityRefused, check=lambda e: e.refused is Refused.ACCESS_TOKEN) as caught:
        await client.fetch_profile("act.token")
    assert LOG_ID in caught.value.detail
    assert "act.token" not in caught.value.detail


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, "scope_not_authorized"), (400, "scope_permission_missed"), (200, "scope_not_authorized")],
)
async def test_scope_errors_are_missing_scope(
    client: TikTokClient, httpx2_mock: respx.Router, status: int, code: str
) -> None:
    """Both documented scope errors mean the grant lacks a scope the bridge needs."""
    httpx2_mock.get(USER_INFO).respond(status, json=envelope(code=code))
    with pytest.raises(IdentityRefused, check=lambda e: e.refused is Refused.SCOPE):
        await client.fetch_profile("act.token")


@pytest.mark.parametrize(
    ("status", "body", "retry_after"),
    [
        (429, envelope(code="rate_limit_exceeded"), 60),
        (500, envelope(code="internal_error"), 5),
        (502, None, 5),
        (200, envelope(code="rate_limit_exceeded"), 60),
    ],
)
async def test_outages_are_unavailable_with_retry_hint(
    client: TikTokClient,
    httpx2_mock: respx.Router,
    status: int,
    body: dict[str, Any] | None,
    retry_after: int,
) -> None:
    """Rate limits and server errors are upstream unavailability, with a Retry-After suited to each."""
    if body is None:
        httpx2_mock.get(USER_INFO).respond(status, text="<html>Bad gateway</html>")
    else:
        httpx2_mock.get(USER_INFO).respond(status, json=body)
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.fetch_profile("act.token")
    assert caught.value.retry_after == retry_after


async def test_timeout_is_unavailable(client: TikTokClient, httpx2_mock: respx.Router) -> None:
    """A TikTok that does not answer in time is unavailable, not an error of ours."""
    httpx2_mock.get(USER_INFO).mock(side_effect=httpx2.ReadTimeout("slow"))
    with pytest.raises(UpstreamUnavailable):
        await client.fetch_profile("act.token")


@pytest.mark.parametrize(
    "body",
    [
        envelope({}),
        envelope({"open_id": 12}),
        envelope({"open_id": ""}),
        {"data": {}, "error": {"code": "ok"}},
        {"data": "nope", "error": {"code": "ok"}},
    ],
)
async def test_answers_without_a_user_are_user_not_found(
    client: TikTokClient, httpx2_mock: respx.Router, body: dict[str, Any]
) -> None:
    """A success envelope without a usable open_id means TikTok returned no user."""
    httpx2_mock.get(USER_INFO).respond(200, json=body)
    with pytest.raises(IdentityRefused, check=lambda e: e.refused is Refused.NO_USER):
        await client.fetch_profile("act.token")


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"error": "x"}', b'{"data": {}, "error": {"code": "invalid_params"}}']
)
async def test_malformed_answers_are_protocol_errors(
    client: TikTokClient, httpx2_mock: respx.Router, body: bytes
) -> None:
    """Bodies the bridge cannot interpret are protocol errors, which clients see as server_error."""
    httpx2_mock.get(USER_INFO).respond(400, content=body)
    with pytest.raises(UpstreamProtocolError):
        await client.fetch_profile("act.token")


async def test_enormous_answer_is_cut_off(client: TikTokClient, httpx2_mock: respx.Router) -> None:
    """An answer over the size limit is refused without being buffered whole."""
    httpx2_mock.get(USER_INFO).respond(200, content=b"x" * (2 * 1024 * 1024))
    with pytest.raises(UpstreamProtocolError):
        await client.fetch_profile("act.token")


async def test_wrong_types_in_optional_fields_are_ignored(
    client: TikTokClient, httpx2_mock: respx.Router
) -> None:
    """Optional fields of the wrong type are dropped rather than trusted."""
    httpx2_mock.get(USER_INFO).respond(
        200, json=envelope({"open_id": "-000abc", "union_id": 5, "display_name": ["x"], "is_verified": "yes"})
    )
    profile = await client.fetch_profile("act.token", ["user.info.basic", "user.info.profile"])
    assert profile == ExternalIdentity(open_id="-000abc", union_id=None, display_name=None)


async def test_a_profile_is_dated_from_before_tiktok_was_asked(
    client: TikTokClient, httpx2_mock: respx.Router
) -> None:
    """A profile counts as verified when TikTok was asked, not when its answer was read: an answer given
    just before the user revoked the app must date from before the revocation."""
    answered_at: list[float] = []

    def slow_answer(request: httpx.Request) -> httpx.Response:  # respx speaks httpx's types
        answered_at.append(time.time())
        time.sleep(0.05)  # the answer travels and waits to be read while the revocation lands
        return httpx.Response(200, json=envelope({"open_id": "o-1"}))

    httpx2_mock.get(USER_INFO).mock(side_effect=slow_answer)

    profile = await client.fetch_profile("act.token")

    assert profile.verified_at <= answered_at[0]
