"""Keycloak 26.8.2's Admin API audience (`kc-admin-api`): what apply plans, against a fake that behaves
as a live 26.7.4 did and as the 26.8.2 upgrading guide describes (no 26.8 server could be fetched here)."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from bridge.realm_setup import Admin, SetupError, Step, _admin_api_scope_step
from bridge.realm_spec import minting_clients, own_client
from bridge.settings import Settings

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
