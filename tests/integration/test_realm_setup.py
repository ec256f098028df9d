"""`bridge keycloak apply` and `bridge doctor` against a real Keycloak started without the project's realm.

The Keycloak here is a second one, bare like an organisation's existing server (no realm imported); each
test makes its own ordinary realm, with a user, a declared attribute and an unrelated client, so the
tests do not depend on each other. `KEYCLOAK_TEST_VERSION` picks the release (scripts/test-keycloak-versions
runs this module against the oldest supported one); `KEYCLOAK_TEST_DB=postgres` keeps Keycloak's data in
PostgreSQL (scripts/test-keycloak-postgres).
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import logging
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2
import pytest
import redis.asyncio as aioredis
from joserfc.jwk import ECKey
from prometheus_client import REGISTRY

from bridge.domain.errors import SetupError
from bridge.keycloak import realm_spec as spec
from bridge.keycloak.realm_setup import apply, survey
from bridge.operations import doctor
from bridge.settings import Settings
from bridge.storage import keys
from bridge.web.app import create_app
from devstack import keycloak as devstack_keycloak
from devstack.keycloak import (
    KeycloakServer,
    fetch_distribution,
    find_java_home,
    free_port,
    reusable_instance_dir,
)
from devstack.redis import RedisServer
from devstack.threaded import ThreadedServer
from tests.conftest import (
    CLIENT_KEY,
    CLIENT_SECRET,
    KNOWN_SECRETS,
    TIKTOK_API,
    keycloak_storage,
    running_bridge,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from devstack.postgres import PostgresServer
    from devstack.tiktok_emulator import TikTokEmulator

# The first start of a release builds it (2-4 minutes on a busy 2-core machine), inside the first
# test's time budget; later runs reuse the build.
pytestmark = pytest.mark.timeout(900)
VERSION = os.environ.get("KEYCLOAK_TEST_VERSION", devstack_keycloak.KEYCLOAK_VERSION)
ADMIN_PASSWORD = "admin"


@dataclass
class Bare:
    """A Keycloak without the project's realm, the bridge's JWKS on its issuer URL, and a redis-server."""

    keycloak: KeycloakServer
    redis: RedisServer
    issuer: str
    signing_key_file: Path

    def admin(self) -> httpx2.Client:
        token = httpx2.post(
            f"{self.keycloak.url}/realms/master/protocol/openid-connect/token",
            data={
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": "admin",
                "password": "admin",
            },
            timeout=60,
        ).json()["access_token"]
        return httpx2.Client(
            base_url=f"{self.keycloak.url}/admin", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    def settings(self, realm: str, **overrides: Any) -> Settings:  # noqa: ANN401
        values: dict[str, Any] = {
            "tiktok_client_key": CLIENT_KEY,
            "tiktok_client_secret": CLIENT_SECRET,
            "tiktok_api_url": TIKTOK_API,
            "keycloak_url": self.keycloak.url,
            "keycloak_realm": realm,
            "keycloak_client_id": "tiktok-bridge",
            "keycloak_client_secret": _SECRET,
            "keycloak_admin_client_id": "tiktok-bridge-admin",
            "keycloak_admin_client_secret": _ADMIN_SECRET,
            "issuer": self.issuer,
            "signing_key_file": self.signing_key_file,
            "redis_url": self.redis.url,
            "http_timeout": 30.0,
        }
        values.update(overrides)
        return Settings(**values)


_SECRET = secrets.token_urlsafe(24)
_ADMIN_SECRET = secrets.token_urlsafe(24)
KNOWN_SECRETS.update({_SECRET, _ADMIN_SECRET})


@pytest.fixture(scope="session")
def bare(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer | None) -> Iterator[Bare]:
    work = tmp_path_factory.mktemp("bare")
    key_file = work / "signing-key.pem"
    key_file.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    distribution = fetch_distribution(version=VERSION)
    java_home = find_java_home()
    instance, database = keycloak_storage(postgres, f"bare-{VERSION}")
    with reusable_instance_dir(instance) as instance_dir:
        keycloak = KeycloakServer(
            instance_dir=instance_dir,
            realm_env={},
            version=VERSION,
            import_realm=False,
            database=database,
        )
        redis = RedisServer(work_dir=work / "redis")
        env = Bare(keycloak=keycloak, redis=redis, issuer=issuer, signing_key_file=key_file)
        # The bridge publishes the JWKS that apply points the provider at, as in production.
        jwks = ThreadedServer(create_app(env.settings("unused", redis_url=None)), port=port)
        try:
            redis.start()
            jwks.start()
            keycloak.prepare(distribution)
            keycloak.start(java_home)
            keycloak.wait_ready(timeout=600)
            yield env
        finally:
            keycloak.stop()
            jwks.stop()
            redis.stop()


def customer_realm(bare: Bare) -> str:
    """An ordinary realm as an organisation has it: a user with a declared attribute, another client."""
    realm = f"org-{secrets.token_hex(4)}"
    with bare.admin() as admin:
        assert admin.post("/realms", json={"realm": realm, "enabled": True}).status_code == 201
        profile = admin.get(f"/realms/{realm}/users/profile").json()
        profile["attributes"].append(
            {
                "name": "department",
                "displayName": "Department",
                "permissions": {"view": ["admin"], "edit": ["admin"]},
            }
        )
        assert admin.put(f"/realms/{realm}/users/profile", json=profile).status_code == 200
        user = {"username": "alice", "enabled": True, "attributes": {"department": ["sales"]}}
        assert admin.post(f"/realms/{realm}/users", json=user).status_code == 201
        shop = {"clientId": "shop", "publicClient": True, "redirectUris": ["https://shop.example/*"]}
        assert admin.post(f"/realms/{realm}/clients", json=shop).status_code == 201
    return realm


def snapshot(bare: Bare, realm: str) -> dict[str, Any]:
    """Everything in the realm the bridge does not own, as Keycloak represents it."""
    with bare.admin() as admin:
        users = admin.get(f"/realms/{realm}/users", params={"briefRepresentation": "false"}).json()
        clients = admin.get(f"/realms/{realm}/clients").json()
        profile = admin.get(f"/realms/{realm}/users/profile").json()
        providers = admin.get(f"/realms/{realm}/identity-provider/instances").json()
    shop = next(c for c in clients if c["clientId"] == "shop")
    # Keycloak lists a client's scopes in no defined order: on PostgreSQL two reads of an unchanged
    # client gave two orders.
    for scopes in ("defaultClientScopes", "optionalClientScopes"):
        shop[scopes] = sorted(shop[scopes])
    return {
        "alice": next(u for u in users if u["username"] == "alice"),
        "shop": shop,
        "other_clients": sorted(c["clientId"] for c in clients),
        "department": next(a for a in profile["attributes"] if a["name"] == "department"),
        "attributes": [a["name"] for a in profile["attributes"]],
        "providers": providers,
    }


def run_apply(bare: Bare, realm: str, **kwargs: Any) -> tuple[bool, list[str]]:  # noqa: ANN401
    lines: list[str] = []
    settings = kwargs.pop("settings", None) or bare.settings(realm)
    done = apply(settings, admin_user="admin", admin_password=ADMIN_PASSWORD, out=lines.append, **kwargs)
    return done, lines


async def run_doctor(
    bare: Bare, settings: Settings, emulator: TikTokEmulator, admin: doctor.AdminLogin | None = None
) -> dict[str, doctor.Check]:
    mounts = {TIKTOK_API: httpx2.ASGITransport(app=emulator.app)}
    async with httpx2.AsyncClient(mounts=mounts, timeout=30) as http:
        checks = await doctor.run_checks(settings, http=http, admin=admin)
    return {c.name: c for c in checks}


def run_cli(
    command: list[str], env: dict[str, str], *, stdin: int | None = None
) -> subprocess.CompletedProcess[str]:
    """A `bridge` command run as an operator runs it: its own process, output captured as text."""
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False, stdin=stdin
    )


def failing(checks: dict[str, doctor.Check]) -> set[str]:
    return {name for name, check in checks.items() if not check.ok}


# ------------------------------------------------------------------------------------ apply


def test_dry_run_changes_nothing_then_apply_configures_and_a_second_run_has_nothing_to_do(bare: Bare) -> None:
    """Dry run lists the objects and writes nothing; apply creates them; a rerun reports no changes."""
    realm = customer_realm(bare)
    before = snapshot(bare, realm)
    # Keycloak 26.8.2 and newer make kc-admin-api in every realm; older ones have none (nothing to do).
    with bare.admin() as admin:
        has_scope = any(
            s["name"] == "kc-admin-api" for s in admin.get(f"/realms/{realm}/client-scopes").json()
        )
    changes = 9 if has_scope else 8

    done, dry = run_apply(bare, realm, dry_run=True)
    assert done
    assert [line for line in dry if not line.startswith("    ")][1:] == [
        "identity provider 'tiktok': would create",
        "fine-grained admin permissions: would create",
        "group '/tiktok-users': would create",
        "members of group '/tiktok-users': ok, nothing to change",
        "client 'tiktok-bridge-admin': would create",
        "client 'tiktok-bridge': would create",
        "token scope of client 'tiktok-bridge': ok, nothing to change",
        f"client scope 'kc-admin-api': {'would create' if has_scope else 'ok, nothing to change'}",
        "policy 'tiktok-keycloak-bridge: its service account': would create",
        "permission 'tiktok-keycloak-bridge: the accounts of its groups': would create",
        "user-profile attributes: would create",
        f"dry run: {changes} object(s) would change; nothing was changed",
    ]
    assert snapshot(bare, realm) == before

    done, first = run_apply(bare, realm)
    assert done
    assert first[-1] == f"applied: {changes} object(s) changed"
    done, second = run_apply(bare, realm)
    assert done
    assert second[-1] == "no changes"
    assert all(line.endswith("ok, nothing to change") for line in second[1:-1] if not line.startswith("    "))
    # Where there is no scope to assign, the line says when there will be one.
    absent = (
        "    this realm has none (Keycloak before 26.8.2): nothing to assign; after upgrading to 26.8.2 or "
        "newer run apply again (the Admin API then refuses tokens without it)"
    )
    assert has_scope or absent in second

    after = snapshot(bare, realm)
    # What the realm's administrators own is exactly as it was.
    for key in ("alice", "shop", "department"):
        assert after[key] == before[key], key
    # Keycloak makes `admin-permissions` itself when fine-grained admin permissions are switched on.
    assert after["other_clients"] == sorted(
        [*before["other_clients"], "tiktok-bridge", "tiktok-bridge-admin", "admin-permissions"]
    )
    assert after["attributes"] == [
        *before["attributes"],
        "tiktok_open_id",
        "tiktok_union_id",
        "tiktok_display_name",
        "tiktok_username",
        "tiktok_is_verified",
        "strapi_id",
        "strapi_document_id",
        "strapi_created_at",
        "strapi_username",
        "strapi_id_high_water",
    ]
    (provider,) = after["providers"]
    assert provider["providerId"] == "jwt-authorization-grant"
    assert provider["config"]["issuer"] == bare.issuer
    assert provider["config"]["jwksUrl"] == f"{bare.issuer}/.well-known/jwks.json"


def test_only_the_admin_client_has_a_service_account_and_it_holds_query_users_alone(bare: Bare) -> None:
    """The admin client authenticates with its configured secret and holds realm-management's
    query-users only; the minting client has no service account and no full scope."""
    realm = customer_realm(bare)
    assert run_apply(bare, realm)[0]
    with bare.admin() as admin:
        clients = {
            name: admin.get(f"/realms/{realm}/clients", params={"clientId": name}).json()[0]
            for name in ("tiktok-bridge", "tiktok-bridge-admin", "realm-management")
        }
        account = admin.get(
            f"/realms/{realm}/clients/{clients['tiktok-bridge-admin']['id']}/service-account-user"
        ).json()
        roles = admin.get(
            f"/realms/{realm}/users/{account['id']}/role-mappings/clients/{clients['realm-management']['id']}"
        ).json()
    assert [r["name"] for r in roles] == ["query-users"]
    minting = clients["tiktok-bridge"]
    assert minting["publicClient"] is False
    assert minting["serviceAccountsEnabled"] is False
    assert minting["fullScopeAllowed"] is False
    assert minting["attributes"]["oauth2.jwt.authorization.grant.idp"] == "tiktok"
    assert clients["tiktok-bridge-admin"]["attributes"].get("oauth2.jwt.authorization.grant.enabled") is None
    token = httpx2.post(
        f"{bare.keycloak.url}/realms/{realm}/protocol/openid-connect/token",
        data={"grant_type": "client_credentials"},
        auth=("tiktok-bridge-admin", _ADMIN_SECRET),
        timeout=60,
    )
    assert token.status_code == 200


async def test_a_conflicting_client_is_refused_untouched_and_force_overwrites_it(
    bare: Bare, emulator: TikTokEmulator
) -> None:
    """A public client named like the bridge's stops apply before any write; --force makes it the bridge's."""
    realm = customer_realm(bare)
    with bare.admin() as admin:
        body = {"clientId": "tiktok-bridge", "publicClient": True, "redirectUris": ["https://x.example/*"]}
        assert admin.post(f"/realms/{realm}/clients", json=body).status_code == 201
    before = snapshot(bare, realm)
    with bare.admin() as admin:
        (theirs,) = admin.get(f"/realms/{realm}/clients", params={"clientId": "tiktok-bridge"}).json()

    done, lines = run_apply(bare, realm)

    assert not done
    assert "client 'tiktok-bridge': CONFLICT" in lines
    assert "    publicClient is True, needs False" in lines
    assert lines[-1].startswith("refused: 1 object(s) conflict")
    assert snapshot(bare, realm) == before  # not even the non-conflicting provider was created
    with bare.admin() as admin:
        assert admin.get(f"/realms/{realm}/clients/{theirs['id']}").json() == theirs

    done, forced = run_apply(bare, realm, force=True)
    assert done
    assert "    overwrite: publicClient is True, needs False" in forced
    with bare.admin() as admin:
        now = admin.get(f"/realms/{realm}/clients/{theirs['id']}").json()
    assert now["publicClient"] is False
    assert now["redirectUris"] == ["https://x.example/*"]  # not ours to change, so kept
    assert failing(await run_doctor(bare, bare.settings(realm), emulator)) == set()


def test_wrong_admin_password_and_unknown_realm_are_one_line_errors(bare: Bare, tmp_path: Path) -> None:
    """The command exits non-zero with one clear line and no traceback for bad admin input."""
    realm = customer_realm(bare)
    password_file = tmp_path / "pw"
    password_file.write_text("wrong\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    base = {
        "BRIDGE_TIKTOK_CLIENT_KEY": CLIENT_KEY,
        "BRIDGE_TIKTOK_CLIENT_SECRET": CLIENT_SECRET,
        "BRIDGE_KEYCLOAK_URL": bare.keycloak.url,
        "BRIDGE_KEYCLOAK_CLIENT_ID": "tiktok-bridge",
        "BRIDGE_KEYCLOAK_CLIENT_SECRET": _SECRET,
        "BRIDGE_ISSUER": bare.issuer,
    }
    command = [
        sys.executable,
        "-m",
        "bridge",
        "keycloak",
        "apply",
        "--admin-user",
        "admin",
        "--admin-password-file",
        str(password_file),
    ]

    wrong = run_cli(command, {**env, **base, "BRIDGE_KEYCLOAK_REALM": realm})
    password_file.write_text("admin\n")
    unknown = run_cli(command, {**env, **base, "BRIDGE_KEYCLOAK_REALM": "no-such-realm"})

    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        "keycloak apply: Keycloak refused the admin login of 'admin' in realm 'master': wrong user or "
        "password (or the user may not use admin-cli)"
    )
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        f"keycloak apply: realm 'no-such-realm' does not exist on {bare.keycloak.url} (BRIDGE_KEYCLOAK_REALM)"
    )
    assert "Traceback" not in wrong.stderr + unknown.stderr


def bridge_env(bare: Bare, realm: str, tiktok_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a bridge process configured for `realm` (no other BRIDGE_* variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        {
            "BRIDGE_TIKTOK_CLIENT_KEY": CLIENT_KEY,
            "BRIDGE_TIKTOK_CLIENT_SECRET": CLIENT_SECRET,
            "BRIDGE_TIKTOK_API_URL": tiktok_url,
            "BRIDGE_KEYCLOAK_URL": bare.keycloak.url,
            "BRIDGE_KEYCLOAK_REALM": realm,
            "BRIDGE_KEYCLOAK_CLIENT_ID": "tiktok-bridge",
            "BRIDGE_KEYCLOAK_CLIENT_SECRET": _SECRET,
            "BRIDGE_KEYCLOAK_ADMIN_CLIENT_ID": "tiktok-bridge-admin",
            "BRIDGE_KEYCLOAK_ADMIN_CLIENT_SECRET": _ADMIN_SECRET,
            "BRIDGE_ISSUER": bare.issuer,
            "BRIDGE_SIGNING_KEY_FILE": str(bare.signing_key_file),
            "BRIDGE_REDIS_URL": bare.redis.url,
        }
    )
    env.update(overrides)
    return env


def test_doctor_command_exit_status_and_json(bare: Bare, tiktok_server: ThreadedServer) -> None:
    """`bridge doctor --json` exits 0 with every check passed, and 1 naming the check when one fails."""
    realm = customer_realm(bare)
    assert run_apply(bare, realm)[0]
    command = [sys.executable, "-m", "bridge", "doctor", "--json"]

    good = run_cli(command, bridge_env(bare, realm, tiktok_server.url))
    bad = run_cli(
        [*command[:-1]],
        bridge_env(bare, realm, tiktok_server.url, BRIDGE_KEYCLOAK_ADMIN_CLIENT_SECRET="wrong"),
    )
    invalid = run_cli(command, bridge_env(bare, realm, tiktok_server.url, BRIDGE_ISSUER="not a url"))

    assert good.returncode == 0, good.stdout
    report = json.loads(good.stdout)
    assert report["ok"] is True
    assert all(check["ok"] for check in report["checks"])
    assert bad.returncode == 1
    failed = [line for line in bad.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == [
        (
            "FAIL  keycloak client: Keycloak refused client 'tiktok-bridge-admin' and its secret "
            "(unauthorized_client). Fix: Set BRIDGE_KEYCLOAK_ADMIN_CLIENT_SECRET to the client's secret, or "
            "run `bridge keycloak apply` to create the client with it."
        )
    ]
    assert invalid.returncode == 1
    assert json.loads(invalid.stdout)["checks"][0]["detail"] == "invalid: BRIDGE_ISSUER"
    assert "Traceback" not in good.stderr + bad.stderr + invalid.stderr


def test_doctor_command_reads_the_admin_password_from_a_file_only(
    bare: Bare, tiktok_server: ThreadedServer, tmp_path: Path
) -> None:
    """`doctor --admin-user --admin-password-file` adds the realm checks (the password comes from a
    file, never an argument); an unreadable file is a one-line error."""
    realm = customer_realm(bare)
    assert run_apply(bare, realm)[0]
    password_file = tmp_path / "admin-password"
    password_file.write_text(ADMIN_PASSWORD + "\n")
    command = [sys.executable, "-m", "bridge", "doctor", "--json", "--admin-user", "admin"]

    done = run_cli(
        [*command, "--admin-password-file", str(password_file)], bridge_env(bare, realm, tiktok_server.url)
    )
    unreadable = run_cli(
        [*command, "--admin-password-file", str(tmp_path / "missing")],
        bridge_env(bare, realm, tiktok_server.url),
        stdin=subprocess.DEVNULL,
    )

    assert done.returncode == 0, done.stdout
    names = [check["name"] for check in json.loads(done.stdout)["checks"]]
    assert "realm: identity provider 'tiktok'" in names
    assert "realm: client 'tiktok-bridge'" in names
    assert unreadable.returncode != 0
    assert unreadable.stderr.startswith("cannot read ")
    assert "Traceback" not in done.stderr + unreadable.stderr


def test_direct_errors_name_the_admin_realm(bare: Bare) -> None:
    """An unknown admin realm is named in the error, not reported as a bad password."""
    with pytest.raises(SetupError, match="admin realm 'nope' does not exist"):
        apply(bare.settings("master"), admin_user="admin", admin_password="admin", admin_realm="nope")


# ------------------------------------------------------------------------ exchange and doctor


async def test_a_tiktok_sign_in_works_in_the_applied_realm(bare: Bare, emulator: TikTokEmulator) -> None:
    """After apply, the bridge exchanges a TikTok token for a token of that realm with the profile stored."""
    realm = customer_realm(bare)
    assert run_apply(bare, realm)[0]
    user = emulator.create_user(display_name="Org Member", username="orgmember")
    settings = bare.settings(realm, redis_url=None)

    async for client in running_bridge(settings, emulator):
        response = await client.exchange(emulator.issue_access_token(user.open_id))

    assert response.status_code == 200, response.text
    with bare.admin() as admin:
        (linked,) = admin.get(
            f"/realms/{realm}/users",
            params={"idpAlias": "tiktok", "idpUserId": user.open_id, "briefRepresentation": "false"},
        ).json()
    # The attributes survived: apply declared them (Keycloak drops undeclared ones silently).
    assert linked["attributes"]["tiktok_display_name"] == ["Org Member"]
    assert linked["attributes"]["tiktok_open_id"] == [user.open_id]


async def test_doctor_passes_on_the_applied_realm_and_leaves_no_account(
    bare: Bare, emulator: TikTokEmulator
) -> None:
    """Every check passes after apply, and its grant probe created no user."""
    realm = customer_realm(bare)
    assert run_apply(bare, realm)[0]
    checks = await run_doctor(bare, bare.settings(realm), emulator)

    assert failing(checks) == set(), [c.line() for c in checks.values()]
    assert set(checks) == {
        "settings",
        "tiktok credentials",
        "keycloak realm",
        "keycloak client",
        "least privilege: clients",
        "service-account roles",
        "keycloak admin api audience",
        "least privilege: reach",
        "keycloak version",
        "keycloak feature",
        "user-profile attributes",
        "jwt grant",
        "redis",
    }
    assert "accepted its assertion for 'tiktok-bridge'" in checks["jwt grant"].detail
    with bare.admin() as admin:
        users = admin.get(f"/realms/{realm}/users").json()
    assert [u["username"] for u in users] == ["alice"]


# ------------------------------------------------ the clients and scopes of the later features

ORDERS = "https://orders.example"
_APP_SECRET = secrets.token_urlsafe(24)
_STRAPI_SECRET = secrets.token_urlsafe(24)
KNOWN_SECRETS.update({_APP_SECRET, _STRAPI_SECRET})


def app_settings(bare: Bare, realm: str, **overrides: Any) -> Settings:  # noqa: ANN401
    """Every feature that needs objects of its own: the Strapi client, one Keycloak client per app (ios;
    web mints as the bridge), and an audience."""
    values: dict[str, Any] = {
        "public_client_ids": ("ios", "web"),
        "keycloak_clients": f"ios=kc-ios:{_APP_SECRET}",
        "audiences": (f"{ORDERS}=aud-orders",),
        "strapi_keycloak_client_id": "tiktok-bridge-strapi",
        "strapi_keycloak_client_secret": _STRAPI_SECRET,
        "redis_url": None,
    }
    values.update(overrides)
    return bare.settings(realm, **values)


def claims(token: str) -> dict[str, Any]:
    """A token's claims as the bridge handed them over from Keycloak (read, not verified: the point is
    which Keycloak client minted it and for whom)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


async def test_apply_makes_the_strapi_per_app_and_audience_objects_and_sign_ins_use_them(
    bare: Bare, emulator: TikTokEmulator
) -> None:
    """apply creates the Strapi client, the app's client and the audience scope (dry run first, rerun
    no changes, other objects untouched); then each sign-in path mints as its own client, an audience
    reaches `aud`, and the doctor (with admin credentials) passes every object."""
    realm = customer_realm(bare)
    settings = app_settings(bare, realm)
    before = snapshot(bare, realm)

    done, dry = run_apply(bare, realm, settings=settings, dry_run=True)
    assert done
    for line in (
        "client 'tiktok-bridge-strapi': would create",
        "client 'kc-ios': would create",
        "client scope 'aud-orders': would create",
        "optional client scopes of 'tiktok-bridge': would create",
        "optional client scopes of 'kc-ios': would create",
    ):
        assert line in dry
    # Keycloak's default SSO Session Max (10 h) caps the Strapi client's 30 days: said, not changed.
    assert any("note: the realm's SSO Session Max (36000 s)" in line for line in dry)
    assert snapshot(bare, realm) == before
    assert run_apply(bare, realm, settings=settings)[1][-1] == "applied: 13 object(s) changed"
    assert run_apply(bare, realm, settings=settings)[1][-1] == "no changes"
    after = snapshot(bare, realm)
    for key in ("alice", "shop", "department"):
        assert after[key] == before[key], key

    user = emulator.create_user()
    async for bridge in running_bridge(settings, emulator):
        ios = await bridge.exchange(
            emulator.issue_access_token(user.open_id), client_id="ios", audience=ORDERS
        )
        web = await bridge.exchange(
            emulator.issue_access_token(user.open_id), client_id="web", audience=ORDERS
        )
        plain = await bridge.exchange(emulator.issue_access_token(user.open_id), client_id="web")
        strapi = await bridge.http.post(
            "/api/tiktok-auth-mobile/connect",
            json={"access_token": emulator.issue_access_token(user.open_id)},
        )
    for answer in (ios, web, plain, strapi):
        assert answer.status_code == 200, answer.text
    ios_claims, web_claims = claims(ios.json()["access_token"]), claims(web.json()["access_token"])
    assert ios_claims["azp"] == "kc-ios"
    assert web_claims["azp"] == "tiktok-bridge"
    assert ORDERS in ios_claims["aud"]
    assert ORDERS in web_claims["aud"]
    assert ORDERS not in claims(plain.json()["access_token"]).get("aud", [])  # optional: only when asked
    jwt = claims(strapi.json()["jwt"])
    assert jwt["azp"] == "tiktok-bridge-strapi"
    # The client's 30 days, capped by the realm's 10 h as noted (a second's slack for Keycloak's clock).
    assert 36000 - 2 <= jwt["exp"] - jwt["iat"] <= 36000
    # A shorter lifespan the administrators chose for the Strapi client is theirs: no conflict.
    with bare.admin() as admin:
        (strapi_client,) = admin.get(
            f"/realms/{realm}/clients", params={"clientId": "tiktok-bridge-strapi"}
        ).json()
        strapi_client["attributes"]["access.token.lifespan"] = "3600"
        assert (
            admin.put(f"/realms/{realm}/clients/{strapi_client['id']}", json=strapi_client).status_code == 204
        )
    assert run_apply(bare, realm, settings=settings)[1][-1] == "no changes"

    checks = await run_doctor(bare, settings, emulator, admin=doctor.AdminLogin("admin", ADMIN_PASSWORD))
    assert failing(checks) == set(), [c.line() for c in checks.values()]
    for name in ("jwt grant", "jwt grant as 'tiktok-bridge-strapi'", "jwt grant as 'kc-ios'"):
        assert name in checks
    assert "realm: client scope 'aud-orders'" in checks
    assert "realm: optional client scopes of 'kc-ios'" in checks


async def test_a_scope_named_like_an_audience_without_its_mapper_is_a_conflict_until_forced(
    bare: Bare, emulator: TikTokEmulator
) -> None:
    """A client scope of the organisation's, with the name BRIDGE_AUDIENCES gives but no audience
    mapper, is refused untouched; --force adds the mapper and keeps the scope's other settings; the doctor
    names the missing mapper before, and a broken per-app secret after."""
    realm = customer_realm(bare)
    settings = app_settings(bare, realm)
    with bare.admin() as admin:
        theirs = {"name": "aud-orders", "protocol": "openid-connect", "description": "the shop team's"}
        assert admin.post(f"/realms/{realm}/client-scopes", json=theirs).status_code == 201

    done, lines = run_apply(bare, realm, settings=settings)
    assert not done
    assert "client scope 'aud-orders': CONFLICT" in lines
    assert f"    has no audience mapper adding {ORDERS}" in lines
    admin_login = doctor.AdminLogin("admin", ADMIN_PASSWORD)
    checks = await run_doctor(bare, settings, emulator, admin=admin_login)
    assert f"has no audience mapper adding {ORDERS}" in checks["realm: client scope 'aud-orders'"].detail
    assert "--force" in checks["realm: client scope 'aud-orders'"].fix

    assert run_apply(bare, realm, settings=settings, force=True)[0]
    with bare.admin() as admin:
        (scope,) = [
            s for s in admin.get(f"/realms/{realm}/client-scopes").json() if s["name"] == "aud-orders"
        ]
    assert scope["description"] == "the shop team's"
    assert [m["config"]["included.custom.audience"] for m in scope["protocolMappers"]] == [ORDERS]
    assert run_apply(bare, realm, settings=settings)[1][-1] == "no changes"

    wrong = app_settings(bare, realm, keycloak_clients="ios=kc-ios:not-the-secret")
    checks = await run_doctor(bare, wrong, emulator)
    assert failing(checks) == {"jwt grant as 'kc-ios'"}
    assert "Keycloak refused client 'kc-ios' and its secret" in checks["jwt grant as 'kc-ios'"].detail
    assert "BRIDGE_KEYCLOAK_CLIENTS" in checks["jwt grant as 'kc-ios'"].fix


def _break_provider(bare: Bare, realm: str, **config: str) -> None:
    with bare.admin() as admin:
        provider = admin.get(f"/realms/{realm}/identity-provider/instances/tiktok").json()
        provider["config"].update(config)
        assert (
            admin.put(f"/realms/{realm}/identity-provider/instances/tiktok", json=provider).status_code == 204
        )


def _delete_provider(bare: Bare, realm: str) -> None:
    with bare.admin() as admin:
        assert admin.delete(f"/realms/{realm}/identity-provider/instances/tiktok").status_code == 204


def _undeclare(bare: Bare, realm: str) -> None:
    with bare.admin() as admin:
        profile = admin.get(f"/realms/{realm}/users/profile").json()
        profile["attributes"] = [a for a in profile["attributes"] if a["name"] != "tiktok_username"]
        assert admin.put(f"/realms/{realm}/users/profile", json=profile).status_code == 200


@pytest.mark.parametrize(
    ("case", "check", "cause"),
    [
        ("wrong client secret", "jwt grant", "Keycloak refused client 'tiktok-bridge' and its secret"),
        (
            "wrong admin client secret",
            "keycloak client",
            "Keycloak refused client 'tiktok-bridge-admin' and its secret",
        ),
        ("missing provider", "jwt grant", "no enabled identity provider has issuer"),
        ("issuer mismatch", "jwt grant", "no enabled identity provider has issuer"),
        ("undeclared attribute", "user-profile attributes", "tiktok_username not declared"),
        ("jwks unreachable", "jwt grant", "Keycloak cannot fetch the JWKS at the provider's JWKS URL"),
        ("jwks without our key", "jwt grant", "does not hold this bridge's signing key"),
        ("tiktok refuses", "tiktok credentials", "TikTok refused the client key or secret (invalid_client)"),
    ],
)
async def test_doctor_fails_naming_the_cause(
    bare: Bare, emulator: TikTokEmulator, tmp_path: Path, case: str, check: str, cause: str
) -> None:
    """Each broken piece fails exactly its own check, with the cause and a fix."""
    realm = customer_realm(bare)
    assert run_apply(bare, realm)[0]
    overrides: dict[str, Any] = {}
    if case == "wrong client secret":
        overrides["keycloak_client_secret"] = "not-the-secret"
    elif case == "wrong admin client secret":
        overrides["keycloak_admin_client_secret"] = "not-the-secret"
    elif case == "missing provider":
        _delete_provider(bare, realm)
    elif case == "issuer mismatch":
        _break_provider(bare, realm, issuer="https://old-bridge.example")
    elif case == "undeclared attribute":
        _undeclare(bare, realm)
    elif case == "jwks unreachable":
        _break_provider(bare, realm, jwksUrl=f"http://127.0.0.1:{free_port()}/.well-known/jwks.json")
    elif case == "tiktok refuses":
        overrides["tiktok_client_secret"] = "revoked-secret"
    elif case == "jwks without our key":
        # This doctor signs with a key the served bridge (and so its JWKS) does not have.
        other_key = tmp_path / "other-key.pem"
        other_key.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
        overrides["signing_key_file"] = other_key

    checks = await run_doctor(bare, bare.settings(realm, **overrides), emulator)

    assert failing(checks) == {check}, [c.line() for c in checks.values()]
    assert cause in checks[check].detail
    assert checks[check].fix
    # The report shows the failure and its fix, and never the secrets it used.
    text = doctor.report(list(checks.values()), as_json=False)
    assert f"FAIL  {check}: " in text
    assert _SECRET not in text
    assert CLIENT_SECRET not in text


async def test_the_strapi_jwt_provider_comes_and_goes_with_its_exchange_and_the_doctor_proves_it(
    bare: Bare, emulator: TikTokEmulator
) -> None:
    """With BRIDGE_STRAPI_JWT_SECRET set, apply adds the Strapi jwt provider (the bridge's issuer +
    /strapi-jwt, its JWKS) to a realm applied before, and grants it to the bridge's client without
    --force; the doctor proves a grant by it, and fails that one check, naming the provider, once the
    provider is removed; with the secret unset again apply takes the grant away (no --force) and
    leaves the provider to the administrators, who remove it by hand."""
    realm = customer_realm(bare)
    assert run_apply(bare, realm)[0]
    on = bare.settings(realm, strapi_jwt_secret="strapi-jwt-secret-of-32-characters")
    done, lines = run_apply(bare, realm, settings=on)
    assert done, lines
    granted = f"attributes.{spec.GRANT_PROVIDERS_ATTRIBUTE} is 'tiktok', needs 'tiktok##tiktok-strapi-jwt'"
    assert "identity provider 'tiktok-strapi-jwt': create" in lines
    assert "client 'tiktok-bridge': update" in lines
    assert f"    set: {granted}" in lines
    assert lines[-1] == "applied: 2 object(s) changed"
    with bare.admin() as admin:
        provider = admin.get(f"/realms/{realm}/identity-provider/instances/tiktok-strapi-jwt").json()
    assert (provider["config"]["issuer"], provider["config"]["jwksUrl"]) == (
        f"{bare.issuer}/strapi-jwt",
        f"{bare.issuer}/.well-known/jwks.json",
    )
    assert run_apply(bare, realm, settings=on)[1][-1] == "no changes"

    checks = await run_doctor(bare, on, emulator)
    assert failing(checks) == set(), [c.line() for c in checks.values()]
    assert "accepted its assertion for 'tiktok-bridge'" in checks["jwt grant by 'tiktok-strapi-jwt'"].detail

    with bare.admin() as admin:
        deleted = admin.delete(f"/realms/{realm}/identity-provider/instances/tiktok-strapi-jwt")
        assert deleted.status_code == 204
    checks = await run_doctor(bare, on, emulator)
    assert failing(checks) == {"jwt grant by 'tiktok-strapi-jwt'"}
    check = checks["jwt grant by 'tiktok-strapi-jwt'"]
    assert f"no enabled identity provider has issuer {bare.issuer}/strapi-jwt" in check.detail
    assert "'tiktok-strapi-jwt'" in check.detail

    assert run_apply(bare, realm, settings=on)[0]
    done, lines = run_apply(bare, realm)
    assert done, lines
    assert "client 'tiktok-bridge': update" in lines
    assert lines[-1] == "applied: 1 object(s) changed"
    with bare.admin() as admin:
        aliases = [p["alias"] for p in admin.get(f"/realms/{realm}/identity-provider/instances").json()]
        assert sorted(aliases) == ["tiktok", "tiktok-strapi-jwt"]
    assert failing(await run_doctor(bare, bare.settings(realm), emulator)) == set()


@pytest.mark.parametrize(
    ("case", "cause"),
    [
        ("missing provider", "missing: type jwt-authorization-grant, issuer"),
        ("issuer mismatch", "config.issuer is 'https://old-bridge.example', needs"),
    ],
)
async def test_doctor_with_admin_credentials_tells_a_missing_provider_from_a_wrong_issuer(
    bare: Bare, emulator: TikTokEmulator, case: str, cause: str
) -> None:
    """Keycloak answers both with "No Identity Provider for provided issuer"; read with admin
    credentials, the provider's own check names which, and nothing else in the realm fails."""
    realm = customer_realm(bare)
    assert run_apply(bare, realm)[0]
    if case == "missing provider":
        _delete_provider(bare, realm)
    else:
        _break_provider(bare, realm, issuer="https://old-bridge.example")

    checks = await run_doctor(bare, bare.settings(realm), emulator, admin=doctor.AdminLogin("admin", "admin"))

    assert failing(checks) == {"jwt grant", "realm: identity provider 'tiktok'"}
    assert cause in checks["realm: identity provider 'tiktok'"].detail
    assert "bridge keycloak apply" in checks["realm: identity provider 'tiktok'"].fix


async def test_doctor_with_a_wrong_admin_password_says_so_and_still_runs_the_other_checks(
    bare: Bare, emulator: TikTokEmulator
) -> None:
    realm = customer_realm(bare)
    assert run_apply(bare, realm)[0]

    checks = await run_doctor(bare, bare.settings(realm), emulator, admin=doctor.AdminLogin("admin", "wrong"))

    assert failing(checks) == {"realm objects"}
    assert "Keycloak refused the admin login of 'admin'" in checks["realm objects"].detail
    assert checks["jwt grant"].ok


# ------------------------------------------------------------------- a Keycloak without the grant


@pytest.fixture(scope="session")
def featureless(bare: Bare) -> Iterator[KeycloakServer]:
    """A third Keycloak, started with the grant disabled: minutes on a 2-core machine, so only in
    scripts/test-keycloak-versions (KEYCLOAK_TEST_FEATURE_DISABLED=1); the default run covers the
    same refusals with recorded server-info answers (tests/unit/test_realm_setup.py)."""
    if os.environ.get("KEYCLOAK_TEST_FEATURE_DISABLED") != "1":
        pytest.skip("opt-in: scripts/test-keycloak-versions starts a Keycloak without the feature")
    with reusable_instance_dir(f"featureless-{VERSION}") as instance_dir:
        server = KeycloakServer(
            instance_dir=instance_dir,
            realm_env={},
            version=VERSION,
            import_realm=False,
            features=(),
            features_disabled=("jwt-authorization-grant",),
        )
        try:
            server.prepare(fetch_distribution(version=VERSION))
            server.start(find_java_home())
            server.wait_ready(timeout=600)
            yield server
        finally:
            server.stop()


async def test_apply_and_doctor_refuse_a_keycloak_without_the_feature(
    bare: Bare, featureless: KeycloakServer, emulator: TikTokEmulator
) -> None:
    """apply stops before any write and doctor fails 'keycloak feature', both naming the start option."""
    realm = "org"
    other = Bare(
        keycloak=featureless, redis=bare.redis, issuer=bare.issuer, signing_key_file=bare.signing_key_file
    )
    with other.admin() as admin:
        admin.post("/realms", json={"realm": realm, "enabled": True})
        # The admin client as apply makes it (apply cannot here): a service account holding
        # query-users, with kc-admin-api where the realm has it (Keycloak 26.8.2 and newer).
        client = {
            "clientId": "tiktok-bridge-admin",
            "secret": _ADMIN_SECRET,
            "publicClient": False,
            "serviceAccountsEnabled": True,
        }
        admin.post(f"/realms/{realm}/clients", json=client)
        (created,) = admin.get(f"/realms/{realm}/clients", params={"clientId": "tiktok-bridge-admin"}).json()
        account = admin.get(f"/realms/{realm}/clients/{created['id']}/service-account-user").json()
        (rm,) = admin.get(f"/realms/{realm}/clients", params={"clientId": "realm-management"}).json()
        roles = [admin.get(f"/realms/{realm}/clients/{rm['id']}/roles/query-users").json()]
        admin.post(f"/realms/{realm}/users/{account['id']}/role-mappings/clients/{rm['id']}", json=roles)
        for scope in admin.get(f"/realms/{realm}/client-scopes").json():
            if scope["name"] == "kc-admin-api":
                admin.put(f"/realms/{realm}/clients/{created['id']}/default-client-scopes/{scope['id']}")

    with pytest.raises(SetupError, match="start it with --features=jwt-authorization-grant"):
        run_apply(other, realm)
    checks = await run_doctor(other, other.settings(realm), emulator)

    # The bridge's group and the permissions on it are apply's to make, which it refused to.
    assert failing(checks) == {"least privilege: reach", "keycloak feature"}, [
        c.line() for c in checks.values()
    ]
    assert "--features=jwt-authorization-grant" in checks["keycloak feature"].fix
    assert "jwt grant" not in checks
    with other.admin() as admin:
        assert admin.get(f"/realms/{realm}/identity-provider/instances").json() == []


def test_the_doctors_survey_reads_the_provider_once_and_finds_nothing_to_change(bare: Bare) -> None:
    """With admin credentials the doctor surveys the realm: after apply every step is "ok", the JWKS URL
    is the provider's own, and the provider is read once (it used to be read for the URL, then again
    for the plan)."""
    realm = customer_realm(bare)
    assert run_apply(bare, realm)[0]
    requested: list[str] = []

    def record(request: httpx2.Request) -> None:
        requested.append(f"{request.method} {request.url.path}")

    with httpx2.Client(timeout=30, event_hooks={"request": [record]}) as http:
        found = survey(bare.settings(realm), admin_user="admin", admin_password=ADMIN_PASSWORD, http=http)

    with bare.admin() as admin:
        provider = admin.get(f"/realms/{realm}/identity-provider/instances/tiktok").json()
    assert found.jwks_url == provider["config"]["jwksUrl"]
    assert {step.action for step in found.steps} == {"ok"}, [(s.name, s.action) for s in found.steps]
    reads = [r for r in requested if r == f"GET /admin/realms/{realm}/identity-provider/instances/tiktok"]
    assert len(reads) == 1, requested


async def test_doctor_with_admin_credentials_fetches_the_jwks_the_provider_names(
    bare: Bare, emulator: TikTokEmulator
) -> None:
    """Keycloak says only "Invalid signature". Without admin credentials the doctor can only fetch the
    JWKS where the bridge serves it (and finds its key there); with them it reads the provider's own
    JWKS URL, fetches that, and names it: here an address nothing listens on."""
    realm = customer_realm(bare)
    assert run_apply(bare, realm)[0]
    dead = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"
    _break_provider(bare, realm, jwksUrl=dead)

    checks = await run_doctor(bare, bare.settings(realm), emulator, admin=doctor.AdminLogin("admin", "admin"))

    assert failing(checks) == {"jwt grant"}, [c.line() for c in checks.values()]
    detail = checks["jwt grant"].detail
    assert f"the JWKS at {dead} cannot be fetched from here either" in detail
    assert "--jwks-url" in checks["jwt grant"].fix

    without_admin = await run_doctor(bare, bare.settings(realm), emulator)
    assert f"{bare.issuer}/.well-known/jwks.json and finds the bridge's key there" in (
        without_admin["jwt grant"].detail
    )


# ---------------------------------------------------------------------------- least privilege


def _leaked(bare: Bare, realm: str) -> httpx2.Client:
    """The Admin API with nothing but the bridge's admin client id and secret."""
    token = httpx2.post(
        f"{bare.keycloak.url}/realms/{realm}/protocol/openid-connect/token",
        data={"grant_type": "client_credentials"},
        auth=("tiktok-bridge-admin", _ADMIN_SECRET),
        timeout=60,
    ).json()["access_token"]
    return httpx2.Client(
        base_url=f"{bare.keycloak.url}/admin/realms/{realm}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def _takeover(bare: Bare, realm: str, staff_id: str) -> list[int]:
    """The outside test's two steps with the client secret alone: link the attacker's TikTok identity
    to a realm administrator, reset the administrator's password."""
    with _leaked(bare, realm) as leaked:
        link = leaked.post(
            f"/users/{staff_id}/federated-identity/tiktok",
            json={"identityProvider": "tiktok", "userId": "attacker-open-id", "userName": "attacker"},
        )
        reset = leaked.put(
            f"/users/{staff_id}/reset-password",
            json={"type": "password", "value": "pwned", "temporary": False},
        )
    return [link.status_code, reset.status_code]


async def test_a_realm_wide_service_account_is_taken_over_until_apply_confines_it(
    bare: Bare, emulator: TikTokEmulator
) -> None:
    """Reproduced on a service account holding manage-users and view-users, as the bridge used to set it
    up: the client secret alone links TikTok to a realm administrator and resets their password, and the
    doctor fails naming it. `apply`, without --force, takes the roles away; the same calls answer 403
    and the doctor passes."""
    realm = customer_realm(bare)
    assert run_apply(bare, realm)[0]
    with bare.admin() as admin:
        base = f"/realms/{realm}"
        (management,) = admin.get(f"{base}/clients", params={"clientId": "realm-management"}).json()
        roles_of = f"{base}/clients/{management['id']}/roles"
        (client,) = admin.get(f"{base}/clients", params={"clientId": "tiktok-bridge-admin"}).json()
        account = admin.get(f"{base}/clients/{client['id']}/service-account-user").json()
        wide = [admin.get(f"{roles_of}/{name}").json() for name in ("manage-users", "view-users")]
        path = f"{base}/users/{account['id']}/role-mappings/clients/{management['id']}"
        assert admin.post(path, json=wide).status_code == 204
        staff = {"username": "staff", "enabled": True}
        staff_id = admin.post(f"{base}/users", json=staff).headers["Location"].rsplit("/", 1)[1]
        realm_admin = admin.get(f"{roles_of}/realm-admin").json()
        mapped = admin.post(
            f"{base}/users/{staff_id}/role-mappings/clients/{management['id']}", json=[realm_admin]
        )
        assert mapped.status_code == 204

    taken = _takeover(bare, realm, staff_id)
    with bare.admin() as admin:
        assert admin.delete(f"/realms/{realm}/users/{staff_id}/federated-identity/tiktok").status_code == 204
    before = await run_doctor(bare, bare.settings(realm), emulator)
    done, lines = run_apply(bare, realm)
    refused = _takeover(bare, realm, staff_id)
    after = await run_doctor(bare, bare.settings(realm), emulator)

    assert taken == [204, 204]
    assert failing(before) == {"service-account roles", "least privilege: reach"}
    assert (
        "manage-users, view-users reach every account of the realm" in before["service-account roles"].detail
    )
    assert done
    assert "service-account roles: update" in lines
    assert "    remove manage-users" in lines
    assert refused == [403, 403]
    assert failing(after) == set(), [c.line() for c in after.values()]


async def test_apply_brings_accounts_linked_before_the_group_into_it(
    bare: Bare, emulator: TikTokEmulator
) -> None:
    """Users the bridge provisioned before it had a group are linked but outside it, so the confined
    service account could not see them and would provision a second account: `apply` names them and
    puts them in the group, and their next sign-in reaches the same account."""
    realm = customer_realm(bare)
    tiktok = emulator.create_user()
    with bare.admin() as admin:
        earlier = {
            "username": "tiktok_provisioned_earlier",
            "enabled": True,
            "federatedIdentities": [
                {"identityProvider": "tiktok", "userId": tiktok.open_id, "userName": tiktok.open_id}
            ],
        }
        assert run_apply(bare, realm)[0]  # the provider exists before the link is made
        created = admin.post(f"/realms/{realm}/users", json=earlier)
        assert created.status_code == 201, created.text
        earlier_id = created.headers["Location"].rsplit("/", 1)[1]

    done, dry = run_apply(bare, realm, dry_run=True)
    done_again, applied = run_apply(bare, realm)
    async for bridge in running_bridge(bare.settings(realm), emulator):
        signed_in = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))

    assert done
    assert done_again
    assert "members of group '/tiktok-users': would create" in dry
    assert "    add 1 account(s) linked to 'tiktok' but outside the group: tiktok_provisioned_earlier" in dry
    assert applied[-1] == "applied: 1 object(s) changed"
    assert signed_in.status_code == 200, signed_in.text
    claims = json.loads(base64.urlsafe_b64decode(signed_in.json()["access_token"].split(".")[1] + "=="))
    assert claims["sub"] == earlier_id
    with bare.admin() as admin:
        linked = admin.get(
            f"/realms/{realm}/users", params={"idpAlias": "tiktok", "idpUserId": tiktok.open_id}
        ).json()
    assert [u["id"] for u in linked] == [earlier_id]


# ------------------------------------------------------------- Keycloak 26.8.2's Admin API audience
# 26.7.4 (what runs here) has neither the kc-admin-api scope nor the audience check. The tests make
# the scope as the 26.8.2 upgrading guide describes it, and put the check in front of the Admin API
# where Keycloak does not make it itself; on a 26.8.2 or newer server (scripts/test-keycloak-versions)
# both are Keycloak's own.

ENFORCES_ADMIN_AUDIENCE = (spec.version_tuple(VERSION) or (0,)) >= (26, 8, 2)


def admin_api_audience(bare: Bare, realm: str) -> str:
    return f"{bare.keycloak.url}/admin/realms/{realm}"


def ensure_admin_api_scope(bare: Bare, realm: str) -> None:
    """`kc-admin-api` as Keycloak 26.8.2 makes it: an OpenID Connect client scope whose audience mapper
    puts the realm's Admin API URL in access tokens' `aud`, a default scope of admin-cli and
    security-admin-console only. Keycloak's own where it has one."""
    base = f"/realms/{realm}"
    with bare.admin() as admin:
        if any(s["name"] == "kc-admin-api" for s in admin.get(f"{base}/client-scopes").json()):
            return
        mapper = {
            "name": "admin api audience",
            "protocol": "openid-connect",
            "protocolMapper": "oidc-audience-mapper",
            "config": {
                "included.custom.audience": admin_api_audience(bare, realm),
                "access.token.claim": "true",
                "id.token.claim": "false",
                "introspection.token.claim": "true",
            },
        }
        scope = {"name": "kc-admin-api", "protocol": "openid-connect", "protocolMappers": [mapper]}
        created = admin.post(f"{base}/client-scopes", json=scope)
        assert created.status_code == 201, created.text
        scope_id = created.headers["Location"].rsplit("/", 1)[1]
        for client_id in ("admin-cli", "security-admin-console"):
            (client,) = admin.get(f"{base}/clients", params={"clientId": client_id}).json()
            path = f"{base}/clients/{client['id']}/default-client-scopes/{scope_id}"
            assert admin.put(path).status_code == 204


def admin_api_scope_of(bare: Bare, realm: str, client_id: str) -> str | None:
    """ "default" or "optional" if the client holds kc-admin-api, else None."""
    base = f"/realms/{realm}"
    with bare.admin() as admin:
        (client,) = admin.get(f"{base}/clients", params={"clientId": client_id}).json()
        for kind in ("default", "optional"):
            held = admin.get(f"{base}/clients/{client['id']}/{kind}-client-scopes").json()
            if any(s["name"] == "kc-admin-api" for s in held):
                return kind
    return None


def take_admin_api_scope_off(bare: Bare, realm: str, client_id: str) -> None:
    base = f"/realms/{realm}"
    with bare.admin() as admin:
        (client,) = admin.get(f"{base}/clients", params={"clientId": client_id}).json()
        (scope,) = [s for s in admin.get(f"{base}/client-scopes").json() if s["name"] == "kc-admin-api"]
        path = f"{base}/clients/{client['id']}/default-client-scopes/{scope['id']}"
        assert admin.delete(path).status_code == 204


def service_account_claims(bare: Bare, realm: str) -> dict[str, Any]:
    token = httpx2.post(
        f"{bare.keycloak.url}/realms/{realm}/protocol/openid-connect/token",
        data={"grant_type": "client_credentials"},
        auth=("tiktok-bridge-admin", _ADMIN_SECRET),
        timeout=60,
    )
    assert token.status_code == 200, token.text
    return claims(token.json()["access_token"])


def audiences(token_claims: dict[str, Any]) -> list[str]:
    aud = token_claims.get("aud", [])
    return [aud] if isinstance(aud, str) else list(aud)


async def test_apply_gives_the_admin_client_the_admin_api_scope_and_the_doctor_checks_it(
    bare: Bare, emulator: TikTokEmulator
) -> None:
    """In a realm with kc-admin-api, apply makes it a default scope of the admin client (named in the
    dry run; a rerun changes nothing) and of no minting client; the service account's token then
    carries the Admin API audience and the doctor passes. Taken off the client, the doctor fails naming
    the scope, apply and the console path; apply puts it back."""
    realm = customer_realm(bare)
    ensure_admin_api_scope(bare, realm)

    done, dry = run_apply(bare, realm, dry_run=True)
    assert done
    assert "client scope 'kc-admin-api': would create" in dry
    assert (
        "    make it a default scope of 'tiktok-bridge-admin', whose service account calls the Admin API"
    ) in dry
    assert admin_api_scope_of(bare, realm, "admin-cli") == "default"  # untouched by the dry run
    done, lines = run_apply(bare, realm)
    assert done
    assert "client scope 'kc-admin-api': done" in lines
    assert run_apply(bare, realm)[1][-1] == "no changes"

    assert admin_api_scope_of(bare, realm, "tiktok-bridge-admin") == "default"
    assert admin_api_scope_of(bare, realm, "tiktok-bridge") is None
    assert admin_api_audience(bare, realm) in audiences(service_account_claims(bare, realm))
    checks = await run_doctor(bare, bare.settings(realm), emulator)
    assert failing(checks) == set(), [c.line() for c in checks.values()]
    assert checks["keycloak admin api audience"].detail == (
        f"the service account's token carries the Admin API audience {admin_api_audience(bare, realm)}"
    )

    take_admin_api_scope_off(bare, realm, "tiktok-bridge-admin")
    assert admin_api_audience(bare, realm) not in audiences(service_account_claims(bare, realm))
    without = await run_doctor(bare, bare.settings(realm), emulator)
    surveyed = await run_doctor(
        bare, bare.settings(realm), emulator, admin=doctor.AdminLogin("admin", "admin")
    )

    check = without["keycloak admin api audience"]
    assert failing(without) == {"keycloak admin api audience"}, [c.line() for c in without.values()]
    assert "kc-admin-api" in check.detail
    assert "`bridge keycloak apply`" in check.fix
    assert "Clients > tiktok-bridge-admin > Client scopes > Add client scope > kc-admin-api" in check.fix
    assert "realm: client scope 'kc-admin-api'" in failing(surveyed)
    assert "make it a default scope of 'tiktok-bridge-admin'" in (
        surveyed["realm: client scope 'kc-admin-api'"].detail
    )
    assert "client scope 'kc-admin-api': create" in run_apply(bare, realm)[1]
    assert failing(await run_doctor(bare, bare.settings(realm), emulator)) == set()


def test_a_minting_client_holding_the_admin_api_scope_is_refused_until_forced(bare: Bare) -> None:
    """kc-admin-api on a minting client (here as an optional scope an app could ask for) stops apply,
    named; --force takes it away and leaves it on the admin client."""
    realm = customer_realm(bare)
    ensure_admin_api_scope(bare, realm)
    assert run_apply(bare, realm)[0]
    with bare.admin() as admin:
        base = f"/realms/{realm}"
        (minting,) = admin.get(f"{base}/clients", params={"clientId": "tiktok-bridge"}).json()
        (scope,) = [s for s in admin.get(f"{base}/client-scopes").json() if s["name"] == "kc-admin-api"]
        path = f"{base}/clients/{minting['id']}/optional-client-scopes/{scope['id']}"
        assert admin.put(path).status_code == 204

    done, lines = run_apply(bare, realm)
    assert not done
    assert "client scope 'kc-admin-api': CONFLICT" in lines
    assert any(line.startswith("    'tiktok-bridge' has it as an optional scope") for line in lines)
    assert admin_api_scope_of(bare, realm, "tiktok-bridge") == "optional"

    done, forced = run_apply(bare, realm, force=True)
    assert done
    assert "    remove it from 'tiktok-bridge' (optional)" in forced
    assert admin_api_scope_of(bare, realm, "tiktok-bridge") is None
    assert admin_api_scope_of(bare, realm, "tiktok-bridge-admin") == "default"


class AdminAudienceCheck(httpx2.AsyncBaseTransport):
    """Keycloak 26.8.2's Admin API audience check, as its upgrading guide describes it, put in front of
    a Keycloak that does not make it: an Admin API request whose bearer token lacks the realm's Admin
    API URL in `aud` is answered 401 without reaching Keycloak; everything else goes through."""

    def __init__(self, audience: str) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self._audience = audience

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path.startswith("/admin/"):
            bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if self._audience not in audiences(claims(bearer)):
                return httpx2.Response(401, json={"error": "HTTP 401 Unauthorized"})
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@contextlib.asynccontextmanager
async def bridge_for(bare: Bare, realm: str, emulator: TikTokEmulator) -> AsyncIterator[httpx2.AsyncClient]:
    """The bridge in process (Redis shared with other instances of the test), its TikTok calls to the
    emulator, its Admin API calls through 26.8.2's audience check where Keycloak does not make it."""
    mounts: dict[str, httpx2.AsyncBaseTransport] = {TIKTOK_API: httpx2.ASGITransport(app=emulator.app)}
    if not ENFORCES_ADMIN_AUDIENCE:
        mounts[bare.keycloak.url] = AdminAudienceCheck(admin_api_audience(bare, realm))
    app = create_app(bare.settings(realm), mounts=mounts)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://bridge.test") as http,
    ):
        yield http


async def exchange(http: httpx2.AsyncClient, emulator: TikTokEmulator, open_id: str) -> httpx2.Response:
    return await http.post(
        "/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": emulator.issue_access_token(open_id),
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        },
    )


def admin_api_refusals() -> float:
    sample = REGISTRY.get_sample_value("bridge_keycloak_admin_api_refused_total", {"reason": "unauthorized"})
    return sample or 0.0


async def test_a_refused_admin_api_fails_new_sign_ins_as_a_misconfiguration_and_known_ones_still_work(
    bare: Bare, emulator: TikTokEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """With kc-admin-api taken off the admin client (as an upgrade to 26.8.2 leaves it), a returning user
    still signs in (no Admin API call); a new one gets the misconfiguration answer (500 server_error),
    counted, with a log line naming the scope and apply; the verbose readiness fails the same check as
    the doctor. After apply the same bridge provisions again, renewing its token once."""
    realm = customer_realm(bare)
    ensure_admin_api_scope(bare, realm)
    assert run_apply(bare, realm)[0]
    known, new = emulator.create_user(), emulator.create_user()
    async with bridge_for(bare, realm, emulator) as http:
        assert (await exchange(http, emulator, known.open_id)).status_code == 200
    take_admin_api_scope_off(bare, realm, "tiktok-bridge-admin")
    # The first bridge's service-account token (with the audience) would still be valid: as if expired.
    redis = aioredis.Redis.from_url(bare.redis.url)
    await redis.delete(keys.admin_token(realm, "tiktok-bridge-admin"))
    await redis.aclose()
    before = admin_api_refusals()
    caplog.set_level(logging.ERROR, logger="bridge.keycloak.client")

    async with bridge_for(bare, realm, emulator) as http:
        returning = await exchange(http, emulator, known.open_id)
        refused = await exchange(http, emulator, new.open_id)
        readiness = await http.get("http://bridge.test:9000/readyz", params={"verbose": "true"})
        refusals = admin_api_refusals() - before
        assert run_apply(bare, realm)[0]
        after_apply = await exchange(http, emulator, new.open_id)

    assert returning.status_code == 200, returning.text
    assert refused.status_code == 500
    assert refused.json() == {
        "error": "server_error",
        "error_description": "The bridge could not complete the request.",
    }
    assert refusals >= 1
    (line,) = [r.getMessage() for r in caplog.records if r.name == "bridge.keycloak.client"]
    assert "client 'tiktok-bridge-admin' needs the default client scope kc-admin-api" in line
    assert "run `bridge keycloak apply`" in line
    deployment = {check["name"]: check for check in readiness.json()["deployment"]}
    assert readiness.json()["deployment_ok"] is False
    assert deployment["keycloak admin api audience"]["ok"] is False
    assert "kc-admin-api" in deployment["keycloak admin api audience"]["fix"]
    assert after_apply.status_code == 200, after_apply.text


async def test_an_admin_role_in_a_minting_clients_scope_is_a_conflict_until_forced(
    bare: Bare, emulator: TikTokEmulator
) -> None:
    """realm-management's manage-users mapped to the minting client's scope (its tokens could carry it)
    stops apply and fails the doctor's survey naming it; --force takes it out of the scope."""
    realm = customer_realm(bare)
    assert run_apply(bare, realm)[0]
    with bare.admin() as admin:
        base = f"/realms/{realm}"
        (management,) = admin.get(f"{base}/clients", params={"clientId": "realm-management"}).json()
        (client,) = admin.get(f"{base}/clients", params={"clientId": "tiktok-bridge"}).json()
        role = admin.get(f"{base}/clients/{management['id']}/roles/manage-users").json()
        scope = f"{base}/clients/{client['id']}/scope-mappings/clients/{management['id']}"
        assert admin.post(scope, json=[role]).status_code == 204

    refused, lines = run_apply(bare, realm)
    surveyed = await run_doctor(
        bare, bare.settings(realm), emulator, doctor.AdminLogin("admin", ADMIN_PASSWORD)
    )
    forced, forced_lines = run_apply(bare, realm, force=True)
    with bare.admin() as admin:
        left = admin.get(scope).json()

    assert not refused
    assert "token scope of client 'tiktok-bridge': CONFLICT" in lines
    assert "    its tokens may carry realm-management's manage-users: administrative roles" in lines
    assert not surveyed["realm: token scope of client 'tiktok-bridge'"].ok
    assert forced
    assert "    remove realm-management manage-users" in forced_lines
    assert left == []


# ----------------------------------------------------- the realm's TikTok web sign-in (union_id-keyed)
# The community extension keycloak-tiktok cannot run here (it needs TikTok itself); a provider of any
# type stands for it, and its accounts are made through the Admin API as the extension makes them: the
# link's user id is TikTok's union_id, the username TikTok's, the e-mail `<username>@tiktok.com`.

WEB = "tiktok-web"


def web_sign_in_provider(bare: Bare, realm: str, alias: str = WEB) -> None:
    with bare.admin() as admin:
        created = admin.post(
            f"/realms/{realm}/identity-provider/instances",
            json={
                "alias": alias,
                "providerId": "oidc",
                "enabled": True,
                "config": {
                    "authorizationUrl": "https://web.example/auth",
                    "tokenUrl": "https://web.example/token",
                    "clientId": "web",
                    "clientSecret": "web-secret",
                    "clientAuthMethod": "client_secret_post",
                },
            },
        )
        assert created.status_code == 201, created.text


def web_sign_in_account(bare: Bare, realm: str, union_id: str, username: str, alias: str = WEB) -> str:
    """An account as the extension's first web sign-in makes it (outside the bridge's group); its id."""
    with bare.admin() as admin:
        created = admin.post(
            f"/realms/{realm}/users",
            json={
                "username": username,
                "enabled": True,
                "email": f"{username}@tiktok.com".lower(),
                "federatedIdentities": [
                    {"identityProvider": alias, "userId": union_id, "userName": username}
                ],
            },
        )
        assert created.status_code == 201, created.text
        return str(created.headers["Location"].rsplit("/", 1)[1])


def user_count(bare: Bare, realm: str) -> int:
    with bare.admin() as admin:
        return int(admin.get(f"/realms/{realm}/users/count").json())


def web_settings(bare: Bare, realm: str, **overrides: Any) -> Settings:  # noqa: ANN401
    return bare.settings(realm, union_id_idp_aliases=(WEB,), redis_url=None, **overrides)


async def test_web_sign_in_accounts_are_out_of_reach_until_apply_brings_them_in(
    bare: Bare, emulator: TikTokEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured with the least-privileged service account, as the bridge runs: an account of the web
    sign-in outside the bridge's group is invisible to it (an empty search, no 403), so a first mobile
    sign-in is refused rather than given a second account. apply (dry run first: the count and names)
    gives the provider its group mapper, brings the accounts into the group with progress lines and
    records it; then the sign-in reaches that account, and a rerun has nothing to do."""
    monkeypatch.setattr("bridge.keycloak.realm_setup._PROGRESS_EVERY", 2)
    realm = customer_realm(bare)
    web_sign_in_provider(bare, realm)
    assert run_apply(bare, realm)[0]  # the bridge as it was set up before the setting named the provider
    tiktok = emulator.create_user(union_id=f"UnionId{secrets.token_hex(6)}X", username="webperson")
    web_id = web_sign_in_account(bare, realm, tiktok.union_id or "", "webperson")
    for name in ("webfriend", "webstaff"):
        web_sign_in_account(bare, realm, f"UnionId{secrets.token_hex(6)}Y", name)
    settings = web_settings(bare, realm)
    with _leaked(bare, realm) as confined:
        unseen = confined.get("/users", params={"idpAlias": WEB, "idpUserId": tiktok.union_id})
    users_before = user_count(bare, realm)

    async for bridge in running_bridge(settings, emulator):
        refused = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))
    after_refusal = user_count(bare, realm)
    dry_done, dry = run_apply(bare, realm, settings=settings, dry_run=True)
    done, applied = run_apply(bare, realm, settings=settings)
    with _leaked(bare, realm) as confined:
        seen = confined.get("/users", params={"idpAlias": WEB, "idpUserId": tiktok.union_id})
    async for bridge in running_bridge(settings, emulator):
        signed_in = await bridge.exchange(emulator.issue_access_token(tiktok.open_id))
    rerun_done, rerun = run_apply(bare, realm, settings=settings)

    assert (unseen.status_code, unseen.json()) == (200, [])
    assert refused.status_code == 500, refused.text
    assert refused.json()["error"] == "server_error"
    assert after_refusal == users_before  # no second account
    assert dry_done
    assert f"group mapper of provider '{WEB}': would create" in dry
    assert f"accounts of provider '{WEB}' in group '/tiktok-users': would create" in dry
    assert (
        f"    add 3 account(s) linked to '{WEB}' but outside the group (the bridge's service account may "
        "then manage them): webfriend, webperson, webstaff"
    ) in dry
    assert done, applied
    assert [line for line in applied if line.endswith("in the group")] == [
        f"    2/3 accounts of '{WEB}' in the group",
        f"    3/3 accounts of '{WEB}' in the group",
    ]
    with bare.admin() as admin:
        (mapper,) = admin.get(f"/realms/{realm}/identity-provider/instances/{WEB}/mappers").json()
        group = admin.get(f"/realms/{realm}/group-by-path/tiktok-users").json()
    assert mapper["identityProviderMapper"] == "oidc-hardcoded-group-idp-mapper"
    assert mapper["config"] == {"group": "/tiktok-users", "syncMode": "FORCE"}
    assert group["attributes"]["tiktok_bridge_union_id_providers"] == [WEB]
    assert [u["id"] for u in seen.json()] == [web_id]
    assert signed_in.status_code == 200, signed_in.text
    assert claims(signed_in.json()["access_token"])["sub"] == web_id
    assert user_count(bare, realm) == users_before  # the web account, no second one
    assert rerun_done
    assert rerun[-1] == "no changes"


async def test_doctor_names_web_sign_in_accounts_out_of_reach_until_apply(
    bare: Bare, emulator: TikTokEmulator
) -> None:
    """With its own credentials the doctor fails while the group does not record the provider; with
    admin credentials it also names the missing mapper and, from a sample, the accounts outside the
    group. After apply everything passes."""
    realm = customer_realm(bare)
    web_sign_in_provider(bare, realm)
    assert run_apply(bare, realm)[0]
    web_sign_in_account(bare, realm, f"UnionId{secrets.token_hex(6)}X", "webperson")
    settings = web_settings(bare, realm)
    admin_login = doctor.AdminLogin("admin", ADMIN_PASSWORD)

    before = await run_doctor(bare, settings, emulator, admin_login)
    assert run_apply(bare, realm, settings=settings)[0]
    after = await run_doctor(bare, settings, emulator, admin_login)

    mapper, accounts = (
        f"realm: group mapper of provider '{WEB}'",
        f"realm: accounts of provider '{WEB}' in group '/tiktok-users'",
    )
    assert failing(before) == {"web sign-in accounts in reach", mapper, accounts}
    assert f"does not record the accounts of {WEB}" in before["web sign-in accounts in reach"].detail
    assert "hardcoded group /tiktok-users, sync mode FORCE" in before[mapper].detail
    assert f"1 of the first 1 accounts linked to '{WEB}' are outside the group" in before[accounts].detail
    assert "webperson" in before[accounts].detail
    assert failing(after) == set(), [c.line() for c in after.values()]
    assert "records the accounts of tiktok-web" in after["web sign-in accounts in reach"].detail


def test_a_hand_made_group_mapper_is_kept_unless_its_sync_mode_differs_and_a_missing_provider_stops_apply(
    bare: Bare,
) -> None:
    """A Hardcoded Group mapper an administrator made for the bridge's group serves as it is when it
    syncs at every sign-in; with IMPORT it is a conflict (apply would change how their mapper works)
    until --force. A provider the setting names but the realm lacks stops apply, named."""
    realm = customer_realm(bare)
    web_sign_in_provider(bare, realm)
    assert run_apply(bare, realm)[0]
    mappers = f"/realms/{realm}/identity-provider/instances/{WEB}/mappers"
    hand_made = {
        "name": "web users join the app group",
        "identityProviderAlias": WEB,
        "identityProviderMapper": "oidc-hardcoded-group-idp-mapper",
        "config": {"group": "/tiktok-users", "syncMode": "IMPORT"},
    }
    with bare.admin() as admin:
        assert admin.post(mappers, json=hand_made).status_code == 201

    refused, lines = run_apply(bare, realm, settings=web_settings(bare, realm))
    forced, forced_lines = run_apply(bare, realm, settings=web_settings(bare, realm), force=True)
    again, again_lines = run_apply(bare, realm, settings=web_settings(bare, realm))
    missing, missing_lines = run_apply(
        bare, realm, settings=bare.settings(realm, union_id_idp_aliases=(WEB, "no-such-web"))
    )

    name = f"group mapper of provider '{WEB}' ('web users join the app group')"
    assert not refused
    assert f"{name}: CONFLICT" in lines
    assert "    config.syncMode is 'IMPORT', needs 'FORCE'" in lines
    assert forced
    assert f"{name}: update" in forced_lines
    assert again
    assert again_lines[-1] == "no changes"
    with bare.admin() as admin:
        (kept,) = admin.get(mappers).json()
    assert (kept["name"], kept["config"]["syncMode"]) == ("web users join the app group", "FORCE")
    assert not missing
    assert "web sign-in provider 'no-such-web': CONFLICT" in missing_lines


def test_an_administrator_linked_to_the_web_provider_stops_apply_until_forced(bare: Bare) -> None:
    """An account holding realm-admin that signs in through the web provider would, in the bridge's
    group, have its password within the service account's reach: apply refuses (nothing written, not
    even the mapper) naming it, and --force brings it in anyway."""
    realm = customer_realm(bare)
    web_sign_in_provider(bare, realm)
    assert run_apply(bare, realm)[0]
    staff_id = web_sign_in_account(bare, realm, f"UnionId{secrets.token_hex(6)}S", "webadmin")
    with bare.admin() as admin:
        base = f"/realms/{realm}"
        (management,) = admin.get(f"{base}/clients", params={"clientId": "realm-management"}).json()
        realm_admin = admin.get(f"{base}/clients/{management['id']}/roles/realm-admin").json()
        mapped = admin.post(
            f"{base}/users/{staff_id}/role-mappings/clients/{management['id']}", json=[realm_admin]
        )
        assert mapped.status_code == 204

    refused, lines = run_apply(bare, realm, settings=web_settings(bare, realm))
    with bare.admin() as admin:
        mappers_after_refusal = admin.get(f"/realms/{realm}/identity-provider/instances/{WEB}/mappers").json()
    forced, forced_lines = run_apply(bare, realm, settings=web_settings(bare, realm), force=True)
    with bare.admin() as admin:
        groups = admin.get(f"/realms/{realm}/users/{staff_id}/groups").json()

    assert not refused
    assert f"accounts of provider '{WEB}' in group '/tiktok-users': CONFLICT" in lines
    held = [line for line in lines if line.startswith("    webadmin holds realm-management's ")]
    assert len(held) == 1
    assert "manage-users" in held[0]
    assert "realm-admin" in held[0]
    assert mappers_after_refusal == []
    assert forced, forced_lines
    assert [g["path"] for g in groups] == ["/tiktok-users"]


def _follow(client: httpx2.Client, response: httpx2.Response, keycloak_url: str) -> httpx2.Response:
    """Redirects followed while they stay on Keycloak (the last one leads to the app, which is not here)."""
    while response.is_redirect and response.headers["Location"].startswith(keycloak_url):
        response = client.get(response.headers["Location"])
    return response


def _page_message(page: str) -> str:
    """What a Keycloak page says to its user (an error, a form's title), for a failing assertion."""
    found = re.search(r'class="(?:kc-feedback-text|instruction)"[^>]*>([^<]*)<', page)
    title = re.search(r"<h1[^>]*>\s*([^<]*?)\s*<", page)
    return " / ".join(m.group(1).strip() for m in (found, title) if m)


def _browser_sign_in(bare: Bare, realm: str, username: str, password: str) -> httpx2.Response:
    """A browser signing in to the app's realm through the web provider (another realm of the same
    Keycloak, with the user's password): the answer that redirects back to the app."""
    url = bare.keycloak.url
    # The browser's own HTTP logs would carry Keycloak's session cookies and the code it redirects with,
    # which the session's log audit rightly counts as leaks: this client is the test's, not the bridge's.
    quiet = [logging.getLogger(name) for name in ("httpcore2", "httpx2")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        return _signed_in(url, realm, username, password)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _signed_in(url: str, realm: str, username: str, password: str) -> httpx2.Response:
    with httpx2.Client(timeout=60) as browser:

        def plain_http(_response: httpx2.Response) -> None:
            # Keycloak marks its session cookies Secure; a browser still sends them to http://127.0.0.1
            # (a trustworthy origin), Python's cookie jar does not unless told.
            for cookie in browser.cookies.jar:
                cookie.secure = False

        browser.event_hooks["response"] = [plain_http]
        start = browser.get(
            f"{url}/realms/{realm}/protocol/openid-connect/auth",
            params={
                "client_id": "shop",
                "redirect_uri": "https://shop.example/callback",
                "response_type": "code",
                "scope": "openid",
                "kc_idp_hint": WEB,
            },
        )
        login_page = _follow(browser, start, url)
        assert login_page.status_code == 200, (login_page.url, _page_message(login_page.text))
        action = re.search(r'<form[^>]*id="kc-form-login"[^>]*action="([^"]+)"', login_page.text)
        assert action is not None, login_page.text[:2000]
        posted = browser.post(
            html.unescape(action.group(1)), data={"username": username, "password": password}
        )
        done = _follow(browser, posted, url)
    assert done.status_code in {302, 303}, (done.url, _page_message(done.text))
    assert done.headers["Location"].startswith("https://shop.example/callback"), done.headers["Location"]
    return done


def test_the_group_mapper_puts_a_real_web_sign_in_into_the_group_at_every_sign_in(bare: Bare) -> None:
    """A real browser sign-in through a provider apply gave the group mapper (an OpenID Connect provider
    standing for the TikTok extension: another realm of this Keycloak): its first sign-in creates the
    account inside the bridge's group; taken out of the group, the account is back after its next web
    sign-in (sync mode FORCE), so no account of the provider stays out of the bridge's sight."""
    realm = customer_realm(bare)
    web_realm, secret, password = (
        f"web-{secrets.token_hex(4)}",
        secrets.token_urlsafe(16),
        secrets.token_urlsafe(12),
    )
    url = bare.keycloak.url
    with bare.admin() as admin:
        assert admin.post("/realms", json={"realm": web_realm, "enabled": True}).status_code == 201
        broker_client = {
            "clientId": "org-broker",
            "secret": secret,
            "publicClient": False,
            "standardFlowEnabled": True,
            "redirectUris": [f"{url}/realms/{realm}/broker/{WEB}/endpoint"],
        }
        assert admin.post(f"/realms/{web_realm}/clients", json=broker_client).status_code == 201
        person = {
            "username": "webperson",
            "enabled": True,
            "email": "webperson@tiktok.com",
            "emailVerified": True,
            "firstName": "Web",
            "lastName": "Person",
            "credentials": [{"type": "password", "value": password, "temporary": False}],
        }
        assert admin.post(f"/realms/{web_realm}/users", json=person).status_code == 201
        oidc = f"{url}/realms/{web_realm}/protocol/openid-connect"
        provider = {
            "alias": WEB,
            "providerId": "oidc",
            "enabled": True,
            "config": {
                "authorizationUrl": f"{oidc}/auth",
                "tokenUrl": f"{oidc}/token",
                "userInfoUrl": f"{oidc}/userinfo",
                "clientId": "org-broker",
                "clientSecret": secret,
                "clientAuthMethod": "client_secret_post",
                "defaultScope": "openid email profile",
                "validateSignature": "false",
                "syncMode": "IMPORT",
            },
        }
        assert admin.post(f"/realms/{realm}/identity-provider/instances", json=provider).status_code == 201
    assert run_apply(bare, realm, settings=web_settings(bare, realm))[0]

    _browser_sign_in(bare, realm, "webperson", password)
    with bare.admin() as admin:
        (account,) = admin.get(f"/realms/{realm}/users", params={"idpAlias": WEB}).json()
        first = [g["path"] for g in admin.get(f"/realms/{realm}/users/{account['id']}/groups").json()]
        group = admin.get(f"/realms/{realm}/group-by-path/tiktok-users").json()
        left = admin.delete(f"/realms/{realm}/users/{account['id']}/groups/{group['id']}")
        assert left.status_code == 204
    _browser_sign_in(bare, realm, "webperson", password)
    with bare.admin() as admin:
        again = [g["path"] for g in admin.get(f"/realms/{realm}/users/{account['id']}/groups").json()]

    assert account["username"] == "webperson"
    assert first == ["/tiktok-users"]
    assert again == ["/tiktok-users"]
