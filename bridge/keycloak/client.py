"""Keycloak adapter: a thin async Admin REST client and token issuance by JWT Authorization Grant.

Behaviour checked against a live Keycloak 26.7.4 (docs/existing-keycloak.md, "How tokens are minted"):
- `POST /admin/realms/{r}/users` with `federatedIdentities` creates and links in one call (201 + Location);
  a taken username answers 409 `{"errorMessage": "User exists with same username"}`, a taken e-mail
  409 `"User exists with same email"`.
- `GET /admin/realms/{r}/users?idpAlias=..&idpUserId=..` matches the link exactly (case-sensitive).
- The grant answers 400 `invalid_grant` with `error_description` "User not found" (no link),
  "User is not enabled", or "Token reuse detected" (a replayed jti).

The service-account token is cached (shared cache, so replicas reuse it) and refreshed single-flight.

Two HTTP clients. The admin API, discovery and the service-account token go through the process's httpx2
client. The JWT grant (`issue_token`), made on every exchange and every session refresh, goes through an
aiohttp session of its own: measured, httpx2's POST costs about 3.7 times the CPU of aiohttp's for the
same call (bench/README.md, "The outbound client for the token call"), and it was half of the bridge's
CPU per warm exchange. Both clients' failures map to the same errors here; nothing from either escapes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlencode

import aiohttp
import httpx2

from bridge.domain.errors import (
    AccountDisabled,
    InvalidScope,
    NotLinked,
    OutOfReach,
    UpstreamProtocolError,
    UpstreamUnavailable,
    UserConflict,
)
from bridge.domain.model import FederatedLink, IssuedToken, KeycloakUser
from bridge.observability.metrics import KEYCLOAK_ADMIN_API_REFUSED, count
from bridge.outbound.resilience import CircuitBreaker, guarded_call

if TYPE_CHECKING:
    from collections.abc import Callable

    from bridge.services.ports import AdminTokenStore

log = logging.getLogger(__name__)

GRANT_TYPE_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_RESPONSE_BYTES = 512 * 1024
TOKEN_PATH = "/protocol/openid-connect/token"  # noqa: S105 - a path, not a secret


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The `Authorization` value httpx2 builds from `auth=(id, secret)` (UTF-8, not form-encoded), made
    once per client instead of on every grant."""
    return "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")


class _AtMostEvery:
    """True at most once per `interval` seconds: a log line that would repeat on every request."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last = float("-inf")

    def due(self) -> bool:
        now = self._clock()
        if now - self._last < self._interval:
            return False
        self._last = now
        return True


# Per process (module level): every KeycloakClient of the process shares the one service account.
_ADMIN_REFUSAL_LOG = _AtMostEvery(60.0)


@dataclass
class _AdminToken:
    value: str
    expires_at: float


def user_from_representation(rep: dict[str, Any]) -> KeycloakUser:
    """Keycloak's UserRepresentation (admin API JSON) as the bridge's value; malformed is a protocol error."""
    try:
        return KeycloakUser(
            id=str(rep["id"]),
            username=str(rep["username"]),
            enabled=bool(rep.get("enabled", False)),
            email=rep.get("email"),
            attributes={k: list(v) for k, v in (rep.get("attributes") or {}).items()},
            created_timestamp=rep.get("createdTimestamp"),
            representation=rep,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise UpstreamProtocolError("keycloak", "malformed user representation") from exc


def _subject(access_token: str) -> str | None:
    """The `sub` of a token Keycloak just handed us over our own authenticated connection (so it is
    read, not verified): the user the token is for, whoever the bridge's cache said. Only the payload
    segment is decoded (half the CPU of joserfc's whole compact parsing, on every exchange)."""
    parts = access_token.split(".")
    if len(parts) != 3:  # noqa: PLR2004 - header, payload, signature
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    return subject if isinstance(subject, str) else None


class KeycloakClient:
    """Admin API and token endpoint of one realm, over one shared HTTP client."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        cache: AdminTokenStore,
        *,
        token_http: aiohttp.ClientSession,
        base_url: str,
        realm: str,
        client_id: str,
        client_secret: str,
        breaker: CircuitBreaker | None = None,
        retry_attempts: int = 2,
        minting_client: tuple[str, str] | None = None,
    ) -> None:
        """`token_http`: the session the JWT grant is sent through (`resources.token_session`).
        `minting_client`: (id, secret) of the client the JWT grant is asked as, when it is not the
        service-account client: the admin client has a service account and no grant, and the
        Strapi-compatible endpoint and per-app clients mint as clients of their own."""
        self._breaker = breaker or CircuitBreaker("keycloak")
        self._retry_attempts = retry_attempts
        self._http = http
        self._token_http = token_http
        self._cache = cache
        self._base_url = base_url
        self._realm = realm
        self._client_id = client_id
        self._client_secret = client_secret
        self._admin_token: _AdminToken | None = None
        self._admin_token_lock = asyncio.Lock()
        self._issuer: str | None = None
        self._token_url = f"{self.realm_url}{TOKEN_PATH}"
        self._grant_name = f"POST {self._path(self._token_url)}"  # how a failed grant is logged
        # Everything of the grant's request but its body, built once.
        self._grant_headers = {
            "Authorization": basic_authorization(*(minting_client or (client_id, client_secret))),
            "Content-Type": "application/x-www-form-urlencoded",
        }

    def minting_as(self, client_id: str, client_secret: str) -> KeycloakClient:
        """The same Keycloak (HTTP clients, cache, breaker, service account) minting as another client."""
        return KeycloakClient(
            self._http,
            self._cache,
            token_http=self._token_http,
            base_url=self._base_url,
            realm=self._realm,
            client_id=self._client_id,
            client_secret=self._client_secret,
            breaker=self._breaker,
            retry_attempts=self._retry_attempts,
            minting_client=(client_id, client_secret),
        )

    @property
    def realm_url(self) -> str:
        return f"{self._base_url}/realms/{self._realm}"

    @property
    def admin_url(self) -> str:
        return f"{self._base_url}/admin/realms/{self._realm}"

    # ------------------------------------------------------------------------------ plumbing

    async def _request(
        self,
        method: str,
        url: str,
        *,
        operation: str,
        idempotent: bool,
        **kwargs: Any,  # noqa: ANN401
    ) -> httpx2.Response:
        """One call through the breaker, timed; retried (bounded, with jitter) only if idempotent."""
        return await guarded_call(
            self._breaker,
            operation,
            lambda: self._send(method, url, **kwargs),
            idempotent=idempotent,
            attempts=self._retry_attempts,
            result_label=lambda response: f"{response.status_code // 100}xx",
        )

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx2.Response:  # noqa: ANN401
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx2.TimeoutException as exc:
            # The request may still be running in Keycloak: not repeated.
            raise UpstreamUnavailable("keycloak", f"{method} {self._path(url)} timed out") from exc
        except httpx2.HTTPError as exc:
            raise UpstreamUnavailable(
                "keycloak",
                f"{method} {self._path(url)}: {type(exc).__name__}",
                retryable=isinstance(exc, httpx2.ConnectError),
            ) from exc
        if len(response.content) > MAX_RESPONSE_BYTES:
            raise UpstreamProtocolError("keycloak", f"{method} {self._path(url)}: answer too large")
        if response.status_code >= HTTPStatus.INTERNAL_SERVER_ERROR:
            # Overloaded or restarting: the request was not carried out, so an idempotent one may repeat.
            raise UpstreamUnavailable(
                "keycloak", f"{method} {self._path(url)}: HTTP {response.status_code}", retryable=True
            )
        return response

    def _path(self, url: str) -> str:
        return url.removeprefix(self._base_url)

    @staticmethod
    def _json(response: httpx2.Response) -> Any:  # noqa: ANN401
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamProtocolError("keycloak", f"HTTP {response.status_code}: body is not JSON") from exc

    async def _discover_issuer(self) -> str:
        response = await self._request(
            "GET",
            f"{self.realm_url}/.well-known/openid-configuration",
            operation="discovery",
            idempotent=True,
        )
        if response.status_code != HTTPStatus.OK:
            raise UpstreamProtocolError("keycloak", f"discovery HTTP {response.status_code}")
        issuer = self._json(response).get("issuer")
        if not isinstance(issuer, str):
            raise UpstreamProtocolError("keycloak", "discovery document has no issuer")
        return issuer

    async def issuer(self) -> str:
        """The realm issuer exactly as Keycloak computes it: the audience its grant accepts."""
        if self._issuer is None:
            self._issuer = await self._discover_issuer()
        return self._issuer

    async def ping(self) -> None:
        """Ask Keycloak now (never the cached issuer): readiness must reflect the server as it is."""
        await self._discover_issuer()

    # --------------------------------------------------------------------- service account

    async def _fetch_admin_token(self) -> _AdminToken:
        response = await self._request(
            "POST",
            self._token_url,
            operation="service_account_token",
            idempotent=True,  # asking for another service-account token is harmless
            data={"grant_type": "client_credentials"},
            auth=(self._client_id, self._client_secret),
        )
        body = self._json(response)
        if response.status_code != HTTPStatus.OK or not isinstance(body.get("access_token"), str):
            raise UpstreamProtocolError(
                "keycloak",
                f"service-account token refused: HTTP {response.status_code} {body.get('error')}",
            )
        lifetime = int(body.get("expires_in") or 60)
        # Renew a little early so a token never expires between our check and Keycloak's.
        return _AdminToken(body["access_token"], time.time() + max(5, lifetime - 30))

    async def _admin_bearer(self, *, refresh: bool = False) -> str:
        token = self._admin_token
        if not refresh and token is not None and token.expires_at > time.time():
            return token.value
        async with self._admin_token_lock:  # single-flight within the process
            token = self._admin_token
            if not refresh and token is not None and token.expires_at > time.time():
                return token.value
            if not refresh and (cached := await self._cache.read(self._realm, self._client_id)):
                token = _AdminToken(*cached)
                if token.expires_at > time.time():
                    self._admin_token = token
                    return token.value
            token = await self._fetch_admin_token()
            self._admin_token = token
            await self._cache.keep(self._realm, self._client_id, token.value, token.expires_at)
            return token.value

    async def _admin(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:  # noqa: ANN401
        bearer = await self._admin_bearer()
        operation = f"admin_{method.lower()}"
        idempotent = method in {"GET", "PUT", "DELETE"}
        url = f"{self.admin_url}{path}"
        for renewed in (False, True):
            if renewed:
                bearer = await self._admin_bearer(refresh=True)
            response = await self._request(
                method,
                url,
                operation=operation,
                idempotent=idempotent,
                headers={"Authorization": f"Bearer {bearer}"},
                **kwargs,
            )
            # 401: the token was revoked or expired early (e.g. Keycloak restarted): renew it once.
            if response.status_code != HTTPStatus.UNAUTHORIZED:
                break
        if response.status_code == HTTPStatus.UNAUTHORIZED:
            self._refused_token(method)
        if response.status_code == HTTPStatus.FORBIDDEN and _ONE_USER.match(path):
            # Confined to its group by fine-grained permissions, the service account is refused any
            # account outside it: that account is not the bridge's to act for.
            raise OutOfReach(f"admin API {method} /users/…: the service account may not manage this user")
        if response.status_code == HTTPStatus.FORBIDDEN:
            raise UpstreamProtocolError(
                "keycloak", f"admin API {method} refused (HTTP 403): check the client's roles"
            )
        return response

    def _refused_token(self, method: str) -> NoReturn:
        """The Admin API refused a token the token endpoint issued a moment before (renewed once
        already): the service account's configuration, not an outage, so retrying cannot help and the
        answer is the configuration problem's (500 server_error). Keycloak 26.8.2 and newer do this to
        a token without the Admin API audience; the log says how to fix it, once a minute per process."""
        count(KEYCLOAK_ADMIN_API_REFUSED, "unauthorized")
        if _ADMIN_REFUSAL_LOG.due():
            log.error(
                "Keycloak's Admin API refuses the service account's token (HTTP 401) even just after it "
                "was issued: on Keycloak 26.8.2 and newer client '%s' needs the default client scope "
                "kc-admin-api, which puts the Admin API audience in its token. Fix: run `bridge keycloak "
                "apply`, or in the admin console Clients > %s > Client scopes > Add client scope > "
                "kc-admin-api (Default); `bridge doctor` checks it. Sign-ins that need no Admin API call "
                "still work meanwhile",
                self._client_id,
                self._client_id,
                extra={"reason": "unauthorized", "client_id": self._client_id},
            )
        raise UpstreamProtocolError(
            "keycloak",
            f"admin API {method} refused the service account's token (HTTP 401) after renewing it: a "
            "configuration problem (kc-admin-api scope missing on Keycloak 26.8.2+?)",
        )

    # ------------------------------------------------------------------------------- users

    async def find_linked_user(self, idp_alias: str, idp_user_id: str) -> KeycloakUser | None:
        users = await self.linked_users(idp_alias, idp_user_id)
        if len(users) > 1:
            # Keycloak itself refuses to pick one in the grant; so do we, loudly.
            raise UpstreamProtocolError("keycloak", "several users are linked to one external identity")
        return users[0] if users else None

    async def linked_users(self, idp_alias: str, idp_user_id: str) -> list[KeycloakUser]:
        """The users linked to the identity (exact match on the link's user id), two at most."""
        response = await self._admin(
            "GET",
            "/users",
            params={
                "idpAlias": idp_alias,
                "idpUserId": idp_user_id,
                "briefRepresentation": "false",
                "max": "2",
            },
        )
        if response.status_code != HTTPStatus.OK:
            raise UpstreamProtocolError("keycloak", f"user search HTTP {response.status_code}")
        users = self._json(response)
        if not isinstance(users, list):
            raise UpstreamProtocolError("keycloak", "user search did not return a list")
        return [user_from_representation(user) for user in users]

    async def users_with_attribute(self, name: str, value: str) -> list[KeycloakUser]:
        """The users (that the service account may see) whose attribute `name` is exactly `value`."""
        response = await self._admin(
            "GET",
            "/users",
            params={"q": f"{name}:{value}", "exact": "true", "briefRepresentation": "false", "max": "10"},
        )
        if response.status_code != HTTPStatus.OK:
            raise UpstreamProtocolError("keycloak", f"user search HTTP {response.status_code}")
        users = self._json(response)
        if not isinstance(users, list):
            raise UpstreamProtocolError("keycloak", "user search did not return a list")
        # Keycloak's `q` search may match more loosely than asked on some releases: check each value,
        # ignoring case as Keycloak's exact attribute search does.
        found = [user_from_representation(user) for user in users]
        wanted = value.lower()
        return [user for user in found if wanted in {v.lower() for v in user.attributes.get(name, [])}]

    async def user_named(self, username: str) -> KeycloakUser | None:
        """The user (that the service account may see) whose username is exactly `username`."""
        response = await self._admin(
            "GET",
            "/users",
            params={"username": username, "exact": "true", "briefRepresentation": "false", "max": "2"},
        )
        if response.status_code != HTTPStatus.OK:
            raise UpstreamProtocolError("keycloak", f"user search HTTP {response.status_code}")
        users = self._json(response)
        if not isinstance(users, list):
            raise UpstreamProtocolError("keycloak", "user search did not return a list")
        # Keycloak keeps usernames lower-cased.
        wanted = username.lower()
        found = [user_from_representation(user) for user in users]
        return next((user for user in found if user.username.lower() == wanted), None)

    async def user_groups(self, user_id: str) -> list[str]:
        response = await self._admin(
            "GET", f"/users/{user_id}/groups", params={"briefRepresentation": "true"}
        )
        if response.status_code != HTTPStatus.OK:
            raise UpstreamProtocolError("keycloak", f"user groups HTTP {response.status_code}")
        groups = self._json(response)
        if not isinstance(groups, list):
            raise UpstreamProtocolError("keycloak", "user groups did not return a list")
        return [str(group["path"]) for group in groups if isinstance(group, dict) and "path" in group]

    async def group_members(self, group_path: str, *, first: int, count: int) -> list[KeycloakUser]:
        """One page of a group's members, with their attributes (the service account may view the
        members of the bridge's groups); an empty page past the last one."""
        found = await self._admin("GET", f"/group-by-path/{group_path.lstrip('/')}")
        if found.status_code != HTTPStatus.OK:
            raise UpstreamProtocolError("keycloak", f"group lookup HTTP {found.status_code}")
        group_id = self._json(found).get("id")
        response = await self._admin(
            "GET",
            f"/groups/{group_id}/members",
            params={"first": str(first), "max": str(count), "briefRepresentation": "false"},
        )
        if response.status_code != HTTPStatus.OK:
            raise UpstreamProtocolError("keycloak", f"group members HTTP {response.status_code}")
        members = self._json(response)
        if not isinstance(members, list):
            raise UpstreamProtocolError("keycloak", "group members did not return a list")
        return [user_from_representation(member) for member in members]

    async def get_user(self, user_id: str) -> KeycloakUser | None:
        response = await self._admin("GET", f"/users/{user_id}")
        if response.status_code == HTTPStatus.NOT_FOUND:
            return None
        if response.status_code != HTTPStatus.OK:
            raise UpstreamProtocolError("keycloak", f"user read HTTP {response.status_code}")
        return user_from_representation(self._json(response))

    async def create_user(self, representation: dict[str, Any]) -> str:
        response = await self._admin("POST", "/users", json=representation)
        if response.status_code == HTTPStatus.CONFLICT:
            message = self._json(response).get("errorMessage", "conflict")
            raise UserConflict(str(message))
        if response.status_code != HTTPStatus.CREATED:
            raise UpstreamProtocolError(
                "keycloak", f"user create HTTP {response.status_code}: {self._error_summary(response)}"
            )
        location = response.headers.get("Location", "")
        user_id = location.rstrip("/").rsplit("/", 1)[-1]
        if not user_id:
            raise UpstreamProtocolError("keycloak", "user create answered without Location")
        return user_id

    async def update_user(self, user_id: str, representation: dict[str, Any]) -> None:
        response = await self._admin("PUT", f"/users/{user_id}", json=representation)
        if response.status_code == HTTPStatus.CONFLICT:
            raise UserConflict(str(self._json(response).get("errorMessage", "conflict")))
        if response.status_code != HTTPStatus.NO_CONTENT:
            raise UpstreamProtocolError(
                "keycloak", f"user update HTTP {response.status_code}: {self._error_summary(response)}"
            )

    async def delete_user(self, user_id: str) -> None:
        response = await self._admin("DELETE", f"/users/{user_id}")
        if response.status_code not in {HTTPStatus.NO_CONTENT, HTTPStatus.NOT_FOUND}:
            raise UpstreamProtocolError("keycloak", f"user delete HTTP {response.status_code}")

    async def missing_groups(self, paths: tuple[str, ...]) -> list[str]:
        """The configured group paths that do not exist (Keycloak answers 500 to a create naming one)."""
        missing = []
        for path in paths:
            response = await self._admin("GET", f"/group-by-path/{path.lstrip('/')}")
            if response.status_code == HTTPStatus.NOT_FOUND:
                missing.append(path)
            elif response.status_code != HTTPStatus.OK:
                raise UpstreamProtocolError("keycloak", f"group lookup HTTP {response.status_code}")
        return missing

    async def group_attributes(self, path: str) -> dict[str, list[str]]:
        """The attributes of the group at `path`: group-by-path answers the whole representation."""
        response = await self._admin("GET", f"/group-by-path/{path.lstrip('/')}")
        if response.status_code != HTTPStatus.OK:
            raise UpstreamProtocolError("keycloak", f"group lookup HTTP {response.status_code}")
        group = self._json(response)
        attributes = (group.get("attributes") or {}) if isinstance(group, dict) else None
        if not isinstance(attributes, dict):
            raise UpstreamProtocolError("keycloak", "group attributes are not a JSON object")
        return {
            str(k): [str(v) for v in values] for k, values in attributes.items() if isinstance(values, list)
        }

    async def assign_realm_roles(self, user_id: str, names: tuple[str, ...]) -> None:
        """Map realm roles to a user. Reads them from the user's 'available' list: reading a role by name
        needs view-realm, which the bridge's client deliberately lacks."""
        response = await self._admin("GET", f"/users/{user_id}/role-mappings/realm/available")
        if response.status_code != HTTPStatus.OK:
            raise UpstreamProtocolError("keycloak", f"available roles HTTP {response.status_code}")
        available = {role.get("name"): role for role in self._json(response) if isinstance(role, dict)}
        unknown = [name for name in names if name not in available]
        if unknown:
            raise UpstreamProtocolError("keycloak", f"realm roles not found or not assignable: {unknown}")
        response = await self._admin(
            "POST", f"/users/{user_id}/role-mappings/realm", json=[available[name] for name in names]
        )
        if response.status_code != HTTPStatus.NO_CONTENT:
            raise UpstreamProtocolError("keycloak", f"role mapping HTTP {response.status_code}")

    async def remove_link(self, user_id: str, idp_alias: str) -> None:
        response = await self._admin("DELETE", f"/users/{user_id}/federated-identity/{idp_alias}")
        if response.status_code not in {HTTPStatus.NO_CONTENT, HTTPStatus.NOT_FOUND}:
            raise UpstreamProtocolError("keycloak", f"unlink HTTP {response.status_code}")

    async def user_links(self, user_id: str) -> list[FederatedLink]:
        response = await self._admin("GET", f"/users/{user_id}/federated-identity")
        if response.status_code == HTTPStatus.NOT_FOUND:
            return []
        if response.status_code != HTTPStatus.OK:
            raise UpstreamProtocolError("keycloak", f"links read HTTP {response.status_code}")
        links = self._json(response)
        if not isinstance(links, list):
            raise UpstreamProtocolError("keycloak", "links read did not return a list")
        return [
            FederatedLink(str(link["identityProvider"]), str(link["userId"]), link.get("userName"))
            for link in links
            if isinstance(link, dict) and "identityProvider" in link and "userId" in link
        ]

    async def add_link(self, user_id: str, link: FederatedLink) -> None:
        """Keycloak answers 409 when the user already has a link to that provider (checked live); it does
        not refuse an identity linked to another user, so the caller checks that under a lock."""
        response = await self._admin(
            "POST",
            f"/users/{user_id}/federated-identity/{link.identity_provider}",
            json={
                "identityProvider": link.identity_provider,
                "userId": link.user_id,
                "userName": link.user_name or link.user_id,
            },
        )
        if response.status_code == HTTPStatus.CONFLICT:
            raise UserConflict(str(self._json(response).get("errorMessage", "already linked")))
        if response.status_code not in {HTTPStatus.NO_CONTENT, HTTPStatus.CREATED}:
            raise UpstreamProtocolError(
                "keycloak", f"link HTTP {response.status_code}: {self._error_summary(response)}"
            )

    async def realm_keys(self) -> dict[str, Any]:
        """The realm's JWK Set (what it signs access tokens with)."""
        response = await self._request(
            "GET",
            f"{self.realm_url}/protocol/openid-connect/certs",
            operation="realm_keys",
            idempotent=True,
        )
        body = self._json(response)
        if response.status_code != HTTPStatus.OK or not isinstance(body, dict):
            raise UpstreamProtocolError("keycloak", f"realm keys HTTP {response.status_code}")
        return body

    def _error_summary(self, response: httpx2.Response) -> str:
        try:
            body = response.json()
        except ValueError:
            return "(no JSON)"
        if isinstance(body, dict):
            return str(body.get("errorMessage") or body.get("error") or "")[:200]
        return ""

    # ------------------------------------------------------------------------------ tokens

    async def issue_token(self, assertion: str, scope: tuple[str, ...]) -> IssuedToken:
        """RFC 7523 JWT Authorization Grant, asked as the minting client."""
        body = grant_body(assertion, scope)
        status, content = await guarded_call(
            self._breaker,
            "jwt_grant",
            lambda: self._post_grant(body),
            idempotent=False,  # the assertion's jti is single-use
            attempts=self._retry_attempts,
            result_label=lambda answer: f"{answer[0] // 100}xx",
        )
        return parse_grant_answer(status, content)

    async def _post_grant(self, body: bytes) -> tuple[int, bytes]:
        """One POST to the token endpoint through the aiohttp session: (status, body), with the same
        failure mapping as `_send` (a timeout is not retryable, a refused connection is, a 5xx is)."""
        try:
            # Never follow a redirect: a 307 would re-send the assertion to wherever Location names.
            async with self._token_http.post(
                self._token_url, data=body, headers=self._grant_headers, allow_redirects=False
            ) as response:
                status = response.status
                content = await _read_at_most(response, MAX_RESPONSE_BYTES)
        except TimeoutError as exc:
            # aiohttp's connect and read timeouts are TimeoutErrors too. The grant may still be running
            # in Keycloak: not repeated.
            raise UpstreamUnavailable("keycloak", f"{self._grant_name} timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                "keycloak",
                f"{self._grant_name}: {type(exc).__name__}",
                retryable=isinstance(exc, aiohttp.ClientConnectorError),
            ) from exc
        if content is None:
            raise UpstreamProtocolError("keycloak", f"{self._grant_name}: answer too large")
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            # Overloaded or restarting: not carried out, so retryable (guarded_call never repeats a
            # grant all the same: the assertion's jti is single-use).
            raise UpstreamUnavailable("keycloak", f"{self._grant_name}: HTTP {status}", retryable=True)
        return status, content


# An Admin API path about one user (`/users/{id}` and below), where a 403 means "not yours to manage".
_ONE_USER = re.compile(r"^/users/(?!profile$|count$)[^/?]+(?:/|$)")
# A JWS in compact serialisation is base64url segments joined by dots: nothing form encoding changes.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]*)*")
_GRANT_BODY_PREFIX = urlencode({"grant_type": GRANT_TYPE_JWT_BEARER}) + "&assertion="


def grant_body(assertion: str, scope: tuple[str, ...]) -> bytes:
    """The form of a JWT grant, as `urlencode` makes it; the assertion, the only long value, is
    checked rather than percent-encoded character by character (it has none to encode)."""
    if not _COMPACT_JWS.fullmatch(assertion):
        form = {"grant_type": GRANT_TYPE_JWT_BEARER, "assertion": assertion}
        return urlencode({**form, "scope": " ".join(scope)} if scope else form).encode()
    body = _GRANT_BODY_PREFIX + assertion
    if scope:
        body += "&" + urlencode({"scope": " ".join(scope)})
    return body.encode()


def parse_grant_answer(status: int, content: bytes) -> IssuedToken:
    """Keycloak's answer to the JWT grant (any status below 500): the token, or the error it means."""
    try:
        answer = json.loads(content)
    except ValueError as exc:
        raise UpstreamProtocolError("keycloak", f"HTTP {status}: body is not JSON") from exc
    if not isinstance(answer, dict):
        raise UpstreamProtocolError("keycloak", "token answer is not an object")
    if status == HTTPStatus.OK and isinstance(answer.get("access_token"), str):
        expires_in = answer.get("expires_in")
        return IssuedToken(
            access_token=answer["access_token"],
            expires_in=int(expires_in) if isinstance(expires_in, int) else None,
            scope=answer.get("scope") if isinstance(answer.get("scope"), str) else None,
            id_token=answer.get("id_token") if isinstance(answer.get("id_token"), str) else None,
            subject=_subject(answer["access_token"]),
        )
    error, description = answer.get("error"), str(answer.get("error_description") or "")
    if error == "invalid_scope":
        raise InvalidScope
    if error == "invalid_grant" and description == "User not found":
        raise NotLinked
    if error == "invalid_grant" and description == "User is not enabled":
        raise AccountDisabled
    raise UpstreamProtocolError("keycloak", f"JWT grant refused: HTTP {status} {error}: {description[:200]}")


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None once it is over `limit` bytes (read no further)."""
    try:
        await response.content.readexactly(limit + 1)
    except asyncio.IncompleteReadError as complete:
        return complete.partial
    return None
