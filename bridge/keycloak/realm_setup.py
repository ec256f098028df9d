"""`python -m bridge keycloak apply`: configure an existing realm for the bridge, idempotently.

Everything is planned before anything is written: each object the bridge needs is read, compared with
`bridge.realm_spec`, and given one action. Any conflict (an object of the same name whose type or
settings differ) stops the run before the first write, unless `force` is given. Only what the plan
lists is written; other clients, users, attributes and unlisted fields of our objects are never sent
back changed, and nothing is deleted except what `--force` documents (docs/existing-keycloak.md): a
provider of another type under our alias, and realm-management roles beyond the two the service account
needs.

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

from bridge.domain.errors import SetupError
from bridge.keycloak import realm_spec as spec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from bridge.settings import Settings

Action = Literal["ok", "create", "update", "conflict"]


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
        if response.status_code == HTTPStatus.UNAUTHORIZED:
            # Not a missing role (that is 403): the token itself was refused. Keycloak 26.8.2 and newer
            # refuse one without the Admin API audience, which admin-cli gets from its kc-admin-api
            # scope (the upgrade gives it that scope; an administrator may have taken it away).
            raise SetupError(
                f"Keycloak refused the admin login's token on {method} {path.lstrip('.')} (HTTP 401): it "
                f"expired, or (Keycloak 26.8.2 and newer) admin-cli lacks its default client scope "
                f"'{spec.ADMIN_API_SCOPE}' in the admin realm"
            )
        if response.status_code == HTTPStatus.FORBIDDEN:
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
    found = _read_provider(admin, settings.keycloak_idp_alias)
    return _plan(admin, settings, found, jwks_url=jwks_url, force=force)


def _read_provider(admin: Admin, alias: str) -> dict[str, Any] | None:
    """The realm's identity provider under `alias`, None if there is none."""
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
    url = jwks_url or spec.default_jwks_url(settings)
    steps = [_provider_step(admin, spec.identity_provider(settings, url), provider, jwks_url, force=force)]
    if spec.strapi_jwt_enabled(settings):
        wanted = spec.strapi_jwt_provider(settings, url)
        found = _read_provider(admin, wanted["alias"])
        steps.append(_provider_step(admin, wanted, found, jwks_url, force=force))
    steps.append(_switch_step(admin))
    if settings.keycloak_group:
        steps.append(_group_step(admin, settings.keycloak_group))
        steps.append(_members_step(admin, settings.keycloak_group, settings.keycloak_idp_alias))
    own = spec.own_client(settings)
    others = spec.minting_clients(settings)
    separate = spec.separate_admin_client(settings)
    if separate:
        steps.extend(_admin_client_steps(admin, settings, force=force))
    steps.extend(_client_steps(admin, settings, own, force=force, service_account=not separate))
    for minting in others:
        steps.extend(_client_steps(admin, settings, minting, force=force))
    steps.extend(_token_scope_step(admin, settings, c, force=force) for c in [own, *others])
    steps.append(_admin_api_scope_step(admin, settings, [own, *others], force=force))
    steps.extend(_permission_steps(admin, settings))
    steps.extend(_audience_steps(admin, settings, [own, *others], force=force))
    steps.append(_profile_step(admin, force=force))
    return steps


def _conflict_or_update(
    name: str, diffs: list[str], *, force: bool, run: Callable[[], None], own: list[str] | None = None
) -> Step:
    """`own`: differences of settings nothing but the bridge can rely on (a power taken away from its
    own object, its own providers granted), as labelled lines: applied without --force."""
    own = own or []
    if not diffs and not own:
        return Step(name, "ok")
    if force or not diffs:
        return Step(name, "update", [f"overwrite: {d}" for d in diffs] + own, run)
    return Step(name, "conflict", diffs)


# Client settings whose change to False only narrows what the bridge's client can do.
_NARROWING = frozenset({"fullScopeAllowed", "serviceAccountsEnabled"})
_GRANT_PROVIDERS = f"attributes.{spec.GRANT_PROVIDERS_ATTRIBUTE}"


def _split_own(diffs: list[spec.Difference], bridge_providers: frozenset[str]) -> tuple[list[str], list[str]]:
    """(other differences, the bridge's own ones as labelled lines). Its own: a power taken away from
    its client, and the client's grant providers differing only by the bridge's providers (the Strapi
    jwt one, granted or taken away as that exchange is switched on or off)."""
    narrowing = [d for d in diffs if d.key in _NARROWING and d.wanted is False]
    granting = [d for d in diffs if d.key == _GRANT_PROVIDERS and _only_among(d, bridge_providers)]
    other = [str(d) for d in diffs if d not in narrowing and d not in granting]
    return other, [f"narrow: {d}" for d in narrowing] + [f"set: {d}" for d in granting]


def _only_among(difference: spec.Difference, aliases: frozenset[str]) -> bool:
    """Whether two `##`-joined lists of providers differ only by some of `aliases`."""

    def listed(value: object) -> set[str]:
        return set(filter(None, str(value or "").split("##")))

    return listed(difference.found) ^ listed(difference.wanted) <= aliases


def _provider_step(
    admin: Admin, wanted: dict[str, Any], found: dict[str, Any] | None, jwks_url: str | None, *, force: bool
) -> Step:
    """One of the bridge's identity providers (`wanted`, keys from the default JWKS URL unless
    `jwks_url` names one; None: whatever URL it has is right)."""
    alias = wanted["alias"]
    name = f"identity provider '{alias}'"
    if found is None:

        def create() -> None:
            admin.call("POST", "./identity-provider/instances", ok=(201,), json=wanted)

        config = wanted["config"]
        return Step(
            name,
            "create",
            [f"type {spec.IDP_TYPE}, issuer {config['issuer']}, keys from {config['jwksUrl']}"],
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


def _service_account_summary() -> str:
    return (
        f"service account with realm-management's {', '.join(sorted(spec.SERVICE_ACCOUNT_ROLES))} only; "
        "its other permissions reach the bridge's groups (fine-grained admin permissions)"
    )


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
                "protocolMappers": list(wanted.wanted_mappers),
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
            f"JWT Authorization Grant limited to {', '.join(map(repr, spec.granted_providers(settings)))}",
            f"mappers {', '.join(repr(m['name']) for m in wanted.wanted_mappers)}",
        ]
        lifespan = wanted.representation["attributes"].get(spec.LIFESPAN_ATTRIBUTE)
        if lifespan:
            details.append(f"access tokens live {lifespan} s")
        if service_account:
            details.append(_service_account_summary())
        return [Step(name, "create", details + notes, create)]
    found = found_list[0]
    uuid = str(found["id"])
    diffs, own = _split_own(
        spec.differences(found, _comparable_client(wanted.representation, found)),
        spec.bridge_providers(settings),
    )
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

    step = _conflict_or_update(name, diffs, force=force, run=update_client, own=own)
    step.details.extend(notes)
    steps = [step]
    steps += [_mapper_step(admin, uuid, found, client_id, m, force=force) for m in wanted.wanted_mappers]
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


def _mapper_step(
    admin: Admin, uuid: str, client: dict[str, Any], client_id: str, wanted: dict[str, Any], *, force: bool
) -> Step:
    name = f"token mapper '{wanted['name']}' of client '{client_id}'"
    mappers = [m for m in client.get("protocolMappers") or [] if m.get("name") == wanted["name"]]
    if not mappers:

        def create() -> None:
            admin.call("POST", f"./clients/{uuid}/protocol-mappers/models", ok=(201,), json=wanted)

        attribute = wanted["config"]["user.attribute"]
        return Step(name, "create", [f"puts {attribute} in the client's tokens"], create)
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

        return Step(name, "create", [_service_account_summary()], later)
    account = admin.get(f"./clients/{uuid}/service-account-user")
    path = f"./users/{account['id']}/role-mappings/clients/{rm_id}"
    have = {r["name"]: r for r in admin.get(path)}
    missing = [roles[n] for n in sorted(spec.SERVICE_ACCOUNT_ROLES - have.keys())]
    extra = [have[n] for n in sorted(have.keys() - spec.SERVICE_ACCOUNT_ROLES)]
    # Roles that reach every account of the realm go without --force: keeping them is the risk.
    kept = [r["name"] for r in extra if r["name"] not in spec.REALM_WIDE_ROLES]
    if kept and not force:
        return Step(
            name,
            "conflict",
            [
                (
                    f"the service account also holds {', '.join(kept)} "
                    f"(it needs only {', '.join(sorted(spec.SERVICE_ACCOUNT_ROLES))})"
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


# --------------------------------------------------------------------------- least privilege


def _switch_step(admin: Admin) -> Step:
    """Fine-grained admin permissions (v2) switched on for the realm: the only way Keycloak confines
    a service account's user management to some accounts (docs/existing-keycloak.md, "Least privilege")."""
    name = "fine-grained admin permissions"
    if admin.get(f"/realms/{admin.realm}").get("adminPermissionsEnabled"):
        return Step(name, "ok")

    def run() -> None:
        admin.call("PUT", f"/realms/{admin.realm}", ok=(204,), json={"adminPermissionsEnabled": True})

    return Step(
        name, "create", ["switch on for the realm, so the bridge's power reaches its groups only"], run
    )


def _group_step(admin: Admin, path: str) -> Step:
    name = f"group '{path}'"
    if admin.call("GET", f"./group-by-path/{path.strip('/')}", ok=(200, 404)).status_code == HTTPStatus.OK:
        return Step(name, "ok")

    def run() -> None:
        parent, _, leaf = path.rstrip("/").rpartition("/")
        if parent:
            parent_id = admin.get(f"./group-by-path/{parent.strip('/')}")["id"]
            admin.call("POST", f"./groups/{parent_id}/children", ok=(201,), json={"name": leaf})
        else:
            admin.call("POST", "./groups", ok=(201,), json={"name": leaf})

    details = ["the accounts the bridge may manage: new users join it; accounts must be in it to link TikTok"]
    return Step(name, "create", details, run)


# Pages of the user listings the members step reads, and how many names its plan shows.
_PAGE = 500
_SHOWN = 10


def _members_step(admin: Admin, path: str, alias: str) -> Step:
    """Accounts already linked to the bridge's provider but outside its group (provisioned or linked
    before the group existed) join it: the service account could not see them otherwise, and would
    provision a second account for the same TikTok identity."""
    name = f"members of group '{path}'"
    found = admin.call("GET", f"./group-by-path/{path.strip('/')}", ok=(200, 404))
    group_id = str(_json(found, strict=True)["id"]) if found.status_code == HTTPStatus.OK else None
    members = set(_all(admin, f"./groups/{group_id}/members")) if group_id else set()
    linked = _all(admin, "./users", idpAlias=alias)
    missing = {user_id: username for user_id, username in linked.items() if user_id not in members}
    if not missing:
        return Step(name, "ok")

    def run() -> None:
        target = group_id or admin.get(f"./group-by-path/{path.strip('/')}")["id"]
        for user_id in missing:
            admin.call("PUT", f"./users/{user_id}/groups/{target}", ok=(204,))

    shown = sorted(missing.values())
    listed = ", ".join(shown[:_SHOWN]) + (f" and {len(shown) - _SHOWN} more" if len(shown) > _SHOWN else "")
    details = [
        f"add {len(missing)} account(s) linked to '{alias}' but outside the group: {listed}",
        "check the list with --dry-run: the bridge's service account may then manage these accounts",
    ]
    return Step(name, "create", details, run)


def _all(admin: Admin, path: str, **params: str) -> dict[str, str]:
    """Every user of a listing (id -> username), page by page."""
    users: dict[str, str] = {}
    first = 0
    while True:
        page = admin.get(
            path, params={**params, "briefRepresentation": "true", "first": str(first), "max": str(_PAGE)}
        )
        users.update({str(u["id"]): str(u.get("username")) for u in page})
        if len(page) < _PAGE:
            return users
        first += _PAGE


def _admin_client_steps(admin: Admin, settings: Settings, *, force: bool) -> list[Step]:
    """The client whose service account calls the Admin API (BRIDGE_KEYCLOAK_ADMIN_CLIENT_ID), and its
    one role."""
    client_id, secret = settings.admin_client
    name = f"client '{client_id}'"
    wanted = spec.admin_client(settings)
    rm_id, roles = _realm_management(admin)
    found_list = admin.get("./clients", params={"clientId": client_id})
    if not found_list:

        def create() -> None:
            location = admin.call("POST", "./clients", ok=(201,), json={**wanted, "secret": secret})
            uuid = location.headers.get("Location", "").rstrip("/").rsplit("/", 1)[-1]
            account = admin.get(f"./clients/{uuid}/service-account-user")
            admin.call(
                "POST",
                f"./users/{account['id']}/role-mappings/clients/{rm_id}",
                ok=(204,),
                json=list(roles.values()),
            )

        details = [
            "confidential, secret from BRIDGE_KEYCLOAK_ADMIN_CLIENT_SECRET, no flows, no grant",
            _service_account_summary(),
        ]
        return [Step(name, "create", details, create)]
    found = found_list[0]
    uuid = str(found["id"])
    diffs = [str(d) for d in spec.differences(found, wanted)]
    if admin.get(f"./clients/{uuid}/client-secret").get("value") != secret:
        diffs.append("secret differs from BRIDGE_KEYCLOAK_ADMIN_CLIENT_SECRET")

    def update() -> None:
        merged = {**copy.deepcopy(found), **{k: v for k, v in wanted.items() if k not in spec.COSMETIC}}
        admin.call("PUT", f"./clients/{uuid}", ok=(204,), json={**merged, "secret": secret})

    step = _conflict_or_update(name, diffs, force=force, run=update)
    return [step, _roles_step(admin, uuid, rm_id, roles, force=force)]


def _token_scope_step(admin: Admin, settings: Settings, client: spec.MintingClient, *, force: bool) -> Step:
    """What the minting client's tokens may carry, with full scope off: the realm roles the bridge
    gives new users (BRIDGE_DEFAULT_REALM_ROLES), never a realm-management role. Other realm roles the
    administrators mapped are theirs. A client that is also the service account keeps query-users,
    which its own token needs."""
    name = f"token scope of client '{client.client_id}'"
    legacy = client.client_id == settings.keycloak_client_id and not spec.separate_admin_client(settings)
    allowed_admin = spec.SERVICE_ACCOUNT_ROLES if legacy else frozenset()
    uuid = _client_uuid(admin, client.client_id)
    realm_roles: set[str] = set()
    admin_roles: dict[str, dict[str, Any]] = {}
    rm_id = ""
    if uuid is not None:
        mappings = admin.get(f"./clients/{uuid}/scope-mappings")
        realm_roles = {str(r.get("name")) for r in mappings.get("realmMappings") or []}
        management = (mappings.get("clientMappings") or {}).get("realm-management") or {}
        rm_id = str(management.get("id") or "")
        admin_roles = {str(r.get("name")): r for r in management.get("mappings") or []}
    missing_realm = sorted(set(settings.default_realm_roles) - realm_roles)
    missing_admin = sorted(allowed_admin - admin_roles.keys())
    extra_admin = sorted(admin_roles.keys() - allowed_admin)
    if extra_admin and not force:
        return Step(
            name,
            "conflict",
            [f"its tokens may carry realm-management's {', '.join(extra_admin)}: administrative roles"],
        )
    if not (missing_realm or missing_admin or extra_admin):
        return Step(name, "ok")

    def run() -> None:
        client_uuid = _client_uuid(admin, client.client_id)  # may have been created earlier in this run
        base = f"./clients/{client_uuid}/scope-mappings"
        if missing_realm:
            admin.call(
                "POST", f"{base}/realm", ok=(204,), json=[_realm_role(admin, r) for r in missing_realm]
            )
        management_id = rm_id or _realm_management(admin)[0]
        if missing_admin:
            wanted = [admin.get(f"./clients/{management_id}/roles/{r}") for r in missing_admin]
            admin.call("POST", f"{base}/clients/{management_id}", ok=(204,), json=wanted)
        if extra_admin:
            gone = [admin_roles[r] for r in extra_admin]
            admin.call("DELETE", f"{base}/clients/{management_id}", ok=(204,), json=gone)

    details = [f"map realm role {r}" for r in missing_realm]
    details += [f"map realm-management {r} (its own service account's token needs it)" for r in missing_admin]
    details += [f"remove realm-management {r}" for r in extra_admin]
    return Step(name, "create" if not extra_admin else "update", details, run)


def _admin_api_scope_step(
    admin: Admin, settings: Settings, minting: list[spec.MintingClient], *, force: bool
) -> Step:
    """Keycloak 26.8.2's `kc-admin-api` scope as a default scope of the admin client, and of no minting
    client. A realm without it (Keycloak before 26.8.2) is left as it is: the scope is Keycloak's to
    create, at the upgrade, and a look-alike made here could stand in the way of the real one.

    A minting client holding it (default or optional) is a conflict, not something removed on the
    quiet as the service account's realm-wide roles are. Those roles serve only the bridge's own Admin
    API calls, so taking them away can break nothing else, and keeping them is the risk. A minting
    client's scopes shape the tokens every app receives: an administrator who gave it `kc-admin-api`
    may have an app that uses those tokens on the Admin API, and a silent removal would break that app
    at its next token with nothing in the bridge's output. Keeping it costs little meanwhile: the
    audience alone grants nothing without admin roles in the client's scope, which the token-scope
    step above already refuses. So apply names it and `--force` removes it."""
    name = f"client scope '{spec.ADMIN_API_SCOPE}'"
    admin_id = settings.admin_client[0]
    found = next((s for s in admin.get("./client-scopes") if s.get("name") == spec.ADMIN_API_SCOPE), None)
    if found is None:
        absent = (
            "this realm has none (Keycloak before 26.8.2): nothing to assign; after upgrading to 26.8.2 or "
            "newer run apply again (the Admin API then refuses tokens without it)"
        )
        return Step(name, "ok", [absent])
    scope_id = str(found["id"])
    on_admin = _scope_kind(admin, admin_id, scope_id)
    holders = {
        c.client_id: kind
        for c in minting
        if c.client_id != admin_id and (kind := _scope_kind(admin, c.client_id, scope_id))
    }
    if holders and not force:
        return Step(
            name,
            "conflict",
            [
                f"'{client}' has it as an {kind} scope: tokens it mints for users could carry the Admin API "
                "audience (it needs none: only the admin client calls the Admin API)"
                for client, kind in sorted(holders.items())
            ],
        )
    if on_admin == "default" and not holders:
        return Step(name, "ok")

    def run() -> None:
        # Resolved now: the clients may have been created earlier in this run.
        for client, kind in holders.items():
            path = f"./clients/{_client_uuid(admin, client)}/{kind}-client-scopes/{scope_id}"
            admin.call("DELETE", path, ok=(204,))
        if on_admin == "default":
            return
        uuid = _client_uuid(admin, admin_id)
        if on_admin == "optional":
            # Keycloak keeps an optional scope optional when it is PUT as default too (seen on 26.7.4).
            admin.call("DELETE", f"./clients/{uuid}/optional-client-scopes/{scope_id}", ok=(204,))
        admin.call("PUT", f"./clients/{uuid}/default-client-scopes/{scope_id}", ok=(204,))

    details = _admin_api_scope_details(settings, on_admin, holders)
    return Step(name, "create" if on_admin is None and not holders else "update", details, run)


def _scope_kind(admin: Admin, client_id: str, scope_id: str) -> str | None:
    """ "default" or "optional" if the client holds that client scope, else None (or no such client)."""
    uuid = _client_uuid(admin, client_id)
    if uuid is None:
        return None
    for kind in ("default", "optional"):
        if any(s.get("id") == scope_id for s in admin.get(f"./clients/{uuid}/{kind}-client-scopes")):
            return kind
    return None


def _admin_api_scope_details(settings: Settings, on_admin: str | None, holders: dict[str, str]) -> list[str]:
    admin_id = settings.admin_client[0]
    details: list[str] = []
    if on_admin is None:
        details.append(f"make it a default scope of '{admin_id}', whose service account calls the Admin API")
    elif on_admin == "optional":
        details.append(
            f"move it from optional to default on '{admin_id}': its service account's token carries "
            "default scopes only"
        )
    details.extend(f"remove it from '{client}' ({kind})" for client, kind in sorted(holders.items()))
    if not spec.separate_admin_client(settings) and on_admin != "default":
        details.append(
            f"note: '{admin_id}' also mints users' tokens (BRIDGE_KEYCLOAK_ADMIN_CLIENT_ID is unset), so "
            "they carry the Admin API audience too; give the Admin API a client of its own"
        )
    return details


def _realm_role(admin: Admin, name: str) -> dict[str, Any]:
    response = admin.call("GET", f"./roles/{name}", ok=(200, 404))
    if response.status_code == HTTPStatus.NOT_FOUND:
        raise SetupError(
            f"realm role '{name}' (BRIDGE_DEFAULT_REALM_ROLES) does not exist in '{admin.realm}'"
        )
    role: dict[str, Any] = _json(response, strict=True)
    return role


def _permission_steps(admin: Admin, settings: Settings) -> list[Step]:
    """The service account's policy and its permission over the members of the bridge's groups, both
    named for the bridge (so updated without --force), and the realm roles its group carries."""
    base = _permissions_base(admin)
    account = _service_account_id(admin, settings)
    policy = _named(admin, base, "policy", spec.POLICY_NAME) if base else None
    steps = [_policy_step(admin, settings, account, policy)]
    # The bridge's own group is created by its step earlier in the run; the others must exist.
    missing = [g for g in _group_ids(admin, settings.provisioning_groups)[1] if g != settings.keycloak_group]
    if missing:
        steps.append(
            Step(
                f"permission '{spec.GROUPS_PERMISSION}'",
                "conflict",
                [
                    f"group {g} does not exist (BRIDGE_DEFAULT_GROUPS names it; create it first)"
                    for g in missing
                ],
            )
        )
    elif settings.provisioning_groups:
        steps.append(_groups_permission_step(admin, base, settings.provisioning_groups))
    if settings.default_realm_roles and settings.keycloak_group:
        steps.append(_group_roles_step(admin, settings.keycloak_group, settings.default_realm_roles))
    return steps


def _group_roles_step(admin: Admin, path: str, roles: tuple[str, ...]) -> Step:
    """BRIDGE_DEFAULT_REALM_ROLES given through the bridge's group: its members hold them, and the
    service account never maps a role to a user (Keycloak's permission for that reaches every user)."""
    name = f"realm roles of group '{path}'"
    found = admin.call("GET", f"./group-by-path/{path.strip('/')}", ok=(200, 404))
    have: set[str] = set()
    if found.status_code == HTTPStatus.OK:
        group_id = _json(found, strict=True)["id"]
        have = {str(r.get("name")) for r in admin.get(f"./groups/{group_id}/role-mappings/realm")}
    missing = [r for r in roles if r not in have]
    if not missing:
        return Step(name, "ok")
    wanted = [_realm_role(admin, r) for r in missing]  # an unknown role stops the plan, named

    def run() -> None:
        group = admin.get(f"./group-by-path/{path.strip('/')}")
        admin.call("POST", f"./groups/{group['id']}/role-mappings/realm", ok=(204,), json=wanted)

    return Step(name, "create", [f"map {r} (every member holds it)" for r in missing], run)


def _permissions_base(admin: Admin) -> str | None:
    """The resource server of the realm's permissions; None until they are switched on."""
    found = admin.get("./clients", params={"clientId": spec.PERMISSIONS_CLIENT})
    return f"./clients/{found[0]['id']}/authz/resource-server" if found else None


def _named(admin: Admin, base: str, kind: str, name: str) -> dict[str, Any] | None:
    """The policy or permission of exactly that name (Keycloak's `name` filter matches parts)."""
    for item in admin.get(f"{base}/{kind}", params={"name": name, "max": "50"}):
        if item.get("name") == name:
            return dict(item)
    return None


def _service_account_id(admin: Admin, settings: Settings) -> str | None:
    uuid = _client_uuid(admin, settings.admin_client[0])
    if uuid is None:
        return None
    response = admin.call("GET", f"./clients/{uuid}/service-account-user", ok=(200, 400, 404))
    return str(_json(response).get("id")) if response.status_code == HTTPStatus.OK else None


def _group_ids(admin: Admin, paths: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(ids of the groups that exist, paths of those that do not)."""
    ids, missing = [], []
    for path in paths:
        response = admin.call("GET", f"./group-by-path/{path.strip('/')}", ok=(200, 404))
        if response.status_code == HTTPStatus.OK:
            ids.append(str(_json(response, strict=True)["id"]))
        else:
            missing.append(path)
    return ids, missing


def _policy_step(admin: Admin, settings: Settings, account: str | None, found: dict[str, Any] | None) -> Step:
    name = f"policy '{spec.POLICY_NAME}'"

    def wanted_body() -> dict[str, Any]:
        # Resolved when run: the service account may be created earlier in the same run.
        user = account or _service_account_id(admin, settings)
        return {"name": spec.POLICY_NAME, "users": [user], "logic": "POSITIVE"}

    if found is None:

        def create() -> None:
            base = _permissions_base(admin)
            admin.call("POST", f"{base}/policy/user", ok=(201,), json=wanted_body())

        return Step(name, "create", ["the bridge's service account, and no one else"], create)
    base = _permissions_base(admin)
    users = admin.get(f"{base}/policy/user/{found['id']}").get("users") or []
    if account is not None and users == [account]:
        return Step(name, "ok")

    def update() -> None:
        admin.call(
            "PUT",
            f"{base}/policy/user/{found['id']}",
            ok=(201, 204),
            json={**wanted_body(), "id": found["id"]},
        )

    return Step(name, "update", ["names the bridge's service account only"], update)


def _groups_permission_step(admin: Admin, base: str | None, groups: tuple[str, ...]) -> Step:
    name = f"permission '{spec.GROUPS_PERMISSION}'"
    details = [
        f"{', '.join(spec.GROUP_SCOPES)} on {', '.join(groups)}, for the bridge's service account only"
    ]

    def body() -> tuple[str, dict[str, Any]]:
        server = _permissions_base(admin)
        policy = _named(admin, str(server), "policy", spec.POLICY_NAME)
        assert policy is not None  # noqa: S101 - the policy step runs first
        # Resolved when run: the bridge's group may be created earlier in the same run.
        return str(server), spec.groups_permission(_group_ids(admin, groups)[0], str(policy["id"]))

    found = _named(admin, base, "permission", spec.GROUPS_PERMISSION) if base else None
    if found is None:

        def create() -> None:
            server, wanted = body()
            admin.call("POST", f"{server}/permission/scope", ok=(201,), json=wanted)

        return Step(name, "create", details, create)
    pid = found["id"]
    resources = sorted(str(r.get("name")) for r in admin.get(f"{base}/policy/{pid}/resources"))
    have_scopes = sorted(str(r.get("name")) for r in admin.get(f"{base}/policy/{pid}/scopes"))
    policies = [str(p.get("name")) for p in admin.get(f"{base}/policy/{pid}/associatedPolicies")]
    wanted_resources = sorted(_group_ids(admin, groups)[0])
    wanted_scopes = sorted(spec.GROUP_SCOPES)
    if resources == wanted_resources and have_scopes == wanted_scopes and policies == [spec.POLICY_NAME]:
        return Step(name, "ok")

    def update() -> None:
        server, wanted = body()
        admin.call("PUT", f"{server}/permission/scope/{pid}", ok=(201, 204), json={**wanted, "id": pid})

    return Step(name, "update", details, update)


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
        found = _read_provider(admin, settings.keycloak_idp_alias)
        jwks_url = ((found or {}).get("config") or {}).get("jwksUrl")
        steps = _plan(admin, settings, found, jwks_url=None, force=False)
        return Survey(version, steps, jwks_url)


def _label(action: Action, *, dry_run: bool) -> str:
    if action == "ok":
        return "ok, nothing to change"
    if action == "conflict":
        return "CONFLICT"
    return f"would {action}" if dry_run else action
