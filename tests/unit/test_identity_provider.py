"""TikTok behind the `IdentityProvider` port: the adapter raises upstream errors, the use case maps them
to the client's errors (RFC 8693 §2.2.2), keeping TikTok's own words for the Strapi-compatible endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import httpx2
import pytest

from bridge.domain.errors import (
    AccessTokenRejected,
    IdentityRefused,
    MissingScope,
    Refused,
    SubjectTokenRejected,
    TemporarilyUnavailable,
    UpstreamUnavailable,
    UserNotFound,
    refusal_for,
    to_oauth_error,
)
from bridge.domain.model import ExternalIdentity, ProviderGrant
from bridge.providers.tiktok.client import SCOPE_BASIC, SCOPE_PROFILE, TikTokClient
from bridge.services.identity import IdentityService
from bridge.storage.cache import MemoryCache
from bridge.storage.profiles import ProfileStore
from tests.unit.fakes import FakeTikTok, make_policy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import respx

    from bridge.services.ports import IdentityProvider

API = "https://open.tiktokapis.com"
USER_INFO = f"{API}/v2/user/info/"
TOKEN = f"{API}/v2/oauth/token/"


def envelope(user: dict[str, Any] | None = None, code: str = "ok", message: str = "") -> dict[str, Any]:
    return {
        "data": {"user": user} if user else {},
        "error": {"code": code, "message": message, "log_id": "1"},
    }


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=1) as client:
        yield client


def tiktok(http: httpx2.AsyncClient, **options: Any) -> TikTokClient:  # noqa: ANN401 - constructor options
    return TikTokClient(http, base_url=API, client_key="key", client_secret="secret", **options)


_port: IdentityProvider = tiktok(httpx2.AsyncClient())  # the adapter fits the port (mypy checks)


@pytest.mark.parametrize(
    ("refused", "kind", "description"),
    [
        (Refused.ACCESS_TOKEN, AccessTokenRejected, "The TikTok access token is invalid or expired."),
        (Refused.CODE, SubjectTokenRejected, "The subject_token was rejected by TikTok."),
        (Refused.SCOPE, MissingScope, "The TikTok grant lacks the user.info.basic scope."),
        (Refused.NO_USER, UserNotFound, "TikTok returned no user for the subject_token."),
    ],
)
def test_each_refusal_maps_to_its_client_error(refused: Refused, kind: type, description: str) -> None:
    """What the provider refused decides the client's error; without the adapter's own sentence the
    error's fixed description is answered, and the provider's message and status travel along."""
    error = refusal_for(IdentityRefused("tiktok", refused, detail="d", message="TikTok's words", status=401))
    assert type(error) is kind
    assert error.body() == {"error": "invalid_request", "error_description": description}
    assert (error.provider_message, error.provider_status, error.detail) == (
        "TikTok's words",
        401,
        "tiktok: d",
    )


def test_a_refusal_that_slips_past_a_use_case_is_still_a_client_error() -> None:
    """`to_oauth_error` answers an unmapped refusal as the use case would, never as a 500."""
    error = to_oauth_error(IdentityRefused("tiktok", Refused.CODE, description="Said no.", detail="d"))
    assert (type(error), error.status_code, error.description) == (SubjectTokenRejected, 400, "Said no.")


async def test_the_adapter_refuses_with_an_upstream_error_and_tiktoks_words(
    http: httpx2.AsyncClient, httpx2_mock: respx.Router
) -> None:
    """A refused code comes out of the adapter as `IdentityRefused` (not a client error), with the
    client-safe sentence for it and TikTok's own description."""
    httpx2_mock.post(TOKEN).respond(
        400, json={"error": "invalid_grant", "error_description": "Code expired."}
    )
    with pytest.raises(IdentityRefused) as caught:
        await tiktok(http).redeem_code("c", code_verifier="v" * 43, redirect_uri="https://app.example/cb")
    assert caught.value.refused is Refused.CODE
    assert caught.value.description == "The TikTok authorization code is invalid, expired or already used."
    assert caught.value.message == "Code expired."


async def test_a_redeemed_grant_without_the_basic_scope_is_refused(
    http: httpx2.AsyncClient, httpx2_mock: respx.Router
) -> None:
    """TikTok's rule: no user.info.basic, no profile to read; the adapter refuses the grant itself."""
    httpx2_mock.post(TOKEN).respond(
        200, json={"access_token": "act.x", "open_id": "-000a", "scope": "video.list"}
    )
    with pytest.raises(IdentityRefused) as caught:
        await tiktok(http).redeem_code("c", code_verifier="v" * 43, redirect_uri="https://app.example/cb")
    assert caught.value.refused is Refused.SCOPE
    assert caught.value.description == "The user did not grant the user.info.basic scope."


async def test_a_token_with_fewer_scopes_is_read_with_the_basic_fields(
    http: httpx2.AsyncClient, httpx2_mock: respx.Router
) -> None:
    """Asked with the app's scopes, a token granted only the basic one is read again with basic fields."""
    route = httpx2_mock.get(USER_INFO)
    route.side_effect = [
        httpx.Response(401, json=envelope(code="scope_not_authorized")),
        httpx.Response(200, json=envelope({"open_id": "-000a"})),
    ]
    client = tiktok(http, scopes=(SCOPE_BASIC, SCOPE_PROFILE))
    profile = await client.verify_access_token("act.token")
    assert profile.open_id == "-000a"
    asked = [call.request.url.params["fields"] for call in route.calls]
    assert asked == [
        "open_id,union_id,avatar_url,display_name,username,is_verified",
        "open_id,union_id,avatar_url,display_name",
    ]


def test_the_access_token_prefix_is_the_adapters_shape_check(http: httpx2.AsyncClient) -> None:
    """Only a token with TikTok's prefix is plausible; an empty prefix accepts every token."""
    assert tiktok(http, access_token_prefix="act.").plausible("act.x")
    assert not tiktok(http, access_token_prefix="act.").plausible("eyJ.x")
    assert tiktok(http).plausible("eyJ.x")


class DownTikTok(FakeTikTok):
    async def fetch_profile(self, access_token: str, scopes: Any = ()) -> ExternalIdentity:  # noqa: ANN401
        raise UpstreamUnavailable("tiktok", "down", retry_after=42)


async def test_the_use_case_answers_an_outage_naming_the_provider() -> None:
    """The adapter's `UpstreamUnavailable` reaches the caller as 503 "TikTok is unavailable", with the
    adapter's retry hint."""
    identity = IdentityService(
        provider=DownTikTok(),
        profiles=ProfileStore.from_policy(MemoryCache(), make_policy()),
        policy=make_policy(),
    )
    with pytest.raises(TemporarilyUnavailable) as caught:
        await identity.verify_access_token("act.token")
    assert caught.value.body()["error_description"] == "TikTok is unavailable; retry later."
    assert caught.value.retry_after == 42


async def test_the_use_case_answers_a_refused_code_in_the_adapters_words() -> None:
    """A code the provider refuses is the client's invalid_request, in the adapter's sentence."""
    provider = FakeTikTok()
    identity = IdentityService(
        provider=provider,
        profiles=ProfileStore.from_policy(MemoryCache(), make_policy()),
        policy=make_policy(redirect_uris=("https://app.example/cb",)),
    )
    with pytest.raises(SubjectTokenRejected) as caught:
        await identity.verify_code("nope", "v" * 43, "https://app.example/cb")
    assert caught.value.description == "The TikTok authorization code is invalid, expired or already used."
    assert isinstance(caught.value.__cause__, IdentityRefused)


async def test_a_grant_reads_the_profile_with_its_own_scopes(
    http: httpx2.AsyncClient, httpx2_mock: respx.Router
) -> None:
    """The identity behind a redeemed code is read with the scopes TikTok granted it, not the app's."""
    route = httpx2_mock.get(USER_INFO).respond(200, json=envelope({"open_id": "-000a"}))
    grant = ProviderGrant(
        access_token="act.c", open_id="-000a", scopes=frozenset({SCOPE_BASIC, SCOPE_PROFILE}), expires_in=1
    )
    profile = await tiktok(http, scopes=(SCOPE_BASIC,)).read_profile(grant)
    assert profile.open_id == "-000a"
    assert route.calls.last.request.url.params["fields"].endswith(",username,is_verified")
    assert route.calls.last.request.headers["authorization"] == "Bearer act.c"
