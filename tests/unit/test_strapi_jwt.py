"""The Strapi jwt exchange: only a jwt Strapi signed (HS256, unexpired) for an imported, enabled user is
signed in (by its TikTok identity when it has one, else by the Strapi jwt provider, linked once); every
other is refused with RFC 8693's invalid_request and no token."""

from __future__ import annotations

import base64
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey
from pydantic import SecretStr

from bridge.domain.errors import AccountDisabled, InvalidRequest, TemporarilyUnavailable
from bridge.domain.model import FederatedLink, Held, NewSession, SessionGrant
from bridge.providers.strapi.jwt import StrapiJwtVerifier
from bridge.providers.strapi.tokens import TOKEN_TYPE_STRAPI_JWT
from bridge.services.exchange import SessionOrder
from bridge.services.strapi_jwt import AccountLocks, StrapiJwtExchange
from bridge.storage.cache import MemoryCache
from bridge.web.app import create_app
from tests.unit.fakes import FakeKeycloak, FakeTikTok, make_policy, use_cases

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from contextlib import AbstractAsyncContextManager

    from bridge.domain.model import Exchanged, IdentityCheck, IdentityState
    from bridge.services.ports import SessionStarter
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


def imported_realm(*, enabled: bool = True, links: tuple[tuple[str, str], ...] = ()) -> FakeKeycloak:
    """A realm holding Strapi user 4 as `bridge strapi import` made it, linked to (alias, id) `links`."""
    keycloak = FakeKeycloak()
    keycloak.users["kc-4"] = {
        "id": "kc-4",
        "username": "tiktok_strapi-4",
        "enabled": enabled,
        "attributes": {"strapi_id": ["4"], "tiktok_union_id": ["u-4"], "tiktok_display_name": ["Alice"]},
        "groups": ["/tiktok-users"],
        "federatedIdentities": [
            {"identityProvider": alias, "userId": user_id, "userName": user_id} for alias, user_id in links
        ],
    }
    return keycloak


@dataclass
class RecordingStarter:
    """`SessionStarter`: the sessions asked for."""

    started: list[NewSession] = field(default_factory=list)

    async def start(self, new: NewSession) -> SessionGrant:
        self.started.append(new)
        return SessionGrant(f"tkb1.session-{len(self.started)}", 3600)

    async def start_if_current(self, new: NewSession, check: IdentityCheck) -> SessionGrant | IdentityState:
        return await self.start(new)


_starter: SessionStarter = RecordingStarter()  # the fake fits the port


@dataclass
class FakeLocks:
    """`AccountLocks` over process memory, saying how each lock was taken."""

    held: Held = Held.AT_ONCE
    taken: list[str] = field(default_factory=list)

    @asynccontextmanager
    async def _lock(self, open_id: str) -> AsyncIterator[Held]:
        self.taken.append(open_id)
        yield self.held

    def lock(self, open_id: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Held]:
        return self._lock(open_id)


_locks: AccountLocks = FakeLocks()  # the fake fits the port


async def exchange(
    token: str,
    keycloak: FakeKeycloak,
    *,
    starter: RecordingStarter | None = None,
    locks: FakeLocks | None = None,
    strapi_jwt: bool = True,
) -> Exchanged:
    """The jwt exchanged through the default app's use cases over `keycloak`, a session asked for."""
    cases = use_cases(
        tiktok=FakeTikTok(),
        keycloak=keycloak,
        cache=MemoryCache(),
        policy=make_policy(),
        strapi_jwt=strapi_jwt,
    )
    use_case = StrapiJwtExchange(
        verifier=StrapiJwtVerifier(SECRET),
        keycloak=keycloak,
        locks=locks or FakeLocks(),
        idp_alias="tiktok-strapi-jwt",
    )
    order = SessionOrder(starter or RecordingStarter(), jkt="jkt-1", client_id="ios")
    return await use_case.exchange(token, cases.exchange, ("openid",), session=order)


def strapi_jwt_links(keycloak: FakeKeycloak) -> list[dict[str, str]]:
    """User 4's links to providers other than TikTok's, as the fake realm keeps them."""
    return [
        link for link in keycloak.users["kc-4"]["federatedIdentities"] if link["identityProvider"] != "tiktok"
    ]


async def test_an_imported_linked_user_is_signed_in_as_its_tiktok_identity() -> None:
    """The jwt's id finds the imported user; the exchange signs in the TikTok identity it is linked to,
    by the TikTok provider, and starts a TikTok session; no Strapi jwt link is made."""
    keycloak = imported_realm(links=(("tiktok", "open-4"),))
    starter = RecordingStarter()
    exchanged = await exchange(valid(4), keycloak, starter=starter)
    assert (exchanged.user_id, exchanged.issued.access_token) == ("kc-4", "kc-token-for:kc-4")
    assert [(n.open_id, n.by_account) for n in starter.started] == [("open-4", False)]
    assert strapi_jwt_links(keycloak) == []


async def test_an_imported_user_who_never_signed_in_with_tiktok_is_linked_once_and_minted_for() -> None:
    """No TikTok link: the account is linked to the Strapi jwt provider by its own id (under the lock),
    minted for by that provider, and given a Strapi jwt session for the app that asked; a second
    exchange reuses the link, taking no lock."""
    keycloak, starter, locks = imported_realm(), RecordingStarter(), FakeLocks()
    first = await exchange(valid(4), keycloak, starter=starter, locks=locks)
    second = await exchange(valid(4), keycloak, starter=starter, locks=locks)
    assert strapi_jwt_links(keycloak) == [
        {"identityProvider": "tiktok-strapi-jwt", "userId": "kc-4", "userName": "tiktok_strapi-4"}
    ]
    assert keycloak.calls["link"] == 1
    assert locks.taken == ["kc-4"]
    for exchanged in (first, second):
        assert (exchanged.user_id, exchanged.issued.access_token) == ("kc-4", "kc-token-for:kc-4")
        assert exchanged.session is not None
    assert (
        starter.started
        == [
            NewSession(
                user_id="kc-4",
                open_id="kc-4",
                scope=("openid",),
                jkt="jkt-1",
                client_id="ios",
                by_account=True,
            )
        ]
        * 2
    )


@dataclass
class RacingKeycloak(FakeKeycloak):
    """Another replica links the account between the exchange's first read of its links and its lock."""

    reads: int = 0

    async def user_links(self, user_id: str) -> list[FederatedLink]:
        self.reads += 1
        if self.reads == 1:
            return []
        return await super().user_links(user_id)


@pytest.mark.parametrize("held", [Held.AFTER_WAITING, Held.AT_ONCE])
async def test_a_link_another_replica_made_meanwhile_is_used_not_made_again(held: Held) -> None:
    """Taken after waiting, the lock's holder before may have linked the account: read, not linked
    again; taken at once (that replica's lock had expired), Keycloak's 409 for a link that names the
    account is as good as ours. Either way the account is minted for by the Strapi jwt provider."""
    keycloak = RacingKeycloak(users=imported_realm(links=(("tiktok-strapi-jwt", "kc-4"),)).users)
    exchanged = await exchange(valid(4), keycloak, locks=FakeLocks(held))
    assert exchanged.issued.access_token == "kc-token-for:kc-4"
    assert keycloak.calls["link"] == (0 if held is Held.AFTER_WAITING else 1)
    assert len(strapi_jwt_links(keycloak)) == 1


@pytest.mark.parametrize(
    ("keycloak", "locks", "refusal"),
    [
        # An administrator's link to the Strapi jwt provider naming something else: not overwritten.
        (imported_realm(links=(("tiktok-strapi-jwt", "someone-else"),)), FakeLocks(), InvalidRequest),
        (imported_realm(), FakeLocks(Held.NOT_TAKEN), TemporarilyUnavailable),
    ],
    ids=["linked to another subject", "lock not taken"],
)
async def test_an_account_that_cannot_be_linked_is_not_minted_for(
    keycloak: FakeKeycloak, locks: FakeLocks, refusal: type[Exception]
) -> None:
    """No link made or changed, no token asked of Keycloak, no session."""
    starter = RecordingStarter()
    before = strapi_jwt_links(keycloak)
    with pytest.raises(refusal):
        await exchange(valid(4), keycloak, starter=starter, locks=locks)
    assert (keycloak.calls["token"], starter.started) == (0, [])
    assert strapi_jwt_links(keycloak) == before


@pytest.mark.parametrize(
    ("token", "keycloak", "refusal"),
    [
        (valid(5), imported_realm(), InvalidRequest),
        # A user the bridge made after the move holds a strapi_id too: no Strapi jwt names it.
        (
            valid(4),
            FakeKeycloak(
                users={
                    "kc-9": {
                        "id": "kc-9",
                        "username": "tiktok_abc",
                        "enabled": True,
                        "attributes": {"strapi_id": ["4"]},
                    }
                }
            ),
            InvalidRequest,
        ),
        (valid(4), imported_realm(enabled=False, links=(("tiktok", "open-4"),)), AccountDisabled),
        (valid(4), imported_realm(enabled=False), AccountDisabled),
        (tampered(), imported_realm(links=(("tiktok", "open-4"),)), InvalidRequest),
    ],
    ids=["unknown id", "not imported", "disabled", "disabled, never signed in with TikTok", "tampered"],
)
async def test_refusals_sign_nobody_in(token: str, keycloak: FakeKeycloak, refusal: type[Exception]) -> None:
    """Each refusal is invalid_request (RFC 8693 §2.2.2): no link made, no token asked, no session."""
    starter = RecordingStarter()
    links = {user_id: list(rep.get("federatedIdentities", [])) for user_id, rep in keycloak.users.items()}
    with pytest.raises(refusal) as raised:
        await exchange(token, keycloak, starter=starter)
    assert isinstance(raised.value, InvalidRequest)
    assert raised.value.error == "invalid_request"
    assert (keycloak.calls["token"], keycloak.calls["link"], starter.started) == (0, 0, [])
    assert {user_id: rep.get("federatedIdentities", []) for user_id, rep in keycloak.users.items()} == links


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
