"""`python -m bridge keycloak apply`: configure an existing realm for the bridge, idempotently.

Everything is planned before anything is written: each object the bridge needs is read, compared with
`bridge.realm_spec`, and given one action. Any conflict (an object of the same name whose type or
settings differ) stops the run before the first write, unless `force` is given. Only what the plan
lists is written; other clients, users, attributes and unlisted fields of our objects are never sent
back changed, and nothing is deleted except what `--force` documents (README, "Setting up an existing
Keycloak"): a provider of another type under our alias, and realm-management roles beyond the two the
service account needs.

Admin credentials come from the command line only and live as long as this process; the token is never
printed. Behaviour relied on, checked against live Keycloak 26.7.0 and 26.7.4:
- `GET /admin/serverinfo` with a master-realm admin token carries `systemInfo.version` and `features`
  (`JWT_AUTHORIZATION_GRANT`, type DEFAULT; `enabled: false` and no `jwt-authorization-grant` provider
  type when started with `--features-disabled=jwt-authorization-grant`, seen on 26.7.4).
- a wrong admin password answers 401 `invalid_grant`; an unknown realm 404 `Realm not found.`.
- the client secret is set by the `secret` field of a client representation, on POST and on PUT.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import httpx2

from bridge import realm_spec as spec

if TYPE_CHECKING:
    from collections.abc import Callable

    from bridge.settings import Settings

Action = Literal["ok", "create", "update", "conflict"]


class SetupError(Exception):
    """A reason to stop, worded for the operator in one line (never a traceback)."""


@dataclass
class Step:
    """One object of the realm: what was found and what applying would do to it."""

    name: str
    action: Action
    details: list[str] = field(default_factory=list)
    run: Callable[[], None] | None = field(default=None, repr=False)


# ---------------------------------------------------------------------------------- admin HTTP


class Admin:
    """The few Admin REST calls `apply` makes, over one client, with errors worded for an operator."""

    def __init__(self, http: httpx2.Client, base_url: str, realm: str, token: str) -> None:
        self._http = http
        self.base_url = base_url
        self.realm = realm
        self._headers = {"Authorization": f"Bearer {token}"}

    @classmethod
    def login(
        cls, http: httpx2.Client, base_url: str, realm: str, *, admin_realm: str, user: str, password: str
    ) -> Admin:
        response = _send(
            http,
            "POST",
            f"{base_url}/realms/{admin_realm}/protocol/openid-connect/token",
            data={"grant_type": "password", "client_id": "admin-cli", "username": user, "password": password},
        )
        if response.status_code == 404:  # noqa: PLR2004
            raise SetupError(f"admin realm '{admin_realm}' does not exist on {base_url}")
        if response.status_code in {400, 401}:
            raise SetupError(
                f"Keycloak refused the admin login of '{user}' in realm '{admin_realm}': "
                "wrong user or password (or the user may not use admin-cli)"
            )
        token = _json(response).get("access_token") if response.status_code == 200 else None  # noqa: PLR2004
        if not isinstance(token, str):
            raise SetupError(f"admin login failed: HTTP {response.status_code}")
        return cls(http, base_url, realm, token)

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx2.Response:  # noqa: ANN401
        """`path` is below /admin (e.g. /serverinfo) or, starting with `./`, below the realm."""
        url = (
            f"{self.base_url}/admin/realms/{self.realm}{path[1:]}"
            if path.startswith("./")
            else f"{self.base_url}/admin{path}"
        )
        response = _send(self._http, method, url, headers=self._headers, **kwargs)
        if response.status_code in {401, 403}:
            raise SetupError(
                f"the admin user may not {method} {path.lstrip('.')}: it needs the realm-admin role of "
                f"realm '{self.realm}' (or admin of the master realm)"
            )
        if response.status_code not in ok:
            message = _json(response).get("errorMessage") or _json(response).get("error") or ""
            raise SetupError(
                f"Keycloak answered {method} {path.lstrip('.')} with {response.status_code} {message}"
            )
        return response

    def get(self, path: str, **kwargs: Any) -> Any:  # noqa: ANN401
        return _json(self.call("GET", path, **kwargs), strict=True)


def _send(http: httpx2.Client, method: str, url: str, **kwargs: Any) -> httpx2.Response:  # noqa: ANN401
    try:
        return http.request(method, url, **kwargs)
    except httpx2.HTTPError as exc:
        raise SetupError(f"cannot reach Keycloak at {_origin(url)}: {type(exc).__name__}") from exc


def _origin(url: str) -> str:
    """Scheme, host and path before Keycloak's own paths: where the operator pointed us."""
    return url.split("/admin", 1)[0].split("/realms", 1)[0]


def _json(response: httpx2.Response, *, strict: bool = False) -> Any:  # noqa: ANN401
    try:
        return response.json()
    except ValueError as exc:
        if strict:
            raise SetupError(f"Keycloak answered HTTP {response.status_code} without JSON") from exc
        return {}


# ------------------------------------------------------------------------------------- checks


def check_server(admin: Admin) -> str:
    """The Keycloak version, once it is known to be supported and to have the grant feature."""
    info = admin.get("/serverinfo")
    version = str((info.get("systemInfo") or {}).get("version") or "")
    if not spec.version_supported(version):
        raise SetupError(
            f"Keycloak {version or '(unknown version)'} is older than {spec.min_version_text()}, the oldest "
            "version the bridge supports: upgrade Keycloak first"
        )
    features = {f.get("name"): f.get("enabled") for f in info.get("features") or []}
    providers = {p.get("id") for p in info.get("identityProviders") or []}
    if features.get("JWT_AUTHORIZATION_GRANT") is False or spec.IDP_TYPE not in providers:
        raise SetupError(
            f"Keycloak {version} runs without the '{spec.FEATURE}' feature: start it with "
            f"{spec.FEATURE_OPTION} (and without it in --features-disabled)"
        )
    return version


def check_realm(admin: Admin) -> None:
    response = admin.call("GET", f"/realms/{admin.realm}", ok=(200, 404))
    if response.status_code == 404:  # noqa: PLR2004
        raise SetupError(f"realm '{admin.realm}' does not exist on {admin.base_url} (BRIDGE_KEYCLOAK_REALM)")


# ------------------------------------------------------------------------------------ planning


def plan(admin: Admin, settings: Settings, *, jwks_url: str, force: bool = False) -> list[Step]:
    """Read the realm and decide one action per object; writes nothing."""
    steps = [_provider_step(admin, settings, jwks_url, force=force)]
    steps.extend(_client_steps(admin, settings, force=force))
    steps.append(_profile_step(admin, force=force))
    return steps


def _conflict_or_update(name: str, diffs: list[str], *, force: bool, run: Callable[[], None]) -> Step:
    if not diffs:
        return Step(name, "ok")
    if force:
        return Step(name, "update", [f"overwrite: {d}" for d in diffs], run)
    return Step(name, "conflict", diffs)


def _provider_step(admin: Admin, settings: Settings, jwks_url: str, *, force: bool) -> Step:
    alias = settings.keycloak_idp_alias
    name = f"identity provider '{alias}'"
    wanted = spec.identity_provider(settings, jwks_url)
    response = admin.call("GET", f"./identity-provider/instances/{alias}", ok=(200, 404))
    if response.status_code == 404:  # noqa: PLR2004

        def create() -> None:
            admin.call("POST", "./identity-provider/instances", ok=(201,), json=wanted)

        return Step(
            name,
            "create",
            [f"type {spec.IDP_TYPE}, issuer {settings.issuer_url}, keys from {jwks_url}"],
            create,
        )
    found = _json(response, strict=True)
    if found.get("providerId") != spec.IDP_TYPE:
        if not force:
            return Step(
                name,
                "conflict",
                [
                    (
                        f"it is of type {found.get('providerId')!r}, not {spec.IDP_TYPE!r} "
                        "(another provider uses this alias)"
                    )
                ],
            )

        def replace() -> None:
            admin.call("DELETE", f"./identity-provider/instances/{alias}", ok=(204,))
            admin.call("POST", "./identity-provider/instances", ok=(201,), json=wanted)

        return Step(
            name,
            "update",
            [f"delete the {found.get('providerId')!r} provider (and its user links), create ours"],
            replace,
        )
    diffs = spec.differences(found, wanted)

    def update() -> None:
        merged = copy.deepcopy(found)
        merged["config"] = {**(found.get("config") or {}), **wanted["config"]}
        merged.update({k: v for k, v in wanted.items() if k != "config" and k not in spec.COSMETIC})
        admin.call("PUT", f"./identity-provider/instances/{alias}", ok=(204,), json=merged)

    return _conflict_or_update(name, [str(d) for d in diffs], force=force, run=update)


def _realm_management(admin: Admin) -> tuple[str, dict[str, Any]]:
    found = admin.get("./clients", params={"clientId": "realm-management"})
    if not found:
        raise SetupError(f"realm '{admin.realm}' has no realm-management client")
    rm_id = str(found[0]["id"])
    roles = {
        name: admin.get(f"./clients/{rm_id}/roles/{name}") for name in sorted(spec.SERVICE_ACCOUNT_ROLES)
    }
    return rm_id, roles


def _client_steps(admin: Admin, settings: Settings, *, force: bool) -> list[Step]:
    client_id = settings.keycloak_client_id
    secret = settings.keycloak_client_secret.get_secret_value()
    wanted = spec.client(settings)
    rm_id, roles = _realm_management(admin)
    found_list = admin.get("./clients", params={"clientId": client_id})
    if not found_list:

        def create() -> None:
            body = {**wanted, "secret": secret, "protocolMappers": [spec.open_id_mapper()]}
            location = admin.call("POST", "./clients", ok=(201,), json=body).headers.get("Location", "")
            uuid = location.rstrip("/").rsplit("/", 1)[-1]
            account = admin.get(f"./clients/{uuid}/service-account-user")
            admin.call(
                "POST",
                f"./users/{account['id']}/role-mappings/clients/{rm_id}",
                ok=(204,),
                json=list(roles.values()),
            )

        return [
            Step(
                f"client '{client_id}'",
                "create",
                [
                    "confidential, secret from BRIDGE_KEYCLOAK_CLIENT_SECRET",
                    f"JWT Authorization Grant limited to '{settings.keycloak_idp_alias}'",
                    f"mapper '{spec.MAPPER_NAME}'",
                    "service account with realm-management roles manage-users, view-users",
                ],
                create,
            )
        ]
    found = found_list[0]
    uuid = str(found["id"])
    name = f"client '{client_id}'"
    diffs = [str(d) for d in spec.differences(found, wanted)]
    current_secret = admin.get(f"./clients/{uuid}/client-secret").get("value")
    if current_secret != secret:
        diffs.append("secret differs from BRIDGE_KEYCLOAK_CLIENT_SECRET")

    def update_client() -> None:
        merged = copy.deepcopy(found)
        merged["attributes"] = {**(found.get("attributes") or {}), **wanted["attributes"]}
        merged.update({k: v for k, v in wanted.items() if k != "attributes" and k not in spec.COSMETIC})
        merged["secret"] = secret
        admin.call("PUT", f"./clients/{uuid}", ok=(204,), json=merged)

    steps = [_conflict_or_update(name, diffs, force=force, run=update_client)]
    steps.append(_mapper_step(admin, uuid, found, force=force))
    steps.append(_roles_step(admin, uuid, rm_id, roles, force=force))
    return steps


def _mapper_step(admin: Admin, uuid: str, client: dict[str, Any], *, force: bool) -> Step:
    name = f"token mapper '{spec.MAPPER_NAME}'"
    wanted = spec.open_id_mapper()
    mappers = [m for m in client.get("protocolMappers") or [] if m.get("name") == spec.MAPPER_NAME]
    if not mappers:

        def create() -> None:
            admin.call("POST", f"./clients/{uuid}/protocol-mappers/models", ok=(201,), json=wanted)

        return Step(name, "create", [f"puts {spec.ATTRIBUTES[0]} in the client's tokens"], create)
    found = mappers[0]

    def update() -> None:
        merged = {**found, "config": {**(found.get("config") or {}), **wanted["config"]}}
        merged["protocolMapper"] = wanted["protocolMapper"]
        admin.call("PUT", f"./clients/{uuid}/protocol-mappers/models/{found['id']}", ok=(204,), json=merged)

    return _conflict_or_update(
        name, [str(d) for d in spec.differences(found, wanted)], force=force, run=update
    )


def _roles_step(admin: Admin, uuid: str, rm_id: str, roles: dict[str, Any], *, force: bool) -> Step:
    name = "service-account roles"
    if not admin.get(f"./clients/{uuid}").get("serviceAccountsEnabled"):
        # Only reachable under --force: the client update switches the service account on first.
        def later() -> None:
            step = _roles_step(admin, uuid, rm_id, roles, force=True)
            if step.run is not None:
                step.run()

        return Step(name, "create", ["manage-users, view-users of realm-management"], later)
    account = admin.get(f"./clients/{uuid}/service-account-user")
    path = f"./users/{account['id']}/role-mappings/clients/{rm_id}"
    have = {r["name"]: r for r in admin.get(path)}
    missing = [roles[n] for n in sorted(spec.SERVICE_ACCOUNT_ROLES - have.keys())]
    extra = [have[n] for n in sorted(have.keys() - spec.SERVICE_ACCOUNT_ROLES)]
    if extra and not force:
        return Step(
            name,
            "conflict",
            [
                (
                    f"the service account also holds {', '.join(r['name'] for r in extra)} "
                    "(it needs exactly manage-users, view-users)"
                )
            ],
        )
    if not missing and not extra:
        return Step(name, "ok")

    def run() -> None:
        if missing:
            admin.call("POST", path, ok=(204,), json=missing)
        if extra:
            admin.call("DELETE", path, ok=(204,), json=extra)

    details = [f"add {r['name']}" for r in missing] + [f"remove {r['name']}" for r in extra]
    return Step(name, "create" if not extra else "update", details, run)


def _profile_step(admin: Admin, *, force: bool) -> Step:
    name = "user-profile attributes"
    profile = admin.get("./users/profile")
    attributes: list[dict[str, Any]] = profile.get("attributes") or []
    by_name = {a.get("name"): a for a in attributes}
    details: list[str] = []
    conflicts: list[str] = []
    changed = copy.deepcopy(profile)
    new_attributes = changed.setdefault("attributes", [])
    for attribute in spec.ATTRIBUTES:
        wanted = spec.profile_attribute(attribute)
        found = by_name.get(attribute)
        if found is None:
            new_attributes.append(wanted)
            details.append(f"declare {attribute}")
            continue
        diffs = [str(d) for d in spec.differences(found, _comparable(wanted))]
        if diffs:
            conflicts.extend(f"{attribute}: {d}" for d in diffs)
            index = next(i for i, a in enumerate(new_attributes) if a.get("name") == attribute)
            new_attributes[index] = {**found, **wanted}
    groups = changed.setdefault("groups", [])
    if not any(g.get("name") == spec.ATTRIBUTE_GROUP for g in groups):
        groups.append(spec.profile_group())
        details.append(f"attribute group '{spec.ATTRIBUTE_GROUP}'")
    if conflicts and not force:
        return Step(name, "conflict", conflicts)

    def run() -> None:
        admin.call("PUT", "./users/profile", ok=(200,), json=changed)

    if conflicts:
        return Step(name, "update", details + [f"overwrite {c}" for c in conflicts], run)
    if details:
        return Step(name, "create", details, run)
    return Step(name, "ok")


def _comparable(attribute: dict[str, Any]) -> dict[str, Any]:
    """What makes an attribute work for the bridge: its name, validations, permissions and
    cardinality; the group it is shown in is the administrators' choice."""
    return {k: v for k, v in attribute.items() if k != "group"}


# ---------------------------------------------------------------------------------- the command


def apply(
    settings: Settings,
    *,
    admin_user: str,
    admin_password: str,
    admin_realm: str = "master",
    jwks_url: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    out: Callable[[str], None] = print,
    http: httpx2.Client | None = None,
) -> bool:
    """Plan, show, and (unless a dry run or a conflict) carry out. True when the realm is as needed."""
    jwks_url = jwks_url or spec.default_jwks_url(settings)
    own_http = http is None
    client = http or httpx2.Client(timeout=max(30.0, settings.http_timeout))
    try:
        admin = Admin.login(
            client,
            settings.keycloak_base_url,
            settings.keycloak_realm,
            admin_realm=admin_realm,
            user=admin_user,
            password=admin_password,
        )
        version = check_server(admin)
        check_realm(admin)
        out(f"Keycloak {version}, realm '{settings.keycloak_realm}'")
        steps = plan(admin, settings, jwks_url=jwks_url, force=force)
        for step in steps:
            out(f"{step.name}: {_label(step.action, dry_run=dry_run)}")
            for detail in step.details:
                out(f"    {detail}")
        conflicts = [s for s in steps if s.action == "conflict"]
        if conflicts:
            out(
                f"refused: {len(conflicts)} object(s) conflict with what the bridge needs; nothing was "
                "changed. Fix them by hand, or run again with --force to overwrite exactly the settings "
                "listed"
            )
            return False
        pending = [s for s in steps if s.action in {"create", "update"}]
        if not pending:
            out("no changes")
            return True
        if dry_run:
            out(f"dry run: {len(pending)} object(s) would change; nothing was changed")
            return True
        for step in pending:
            assert step.run is not None  # noqa: S101 - every create/update step carries its action
            step.run()
            out(f"{step.name}: done")
        out(f"applied: {len(pending)} object(s) changed")
        return True
    finally:
        if own_http:
            client.close()


def _label(action: Action, *, dry_run: bool) -> str:
    if action == "ok":
        return "ok, nothing to change"
    if action == "conflict":
        return "CONFLICT"
    return f"would {action}" if dry_run else action
