"""apply's and doctor's refusals of unsupported Keycloaks, from server-info answers shaped like live ones.

Starting a third Keycloak (one without the grant feature, or an older release) in every test run costs
minutes on a 2-core machine; these answers were recorded from live servers (26.7.4 started with
`--features-disabled=jwt-authorization-grant`, and 26.7.0/26.7.4 as a service account sees them), and
scripts/test-keycloak-versions repeats the feature check against a real featureless Keycloak.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydantic import ValidationError

from bridge.domain.errors import SetupError
from bridge.keycloak import realm_spec as spec
from bridge.keycloak.realm_setup import Admin, _read_provider, _split_own, check_server
from bridge.keycloak.realm_spec import version_supported
from bridge.operations import doctor
from bridge.settings import Settings
from devstack.tiktok_emulator import TikTokEmulator

ROOT = Path(__file__).resolve().parents[2]
KEYCLOAK = "http://keycloak.test"
TIKTOK = "http://tiktok.test"
GRANT_ON = {"name": "JWT_AUTHORIZATION_GRANT", "type": "DEFAULT", "enabled": True}
GRANT_OFF = {"name": "JWT_AUTHORIZATION_GRANT", "type": "DEFAULT", "enabled": False}
SINCE_26_7 = {"name": "IDENTITY_ASSERTION_JWT", "type": "EXPERIMENTAL", "enabled": False}
GRANT_PROVIDER = {"id": "jwt-authorization-grant"}


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ("26.7.0", True),
        ("26.7.4", True),
        ("26.10.1", True),
        ("27.0.0", True),
        ("26.6.3", False),
        ("26.5.3", False),
        ("25.0.6", False),
        ("", False),
        ("nightly", False),
    ],
)
def test_versions_from_26_7_0_are_supported(version: str, supported: bool) -> None:
    """Versions compare as numbers (26.10 is newer than 26.7); unparseable ones are not supported."""
    assert version_supported(version) is supported


def admin_answering(serverinfo: dict[str, Any]) -> Admin:
    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/admin/serverinfo"
        return httpx2.Response(200, json=serverinfo)

    return Admin(httpx2.Client(transport=httpx2.MockTransport(handler)), KEYCLOAK, "app", "token")


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [(404, {"error": "not found"}, None), (200, {"alias": "tiktok"}, {"alias": "tiktok"})],
)
def test_the_provider_is_read_once_as_an_object_or_none(status: int, body: Any, expected: Any) -> None:  # noqa: ANN401
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.url.path)
        return httpx2.Response(status, json=body)

    admin = Admin(httpx2.Client(transport=httpx2.MockTransport(handler)), KEYCLOAK, "app", "token")
    assert _read_provider(admin, _app_settings().keycloak_idp_alias) == expected
    assert seen == ["/admin/realms/app/identity-provider/instances/tiktok"]


def test_a_provider_that_is_not_a_json_object_is_a_setup_error() -> None:
    """A proxy or a broken Keycloak answering a list (or a string) is named, not an AttributeError."""
    admin = Admin(
        httpx2.Client(transport=httpx2.MockTransport(lambda _: httpx2.Response(200, json=["tiktok"]))),
        KEYCLOAK,
        "app",
        "token",
    )
    with pytest.raises(SetupError, match="not a JSON object"):
        _read_provider(admin, _app_settings().keycloak_idp_alias)


def test_apply_refuses_a_keycloak_older_than_the_oldest_supported() -> None:
    """A 26.6 server is refused with the oldest supported version named."""
    info = {
        "systemInfo": {"version": "26.6.2"},
        "features": [GRANT_ON],
        "identityProviders": [GRANT_PROVIDER],
    }
    with pytest.raises(SetupError, match=r"Keycloak 26\.6\.2 is older than 26\.7\.0"):
        check_server(admin_answering(info))


def test_apply_refuses_a_keycloak_without_the_grant_feature_naming_the_option() -> None:
    """With the feature disabled (no such provider type either), the message names the start option."""
    info = {"systemInfo": {"version": "26.7.4"}, "features": [GRANT_OFF, SINCE_26_7], "identityProviders": []}
    with pytest.raises(SetupError, match="--features=jwt-authorization-grant"):
        check_server(admin_answering(info))


def test_apply_accepts_a_supported_keycloak_with_the_feature() -> None:
    """The version is returned for the progress line when both conditions hold."""
    info = {
        "systemInfo": {"version": "26.7.0"},
        "features": [GRANT_ON],
        "identityProviders": [GRANT_PROVIDER],
    }
    assert check_server(admin_answering(info)) == "26.7.0"


def _token(roles: list[str]) -> str:
    claims = (
        base64.urlsafe_b64encode(
            json.dumps({"resource_access": {"realm-management": {"roles": roles}}}).encode()
        )
        .decode()
        .rstrip("=")
    )
    return f"eyJhbGciOiJub25lIn0.{claims}.sig"


def keycloak_and_tiktok(features: list[dict[str, Any]], roles: list[str]) -> httpx2.MockTransport:
    """Keycloak as a service account sees it: server info without systemInfo (so no version)."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path.endswith("/.well-known/openid-configuration"):
            return httpx2.Response(200, json={"issuer": f"{KEYCLOAK}/realms/app"})
        if path.endswith("/protocol/openid-connect/token"):
            return httpx2.Response(200, json={"access_token": _token(roles), "expires_in": 300})
        if path == "/admin/serverinfo":
            return httpx2.Response(200, json={"features": features, "identityProviders": []})
        return httpx2.Response(404)

    return httpx2.MockTransport(handler)


async def doctor_checks(
    features: list[dict[str, Any]], roles: list[str], redis_url: str | None = None
) -> dict[str, doctor.Check]:
    emulator = TikTokEmulator(client_key="key", client_secret="secret")
    values: dict[str, Any] = {
        "tiktok_client_key": "key",
        "tiktok_client_secret": "secret",
        "tiktok_api_url": TIKTOK,
        "keycloak_url": KEYCLOAK,
        "keycloak_realm": "app",
        "keycloak_client_id": "tiktok-bridge",
        "keycloak_client_secret": "s",
        "issuer": "http://bridge.test",
        "redis_url": redis_url,
    }
    mounts = {TIKTOK: httpx2.ASGITransport(app=emulator.app), KEYCLOAK: keycloak_and_tiktok(features, roles)}
    async with httpx2.AsyncClient(mounts=mounts) as http:
        return {c.name: c for c in await doctor.run_checks(Settings(**values), http=http)}


ROLES = ["query-users"]


async def test_doctor_names_the_feature_option_when_the_grant_is_disabled() -> None:
    """A server listing the grant feature as disabled fails 'keycloak feature' with the start option."""
    checks = await doctor_checks([GRANT_OFF, SINCE_26_7], ROLES)

    assert checks["keycloak version"].ok
    assert not checks["keycloak feature"].ok
    assert "--features=jwt-authorization-grant" in checks["keycloak feature"].fix
    assert "jwt grant" not in checks  # nothing after it can work, so nothing after it is tried


async def test_doctor_fails_the_version_of_a_pre_26_7_server_by_its_feature_list() -> None:
    """Without the version (hidden from service accounts), a feature list lacking 26.7's marker fails."""
    checks = await doctor_checks([GRANT_ON], ROLES)

    assert not checks["keycloak version"].ok
    assert "older than 26.7.0" in checks["keycloak version"].detail


async def test_doctor_flags_a_service_account_with_more_power_than_it_needs() -> None:
    """Roles beyond query-users fail the roles check, naming those that reach every account apart."""
    checks = await doctor_checks([GRANT_ON, SINCE_26_7], [*ROLES, "manage-users", "view-events"])

    assert not checks["service-account roles"].ok
    assert checks["service-account roles"].detail == (
        "manage-users reach every account of the realm; more than needed: view-events"
    )


async def test_tiktok_client_credentials_in_the_emulator() -> None:
    """The emulator grants an app token (`clt.`, 7200 s, no refresh) and refuses a wrong secret."""
    emulator = TikTokEmulator(client_key="key", client_secret="secret")
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=emulator.app), base_url=TIKTOK) as http:
        good = await http.post(
            "/v2/oauth/token/",
            data={"client_key": "key", "client_secret": "secret", "grant_type": "client_credentials"},
        )
        bad = await http.post(
            "/v2/oauth/token/",
            data={"client_key": "key", "client_secret": "nope", "grant_type": "client_credentials"},
        )
    body = good.json()
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert body["access_token"].startswith("clt.")
    assert body["expires_in"] == 7200
    assert bad.json()["error"] == "invalid_client"


async def test_doctor_fails_redis_that_does_not_answer() -> None:
    """A configured Redis nobody listens on fails the redis check in one line naming the setting."""
    from devstack.keycloak import free_port  # noqa: PLC0415

    checks = await doctor_checks([GRANT_OFF, SINCE_26_7], ROLES, redis_url=f"redis://127.0.0.1:{free_port()}")

    assert not checks["redis"].ok
    assert checks["redis"].detail.startswith("Redis does not answer")
    assert "BRIDGE_REDIS_URL" in checks["redis"].fix
    assert "\n" not in checks["redis"].line()


async def test_the_verbose_readiness_runs_the_doctor_once_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin listener's `/readyz?verbose=true` runs the doctor's checks at most once per TTL, however
    often it is probed, and once more after the TTL."""
    from bridge.operations import doctor  # noqa: PLC0415

    runs: list[int] = []

    async def fake_run_checks(
        settings: object, *, http: object = None, redis: object = None
    ) -> list[doctor.Check]:
        runs.append(1)
        return [doctor.Check("settings", ok=True, detail="ok")]

    monkeypatch.setattr(doctor, "run_checks", fake_run_checks)
    now = [1000.0]
    cached = doctor.CachedChecks(ttl=60, clock=lambda: now[0])
    for _ in range(5):
        assert [c.name for c in await cached.current(None, None)] == ["settings"]  # type: ignore[arg-type]
    assert len(runs) == 1
    now[0] += 61  # the minute has passed
    await cached.current(None, None)  # type: ignore[arg-type]
    assert len(runs) == 2


class _ProcessRedis:
    """The process's Redis client as the doctor's Redis check uses it: keeps what it is given, and
    notes whether anyone closed it."""

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}
        self.closed = False

    async def set(self, key: str, value: bytes, ex: int) -> None:
        self.entries[key] = value

    async def get(self, key: str) -> bytes | None:
        return self.entries.get(key)

    async def delete(self, key: str) -> None:
        self.entries.pop(key, None)

    async def aclose(self) -> None:
        self.closed = True


async def test_the_verbose_readiness_checks_redis_over_the_process_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given the process's Redis client, the doctor's Redis check writes its probe through it (a key named
    by the storage's key builders), opens no client of its own, and leaves the process's one open."""
    from bridge.operations import doctor  # noqa: PLC0415
    from bridge.storage import keys, redis_connection  # noqa: PLC0415

    def no_new_client(url: str, *, timeout: float) -> object:
        raise AssertionError("a second Redis client was opened")

    monkeypatch.setattr(redis_connection, "redis_client", no_new_client)
    process = _ProcessRedis()
    written: list[str] = []
    original_set = process.set

    async def noting_set(key: str, value: bytes, ex: int) -> None:
        written.append(key)
        await original_set(key, value, ex)

    monkeypatch.setattr(process, "set", noting_set)
    ctx = doctor._Context(_app_settings(redis_url="redis://localhost:1/0"), None, [])  # type: ignore[arg-type]
    ctx.redis = process  # type: ignore[assignment]
    await doctor._redis(ctx)
    assert [(c.name, c.ok) for c in ctx.results] == [("redis", True)]
    assert len(written) == 1
    assert written[0].startswith(keys.PREFIX + "doctor-probe:")
    assert process.entries == {}  # the probe is deleted again
    assert not process.closed


def _app_settings(**overrides: Any) -> Settings:  # noqa: ANN401
    values: dict[str, Any] = {
        "tiktok_client_key": "key",
        "tiktok_client_secret": "secret",
        "keycloak_url": KEYCLOAK,
        "keycloak_realm": "app",
        "keycloak_client_id": "tiktok-bridge",
        "keycloak_client_secret": "bridge-secret",
        "issuer": "https://bridge.example",
        "confidential_clients": "ios=s1,android=s2,web=s3",
        "keycloak_clients": "ios=kc-mobile:m-secret,android=kc-mobile:m-secret,web=kc-web:w-secret",
        "audiences": ("https://orders.example=aud-orders", "https://pay.example=aud-pay"),
        "client_audiences": ("ios=https://orders.example", "android=https://orders.example"),
        "strapi_keycloak_client_id": "tiktok-bridge-strapi",
        "strapi_keycloak_client_secret": "strapi-secret",
    }
    values.update(overrides)
    return Settings(**values)


def test_apps_sharing_a_keycloak_client_share_it_with_the_scopes_any_of_them_may_ask_for() -> None:
    """One Keycloak client per distinct client id; its optional scopes are what its apps may ask for
    (an app not in client_audiences may ask for all); the bridge's own client gets every scope; the
    Strapi client none, and its tokens live 30 days."""
    settings = _app_settings()
    clients = {c.client_id: c for c in spec.minting_clients(settings)}

    assert set(clients) == {"tiktok-bridge-strapi", "kc-mobile", "kc-web"}
    assert clients["kc-mobile"].scopes == ("aud-orders",)
    assert clients["kc-web"].scopes == ("aud-orders", "aud-pay")
    assert clients["tiktok-bridge-strapi"].scopes == ()
    strapi = clients["tiktok-bridge-strapi"].representation
    assert strapi["attributes"]["access.token.lifespan"] == str(30 * 24 * 3600)
    assert spec.own_client(settings).scopes == ("aud-orders", "aud-pay")
    for client in clients.values():
        attributes = client.representation["attributes"]
        assert attributes[spec.GRANT_PROVIDERS_ATTRIBUTE] == settings.keycloak_idp_alias
        assert client.representation["serviceAccountsEnabled"] is False
        assert len(client.representation["description"]) <= 255  # Keycloak's column


def test_the_strapi_jwt_provider_and_its_grant_come_with_the_strapi_jwt_exchange() -> None:
    """With BRIDGE_STRAPI_JWT_SECRET set, apply wants a second provider trusting the same JWKS under an
    issuer of its own, and every minting client may use both; without it, the TikTok one alone."""
    jwks = "https://bridge.example/.well-known/jwks.json"
    off, on = _app_settings(), _app_settings(strapi_jwt_secret="s" * 32)
    assert [p["alias"] for p in spec.identity_providers(off, jwks)] == ["tiktok"]
    tiktok, strapi_jwt = spec.identity_providers(on, jwks)
    assert tiktok == spec.identity_provider(on, jwks)
    assert (strapi_jwt["alias"], strapi_jwt["config"]["issuer"], strapi_jwt["config"]["jwksUrl"]) == (
        "tiktok-strapi-jwt",
        "https://bridge.example/strapi-jwt",
        jwks,
    )
    assert {k: v for k, v in strapi_jwt["config"].items() if k != "issuer"} == {
        k: v for k, v in tiktok["config"].items() if k != "issuer"
    }
    for settings, granted in ((off, "tiktok"), (on, "tiktok##tiktok-strapi-jwt")):
        for client in (spec.own_client(settings), *spec.minting_clients(settings)):
            assert client.representation["attributes"][spec.GRANT_PROVIDERS_ATTRIBUTE] == granted


def test_the_realm_file_holds_the_providers_and_grants_apply_makes_with_the_strapi_jwt_exchange() -> None:
    """keycloak-config/app-realm.json, its placeholders filled in, has the identity providers `apply`
    creates when the Strapi jwt exchange is on, and grants its minting clients both."""
    settings = _app_settings(strapi_jwt_secret="s" * 32)
    jwks = "https://bridge.example/.well-known/jwks.json"
    text = (
        (ROOT / "keycloak-config" / "app-realm.json")
        .read_text()
        .replace("${BRIDGE_ISSUER}", settings.issuer_url)
        .replace("${BRIDGE_JWKS_URL}", jwks)
    )
    realm = json.loads(text)
    assert realm["identityProviders"] == spec.identity_providers(settings, jwks)
    minting = [c for c in realm["clients"] if "oauth2.jwt.authorization.grant.enabled" in c["attributes"]]
    assert len(minting) == 3
    for client in minting:
        assert client["attributes"][spec.GRANT_PROVIDERS_ATTRIBUTE] == "tiktok##tiktok-strapi-jwt"


@pytest.mark.parametrize(
    ("found", "wanted", "own"),
    [
        ("tiktok", "tiktok##tiktok-strapi-jwt", True),
        ("tiktok##tiktok-strapi-jwt", "tiktok", True),
        ("tiktok-strapi-jwt##tiktok", "tiktok##tiktok-strapi-jwt", True),
        ("tiktok##other-idp", "tiktok", False),
        ("tiktok##other-idp", "tiktok##tiktok-strapi-jwt", False),
        ("other-idp", "tiktok", False),
    ],
)
def test_only_the_bridges_own_providers_change_a_clients_grant_without_force(
    found: str, wanted: str, own: bool
) -> None:
    """Granting or taking away the bridge's own providers is the bridge's business; a provider an
    administrator granted the client is a conflict, as any other setting."""
    difference = spec.Difference(f"attributes.{spec.GRANT_PROVIDERS_ATTRIBUTE}", found, wanted)
    other, lines = _split_own([difference], spec.bridge_providers(_app_settings()))
    assert (other, lines) == (([], [f"set: {difference}"]) if own else ([str(difference)], []))


def test_no_strapi_client_when_the_endpoint_is_off_or_mints_as_the_bridge() -> None:
    assert spec.minting_clients(_app_settings(keycloak_clients=None, strapi_compat_enabled=False)) == []
    assert spec.minting_clients(_app_settings(keycloak_clients=None, strapi_keycloak_client_id=None)) == []


def test_one_keycloak_client_with_two_secrets_is_refused_without_echoing_them() -> None:
    with pytest.raises(ValidationError) as refused:
        _app_settings(keycloak_clients="ios=kc-mobile:first-secret,android=kc-mobile:other-secret")
    (error,) = refused.value.errors()
    assert "kc-mobile" in error["msg"]
    assert "two secrets" in error["msg"]
    assert "secret" not in error["msg"].replace("two secrets", "")


def test_the_realm_declares_the_attributes_tiktoks_adapter_writes() -> None:
    """The user profile the realm spec declares (and whose first attribute becomes the token claim)
    names exactly the attributes TikTok's adapter writes, in the same order."""
    from bridge.providers.tiktok.attributes import ATTRIBUTES  # noqa: PLC0415

    declared, claim = spec.TIKTOK_ATTRIBUTES, spec.ATTR_OPEN_ID
    assert declared == ATTRIBUTES.owned
    assert claim == ATTRIBUTES.subject
