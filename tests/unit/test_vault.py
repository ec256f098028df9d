"""The token vault: its store (sealed, keyed with the identity's hash tag, kept as long as the refresh
token lives), its use case over fakes (every refusal, one refresh for many concurrent requests, a
refused refresh forgets), its request parsing and its HTTP surface (client authentication, metadata)."""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx2
import pytest
from pydantic import SecretStr, ValidationError

from bridge.domain.errors import (
    AccountDisabled,
    GrantEnded,
    IdentityRefused,
    InvalidRequest,
    InvalidScope,
    InvalidToken,
    NothingHeld,
    Refused,
    SubjectNotAccepted,
    UpstreamUnavailable,
    VaultNotAllowed,
)
from bridge.domain.model import HeldGrant, ProviderGrant, VerifiedBearer
from bridge.protocol.rfc8693 import parse_stored_token_request, stored_token_response
from bridge.providers.tiktok.tokens import TOKEN_TYPE_TIKTOK_ACCESS_TOKEN
from bridge.services.vault import VaultPolicy, VaultService
from bridge.storage import keys
from bridge.storage.cache import MemoryCache
from bridge.storage.sealing import Sealer, new_key
from bridge.storage.vault import GrantStore
from bridge.web.app import create_app
from tests.conftest import Clock
from tests.unit.fakes import FakeKeycloak

if TYPE_CHECKING:
    from bridge.services import ports
    from bridge.settings import Settings

OPEN_ID = "-000vault"
CODE_TYPE = "urn:tiktok-keycloak-bridge:params:oauth:token-type:tiktok-authorization-code"
HOUR = 3600.0
DAY = 86400.0


@dataclass
class FakeBearer:
    """Realm access tokens by value: the subject and azp each stands for; anything else is refused."""

    tokens: dict[str, VerifiedBearer] = field(default_factory=dict)

    async def verify(self, token: str) -> VerifiedBearer:
        if token not in self.tokens:
            raise InvalidToken(detail="unknown test token")
        return self.tokens[token]


@dataclass
class ScriptedRefresh:
    """TikTok's refresh with strict rotation: each refresh token works once; counts the calls."""

    clock: Clock
    live: set[str] = field(default_factory=set)
    calls: int = 0
    outage: bool = False
    delay: float = 0.05
    issued: int = 0

    def grant(self, scopes: frozenset[str] = frozenset({"user.info.basic", "video.list"})) -> ProviderGrant:
        """A new grant, as a code or a refresh gives it: numbered access and refresh tokens."""
        self.issued += 1
        refresh = f"rft.{self.issued}"
        self.live.add(refresh)
        return ProviderGrant(
            access_token=f"act.{self.issued}",
            open_id=OPEN_ID,
            scopes=scopes,
            expires_in=7200,
            refresh_token=refresh,
            refresh_expires_in=int(180 * DAY),
        )

    async def refresh(self, refresh_token: str) -> ProviderGrant:
        self.calls += 1
        await asyncio.sleep(self.delay)  # a real round trip: others arrive meanwhile
        if self.outage:
            raise UpstreamUnavailable("tiktok", "down")
        if refresh_token not in self.live:
            raise IdentityRefused("tiktok", Refused.CODE, detail="refresh token invalid")
        self.live.discard(refresh_token)
        return self.grant()

    async def revoke(self, access_token: str) -> None:
        raise AssertionError("the vault never revokes")


_refresh: ports.ProviderGrants = ScriptedRefresh(Clock())
_store: ports.GrantVault = GrantStore(
    MemoryCache(), Sealer.from_keys([new_key()]), idp_alias="tiktok", clock=Clock()
)


@dataclass
class Vault:
    service: VaultService
    store: GrantStore
    cache: MemoryCache
    keycloak: FakeKeycloak
    tiktok: ScriptedRefresh
    clock: Clock
    user_id: str


@pytest.fixture
async def vault() -> Vault:
    clock = Clock()
    cache = MemoryCache()
    store = GrantStore(cache, Sealer.from_keys([new_key()]), idp_alias="tiktok", clock=clock)
    keycloak = FakeKeycloak()
    user_id = await keycloak.create_user(
        {
            "username": "tiktok_vault",
            "enabled": True,
            "federatedIdentities": [{"identityProvider": "tiktok", "userId": OPEN_ID, "userName": "v"}],
        }
    )
    tiktok = ScriptedRefresh(clock)
    bearer = FakeBearer(
        {
            "kc.app": VerifiedBearer(subject=user_id, client_id="mobile-app"),
            "kc.other": VerifiedBearer(subject=user_id, client_id="other-app"),
            "kc.gone": VerifiedBearer(subject="no-such-user", client_id="mobile-app"),
        }
    )
    service = VaultService(
        store=store,
        bearer=bearer,
        keycloak=keycloak,
        provider=tiktok,
        policy=VaultPolicy(
            idp_alias="tiktok",
            clients=frozenset({"backend", "narrow"}),
            subject_clients={"backend": frozenset({"mobile-app"})},
            scopes={"narrow": frozenset({"user.info.basic"})},
        ),
        clock=clock,
    )
    return Vault(service, store, cache, keycloak, tiktok, clock, user_id)


async def test_a_kept_grant_is_handed_out_with_the_time_it_has_left(vault: Vault) -> None:
    """A code's grant kept for the user is answered as is, expires_in counting down, no refresh."""
    assert await vault.service.keep(vault.user_id, vault.tiktok.grant())
    vault.clock.now += 600

    handed = await vault.service.hand_out("backend", "kc.app", ("video.list",))

    assert (handed.access_token, handed.expires_in, handed.scopes) == (
        "act.1",
        6600,
        ("user.info.basic", "video.list"),
    )
    assert (handed.user_id, handed.refreshed, vault.tiktok.calls) == (vault.user_id, False, 0)


async def test_twenty_concurrent_requests_at_expiry_make_one_refresh(vault: Vault) -> None:
    """At the access token's expiry, 20 concurrent requests cost TikTok one refresh; all get its token,
    and the rotated refresh token is what the store keeps."""
    await vault.service.keep(vault.user_id, vault.tiktok.grant())
    vault.clock.now += 7200

    handed = await asyncio.gather(*(vault.service.hand_out("backend", "kc.app", ()) for _ in range(20)))

    assert vault.tiktok.calls == 1
    assert {h.access_token for h in handed} == {"act.2"}
    assert sum(h.refreshed for h in handed) == 1
    kept = await vault.store.read(OPEN_ID)
    assert kept is not None
    assert (kept.refresh_token, kept.access_expires_at) == ("rft.2", vault.clock.now + 7200)
    assert vault.tiktok.live == {"rft.2"}


async def test_a_refresh_tiktok_refuses_forgets_the_grant(vault: Vault) -> None:
    """TikTok refusing the refresh (the user revoked the app) ends the grant: GrantEnded, then nothing."""
    await vault.service.keep(vault.user_id, vault.tiktok.grant())
    vault.tiktok.live.clear()
    vault.clock.now += 7200

    with pytest.raises(GrantEnded) as ended:
        await vault.service.hand_out("backend", "kc.app", ())
    assert ended.value.error == "invalid_request"
    assert "sign in with TikTok" in ended.value.description
    assert await vault.store.read(OPEN_ID) is None
    with pytest.raises(NothingHeld):
        await vault.service.hand_out("backend", "kc.app", ())


async def test_an_outage_during_the_refresh_keeps_the_grant(vault: Vault) -> None:
    """TikTok unreachable: the request fails (503 upstream), the grant stays for the next attempt."""
    await vault.service.keep(vault.user_id, vault.tiktok.grant())
    vault.tiktok.outage = True
    vault.clock.now += 7200

    with pytest.raises(UpstreamUnavailable):
        await vault.service.hand_out("backend", "kc.app", ())

    vault.tiktok.outage = False
    assert (await vault.service.hand_out("backend", "kc.app", ())).access_token == "act.2"


@pytest.mark.parametrize(
    ("client", "token", "scope", "error"),
    [
        ("stranger", "kc.app", (), VaultNotAllowed),
        ("backend", "kc.tampered", (), SubjectNotAccepted),
        ("backend", "kc.other", (), SubjectNotAccepted),  # an azp this backend may not present
        ("backend", "kc.gone", (), SubjectNotAccepted),
        ("narrow", "kc.other", (), InvalidScope),  # the grant carries video.list, narrow may not get it
        ("backend", "kc.app", ("video.publish",), InvalidScope),  # not granted
    ],
)
async def test_refusals(vault: Vault, client: str, token: str, scope: tuple[str, ...], error: type) -> None:
    """Each refusal is its own error, with no token, and the grant stays kept."""
    await vault.service.keep(vault.user_id, vault.tiktok.grant())
    with pytest.raises(error):
        await vault.service.hand_out(client, token, scope)
    assert await vault.store.read(OPEN_ID) is not None


async def test_a_user_who_never_granted_a_code_is_told_to_sign_in_with_one(vault: Vault) -> None:
    """Nothing kept: invalid_request, and the description says what to do."""
    with pytest.raises(NothingHeld) as refused:
        await vault.service.hand_out("backend", "kc.app", ())
    assert refused.value.error == "invalid_request"
    assert "authorization code" in refused.value.description


async def test_a_disabled_user_is_refused_and_the_grant_forgotten(vault: Vault) -> None:
    """Disabled in Keycloak: refused, and the grant is gone even once the user is enabled again."""
    await vault.service.keep(vault.user_id, vault.tiktok.grant())
    vault.keycloak.users[vault.user_id]["enabled"] = False
    with pytest.raises(AccountDisabled):
        await vault.service.hand_out("backend", "kc.app", ())
    vault.keycloak.users[vault.user_id]["enabled"] = True
    with pytest.raises(NothingHeld):
        await vault.service.hand_out("backend", "kc.app", ())


async def test_a_grant_kept_for_another_user_is_not_inherited(vault: Vault) -> None:
    """The identity now linked to this user was granted for another: nothing handed, grant forgotten."""
    await vault.service.keep("someone-else", vault.tiktok.grant())
    with pytest.raises(NothingHeld):
        await vault.service.hand_out("backend", "kc.app", ())
    assert await vault.store.read(OPEN_ID) is None


async def test_an_unlinked_user_has_nothing(vault: Vault) -> None:
    """A user without a TikTok link: nothing held, whatever the store has."""
    await vault.service.keep(vault.user_id, vault.tiktok.grant())
    await vault.keycloak.remove_link(vault.user_id, "tiktok")
    with pytest.raises(NothingHeld):
        await vault.service.hand_out("backend", "kc.app", ())


async def test_a_grant_without_a_refresh_lifetime_is_not_kept(vault: Vault) -> None:
    """TikTok did not say how long its refresh token lives: the vault does not guess, and keeps nothing."""
    grant = vault.tiktok.grant()
    unknown = ProviderGrant(grant.access_token, OPEN_ID, grant.scopes, 7200, grant.refresh_token, None)
    assert not await vault.service.keep(vault.user_id, unknown)
    assert await vault.store.read(OPEN_ID) is None


async def test_the_store_seals_the_grant_under_the_identity_tag_for_the_refresh_lifetime(
    vault: Vault,
) -> None:
    """At rest: no token in the bytes, the key in the identity's slot, kept as long as the refresh token."""
    await vault.service.keep(vault.user_id, vault.tiktok.grant())
    key = keys.vault_grant("tiktok", OPEN_ID)
    raw = await vault.cache.get(key)
    assert raw is not None
    assert b"act.1" not in raw
    assert b"rft.1" not in raw
    tag = keys.linked_user("tiktok", OPEN_ID).split(":", 3)[-1]
    assert key.endswith(tag)
    assert keys.vault_lock("tiktok", OPEN_ID).endswith(tag)
    expires_at, _value = vault.cache._entries[key]  # the TTL the store gave
    assert 180 * DAY - 5 < expires_at - time.monotonic() <= 180 * DAY + 5


async def test_a_grant_sealed_with_a_dropped_key_reads_as_nothing(vault: Vault) -> None:
    """Sealed with a key no longer configured: nothing held (the user signs in again), never a crash."""
    other = GrantStore(vault.cache, Sealer.from_keys([new_key()]), idp_alias="tiktok", clock=vault.clock)
    await vault.service.keep(vault.user_id, vault.tiktok.grant())
    assert await other.read(OPEN_ID) is None


def test_a_held_grant_never_shows_its_tokens_in_a_repr() -> None:
    """repr (what a log line or traceback prints) leaves both tokens out."""
    held = HeldGrant(OPEN_ID, "u", "act.secret", "rft.secret", ("user.info.basic",), 1.0, 1.0, 2.0, 0.0)
    assert "secret" not in repr(held)


# ------------------------------------------------------------------------------ request parsing

VAULT_FORM = {
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "subject_token": "eyJ.kc.token",
    "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
    "requested_token_type": TOKEN_TYPE_TIKTOK_ACCESS_TOKEN,
}


def test_a_vault_request_parses_with_its_scope() -> None:
    """The vault's exchange: subject, requested type and scope read; the repr holds no token."""
    parsed = parse_stored_token_request({**VAULT_FORM, "scope": "video.list"}, TOKEN_TYPE_TIKTOK_ACCESS_TOKEN)
    assert (parsed.subject_token, parsed.scope) == ("eyJ.kc.token", ("video.list",))
    assert "kc.token" not in repr(parsed)


@pytest.mark.parametrize(
    "extra",
    [
        {"subject_token_type": CODE_TYPE},
        {"audience": "orders"},
        {"resource": "https://orders.example"},
        {"code_verifier": "v" * 43},
        {"actor_token": "x", "actor_token_type": "urn:ietf:params:oauth:token-type:access_token"},
        {"subject_token": ""},
    ],
)
def test_a_vault_request_refuses_what_does_not_belong(extra: dict[str, str]) -> None:
    """Another subject type, a target, PKCE parameters, delegation or no subject: invalid_request."""
    with pytest.raises(InvalidRequest):
        parse_stored_token_request({**VAULT_FORM, **extra}, TOKEN_TYPE_TIKTOK_ACCESS_TOKEN)


def test_the_vault_answer_is_the_rfc8693_body() -> None:
    """§2.2.1: the token, its type, Bearer, seconds left and its scopes space-separated."""
    assert stored_token_response("act.x", TOKEN_TYPE_TIKTOK_ACCESS_TOKEN, 60, ("a", "b")) == {
        "access_token": "act.x",
        "issued_token_type": TOKEN_TYPE_TIKTOK_ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "a b",
    }


# ------------------------------------------------------------------------------ HTTP surface


def _vault_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "public_client_ids": ("mobile",),
            "confidential_clients": SecretStr("backend=b-secret,other=o-secret"),
            "vault_client_ids": ("backend",),
        }
    )


async def _post(
    settings: Settings, form: dict[str, str], headers: dict[str, str] | None = None
) -> httpx2.Response:
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://bridge.test") as http,
    ):
        return await http.post("/token", data=form, headers=headers or {})


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


@pytest.mark.parametrize(
    ("form", "headers"),
    [
        ({}, {}),  # no client at all
        ({"client_id": "mobile"}, {}),  # a public client
        ({}, {"Authorization": "Basic " + base64.b64encode(b"backend:wrong").decode()}),
    ],
)
async def test_the_vault_needs_an_authenticated_confidential_client(
    settings: Settings, form: dict[str, str], headers: dict[str, str]
) -> None:
    """No client authentication, a public client or a wrong secret: 401 invalid_client, no token."""
    response = await _post(_vault_settings(settings), {**VAULT_FORM, **form}, headers)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["cache-control"] == "no-store"


async def test_a_confidential_client_outside_the_vault_is_unauthorized(settings: Settings) -> None:
    """Authenticated, but not a vault client: 400 unauthorized_client before the subject is looked at."""
    response = await _post(_vault_settings(settings), VAULT_FORM, _basic("other", "o-secret"))
    assert (response.status_code, response.json()) == (
        400,
        {
            "error": "unauthorized_client",
            "error_description": "This client may not receive TikTok access tokens.",
        },
    )


async def test_without_the_vault_the_requested_type_is_unsupported(settings: Settings) -> None:
    """Vault off: the TikTok token type is an unsupported requested_token_type, like any unknown one."""
    response = await _post(settings, VAULT_FORM)
    assert response.status_code == 400
    assert response.json()["error_description"] == "The requested_token_type is not supported."


async def test_metadata_and_openapi_advertise_the_vault_only_when_configured(settings: Settings) -> None:
    """RFC 8414 metadata and the OpenAPI document name the TikTok token type only with the vault on."""
    for configured, expected in ((settings, False), (_vault_settings(settings), True)):
        app = create_app(configured)
        async with (
            app.router.lifespan_context(app),
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://b.test") as http,
        ):
            metadata = (await http.get("/.well-known/oauth-authorization-server")).json()
            spec = (await http.get("/openapi.json")).text
        assert (TOKEN_TYPE_TIKTOK_ACCESS_TOKEN in metadata["requested_token_types_supported"]) is expected
        assert (TOKEN_TYPE_TIKTOK_ACCESS_TOKEN in spec) is expected


def test_vault_settings_must_name_confidential_vault_clients(settings: Settings) -> None:
    """A vault client without a secret, or an option for a client outside the vault, is refused."""
    base = settings.model_dump()
    with pytest.raises(ValidationError, match="not in confidential_clients"):
        type(settings).model_validate({**base, "vault_client_ids": ("backend",)})
    with pytest.raises(ValidationError, match="not in vault_client_ids"):
        type(settings).model_validate(
            {
                **base,
                "confidential_clients": SecretStr("backend=s,other=t"),
                "vault_client_ids": ("backend",),
                "vault_scopes": ("other=video.list",),
            }
        )
