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
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal

import httpx2

from bridge import realm_spec as spec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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


def plan(admin: Admin, settings: Settings, *, jwks_url: str | None, force: bool = False) -> list[Step]:
    """Read the realm and decide one action per object; writes nothing. `jwks_url` None: whatever
    JWKS URL the provider has is right (the doctor's view: the grant proves it works)."""
    return _plan(admin, settings, _read_provider(admin, settings), jwks_url=jwks_url, force=force)


def _read_provider(admin: Admin, settings: Settings) -> dict[str, Any] | None:
    """The realm's identity provider under the bridge's alias, None if there is none."""
    alias = settings.keycloak_idp_alias
    response = admin.call("GET", f"./identity-provider/instances/{alias}", ok=(200, 404))
    if response.status_code == HTTPStatus.NOT_FOUND:
        return None
    found = _json(response, strict=True)
    if not isinstance(found, dict):
        raise SetupError(f"Keycloak's identity provider '{alias}' is not a JSON object")
    return found


def _plan(
    admin: Admin, settings: Settings, provider: dict[str, Any] | None, *, jwks_url: str | None, force: bool
) -> list[Step]:
    steps = [_provider_step(admin, settings, provider, jwks_url, force=force)]
    own = spec.own_client(settings)
    others = spec.minting_clients(settings)
    steps.extend(_client_steps(admin, settings, own, force=force, service_account=True))
    for minting in others:
        steps.extend(_client_steps(admin, settings, minting, force=force))
    steps.extend(_audience_steps(admin, settings, [own, *others], force=force))
    steps.append(_profile_step(admin, force=force))
    return steps


def _conflict_or_update(name: str, diffs: list[str], *, force: bool, run: Callable[[], None]) -> Step:
    if not diffs:
        return Step(name, "ok")
    if force:
        return Step(name, "update", [f"overwrite: {d}" for d in diffs], run)
    return Step(name, "conflict", diffs)


def _provider_step(
    admin: Admin, settings: Settings, found: dict[str, Any] | None, jwks_url: str | None, *, force: bool
) -> Step:
    alias = settings.keycloak_idp_alias
    name = f"identity provider '{alias}'"
    wanted = spec.identity_provider(settings, jwks_url or spec.default_jwks_url(settings))
    if found is None:

        def create() -> None:
            admin.call("POST", "./identity-provider/instances", ok=(201,), json=wanted)

        return Step(
            name,
            "create",
            [f"type {spec.IDP_TYPE}, issuer {settings.issuer_url}, keys from {wanted['config']['jwksUrl']}"],
            create,
        )
    if jwks_url is None:
        wanted["config"]["jwksUrl"] = (found.get("config") or {}).get("jwksUrl")
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


def _client_uuid(admin: Admin, client_id: str) -> str | None:
    found = admin.get("./clients", params={"clientId": client_id})
    return str(found[0]["id"]) if found else None


def _client_steps(
    admin: Admin,
    settings: Settings,
    wanted: spec.MintingClient,
    *,
    force: bool,
    service_account: bool = False,
) -> list[Step]:
    """The client, its mapper, and (for the bridge's own client) its service-account roles."""
    client_id = wanted.client_id
    name = f"client '{client_id}'"
    rm_id, roles = _realm_management(admin) if service_account else ("", {})
    found_list = admin.get("./clients", params={"clientId": client_id})
    notes = _lifespan_notes(admin, wanted)
    if not found_list:

        def create() -> None:
            body = {
                **wanted.representation,
                "secret": wanted.secret,
                "protocolMappers": [spec.open_id_mapper()],
            }
            location = admin.call("POST", "./clients", ok=(201,), json=body).headers.get("Location", "")
            if not service_account:
                return
            uuid = location.rstrip("/").rsplit("/", 1)[-1]
            account = admin.get(f"./clients/{uuid}/service-account-user")
            admin.call(
                "POST",
                f"./users/{account['id']}/role-mappings/clients/{rm_id}",
                ok=(204,),
                json=list(roles.values()),
            )

        details = [
            f"confidential, secret from {wanted.secret_setting}",
            f"JWT Authorization Grant limited to '{settings.keycloak_idp_alias}'",
            f"mapper '{spec.MAPPER_NAME}'",
        ]
        lifespan = wanted.representation["attributes"].get(spec.LIFESPAN_ATTRIBUTE)
        if lifespan:
            details.append(f"access tokens live {lifespan} s")
        if service_account:
            details.append("service account with realm-management roles manage-users, view-users")
        return [Step(name, "create", details + notes, create)]
    found = found_list[0]
    uuid = str(found["id"])
    diffs = [str(d) for d in spec.differences(found, _comparable_client(wanted.representation, found))]
    current_secret = admin.get(f"./clients/{uuid}/client-secret").get("value")
    if current_secret != wanted.secret:
        diffs.append(f"secret differs from {wanted.secret_setting}")

    def update_client() -> None:
        representation = wanted.representation
        merged = copy.deepcopy(found)
        merged["attributes"] = {**(found.get("attributes") or {}), **representation["attributes"]}
        merged.update(
            {k: v for k, v in representation.items() if k != "attributes" and k not in spec.COSMETIC}
        )
        merged["secret"] = wanted.secret
        admin.call("PUT", f"./clients/{uuid}", ok=(204,), json=merged)

    step = _conflict_or_update(name, diffs, force=force, run=update_client)
    step.details.extend(notes)
    steps = [step, _mapper_step(admin, uuid, found, client_id, force=force)]
    if service_account:
        steps.append(_roles_step(admin, uuid, rm_id, roles, force=force))
    return steps


def _comparable_client(wanted: dict[str, Any], found: dict[str, Any]) -> dict[str, Any]:
    """A token lifespan the administrators set on an existing client is theirs (shortening how long a
    Strapi `jwt` works is a security choice): compared only when the client has none."""
    lifespan = spec.LIFESPAN_ATTRIBUTE
    if lifespan not in wanted["attributes"] or not (found.get("attributes") or {}).get(lifespan):
        return wanted
    return {**wanted, "attributes": {k: v for k, v in wanted["attributes"].items() if k != lifespan}}


def _lifespan_notes(admin: Admin, wanted: spec.MintingClient) -> list[str]:
    """Keycloak caps a client's access-token lifespan at the realm's SSO Session Max: say so rather
    than change a realm-wide setting the bridge does not own."""
    lifespan = int(wanted.representation["attributes"].get(spec.LIFESPAN_ATTRIBUTE) or 0)
    if not lifespan:
        return []
    session_max = int(admin.get(f"/realms/{admin.realm}").get("ssoSessionMaxLifespan") or 0)
    if not session_max or session_max >= lifespan:
        return []
    return [
        (
            f"note: the realm's SSO Session Max ({session_max} s) caps these tokens' {lifespan} s; raise it "
            "in Realm settings > Sessions if apps need the full lifespan (apply leaves realm settings alone)"
        )
    ]


def _mapper_step(admin: Admin, uuid: str, client: dict[str, Any], client_id: str, *, force: bool) -> Step:
    name = f"token mapper '{spec.MAPPER_NAME}' of client '{client_id}'"
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


def _audience_steps(
    admin: Admin, settings: Settings, clients: list[spec.MintingClient], *, force: bool
) -> list[Step]:
    """One optional client scope per audience (BRIDGE_AUDIENCES), then each minting client given the
    scopes its apps may ask for. Keycloak refuses a scope the minting client lacks (invalid_scope)."""
    catalog = settings.audience_scopes()
    if not catalog:
        return []
    existing = {str(s.get("name")): s for s in admin.get("./client-scopes")}
    steps = [
        _scope_step(admin, audience, scope, existing.get(scope), force=force)
        for audience, scope in catalog.items()
    ]
    steps.extend(_assignment_step(admin, client, force=force) for client in clients if client.scopes)
    return steps


def _audience_mappers(scope: dict[str, Any], audience: str) -> list[dict[str, Any]]:
    return [
        m
        for m in scope.get("protocolMappers") or []
        if m.get("protocolMapper") == "oidc-audience-mapper"
        and (m.get("config") or {}).get("included.custom.audience") == audience
    ]


def _scope_step(
    admin: Admin, audience: str, scope: str, found: dict[str, Any] | None, *, force: bool
) -> Step:
    name = f"client scope '{scope}'"
    wanted, mapper = spec.audience_scope(audience, scope), spec.audience_mapper(audience)
    if found is None:

        def create() -> None:
            admin.call("POST", "./client-scopes", ok=(201,), json={**wanted, "protocolMappers": [mapper]})

        return Step(name, "create", [f"optional, adds {audience} to aud (audience mapper)"], create)
    if found.get("protocol") != wanted["protocol"]:
        # Not even --force replaces a scope: other clients may hold it. Another name is the way out.
        return Step(
            name,
            "conflict",
            [
                (
                    f"it is a {found.get('protocol')!r} scope, not openid-connect: name another client scope "
                    f"for {audience} in BRIDGE_AUDIENCES (--force does not replace scopes)"
                )
            ],
        )
    scope_id = str(found["id"])
    diffs = [str(d) for d in spec.differences(found, wanted)]
    mappers = _audience_mappers(found, audience)
    if not mappers:
        diffs.append(f"has no audience mapper adding {audience}")
    else:
        diffs.extend(f"mapper: {d}" for d in spec.differences(mappers[0], mapper))

    def update() -> None:
        merged = copy.deepcopy(found)
        merged["attributes"] = {**(found.get("attributes") or {}), **wanted["attributes"]}
        merged.pop("protocolMappers", None)
        admin.call("PUT", f"./client-scopes/{scope_id}", ok=(204,), json=merged)
        models = f"./client-scopes/{scope_id}/protocol-mappers/models"
        if not mappers:
            admin.call("POST", models, ok=(201,), json=mapper)
            return
        model = mappers[0]
        fixed = {**model, "config": {**(model.get("config") or {}), **mapper["config"]}}
        admin.call("PUT", f"{models}/{model['id']}", ok=(204,), json=fixed)

    return _conflict_or_update(name, diffs, force=force, run=update)


def _assignment_step(admin: Admin, client: spec.MintingClient, *, force: bool) -> Step:
    """The audience scopes as *optional* scopes of the client: asked for, never always in `aud`."""
    name = f"optional client scopes of '{client.client_id}'"
    uuid = _client_uuid(admin, client.client_id)
    optional: set[str] = set()
    default: set[str] = set()
    if uuid is not None:
        optional = {str(s.get("name")) for s in admin.get(f"./clients/{uuid}/optional-client-scopes")}
        default = {str(s.get("name")) for s in admin.get(f"./clients/{uuid}/default-client-scopes")}
    as_default = sorted(set(client.scopes) & default)
    missing = sorted(set(client.scopes) - optional - default)
    if as_default and not force:
        return Step(
            name,
            "conflict",
            [
                f"{s} is a default scope of the client: every token would carry its audience"
                for s in as_default
            ],
        )
    if not missing and not as_default:
        return Step(name, "ok")

    def run() -> None:
        # Resolved now: the client and the scopes may have been created earlier in this run.
        client_uuid = _client_uuid(admin, client.client_id)
        ids = {str(s.get("name")): str(s.get("id")) for s in admin.get("./client-scopes")}
        for scope in as_default:
            admin.call("DELETE", f"./clients/{client_uuid}/default-client-scopes/{ids[scope]}", ok=(204,))
        for scope in [*as_default, *missing]:
            admin.call("PUT", f"./clients/{client_uuid}/optional-client-scopes/{ids[scope]}", ok=(204,))

    details = [f"add {s}" for s in missing] + [f"move {s} from default to optional" for s in as_default]
    return Step(name, "update" if as_default else "create", details, run)


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


@contextmanager
def _admin_session(
    settings: Settings, user: str, password: str, admin_realm: str, http: httpx2.Client | None
) -> Iterator[tuple[Admin, str]]:
    """Logged in, on a supported Keycloak with the grant feature, in an existing realm; with the
    Keycloak version. Shared by `apply` and the doctor's `survey`."""
    own_http = http is None
    client = http or httpx2.Client(timeout=max(30.0, settings.http_timeout))
    try:
        admin = Admin.login(
            client,
            settings.keycloak_base_url,
            settings.keycloak_realm,
            admin_realm=admin_realm,
            user=user,
            password=password,
        )
        version = check_server(admin)
        check_realm(admin)
        yield admin, version
    finally:
        if own_http:
            client.close()


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
    with _admin_session(settings, admin_user, admin_password, admin_realm, http) as (admin, version):
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


@dataclass(frozen=True, slots=True)
class Survey:
    """What `apply` would do to a realm, read with admin credentials and changing nothing (the
    doctor's deep check), and where the provider fetches the bridge's keys."""

    version: str
    steps: list[Step]
    jwks_url: str | None


def survey(
    settings: Settings,
    *,
    admin_user: str,
    admin_password: str,
    admin_realm: str = "master",
    http: httpx2.Client | None = None,
) -> Survey:
    with _admin_session(settings, admin_user, admin_password, admin_realm, http) as (admin, version):
        # One read of the provider serves the plan and says where Keycloak fetches the bridge's keys.
        found = _read_provider(admin, settings)
        jwks_url = ((found or {}).get("config") or {}).get("jwksUrl")
        steps = _plan(admin, settings, found, jwks_url=None, force=False)
        return Survey(version, steps, jwks_url)


def _label(action: Action, *, dry_run: bool) -> str:
    if action == "ok":
        return "ok, nothing to change"
    if action == "conflict":
        return "CONFLICT"
    return f"would {action}" if dry_run else action
