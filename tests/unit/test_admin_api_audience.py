"""Keycloak 26.8.2's Admin API audience (`kc-admin-api`): what apply plans, what the doctor concludes,
and how the runtime answers a refused token, against fakes that behave as a live 26.7.4 did and as the
26.8.2 upgrading guide describes (no 26.8 server could be fetched here)."""

from __future__ import annotations

import base64
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import httpx2
import pytest
from prometheus_client import REGISTRY

from bridge.domain.errors import ServerError, SetupError, UpstreamProtocolError, to_oauth_error
from bridge.keycloak import client as keycloak
from bridge.keycloak.client import KeycloakClient
from bridge.keycloak.realm_setup import Admin, Step, _admin_api_scope_step
from bridge.keycloak.realm_spec import minting_clients, own_client
from bridge.operations import doctor
from bridge.settings import Settings
from bridge.storage.admin_tokens import AdminTokenStore
from bridge.storage.cache import MemoryCache
from devstack.tiktok_emulator import TikTokEmulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    import aiohttp

KEYCLOAK = "http://keycloak.test"
TIKTOK = "http://tiktok.test"
SCOPE_ID = "scope-kc-admin-api"


def settings(**overrides: Any) -> Settings:  # noqa: ANN401
    values: dict[str, Any] = {
        "tiktok_client_key": "key",
        "tiktok_client_secret": "secret",
        "tiktok_api_url": TIKTOK,
        "keycloak_url": KEYCLOAK,
        "keycloak_realm": "app",
        "keycloak_client_id": "tiktok-bridge",
        "keycloak_client_secret": "bridge-secret",
        "keycloak_admin_client_id": "tiktok-bridge-admin",
        "keycloak_admin_client_secret": "admin-secret",
        "issuer": "http://bridge.test",
    }
    values.update(overrides)
    return Settings(**values)


# ------------------------------------------------------------------------------------ apply


class ClientScopes:
    """The realm's clients and the client scopes they hold, as the Admin API shows and changes them.
    Like Keycloak 26.7.4, a scope PUT as default while the client holds it as optional stays optional."""

    def __init__(self, *, scope: bool, held: dict[str, dict[str, str]]) -> None:
        self.scopes = [{"id": SCOPE_ID, "name": "kc-admin-api"}] if scope else []
        self.held = held  # client id -> {scope id: "default" | "optional"}
        self.writes: list[str] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path.removeprefix("/admin/realms/app")
        if path == "/client-scopes":
            return httpx2.Response(200, json=self.scopes)
        if path == "/clients":
            client_id = request.url.params["clientId"]
            return httpx2.Response(200, json=[{"id": client_id}] if client_id in self.held else [])
        _, _, client_id, kind_path, *rest = path.split("/")
        kind = kind_path.removesuffix("-client-scopes")
        holding = self.held[client_id]
        if request.method == "GET":
            return httpx2.Response(200, json=[{"id": s} for s, k in holding.items() if k == kind])
        self.writes.append(f"{request.method} {client_id} {kind}")
        if request.method == "DELETE":
            del holding[rest[0]]
        else:
            holding.setdefault(rest[0], kind)
        return httpx2.Response(204)


def plan_scope(realm: ClientScopes, *, force: bool = False, **overrides: Any) -> Step:  # noqa: ANN401
    configured = settings(**overrides)
    admin = Admin(httpx2.Client(transport=httpx2.MockTransport(realm.handle)), KEYCLOAK, "app", "token")
    minting = [own_client(configured), *minting_clients(configured)]
    return _admin_api_scope_step(admin, configured, minting, force=force)


def test_a_realm_without_the_scope_is_left_as_it_is_and_told_to_rerun_after_upgrading() -> None:
    """Keycloak before 26.8.2 has no `kc-admin-api`: nothing to do, and the line says when there will be."""
    realm = ClientScopes(scope=False, held={"tiktok-bridge-admin": {}, "tiktok-bridge": {}})

    step = plan_scope(realm)

    assert (step.action, step.run) == ("ok", None)
    assert step.details == [
        (
            "this realm has none (Keycloak before 26.8.2): nothing to assign; after upgrading to 26.8.2 or "
            "newer run apply again (the Admin API then refuses tokens without it)"
        )
    ]


def test_the_scope_becomes_a_default_scope_of_the_admin_client_and_then_nothing_is_left_to_do() -> None:
    realm = ClientScopes(scope=True, held={"tiktok-bridge-admin": {}, "tiktok-bridge": {}})

    step = plan_scope(realm)
    assert step.action == "create"
    assert step.details == [
        "make it a default scope of 'tiktok-bridge-admin', whose service account calls the Admin API"
    ]
    assert step.run is not None
    step.run()

    assert realm.writes == ["PUT tiktok-bridge-admin default"]
    assert realm.held == {"tiktok-bridge-admin": {SCOPE_ID: "default"}, "tiktok-bridge": {}}
    assert plan_scope(realm).action == "ok"


def test_an_optional_scope_of_the_admin_client_is_taken_off_before_it_is_made_default() -> None:
    """Keycloak keeps an optional scope optional when it is PUT as default too, and a client-credentials
    token carries default scopes only: the scope is removed, then added as default."""
    realm = ClientScopes(
        scope=True, held={"tiktok-bridge-admin": {SCOPE_ID: "optional"}, "tiktok-bridge": {}}
    )

    step = plan_scope(realm)
    assert step.action == "update"
    assert step.run is not None
    step.run()

    assert realm.writes == ["DELETE tiktok-bridge-admin optional", "PUT tiktok-bridge-admin default"]
    assert realm.held["tiktok-bridge-admin"] == {SCOPE_ID: "default"}


@pytest.mark.parametrize("kind", ["default", "optional"])
def test_a_minting_client_holding_the_scope_is_a_conflict_and_force_removes_it(kind: str) -> None:
    """No minting client calls the Admin API; one that holds the scope is named, and changed only with
    --force (the admin client gets the scope in the same run)."""
    realm = ClientScopes(
        scope=True,
        held={"tiktok-bridge-admin": {}, "tiktok-bridge": {}, "kc-ios": {SCOPE_ID: kind}},
    )
    app_clients: dict[str, Any] = {"public_client_ids": ("ios",), "keycloak_clients": "ios=kc-ios:ios-secret"}

    refused = plan_scope(realm, **app_clients)
    forced = plan_scope(realm, force=True, **app_clients)

    assert (refused.action, refused.run) == ("conflict", None)
    assert refused.details == [
        (
            f"'kc-ios' has it as an {kind} scope: tokens it mints for users could carry the Admin API "
            "audience (it needs none: only the admin client calls the Admin API)"
        )
    ]
    assert realm.writes == []
    assert forced.action == "update"
    assert f"remove it from 'kc-ios' ({kind})" in forced.details
    assert forced.run is not None
    forced.run()
    assert realm.writes == [f"DELETE kc-ios {kind}", "PUT tiktok-bridge-admin default"]
    assert plan_scope(realm, **app_clients).action == "ok"


def test_without_an_admin_client_of_its_own_the_minting_client_gets_the_scope_with_a_note() -> None:
    """Legacy set-up: the minting client is the admin client, so it needs the scope, and the line says
    what that costs."""
    realm = ClientScopes(scope=True, held={"tiktok-bridge": {}})

    step = plan_scope(realm, keycloak_admin_client_id=None, keycloak_admin_client_secret=None)

    assert step.action == "create"
    assert step.details == [
        "make it a default scope of 'tiktok-bridge', whose service account calls the Admin API",
        (
            "note: 'tiktok-bridge' also mints users' tokens (BRIDGE_KEYCLOAK_ADMIN_CLIENT_ID is unset), so "
            "they carry the Admin API audience too; give the Admin API a client of its own"
        ),
    ]


def test_a_refused_admin_token_is_told_apart_from_a_missing_role() -> None:
    """401 (the token refused: expired, or admin-cli without kc-admin-api on 26.8.2+) and 403 (a role
    missing) are different one-line errors."""

    def answering(status: int) -> Admin:
        transport = httpx2.MockTransport(lambda _: httpx2.Response(status, json={}))
        return Admin(httpx2.Client(transport=transport), KEYCLOAK, "app", "token")

    with pytest.raises(SetupError, match=r"refused the admin login's token on GET /serverinfo \(HTTP 401\)"):
        answering(401).get("/serverinfo")
    with pytest.raises(SetupError, match="kc-admin-api"):
        answering(401).get("/serverinfo")
    with pytest.raises(SetupError, match="it needs the realm-admin role"):
        answering(403).get("/serverinfo")


# ----------------------------------------------------------------------------------- doctor


def _jwt(claims: dict[str, Any]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJub25lIn0.{payload}.sig"


def keycloak_answering(*, aud: list[str], scopes: list[str], admin_status: int) -> Callable[..., Any]:
    """Keycloak as the service account meets it: discovery (with `scopes`), a token (with `aud`), the
    Admin API answering `admin_status` to everything, and the JWT grant's "User not found"."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path.endswith("/.well-known/openid-configuration"):
            return httpx2.Response(200, json={"issuer": f"{KEYCLOAK}/realms/app", "scopes_supported": scopes})
        if path.endswith("/protocol/openid-connect/token"):
            form = parse_qs(request.content.decode())
            if form["grant_type"] == ["client_credentials"]:
                roles = {"realm-management": {"roles": ["query-users"]}}
                token = _jwt({"sub": "sa", "aud": aud, "resource_access": roles})
                return httpx2.Response(200, json={"access_token": token, "expires_in": 300})
            return httpx2.Response(
                400, json={"error": "invalid_grant", "error_description": "User not found"}
            )
        if path.startswith("/admin/"):
            return httpx2.Response(admin_status, json={"error": "HTTP 401 Unauthorized"})
        return httpx2.Response(404)

    return handler


async def doctor_checks(
    tmp_path: Path,
    *,
    aud: list[str],
    scopes: list[str],
    admin_status: int,
) -> dict[str, doctor.Check]:
    from joserfc.jwk import ECKey  # noqa: PLC0415

    key = tmp_path / "key.pem"
    key.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    emulator = TikTokEmulator(client_key="key", client_secret="secret")
    fake = httpx2.MockTransport(keycloak_answering(aud=aud, scopes=scopes, admin_status=admin_status))
    mounts = {TIKTOK: httpx2.ASGITransport(app=emulator.app), KEYCLOAK: fake}
    async with httpx2.AsyncClient(mounts=mounts) as http:
        checks = await doctor.run_checks(settings(signing_key_file=key), http=http)
    return {c.name: c for c in checks}


CHECK = "keycloak admin api audience"
AUDIENCE = f"{KEYCLOAK}/admin/realms/app"


async def test_doctor_fails_a_401_from_the_admin_api_naming_the_scope_and_still_tries_the_grant(
    tmp_path: Path,
) -> None:
    """Keycloak 26.8.2 as its upgrading guide describes it: the Admin API refuses a token without the
    audience. The check says so with the fix; the Admin API checks after it are skipped (they would
    all fail alike), the grant, which needs no Admin API call, is still tried."""
    checks = await doctor_checks(
        tmp_path, aud=["account"], scopes=["openid", "kc-admin-api"], admin_status=401
    )

    check = checks[CHECK]
    assert not check.ok
    assert check.detail == (
        "Keycloak refuses the service account's token on the Admin API (HTTP 401), and the token lacks the "
        f"Admin API audience {AUDIENCE}: Keycloak 26.8.2 and newer require the kc-admin-api client scope, "
        "which 'tiktok-bridge-admin' does not have"
    )
    assert check.fix == (
        "Give client 'tiktok-bridge-admin' the default client scope kc-admin-api: run `bridge keycloak "
        "apply`, or in the admin console Clients > tiktok-bridge-admin > Client scopes > Add client scope > "
        "kc-admin-api (Default)."
    )
    for skipped in ("least privilege: reach", "keycloak version", "user-profile attributes"):
        assert skipped not in checks
    assert checks["jwt grant"].ok


async def test_doctor_fails_a_listed_scope_the_token_does_not_carry_before_keycloak_refuses_it(
    tmp_path: Path,
) -> None:
    """The realm lists kc-admin-api (discovery) but the token lacks its audience: a failure now, though
    this Keycloak still answers, since 26.8.2 would not."""
    checks = await doctor_checks(
        tmp_path, aud=["account"], scopes=["openid", "kc-admin-api"], admin_status=200
    )

    assert not checks[CHECK].ok
    assert "the realm has the client scope kc-admin-api but the service account's token lacks" in (
        checks[CHECK].detail
    )
    assert "Clients > tiktok-bridge-admin > Client scopes > Add client scope" in checks[CHECK].fix
    assert "least privilege: reach" in checks  # the Admin API answers: the other checks run


@pytest.mark.parametrize(
    ("aud", "scopes", "detail"),
    [
        (
            [AUDIENCE, "account"],
            ["openid", "kc-admin-api"],
            f"the service account's token carries the Admin API audience {AUDIENCE}",
        ),
        (
            # Keycloak names its own host, which may not be the address the bridge reaches it at.
            ["https://sso.example/admin/realms/app"],
            ["openid", "kc-admin-api"],
            "the service account's token carries the Admin API audience https://sso.example/admin/realms/app",
        ),
        (["account"], ["openid", "profile"], "not needed here: the realm lists no kc-admin-api client scope"),
    ],
    ids=["carried", "carried-under-keycloaks-host-name", "keycloak-before-26.8.2"],
)
async def test_doctor_passes_a_token_with_the_audience_or_a_keycloak_that_has_no_such_scope(
    tmp_path: Path,
    aud: list[str],
    scopes: list[str],
    detail: str,
) -> None:
    checks = await doctor_checks(tmp_path, aud=aud, scopes=scopes, admin_status=200)

    assert checks[CHECK].ok
    assert checks[CHECK].detail.startswith(detail)


# ---------------------------------------------------------------------------------- runtime


class AdminApi:
    """The token endpoint (a new token per request) and an Admin API answering `status` to everything;
    each records what the bridge sent."""

    def __init__(self, status: int, token_status: int = 200) -> None:
        self.status = status
        self.token_status = token_status
        self.issued = 0
        self.bearers: list[str] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/protocol/openid-connect/token"):
            if self.token_status != 200:
                return httpx2.Response(self.token_status, json={"error": "unauthorized_client"})
            self.issued += 1
            return httpx2.Response(200, json={"access_token": f"adm-{self.issued}", "expires_in": 300})
        self.bearers.append(request.headers["Authorization"])
        return httpx2.Response(self.status, json={"error": "HTTP 401 Unauthorized"})


def _refusals() -> float:
    value = REGISTRY.get_sample_value("bridge_keycloak_admin_api_refused_total", {"reason": "unauthorized"})
    return value or 0.0


async def client_for(api: AdminApi, token_http: aiohttp.ClientSession) -> KeycloakClient:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(api.handle))
    return KeycloakClient(
        http,
        AdminTokenStore(MemoryCache()),
        token_http=token_http,
        base_url=KEYCLOAK,
        realm="app",
        client_id="tiktok-bridge-admin",
        client_secret="admin-secret",
    )


@pytest.fixture
async def token_http() -> AsyncIterator[aiohttp.ClientSession]:
    import aiohttp  # noqa: PLC0415

    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_401_that_survives_the_renewal_is_a_configuration_error_logged_once_a_minute(
    token_http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Admin API refuses the token, then the renewed one: no third try, the documented answer for a
    misconfiguration (500 server_error), a counted refusal per call, and one log line a minute naming
    the cause and the fix, without any token."""
    now = [1000.0]
    monkeypatch.setattr(keycloak, "_ADMIN_REFUSAL_LOG", keycloak._AtMostEvery(60.0, clock=lambda: now[0]))
    api = AdminApi(status=401)
    client = await client_for(api, token_http)
    before = _refusals()
    caplog.set_level(logging.ERROR, logger="bridge.keycloak.client")

    for _ in range(3):
        with pytest.raises(UpstreamProtocolError) as refused:
            await client.find_linked_user("tiktok", "-000a")
    now[0] += 61
    with pytest.raises(UpstreamProtocolError):
        await client.get_user("u-1")

    assert api.bearers[:2] == ["Bearer adm-1", "Bearer adm-2"]  # the one renewal, then given up
    assert len(api.bearers) == 8
    assert _refusals() - before == 4
    answer = to_oauth_error(refused.value)
    assert isinstance(answer, ServerError)
    assert (answer.status_code, answer.body()["error"]) == (500, "server_error")
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.keycloak.client"]
    assert len(lines) == 2  # the first refusal, and the first one after the minute
    assert "client 'tiktok-bridge-admin' needs the default client scope kc-admin-api" in lines[0]
    assert "run `bridge keycloak apply`" in lines[0]
    assert "Clients > tiktok-bridge-admin > Client scopes > Add client scope" in lines[0]
    assert not any("adm-" in line or "admin-secret" in line for line in lines)
    assert "adm-" not in refused.value.detail


async def test_a_refused_service_account_grant_is_not_an_admin_api_refusal(
    token_http: aiohttp.ClientSession,
) -> None:
    """A 401 from the token endpoint (a wrong secret) keeps its own error, and is not counted as the
    Admin API refusing the token."""
    api = AdminApi(status=200, token_status=401)
    client = await client_for(api, token_http)
    before = _refusals()

    with pytest.raises(UpstreamProtocolError, match="service-account token refused: HTTP 401"):
        await client.find_linked_user("tiktok", "-000a")

    assert api.bearers == []
    assert _refusals() == before
