"""What the bridge needs in a Keycloak realm: one description shared by `keycloak apply` and `doctor`.

It follows `keycloak-config/app-realm.json` setting for setting, so a realm configured by `apply` and a
realm imported from that file behave alike. Only the keys listed here are compared or written; every
other field of an object (and every other object) belongs to the realm's administrators.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.domain.model import strapi_jwt_idp_alias, strapi_jwt_issuer
from bridge.domain.strapi import (
    ATTR_STRAPI_CREATED_AT,
    ATTR_STRAPI_DOCUMENT_ID,
    ATTR_STRAPI_ID,
    ATTR_STRAPI_ID_HIGH_WATER,
    ATTR_STRAPI_USERNAME,
    STRAPI_ATTRIBUTES,
    STRAPI_ID_CLAIM,
)

if TYPE_CHECKING:
    from bridge.settings import Settings

# The oldest release tested against (scripts/test-keycloak-versions). The grant is supported from 26.6,
# but no 26.6 distribution could be fetched here, so nothing older than 26.7.0 is claimed.
MIN_KEYCLOAK_VERSION = (26, 7, 0)
FEATURE = "jwt-authorization-grant"
FEATURE_OPTION = f"--features={FEATURE}"
IDP_TYPE = "jwt-authorization-grant"
# The service account's only realm-wide role: reaching the user search at all (Keycloak refuses the
# search without a query-* role, then filters the results by the permissions below). Every other
# power it has comes from fine-grained admin permissions and reaches the members of the bridge's
# groups only: realm-management's manage-users or view-users would reach every account of the realm.
SERVICE_ACCOUNT_ROLES = frozenset({"query-users"})
# Roles whose holder reaches accounts outside the bridge's groups, or can widen its own permissions.
REALM_WIDE_ROLES = frozenset(
    {
        "realm-admin",
        "manage-users",
        "view-users",
        "impersonation",
        "manage-realm",
        "manage-authorization",
        "manage-clients",
        "create-client",
        "manage-identity-providers",
        "manage-events",
    }
)
# What the service account may do to the members of the bridge's groups (fine-grained admin
# permissions v2, checked on Keycloak 26.7.4): read the group (its path is looked up), read and manage
# its members, and create users straight into it. Without manage-membership Keycloak refuses a user
# created with `groups`; reset-password cannot be taken away from manage-members (a deny on it denies
# every other user operation too: docs/existing-keycloak.md, "Least privilege").
GROUP_SCOPES = ("view", "view-members", "manage-members", "manage-membership")
PERMISSIONS_CLIENT = "admin-permissions"
POLICY_NAME = "tiktok-keycloak-bridge: its service account"
GROUPS_PERMISSION = "tiktok-keycloak-bridge: the accounts of its groups"
# Keycloak's feature for the permissions above (on by default since 26.2).
FGAP_FEATURE = "ADMIN_FINE_GRAINED_AUTHZ_V2"
# Keycloak 26.8.2's built-in client scope whose audience mapper puts the realm's Admin API URL in `aud`:
# from 26.8.2 the Admin API answers 401 to a token without that audience, and the upgrade gives the
# scope to admin-cli and security-admin-console only (upgrading guide, "Migrating to 26.8.2"). Older
# releases have no such scope. The admin client needs it as a *default* scope: a client-credentials
# token carries default scopes only (the bridge asks for none).
ADMIN_API_SCOPE = "kc-admin-api"
# The attributes the bridge owns on a user, declared in the realm's user profile: the names TikTok's
# adapter gives them (`providers/tiktok/attributes.py`; tests/unit/test_realm_setup.py holds them equal).
ATTR_OPEN_ID = "tiktok_open_id"
ATTR_UNION_ID = "tiktok_union_id"
ATTR_DISPLAY_NAME = "tiktok_display_name"
ATTR_USERNAME = "tiktok_username"
ATTR_VERIFIED = "tiktok_is_verified"
TIKTOK_ATTRIBUTES = (ATTR_OPEN_ID, ATTR_UNION_ID, ATTR_DISPLAY_NAME, ATTR_USERNAME, ATTR_VERIFIED)
# The TikTok ones first: `ATTRIBUTES[0]` is the one the minting clients put in their tokens.
ATTRIBUTES = (*TIKTOK_ATTRIBUTES, *STRAPI_ATTRIBUTES)
ATTRIBUTE_GROUP = "tiktok"
MAPPER_NAME = "tiktok_open_id"
STRAPI_ID_MAPPER_NAME = "strapi_id"


def version_tuple(text: str) -> tuple[int, ...] | None:
    """`26.7.4` (or `26.7.4-SNAPSHOT`, `26.7.4.redhat-1`) as numbers; None when it is not a version."""
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if match is None:
        return None
    return tuple(int(part or 0) for part in match.groups())


def version_supported(text: str) -> bool:
    parsed = version_tuple(text)
    return parsed is not None and parsed >= MIN_KEYCLOAK_VERSION


def min_version_text() -> str:
    return ".".join(str(part) for part in MIN_KEYCLOAK_VERSION)


def admin_api_audience(settings: Settings) -> str:
    """The audience `kc-admin-api` adds: the realm's Admin API URL, as the bridge reaches Keycloak."""
    return f"{settings.keycloak_base_url}/admin/realms/{settings.keycloak_realm}"


def is_admin_api_audience(audience: str, realm: str) -> bool:
    """Whether `audience` is a realm's Admin API URL under any host name: Keycloak builds it from its
    own host name settings, which may differ from the address the bridge reaches it at."""
    return audience.rstrip("/").endswith(f"/admin/realms/{realm}")


def default_jwks_url(settings: Settings) -> str:
    return f"{settings.issuer_url}/.well-known/jwks.json"


def identity_provider(settings: Settings, jwks_url: str) -> dict[str, Any]:
    """The provider that trusts the bridge's assertions (app-realm.json's `identityProviders[0]`)."""
    return _provider(
        settings.keycloak_idp_alias, "TikTok (via tiktok-keycloak-bridge)", settings.issuer_url, jwks_url
    )


def strapi_jwt_enabled(settings: Settings) -> bool:
    """Whether the Strapi jwt exchange is on (BRIDGE_STRAPI_JWT_SECRET), and with it its provider."""
    return settings.strapi_jwt_secret is not None


def strapi_jwt_provider(settings: Settings, jwks_url: str) -> dict[str, Any]:
    """The provider the Strapi jwt exchange mints by, for imported accounts without a TikTok link
    (app-realm.json's `identityProviders[1]`): the bridge's keys, an issuer of its own (Keycloak picks
    the provider by the assertion's `iss`), links keyed by the Keycloak user id."""
    return _provider(
        strapi_jwt_idp_alias(settings.keycloak_idp_alias),
        "Strapi jwt upgrade (via tiktok-keycloak-bridge)",
        strapi_jwt_issuer(settings.issuer_url),
        jwks_url,
    )


def identity_providers(settings: Settings, jwks_url: str) -> list[dict[str, Any]]:
    """Every provider the bridge needs: TikTok's, and the Strapi jwt one while that exchange is on."""
    wanted = [identity_provider(settings, jwks_url)]
    if strapi_jwt_enabled(settings):
        wanted.append(strapi_jwt_provider(settings, jwks_url))
    return wanted


def granted_providers(settings: Settings) -> list[str]:
    """The providers every minting client may use the JWT Authorization Grant with."""
    return [provider["alias"] for provider in identity_providers(settings, "")]


def bridge_providers(settings: Settings) -> frozenset[str]:
    """The aliases only the bridge relies on, whether or not it needs each now: a client's grant may
    be widened to them or narrowed from them without --force."""
    return frozenset({settings.keycloak_idp_alias, strapi_jwt_idp_alias(settings.keycloak_idp_alias)})


# A client's list of the providers its JWT Authorization Grant may use, joined by `##` (multivalued).
GRANT_PROVIDERS_ATTRIBUTE = "oauth2.jwt.authorization.grant.idp"


def _provider(alias: str, display_name: str, issuer: str, jwks_url: str) -> dict[str, Any]:
    return {
        "alias": alias,
        "displayName": display_name,
        "providerId": IDP_TYPE,
        "enabled": True,
        "hideOnLogin": True,
        "trustEmail": False,
        "config": {
            "issuer": issuer,
            "useJwksUrl": "true",
            "jwksUrl": jwks_url,
            "jwtAuthorizationGrantAssertionSignatureAlg": "ES256",
            "jwtAuthorizationGrantMaxAllowedAssertionExpiration": "120",
            "jwtAuthorizationGrantAllowedClockSkew": "10",
            "jwtAuthorizationGrantAssertionReuseAllowed": "false",
            "jwtAuthorizationGrantLimitAccessTokenExp": "false",
        },
    }


# The Strapi-compatible client's token lifespan: the plugin's JWT lived 30 days and its apps never
# refresh. Keycloak caps it at the realm's SSO Session Max (checked on 26.7.4).
STRAPI_TOKEN_LIFESPAN = 30 * 24 * 3600
LIFESPAN_ATTRIBUTE = "access.token.lifespan"


@dataclass(frozen=True, slots=True)
class MintingClient:
    """A Keycloak client the bridge mints as: its own (which also has the service account), the
    Strapi-compatible endpoint's, or one app's (BRIDGE_KEYCLOAK_CLIENTS)."""

    client_id: str
    secret: str
    secret_setting: str
    representation: dict[str, Any]
    # The audiences' client scopes it is given as optional scopes (what its apps may ask for).
    scopes: tuple[str, ...] = ()
    # The token mappers it needs: every minting client puts the open_id in its tokens; the
    # Strapi-compatible one also the user's Strapi id.
    mappers: tuple[dict[str, Any], ...] = ()

    @property
    def wanted_mappers(self) -> tuple[dict[str, Any], ...]:
        return self.mappers or (open_id_mapper(),)


def own_client(settings: Settings) -> MintingClient:
    """The bridge's client: apps without a client of their own mint through it, so it may be asked
    for every audience."""
    return MintingClient(
        settings.keycloak_client_id,
        settings.keycloak_client_secret.get_secret_value(),
        "BRIDGE_KEYCLOAK_CLIENT_SECRET",
        client(settings),
        tuple(sorted(set(settings.audience_scopes().values()))),
    )


def separate_admin_client(settings: Settings) -> bool:
    """Whether the Admin API calls come from a client of their own (BRIDGE_KEYCLOAK_ADMIN_CLIENT_ID):
    then no minting client needs a service account or an admin role in its scope."""
    return settings.keycloak_admin_client_id is not None


def admin_client(settings: Settings) -> dict[str, Any]:
    """The client whose service account calls the Admin API, and nothing else: no browser flow, no
    grant, no user ever gets a token from it (so its full scope carries only its service account's
    one role)."""
    return {
        "clientId": settings.admin_client[0],
        "name": "tiktok-keycloak-bridge: user provisioning",
        "description": "The bridge's service account: finds, creates and links users, confined to the "
        "bridge's group by fine-grained admin permissions",
        "enabled": True,
        "protocol": "openid-connect",
        "publicClient": False,
        "bearerOnly": False,
        "clientAuthenticatorType": "client-secret",
        "standardFlowEnabled": False,
        "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "serviceAccountsEnabled": True,
    }


def _minting_representation(
    settings: Settings, client_id: str, *, name: str, description: str, lifespan: int | None = None
) -> dict[str, Any]:
    attributes = {
        "oauth2.jwt.authorization.grant.enabled": "true",
        GRANT_PROVIDERS_ATTRIBUTE: "##".join(granted_providers(settings)),
    }
    if lifespan is not None:
        attributes[LIFESPAN_ATTRIBUTE] = str(lifespan)
    return {
        "clientId": client_id,
        "name": name,
        "description": description,
        "enabled": True,
        "protocol": "openid-connect",
        "publicClient": False,
        "bearerOnly": False,
        "clientAuthenticatorType": "client-secret",
        "standardFlowEnabled": False,
        "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "serviceAccountsEnabled": False,
        # Tokens carry only the roles mapped to the client's scope, never every role of the user: an
        # administrator's roles cannot reach a token the bridge mints.
        "fullScopeAllowed": False,
        "attributes": attributes,
    }


def client(settings: Settings) -> dict[str, Any]:
    """The bridge's confidential client, without its secret and mapper (compared separately): a
    minting client, which also has the service account unless the Admin API has a client of its own."""
    return {
        **_minting_representation(
            settings,
            settings.keycloak_client_id,
            name="tiktok-keycloak-bridge",
            description="The bridge mints its users' tokens as this client (JWT Authorization Grant)",
        ),
        "serviceAccountsEnabled": not separate_admin_client(settings),
    }


def groups_permission(group_ids: list[str], policy_id: str) -> dict[str, Any]:
    """The service account's power over the members of the bridge's groups, and nothing else."""
    return {
        "name": GROUPS_PERMISSION,
        "description": "Find, create, link and update the accounts of the bridge's groups"[:255],
        "resourceType": "Groups",
        "resources": group_ids,
        "scopes": list(GROUP_SCOPES),
        "policies": [policy_id],
        "decisionStrategy": "UNANIMOUS",
    }


def minting_clients(settings: Settings) -> list[MintingClient]:
    """The Strapi-compatible client (when the endpoint is on and has a client of its own) and one
    client per app, as app-realm.json's `tiktok-bridge-strapi` and `tiktok-app-example`. Apps mapped to
    the same Keycloak client share it, and it gets the audiences any of them may ask for."""
    result: list[MintingClient] = []
    strapi_id, strapi_secret = settings.strapi_keycloak_client_id, settings.strapi_keycloak_client_secret
    if settings.strapi_compat_enabled and strapi_id and strapi_secret is not None:
        representation = _minting_representation(
            settings,
            strapi_id,
            name="tiktok-keycloak-bridge: Strapi-compatible endpoint",
            description="Mints the Strapi-compatible endpoint's jwt: plugin apps never refresh, so its "
            "tokens live 30 days like the plugin's JWT",
            lifespan=STRAPI_TOKEN_LIFESPAN,
        )
        result.append(
            MintingClient(
                strapi_id,
                strapi_secret.get_secret_value(),
                "BRIDGE_STRAPI_KEYCLOAK_CLIENT_SECRET",
                representation,
                mappers=(open_id_mapper(), strapi_id_mapper()),
            )
        )
    catalog = settings.audience_scopes()
    allowed = settings.client_audience_map()
    by_keycloak_client: dict[str, tuple[str, list[str]]] = {}
    scopes_of: dict[str, set[str]] = {}
    for app, (keycloak_client, secret) in settings.keycloak_client_map().items():
        # Settings refuse two secrets for one Keycloak client.
        by_keycloak_client.setdefault(keycloak_client, (secret, []))[1].append(app)
        audiences = allowed.get(app, tuple(catalog))
        scopes_of.setdefault(keycloak_client, set()).update(catalog[a] for a in audiences)
    for keycloak_client, (secret, apps) in by_keycloak_client.items():
        representation = _minting_representation(
            settings,
            keycloak_client,
            name=f"tiktok-keycloak-bridge: app {', '.join(sorted(apps))}"[:255],
            description="One Keycloak client per app: the bridge mints this app's tokens as this client "
            "(BRIDGE_KEYCLOAK_CLIENTS), so azp names the app and this client's settings apply",
        )
        result.append(
            MintingClient(
                keycloak_client,
                secret,
                "BRIDGE_KEYCLOAK_CLIENTS",
                representation,
                tuple(sorted(scopes_of[keycloak_client])),
            )
        )
    return result


def audience_scope(audience: str, scope: str) -> dict[str, Any]:
    """An optional client scope that adds `audience` to an access token's `aud` when asked for
    (keycloak-config/client-scopes/aud-orders-api.json is one; its README says why each setting)."""
    return {
        "name": scope,
        "description": f"Adds {audience} to aud when requested (the bridge's BRIDGE_AUDIENCES)"[:255],
        "protocol": "openid-connect",
        "attributes": {"include.in.token.scope": "false", "display.on.consent.screen": "false"},
    }


def audience_mapper(audience: str) -> dict[str, Any]:
    return {
        "name": f"audience {audience}"[:255],
        "protocol": "openid-connect",
        "protocolMapper": "oidc-audience-mapper",
        "config": {
            "included.custom.audience": audience,
            "access.token.claim": "true",
            "id.token.claim": "false",
            "introspection.token.claim": "true",
            "lightweight.claim": "false",
        },
    }


# Cosmetic fields: created as app-realm.json has them, never a reason to refuse or rewrite.
COSMETIC = frozenset({"displayName", "name", "description"})


def open_id_mapper() -> dict[str, Any]:
    """Puts `tiktok_open_id` in the client's tokens, as app-realm.json does."""
    return {
        "name": MAPPER_NAME,
        "protocol": "openid-connect",
        "protocolMapper": "oidc-usermodel-attribute-mapper",
        "config": {
            "user.attribute": ATTR_OPEN_ID,
            "claim.name": ATTR_OPEN_ID,
            "jsonType.label": "String",
            "access.token.claim": "true",
            "id.token.claim": "true",
            "userinfo.token.claim": "true",
            "introspection.token.claim": "true",
        },
    }


def strapi_id_mapper() -> dict[str, Any]:
    """Puts the user's Strapi id (imported, or allocated at creation) in the Strapi-compatible client's
    tokens as a JSON number, as app-realm.json does: backends keyed on Strapi's `user.id` read it there
    once they verify Keycloak's tokens."""
    return {
        "name": STRAPI_ID_MAPPER_NAME,
        "protocol": "openid-connect",
        "protocolMapper": "oidc-usermodel-attribute-mapper",
        "config": {
            "user.attribute": ATTR_STRAPI_ID,
            "claim.name": STRAPI_ID_CLAIM,
            "jsonType.label": "long",
            "access.token.claim": "true",
            "id.token.claim": "true",
            "userinfo.token.claim": "true",
            "introspection.token.claim": "true",
        },
    }


_DISPLAY_NAMES = {
    ATTR_OPEN_ID: "TikTok open_id",
    ATTR_UNION_ID: "TikTok union_id",
    ATTR_DISPLAY_NAME: "TikTok display name",
    ATTR_USERNAME: "TikTok username",
    ATTR_VERIFIED: "TikTok verified account",
    ATTR_STRAPI_ID: "Strapi user id",
    ATTR_STRAPI_DOCUMENT_ID: "Strapi document id",
    ATTR_STRAPI_CREATED_AT: "Strapi creation time",
    ATTR_STRAPI_USERNAME: "Strapi username",
    # Only on the marker account that keeps the highest Strapi id handed out (`services/strapi_ids.py`).
    ATTR_STRAPI_ID_HIGH_WATER: "Strapi id high-water mark",
}


def profile_attribute(name: str) -> dict[str, Any]:
    """One user-profile attribute: admin-editable, single-valued, optional; TikTok's visible to the user,
    Strapi's identifiers (kept by `bridge strapi import`) to admins only, as nobody else needs them."""
    return {
        "name": name,
        "displayName": _DISPLAY_NAMES[name],
        "group": ATTRIBUTE_GROUP,
        "validations": {"length": {"max": 5 if name == ATTR_VERIFIED else 255}},
        "permissions": {
            "view": ["admin"] if name in STRAPI_ATTRIBUTES else ["admin", "user"],
            "edit": ["admin"],
        },
        "multivalued": False,
    }


def profile_group() -> dict[str, Any]:
    return {
        "name": ATTRIBUTE_GROUP,
        "displayHeader": "TikTok",
        "displayDescription": "Profile data the bridge copies from TikTok at sign-in",
    }


@dataclass(frozen=True, slots=True)
class Difference:
    """One setting of an existing object that is not what the bridge needs."""

    key: str
    found: object
    wanted: object

    def __str__(self) -> str:
        return f"{self.key} is {self.found!r}, needs {self.wanted!r}"


def differences(found: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[Difference]:
    """The wanted keys whose value differs in `found` (nested maps compared key by key; extra keys in
    `found` are the administrators' and never a difference). Keycloak stores some booleans as the
    strings "true"/"false" and lists in any order, so those compare by meaning."""
    result: list[Difference] = []
    for key, value in wanted.items():
        if key in COSMETIC:
            continue
        name = f"{prefix}{key}"
        have = found.get(key)
        if isinstance(value, dict) and isinstance(have, dict):
            result.extend(differences(have, value, prefix=f"{name}."))
        elif not _same(have, value):
            result.append(Difference(name, have, value))
    return result


def _same(have: object, want: object) -> bool:
    if isinstance(want, list) and isinstance(have, list):
        return sorted(map(str, have)) == sorted(map(str, want))
    if isinstance(want, bool) and isinstance(have, str):
        return have.lower() == str(want).lower()
    return have == want


# ------------------------------------------------- the realm's TikTok web sign-in (union_id-keyed)
# Providers named in BRIDGE_UNION_ID_IDP_ALIASES (the community extension keycloak-tiktok) link their
# accounts by TikTok's union_id. The bridge's service account sees the members of its group only, so
# those accounts must be members: each such provider gets a mapper putting everyone who signs in
# through it into the group, and `apply` brings the accounts linked before into it once. Read from
# Keycloak 26.7.4's mapper types for a provider: the id of "Hardcoded Group" (offered for providers of
# any type despite its prefix) and its one config key, `group` (the group's path). Keycloak accepts a
# mapper of a type it does not know and then fails every sign-in through the provider (a
# NullPointerException, seen on 26.7.4), so `apply` checks the type is offered before it creates one.
GROUP_MAPPER_TYPE = "oidc-hardcoded-group-idp-mapper"
GROUP_MAPPER_NAME = "tiktok-keycloak-bridge: its group"
# FORCE: the mapper runs at every sign-in through the provider, not only at the account's first, so an
# account that signed in before the mapper existed (or was taken out of the group) is a member again
# after its next web sign-in. The price: an administrator cannot keep such an account out of the group
# while it signs in through the provider (docs/existing-keycloak.md, "TikTok web sign-ins").
GROUP_MAPPER_SYNC_MODE = "FORCE"


def group_mapper(alias: str, group: str) -> dict[str, Any]:
    """The provider's mapper that makes every account signing in through it a member of `group`."""
    return {
        "name": GROUP_MAPPER_NAME,
        "identityProviderAlias": alias,
        "identityProviderMapper": GROUP_MAPPER_TYPE,
        "config": {"group": group, "syncMode": GROUP_MAPPER_SYNC_MODE},
    }
