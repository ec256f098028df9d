"""`python -m bridge doctor`: does this deployment work, end to end, and if not, what to fix.

Only the bridge's own runtime credentials are used: TikTok's client key and secret, the minting
clients' secrets, and the admin client's service account (which holds realm-management's query-users
and fine-grained permissions over the bridge's groups, so it may not read identity providers or
clients: those are proven by what Keycloak does, not by reading their settings). Whether that service
account reaches further is probed on its own account, which lies outside the bridge's groups; whether
a minting client has full scope only the admin survey can read.
`run_checks` is the reusable part (a verbose readiness endpoint can call it); each check is one
`Check` with a fix in one sentence when it fails. Optional admin credentials (`--admin-user`, never a
runtime setting) add a read-only survey of the realm by `keycloak apply`'s planner: one check per
object, naming the setting that differs where Keycloak's own answers cannot (below).

Keycloak behaviour relied on, checked against live Keycloak 26.7.0 and 26.7.4:
- `GET /admin/serverinfo` answers a realm's service account with `features` but without `systemInfo`
  (no version). The feature `IDENTITY_ASSERTION_JWT` is listed by 26.7.0 and 26.7.4 and is new in
  26.7.0 by its release notes (no 26.6 server could be fetched to see its absence), so its presence
  stands in for the version floor.
- The JWT grant checks, in this order: the client may use the grant ("JWT Authorization Grant is not
  supported for the requested client"), a provider has the assertion's issuer ("No Identity Provider for
  provided issuer"), the client may use that provider ("Identity Provider is not allowed for the
  client"), the signature against the provider's keys ("Invalid signature": also what a JWKS that
  cannot be fetched gives), and only then the user ("User not found"). So "User not found" for a subject
  nobody is linked to proves client, issuer, provider, JWKS and signature, and creates nothing.
- A wrong client secret answers `unauthorized_client`, an unknown client `invalid_client`.
- The realm's discovery document lists its OpenID Connect client scopes in `scopes_supported`, a
  `kc-admin-api` scope an administrator created among them (checked on 26.7.4); the service account
  may not list client scopes itself (403), and asking for a scope in its token request answers
  `invalid_scope` alike for a scope the realm lacks and one its client lacks.
- A requested scope is checked after the user lookup (an unknown scope still answers "User not found"),
  so audience scopes are checked only by the admin survey.
- `DELETE /users/{id}/federated-identity/{alias}` checks the caller may manage that user before it
  looks for the link: 403 for a user out of the service account's reach, 404 "Link not found" for one
  within it (checked on 26.7.4). On the service account's own user, with an alias no provider has,
  it changes nothing either way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httpx2

from bridge.domain.model import strapi_jwt_idp_alias, strapi_jwt_issuer
from bridge.keycloak import realm_spec as spec
from bridge.keycloak.assertions import signer_from_settings
from bridge.keycloak.client import GRANT_TYPE_JWT_BEARER

if TYPE_CHECKING:
    from collections.abc import Callable

    from bridge.settings import Settings
    from bridge.storage.redis_connection import RedisClient

# An identity-provider alias no realm has: the reach probe's link removal never finds anything.
_PROBE_ALIAS = "bridge-doctor-probe-none"
# A feature Keycloak lists from 26.7.0 on (26.7.0 release notes: "identity-assertion-jwt", new).
_FEATURE_SINCE_26_7 = "IDENTITY_ASSERTION_JWT"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: what was checked, whether it passed, and how to fix it if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"
        return text if self.ok else f"{text}. Fix: {self.fix}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stop(Exception):
    """Later checks depend on this one; they are skipped (the failed check says why)."""


class _AdminApiRefused(_Stop):
    """Keycloak refuses the service account's token: the later Admin API checks are skipped, but not
    the grants, which need no Admin API call (a sign-in of a known user works meanwhile)."""


@dataclass
class _Context:
    settings: Settings
    http: httpx2.AsyncClient
    results: list[Check]
    token: str = ""
    realm_issuer: str = ""
    # The realm's client scopes as its discovery document lists them (`scopes_supported`).
    realm_scopes: frozenset[str] = frozenset()
    # Where the provider fetches the bridge's keys: known with admin credentials, else the default.
    jwks_url: str = ""
    # The process's own Redis client, when a running bridge asks (its verbose readiness); else None,
    # and the Redis check opens a client of its own for the run.
    redis: RedisClient | None = None

    def passed(self, name: str, detail: str) -> None:
        self.results.append(Check(name, ok=True, detail=detail))

    def failed(self, name: str, detail: str, fix: str) -> None:
        self.results.append(Check(name, ok=False, detail=detail, fix=fix))


@dataclass(frozen=True, slots=True)
class AdminLogin:
    """Optional Keycloak admin credentials (`doctor --admin-user`): with them the doctor also reads
    the realm's objects and compares them with what `apply` makes, naming the exact setting that is
    wrong. Given on the command line only, never through the bridge's settings."""

    user: str
    password: str = field(repr=False)
    realm: str = "master"


async def run_checks(
    settings: Settings,
    *,
    http: httpx2.AsyncClient | None = None,
    admin: AdminLogin | None = None,
    redis: RedisClient | None = None,
) -> list[Check]:
    """Every check, in dependency order; a check whose prerequisite failed is left out. `http` and
    `redis`: a running bridge's own clients (the command line opens its own for the run)."""
    own = http is None
    client = http or httpx2.AsyncClient(timeout=settings.http_timeout)
    ctx = _Context(settings, client, [Check("settings", ok=True, detail="BRIDGE_* settings are valid")])
    ctx.redis = redis
    ctx.jwks_url = spec.default_jwks_url(settings)
    try:
        await _tiktok(ctx)
        stopped = False
        for check in (_keycloak_realm, _service_account, _admin_api_audience, _reach, _server, _profile):
            try:
                await check(ctx)
            except _Stop as stop:
                stopped = not isinstance(stop, _AdminApiRefused)
                break
        if admin is not None:
            await _realm_objects(ctx, admin)
        if not stopped:
            await _grant(ctx, "jwt grant", spec.own_client(settings))
            for minting in spec.minting_clients(settings):
                await _grant(ctx, f"jwt grant as '{minting.client_id}'", minting)
            if spec.strapi_jwt_enabled(settings):
                # The Strapi jwt exchange mints by its own provider, as any of these clients.
                for minting in (spec.own_client(settings), *spec.minting_clients(settings)):
                    name = f"jwt grant by '{strapi_jwt_idp_alias(settings.keycloak_idp_alias)}'"
                    if minting.client_id != settings.keycloak_client_id:
                        name += f" as '{minting.client_id}'"
                    await _grant(ctx, name, minting, strapi_jwt=True)
        await _redis(ctx)
    finally:
        if own:
            await client.aclose()
    return ctx.results


async def _send(ctx: _Context, method: str, url: str, **kwargs: Any) -> httpx2.Response | str:  # noqa: ANN401
    """The answer, or a one-line reason it could not be had."""
    try:
        return await ctx.http.request(method, url, **kwargs)
    except httpx2.HTTPError as exc:
        return f"cannot reach {url.split('?', 1)[0]}: {type(exc).__name__}"


def _body(response: httpx2.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# --------------------------------------------------------------------------------------- TikTok


async def _tiktok(ctx: _Context) -> None:
    """TikTok's client-credentials grant proves key and secret without any user."""
    name = "tiktok credentials"
    settings = ctx.settings
    url = f"{settings.tiktok.base_url}/v2/oauth/token/"
    answer = await _send(
        ctx,
        "POST",
        url,
        data={
            "client_key": settings.tiktok.client_key,
            "client_secret": settings.tiktok.client_secret.get_secret_value(),
            "grant_type": "client_credentials",
        },
    )
    if isinstance(answer, str):
        ctx.failed(name, answer, "Check BRIDGE_TIKTOK_API_URL and that this host may reach it.")
        return
    body = _body(answer)
    # TikTok often answers errors with HTTP 200: success is an access token, nothing else.
    if isinstance(body.get("access_token"), str):
        ctx.passed(name, f"{settings.tiktok.base_url} accepted the client key and secret")
        return
    error = str(body.get("error") or f"HTTP {answer.status_code}")
    if error in {"invalid_client", "invalid_request", "unauthorized_client"}:
        ctx.failed(
            name,
            f"TikTok refused the client key or secret ({error})",
            "Set BRIDGE_TIKTOK_CLIENT_KEY and BRIDGE_TIKTOK_CLIENT_SECRET to your app's values from the "
            "TikTok developer portal.",
        )
        return
    ctx.failed(name, f"TikTok answered {error}", "Retry later; if it persists, check TikTok's status page.")


# ------------------------------------------------------------------------------------- Keycloak


async def _keycloak_realm(ctx: _Context) -> None:
    name = "keycloak realm"
    settings = ctx.settings
    url = f"{settings.keycloak_base_url}/realms/{settings.keycloak_realm}/.well-known/openid-configuration"
    answer = await _send(ctx, "GET", url)
    if isinstance(answer, str):
        ctx.failed(name, answer, "Check BRIDGE_KEYCLOAK_URL and that Keycloak is running and reachable.")
        raise _Stop
    if answer.status_code == 404:  # noqa: PLR2004
        ctx.failed(
            name,
            f"realm '{settings.keycloak_realm}' does not exist",
            "Set BRIDGE_KEYCLOAK_REALM to an existing realm, or create it and run `bridge keycloak apply`.",
        )
        raise _Stop
    discovery = _body(answer)
    issuer = discovery.get("issuer")
    if answer.status_code != 200 or not isinstance(issuer, str):  # noqa: PLR2004
        ctx.failed(name, f"discovery answered HTTP {answer.status_code}", "Check BRIDGE_KEYCLOAK_URL.")
        raise _Stop
    ctx.realm_issuer = issuer
    scopes = discovery.get("scopes_supported")
    ctx.realm_scopes = frozenset(str(s) for s in scopes) if isinstance(scopes, list) else frozenset()
    ctx.passed(name, f"reachable, issuer {issuer}")


async def _service_account(ctx: _Context) -> None:
    name = "keycloak client"
    settings = ctx.settings
    client_id, secret = settings.admin_client
    setting = (
        "BRIDGE_KEYCLOAK_ADMIN_CLIENT_SECRET"
        if spec.separate_admin_client(settings)
        else "BRIDGE_KEYCLOAK_CLIENT_SECRET"
    )
    answer = await _send(
        ctx,
        "POST",
        f"{settings.keycloak_base_url}/realms/{settings.keycloak_realm}/protocol/openid-connect/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
    )
    if isinstance(answer, str):
        ctx.failed(name, answer, "Check BRIDGE_KEYCLOAK_URL.")
        raise _Stop
    body = _body(answer)
    token = body.get("access_token")
    if not isinstance(token, str):
        error = body.get("error")
        if error in {"unauthorized_client", "invalid_client"}:
            detail = f"Keycloak refused client '{client_id}' and its secret ({error})"
            fix = (
                f"Set {setting} to the client's secret, or run `bridge keycloak apply` to create the "
                "client with it."
            )
        else:
            detail = f"no service-account token: HTTP {answer.status_code} {error or ''}".rstrip()
            fix = "Enable the client's service account (run `bridge keycloak apply`)."
        ctx.failed(name, detail, fix)
        raise _Stop
    ctx.token = token
    ctx.passed(name, f"'{client_id}' authenticates and has a service account")
    _separate_clients(ctx)
    roles = set(_claims(token).get("resource_access", {}).get("realm-management", {}).get("roles", []))
    needed = ", ".join(sorted(spec.SERVICE_ACCOUNT_ROLES))
    if roles == spec.SERVICE_ACCOUNT_ROLES:
        ctx.passed("service-account roles", f"realm-management's {needed} only")
        return
    missing, extra = sorted(spec.SERVICE_ACCOUNT_ROLES - roles), sorted(roles - spec.SERVICE_ACCOUNT_ROLES)
    parts = [f"missing {', '.join(missing)}"] if missing else []
    wide = [r for r in extra if r in spec.REALM_WIDE_ROLES]
    if wide:
        parts.append(f"{', '.join(wide)} reach every account of the realm")
    if other := [r for r in extra if r not in spec.REALM_WIDE_ROLES]:
        parts.append(f"more than needed: {', '.join(other)}")
    ctx.failed(
        "service-account roles",
        "; ".join(parts),
        f"Give the service account realm-management's {needed} only; its other permissions come from "
        "fine-grained admin permissions on the bridge's groups (`bridge keycloak apply` does both).",
    )


def _separate_clients(ctx: _Context) -> None:
    """A client that mints users' tokens and also holds the service account puts an admin role in the
    scope of every token it mints: a user who holds that role gets it in the bridge's token."""
    name = "least privilege: clients"
    if spec.separate_admin_client(ctx.settings):
        ctx.passed(name, "the Admin API is called by a client of its own, which mints no token")
        return
    ctx.failed(
        name,
        f"'{ctx.settings.keycloak_client_id}' both mints users' tokens and holds the service account, so "
        "its tokens may carry realm-management's query-users",
        "Set BRIDGE_KEYCLOAK_ADMIN_CLIENT_ID and BRIDGE_KEYCLOAK_ADMIN_CLIENT_SECRET to a client of its own "
        "(`bridge keycloak apply` creates it) and switch the service account of the minting client off.",
    )


async def _admin_api_audience(ctx: _Context) -> None:
    """Keycloak 26.8.2 and newer answer 401 on the Admin API to a token whose `aud` lacks the realm's
    Admin API URL, which the `kc-admin-api` client scope adds. The service account can read neither
    the version nor the realm's client scopes, so the audience is required where Keycloak shows it
    matters: the realm's discovery document lists a `kc-admin-api` scope (a client scope is listed
    unless hidden from it; seen on 26.7.4), or the Admin API refuses the token it just issued."""
    name = "keycloak admin api audience"
    settings = ctx.settings
    realm, client_id = settings.keycloak_realm, settings.admin_client[0]
    audiences = _claims(ctx.token).get("aud")
    audiences = (
        [audiences] if isinstance(audiences, str) else audiences if isinstance(audiences, list) else []
    )
    carried = [str(a) for a in audiences if spec.is_admin_api_audience(str(a), realm)]
    # Any Admin API call shows it: Keycloak authenticates the token (401) before it authorizes (403).
    probe = await _admin_get(ctx, f"/realms/{realm}/users/profile")
    if isinstance(probe, str):
        ctx.failed(name, probe, "Check BRIDGE_KEYCLOAK_URL.")
        raise _AdminApiRefused
    refused = probe.status_code == HTTPStatus.UNAUTHORIZED
    listed = spec.ADMIN_API_SCOPE in ctx.realm_scopes
    fix = (
        f"Give client '{client_id}' the default client scope {spec.ADMIN_API_SCOPE}: run `bridge keycloak "
        f"apply`, or in the admin console Clients > {client_id} > Client scopes > Add client scope > "
        f"{spec.ADMIN_API_SCOPE} (Default)."
    )
    if refused and carried:
        ctx.failed(
            name,
            f"Keycloak refuses the service account's token on the Admin API (HTTP 401) although it carries "
            f"the Admin API audience {carried[0]}",
            "See Keycloak's log for why; BRIDGE_KEYCLOAK_URL must reach Keycloak under a host name it serves "
            "the realm at.",
        )
        raise _AdminApiRefused
    if refused:
        ctx.failed(
            name,
            f"Keycloak refuses the service account's token on the Admin API (HTTP 401), and the token lacks "
            f"the Admin API audience {spec.admin_api_audience(settings)}: Keycloak 26.8.2 and newer require "
            f"the {spec.ADMIN_API_SCOPE} client scope, which '{client_id}' does not have",
            fix,
        )
        raise _AdminApiRefused
    if carried:
        ctx.passed(name, f"the service account's token carries the Admin API audience {carried[0]}")
        return
    if listed:
        ctx.failed(
            name,
            f"the realm has the client scope {spec.ADMIN_API_SCOPE} but the service account's token lacks "
            f"the Admin API audience it adds: Keycloak 26.8.2 and newer refuse such a token (HTTP 401)",
            fix,
        )
        return
    ctx.passed(
        name,
        f"not needed here: the realm lists no {spec.ADMIN_API_SCOPE} client scope and the Admin API accepts "
        "the token without its audience (Keycloak before 26.8.2); after upgrading, run `bridge keycloak "
        "apply`",
    )


async def _reach(ctx: _Context) -> None:
    """The service account may manage the members of the bridge's groups and no one else: probed on its
    own user (never a member) with a link removal that changes nothing, and on its group's path."""
    name = "least privilege: reach"
    settings = ctx.settings
    realm_admin = f"/realms/{settings.keycloak_realm}"
    own = _claims(ctx.token).get("sub")
    probe = await _send(
        ctx,
        "DELETE",
        f"{settings.keycloak_base_url}/admin{realm_admin}/users/{own}/federated-identity/{_PROBE_ALIAS}",
        headers={"Authorization": f"Bearer {ctx.token}"},
    )
    if isinstance(probe, str):
        ctx.failed(name, probe, "Check BRIDGE_KEYCLOAK_URL.")
        return
    if probe.status_code != HTTPStatus.FORBIDDEN:
        ctx.failed(
            name,
            f"the service account may manage accounts outside the bridge's groups (HTTP {probe.status_code} "
            "on an account outside them): a leaked client secret reaches every account",
            "Confine it with fine-grained admin permissions to the bridge's groups and take realm-wide user "
            "roles away (`bridge keycloak apply` does).",
        )
        return
    if not settings.keycloak_group:
        ctx.failed(
            name,
            "BRIDGE_KEYCLOAK_GROUP is empty: the service account has no group to manage users in",
            "Set BRIDGE_KEYCLOAK_GROUP (default /tiktok-users) and run `bridge keycloak apply`.",
        )
        return
    group = await _admin_get(ctx, f"{realm_admin}/group-by-path/{settings.keycloak_group.strip('/')}")
    if isinstance(group, str) or group.status_code != HTTPStatus.OK:
        status = group if isinstance(group, str) else f"HTTP {group.status_code}"
        ctx.failed(
            name,
            f"the service account cannot see group {settings.keycloak_group} ({status}): it may not create "
            "or find users there",
            "Run `bridge keycloak apply` (it creates the group and the service account's permission on it).",
        )
        return
    ctx.passed(
        name, f"the service account reaches the members of {settings.keycloak_group}, not other accounts"
    )


def _claims(token: str) -> dict[str, Any]:
    """The claims of a token Keycloak just gave us over its own connection: read, not verified."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


async def _admin_get(ctx: _Context, path: str) -> httpx2.Response | str:
    return await _send(
        ctx,
        "GET",
        f"{ctx.settings.keycloak_base_url}/admin{path}",
        headers={"Authorization": f"Bearer {ctx.token}"},
    )


async def _server(ctx: _Context) -> None:
    answer = await _admin_get(ctx, "/serverinfo")
    if isinstance(answer, str) or answer.status_code != 200:  # noqa: PLR2004
        status = answer if isinstance(answer, str) else f"HTTP {answer.status_code}"
        ctx.failed(
            "keycloak version", f"server info unavailable: {status}", "Check the service account's roles."
        )
        raise _Stop
    info = _body(answer)
    version = str((info.get("systemInfo") or {}).get("version") or "")
    features = {str(f.get("name")): bool(f.get("enabled")) for f in info.get("features") or []}
    minimum = spec.min_version_text()
    if version:
        supported, shown = spec.version_supported(version), version
    else:
        supported, shown = _FEATURE_SINCE_26_7 in features, f"{minimum} or newer (by its feature list)"
        if not supported:
            shown = f"older than {minimum} (by its feature list)"
    if not supported:
        ctx.failed("keycloak version", f"Keycloak {shown}", f"Upgrade Keycloak to {minimum} or newer.")
        raise _Stop
    ctx.passed("keycloak version", f"Keycloak {shown}")
    if not features.get("JWT_AUTHORIZATION_GRANT"):
        ctx.failed(
            "keycloak feature",
            f"the '{spec.FEATURE}' feature is disabled",
            f"Start Keycloak with {spec.FEATURE_OPTION} (and not in --features-disabled).",
        )
        raise _Stop
    ctx.passed("keycloak feature", f"'{spec.FEATURE}' is enabled")


async def _profile(ctx: _Context) -> None:
    name = "user-profile attributes"
    answer = await _admin_get(ctx, f"/realms/{ctx.settings.keycloak_realm}/users/profile")
    if isinstance(answer, str) or answer.status_code != 200:  # noqa: PLR2004
        status = answer if isinstance(answer, str) else f"HTTP {answer.status_code}"
        ctx.failed(name, f"user profile unreadable: {status}", "Give the service account view-users.")
        return
    declared = {a.get("name"): a for a in _body(answer).get("attributes") or []}
    problems = [f"{a} not declared" for a in spec.ATTRIBUTES if a not in declared]
    problems += [
        f"{a} not editable by admins"
        for a in spec.ATTRIBUTES
        if a in declared and "admin" not in ((declared[a].get("permissions") or {}).get("edit") or [])
    ]
    if problems:
        ctx.failed(
            name,
            "; ".join(problems) + " (Keycloak silently drops undeclared attributes)",
            "Run `bridge keycloak apply`, or declare them in Realm settings > User profile.",
        )
        return
    ctx.passed(name, f"{', '.join(spec.ATTRIBUTES)} declared")


async def _grant(ctx: _Context, name: str, client: spec.MintingClient, *, strapi_jwt: bool = False) -> None:
    """A real JWT grant, as `client`, for a subject nobody is linked to: only "User not found" means
    every step before the user lookup (client, issuer, provider, JWKS, signature) was accepted.
    `strapi_jwt`: by the Strapi jwt provider (its issuer), whose links name Keycloak user ids."""
    settings = ctx.settings
    # A fresh random subject: no TikTok open_id or Keycloak user id looks like this, so it can never
    # reach an account.
    subject = f"bridge-doctor-{secrets.token_hex(8)}"
    try:
        signer = signer_from_settings(settings)
        if strapi_jwt:
            signer = signer.with_issuer(strapi_jwt_issuer(settings.issuer_url))
        assertion = signer.mint(subject, ctx.realm_issuer)
    except (OSError, ValueError) as exc:
        ctx.failed(name, f"cannot sign an assertion: {type(exc).__name__}", "Check BRIDGE_SIGNING_KEY_FILE.")
        return
    answer = await _send(
        ctx,
        "POST",
        f"{settings.keycloak_base_url}/realms/{settings.keycloak_realm}/protocol/openid-connect/token",
        data={"grant_type": GRANT_TYPE_JWT_BEARER, "assertion": assertion},
        auth=(client.client_id, client.secret),
    )
    if isinstance(answer, str):
        ctx.failed(name, answer, "Check BRIDGE_KEYCLOAK_URL.")
        return
    body = _body(answer)
    description = str(body.get("error_description") or body.get("error") or f"HTTP {answer.status_code}")
    if description == "User not found":
        ctx.passed(
            name, f"Keycloak fetched the bridge's JWKS and accepted its assertion for '{client.client_id}'"
        )
        return
    if body.get("error") in {"unauthorized_client", "invalid_client"}:
        detail = f"Keycloak refused client '{client.client_id}' and its secret ({body.get('error')})"
        fix = f"Set {client.secret_setting} to the client's secret, or run `bridge keycloak apply`."
    elif description == "Invalid signature":
        detail, fix = await _signature_failure(ctx, signer.kid)
    else:
        alias = settings.keycloak_idp_alias
        detail, fix = _grant_failure(
            client.client_id,
            description,
            alias=strapi_jwt_idp_alias(alias) if strapi_jwt else alias,
            issuer=signer.issuer,
        )
    ctx.failed(name, detail, fix)


async def _signature_failure(ctx: _Context, kid: str) -> tuple[str, str]:
    """Keycloak says only "Invalid signature", for a JWKS it cannot fetch and for one without our key
    alike: fetching the JWKS from here tells the two apart."""
    alias, url = ctx.settings.keycloak_idp_alias, ctx.jwks_url
    answer = await _send(ctx, "GET", url)
    keys = (
        _body(answer).get("keys")
        if not isinstance(answer, str) and answer.status_code == HTTPStatus.OK
        else None
    )
    if not isinstance(keys, list):
        reason = answer if isinstance(answer, str) else f"HTTP {answer.status_code}"
        return (
            (
                f"Keycloak could not verify the bridge's signature, and the JWKS at {url} cannot be fetched "
                f"from here either ({reason})"
            ),
            (
                "Serve the bridge at BRIDGE_ISSUER (is it running?), or point the provider at the address "
                "where its JWKS is served (`bridge keycloak apply --jwks-url URL`)."
            ),
        )
    if kid not in {str(k.get("kid")) for k in keys if isinstance(k, dict)}:
        return (
            (
                f"the JWKS at {url} does not hold this bridge's signing key (kid {kid}): the bridge serving "
                "it signs with another key"
            ),
            (
                "Give every replica and this command the same BRIDGE_SIGNING_KEY_FILE (or publish a new key "
                "with BRIDGE_PUBLISHED_KEY_FILES during a rotation)."
            ),
        )
    return (
        (
            f"Keycloak cannot fetch the JWKS at the provider's JWKS URL: this host fetches {url} and finds "
            f"the bridge's key there, so Keycloak does not reach that address or provider '{alias}' points "
            "elsewhere"
        ),
        (
            f"Make the JWKS URL of provider '{alias}' reachable from Keycloak and serving this bridge's "
            "keys (`bridge keycloak apply --jwks-url URL`)."
        ),
    )


def _grant_failure(client_id: str, description: str, *, alias: str, issuer: str) -> tuple[str, str]:
    """Keycloak's reason for refusing an assertion of `issuer` (provider `alias`), worded with a fix."""
    if description == "Unsupported grant_type":  # what a Keycloak without the feature answers
        return (
            f"Keycloak does not know the JWT Authorization Grant (feature '{spec.FEATURE}' is off)",
            f"Start Keycloak with {spec.FEATURE_OPTION}.",
        )
    if description == "No Identity Provider for provided issuer":
        return (
            (
                f"no enabled identity provider has issuer {issuer} (BRIDGE_ISSUER): provider '{alias}' "
                "is missing, disabled, or has another issuer (`doctor --admin-user` tells which)"
            ),
            f"Run `bridge keycloak apply` (with --force if '{alias}' exists with another issuer).",
        )
    if description == "Identity Provider is not allowed for the client":
        return (
            f"client '{client_id}' may not use the provider with issuer {issuer}",
            f"Let the client's JWT Authorization Grant use provider '{alias}' (`bridge keycloak apply`).",
        )
    if description == "JWT Authorization Grant is not supported for the requested client":
        return (
            f"client '{client_id}' has the JWT Authorization Grant switched off",
            "Enable the grant on the client (`bridge keycloak apply`).",
        )
    return (f"Keycloak refused the assertion: {description[:200]}", "See Keycloak's log for the reason.")


# ------------------------------------------------------------------------- with admin credentials


async def _realm_objects(ctx: _Context, admin: AdminLogin) -> None:
    """One check per object `apply` manages, passing when `apply` would leave it as it is."""
    from bridge.domain.errors import SetupError  # noqa: PLC0415
    from bridge.keycloak.realm_setup import survey  # noqa: PLC0415 - only with admin credentials

    try:
        found = await asyncio.to_thread(
            survey,
            ctx.settings,
            admin_user=admin.user,
            admin_password=admin.password,
            admin_realm=admin.realm,
        )
    except SetupError as exc:
        ctx.failed("realm objects", str(exc), "Check --admin-user, its password and --admin-realm.")
        return
    if found.jwks_url:
        ctx.jwks_url = found.jwks_url
    for step in found.steps:
        name = f"realm: {step.name}"
        if step.action == "ok":
            ctx.passed(name, "as `bridge keycloak apply` makes it")
            continue
        what = {"create": "missing", "update": "differs", "conflict": "differs"}[step.action]
        detail = f"{what}: {'; '.join(step.details)}" if step.details else what
        fix = (
            "Run `bridge keycloak apply` (it refuses to overwrite these settings without --force; "
            "check first that nothing else relies on them)."
            if step.action == "conflict"
            else "Run `bridge keycloak apply`."
        )
        ctx.failed(name, detail, fix)


# ---------------------------------------------------------------------------------------- Redis


async def _redis(ctx: _Context) -> None:
    name = "redis"
    if ctx.settings.redis_url is None:
        ctx.passed(name, "not configured: the cache is in process memory")
        return
    from redis.exceptions import RedisClusterException, RedisError  # noqa: PLC0415 - only with Redis

    from bridge.storage.keys import doctor_probe  # noqa: PLC0415 - only with Redis
    from bridge.storage.redis_connection import redis_client  # noqa: PLC0415 - the bridge's own URL handling

    key = doctor_probe(secrets.token_hex(8))
    value = str(time.time()).encode()
    client = ctx.redis
    if client is None:
        try:
            # The bridge's own client (plain, Sentinel or Cluster URL) writes a key with a TTL and reads
            # it back, as the bridge does with every cache entry.
            client = redis_client(
                ctx.settings.redis_url.get_secret_value(), timeout=max(1.0, ctx.settings.redis_timeout)
            )
        except ValueError as exc:
            ctx.failed(name, f"BRIDGE_REDIS_URL is not usable: {exc}", "Fix BRIDGE_REDIS_URL.")
            return
    try:
        await client.set(key, value, ex=30)
        kept = await client.get(key)
        await client.delete(key)
    except (RedisError, RedisClusterException, OSError) as exc:
        ctx.failed(
            name,
            f"Redis does not answer ({type(exc).__name__})",
            "Check BRIDGE_REDIS_URL and that Redis runs.",
        )
        return
    finally:
        if ctx.redis is None:  # opened for this run; a running bridge's client stays open
            await client.aclose()
    if kept != value:
        ctx.failed(
            name,
            "Redis accepted a key but did not keep it",
            "Check Redis's maxmemory policy and persistence.",
        )
        return
    ctx.passed(name, "answers and keeps the keys the bridge writes")


def report(checks: list[Check], *, as_json: bool) -> str:
    if as_json:
        return json.dumps(
            {"ok": all(c.ok for c in checks), "checks": [c.as_dict() for c in checks]}, indent=2
        )
    return "\n".join(c.line() for c in checks)


class CachedChecks:
    """`run_checks` for the admin listener's verbose readiness: at most one run at a time, and its answer
    kept `ttl` seconds (each run asks TikTok, Keycloak and Redis several questions; a probe every few
    seconds must not)."""

    def __init__(self, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lock = asyncio.Lock()
        self._checks: list[Check] = []
        self._at = float("-inf")

    async def current(
        self, settings: Settings, http: httpx2.AsyncClient, redis: RedisClient | None = None
    ) -> list[Check]:
        """`redis`: the process's one Redis client, which the Redis check then uses."""
        async with self._lock:
            if self._clock() - self._at >= self._ttl:
                self._checks = await run_checks(settings, http=http, redis=redis)
                self._at = self._clock()
            return self._checks
