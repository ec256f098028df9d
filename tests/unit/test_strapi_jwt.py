"""The Strapi jwt exchange: only a jwt Strapi signed (HS256, unexpired) for an imported, enabled, linked
user is signed in; every other is refused with RFC 8693's invalid_request and no token."""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING, Any, cast

import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey
from pydantic import SecretStr

from bridge.domain.errors import AccountDisabled, InvalidRequest
from bridge.domain.model import Exchanged, ExternalIdentity, FederatedLink, IssuedToken, KeycloakUser
from bridge.providers.strapi.jwt import StrapiJwtVerifier
from bridge.providers.strapi.tokens import TOKEN_TYPE_STRAPI_JWT
from bridge.services.strapi_jwt import StrapiJwtExchange
from bridge.web.app import create_app
from tests.unit.fakes import make_policy

if TYPE_CHECKING:
    from bridge.services.exchange import ExchangeService, SessionOrder
    from bridge.settings import Settings

SECRET = "c3RyYXBpLWp3dC1zZWNyZXQtZm9yLXRlc3Rz"
KEY = OctKey.import_key(SECRET.encode())


def strapi_jwt(claims: dict[str, Any], *, key: Any = KEY, alg: str = "HS256") -> str:  # noqa: ANN401
    return jwt.encode({"alg": alg, "typ": "JWT"}, claims, key, algorithms=[alg])


def valid(strapi_id: int = 4) -> str:
    now = int(time.time())
    return strapi_jwt({"id": strapi_id, "iat": now, "exp": now + 30 * 86400})


def unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def tampered() -> str:
    header, _payload, signature = valid(4).split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"id": 5}).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("tampered", tampered()),
        ("expired", strapi_jwt({"id": 4, "iat": 1, "exp": int(time.time()) - 3600})),
        ("alg none", unsigned({"id": 4})),
        ("HS512", strapi_jwt({"id": 4}, alg="HS512")),
        ("RS256", strapi_jwt({"id": 4}, key=RSAKey.generate_key(2048), alg="RS256")),
        ("another secret", strapi_jwt({"id": 4}, key=OctKey.import_key(b"another-secret-of-enough-length"))),
        ("no id", strapi_jwt({"sub": "4"})),
        ("id not a number", strapi_jwt({"id": "4"})),
        ("id a boolean", strapi_jwt({"id": True})),
        ("not a jwt", "garbage"),
    ],
)
def test_the_verifier_refuses_every_jwt_strapi_did_not_sign_or_that_expired(name: str, token: str) -> None:
    """Only HS256 with Strapi's secret, unexpired, with an integer id, gives an id."""
    assert StrapiJwtVerifier(SECRET).strapi_id(token) is None, name


def test_the_verifier_reads_the_id_of_a_valid_jwt() -> None:
    """A jwt as Strapi issues it gives its `id`; one without `exp` too (Strapi's expiresIn switched off)."""
    verifier = StrapiJwtVerifier(SECRET)
    assert verifier.strapi_id(valid(4)) == 4
    assert verifier.strapi_id(strapi_jwt({"id": 9, "iat": int(time.time())})) == 9


IMPORTED = KeycloakUser(
    id="kc-4",
    username="tiktok_strapi-4",
    enabled=True,
    attributes={"strapi_id": ["4"], "tiktok_union_id": ["u-4"], "tiktok_display_name": ["Alice"]},
)


class FakeAccounts:
    def __init__(self, users: list[KeycloakUser], links: dict[str, list[FederatedLink]]) -> None:
        self.users, self.links = users, links

    async def users_with_attribute(self, name: str, value: str) -> list[KeycloakUser]:
        return [u for u in self.users if value in u.attributes.get(name, [])]

    async def user_links(self, user_id: str) -> list[FederatedLink]:
        return self.links.get(user_id, [])


class FakeService:
    """What the jwt exchange needs of the app's exchange: its policy, and `sign_in` (recorded)."""

    def __init__(self) -> None:
        self.policy = make_policy()
        self.signed_in: list[ExternalIdentity] = []

    async def sign_in(
        self,
        profile: ExternalIdentity,
        scope: tuple[str, ...],
        *,
        audiences: tuple[str, ...] = (),
        session: SessionOrder | None = None,
    ) -> Exchanged:
        self.signed_in.append(profile)
        issued = IssuedToken("kc.token", 300, None, subject="kc-4")
        return Exchanged(issued=issued, user_id="kc-4", profile=profile, created=False)


LINKED = {"kc-4": [FederatedLink("tiktok", "open-4", "alice")]}


async def exchange(
    token: str, users: list[KeycloakUser], links: dict[str, list[FederatedLink]]
) -> FakeService:
    service = FakeService()
    use_case = StrapiJwtExchange(verifier=StrapiJwtVerifier(SECRET), keycloak=FakeAccounts(users, links))
    await use_case.exchange(token, cast("ExchangeService", service), ())
    return service


async def test_an_imported_linked_user_is_signed_in_as_its_tiktok_identity() -> None:
    """The jwt's id finds the imported user; the exchange signs in the TikTok identity it is linked to."""
    service = await exchange(valid(4), [IMPORTED], LINKED)
    assert [(p.open_id, p.union_id, p.display_name) for p in service.signed_in] == [
        ("open-4", "u-4", "Alice")
    ]


@pytest.mark.parametrize(
    ("token", "users", "links", "refusal"),
    [
        (valid(4), [], LINKED, InvalidRequest),
        # A user the bridge made after the move holds a strapi_id too: no Strapi jwt names it.
        (
            valid(4),
            [KeycloakUser("kc-9", "tiktok_abc", enabled=True, attributes={"strapi_id": ["4"]})],
            {},
            InvalidRequest,
        ),
        (
            valid(4),
            [KeycloakUser("kc-4", "tiktok_strapi-4", enabled=False, attributes={"strapi_id": ["4"]})],
            LINKED,
            AccountDisabled,
        ),
        (valid(4), [IMPORTED], {}, InvalidRequest),
        (tampered(), [IMPORTED], LINKED, InvalidRequest),
    ],
    ids=["unknown id", "not imported", "disabled", "never signed in with TikTok", "tampered"],
)
async def test_refusals_sign_nobody_in(
    token: str, users: list[KeycloakUser], links: dict[str, list[FederatedLink]], refusal: type[Exception]
) -> None:
    """Each refusal is invalid_request (RFC 8693 §2.2.2) and no sign-in is attempted."""
    service = FakeService()
    use_case = StrapiJwtExchange(verifier=StrapiJwtVerifier(SECRET), keycloak=FakeAccounts(users, links))
    with pytest.raises(refusal) as raised:
        await use_case.exchange(token, cast("ExchangeService", service), ())
    assert isinstance(raised.value, InvalidRequest)
    assert raised.value.error == "invalid_request"
    assert service.signed_in == []


@pytest.mark.httpx2(assert_all_called=False)
@pytest.mark.parametrize("secret", [None, SECRET])
async def test_the_token_type_is_announced_and_accepted_only_with_the_secret(
    settings: Settings, secret: str | None
) -> None:
    """Without BRIDGE_STRAPI_JWT_SECRET the metadata and OpenAPI omit the type and /token refuses it as
    unsupported; with it, both announce it and a bad jwt is refused as an unacceptable subject_token."""
    app = create_app(settings.model_copy(update={"strapi_jwt_secret": secret and SecretStr(secret)}))
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://bridge.test") as http,
    ):
        metadata = (await http.get("/.well-known/oauth-authorization-server")).json()
        spec = (await http.get("/openapi.json")).text
        response = await http.post(
            "/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": tampered(),
                "subject_token_type": TOKEN_TYPE_STRAPI_JWT,
            },
        )
    announced = TOKEN_TYPE_STRAPI_JWT in metadata["subject_token_types_supported"]
    assert (announced, TOKEN_TYPE_STRAPI_JWT in spec) == (secret is not None, secret is not None)
    assert response.status_code == 400
    assert "access_token" not in response.json()
    assert response.headers["cache-control"] == "no-store"
    expected = (
        "The Strapi jwt is invalid or expired." if secret else "The subject_token_type is not supported."
    )
    assert response.json() == {"error": "invalid_request", "error_description": expected}
