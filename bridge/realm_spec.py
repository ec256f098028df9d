"""What the bridge needs in a Keycloak realm: one description shared by `keycloak apply` and `doctor`.

It follows `keycloak-config/app-realm.json` setting for setting, so a realm configured by `apply` and a
realm imported from that file behave alike. Only the keys listed here are compared or written; every
other field of an object (and every other object) belongs to the realm's administrators.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.model import (
    ATTR_DISPLAY_NAME,
    ATTR_OPEN_ID,
    ATTR_UNION_ID,
    ATTR_USERNAME,
    ATTR_VERIFIED,
)

if TYPE_CHECKING:
    from bridge.settings import Settings

# The oldest release tested against (scripts/test-keycloak-versions). The grant is supported from 26.6,
# but no 26.6 distribution could be fetched here, so nothing older than 26.7.0 is claimed.
MIN_KEYCLOAK_VERSION = (26, 7, 0)
FEATURE = "jwt-authorization-grant"
FEATURE_OPTION = f"--features={FEATURE}"
IDP_TYPE = "jwt-authorization-grant"
SERVICE_ACCOUNT_ROLES = frozenset({"manage-users", "view-users"})
# view-users is a composite of these two, so a token carries them as well.
IMPLIED_ROLES = frozenset({"query-users", "query-groups"})
ATTRIBUTES = (ATTR_OPEN_ID, ATTR_UNION_ID, ATTR_DISPLAY_NAME, ATTR_USERNAME, ATTR_VERIFIED)
ATTRIBUTE_GROUP = "tiktok"
MAPPER_NAME = "tiktok_open_id"


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


def default_jwks_url(settings: Settings) -> str:
    return f"{settings.issuer_url}/.well-known/jwks.json"


def identity_provider(settings: Settings, jwks_url: str) -> dict[str, Any]:
    """The provider that trusts the bridge's assertions (app-realm.json's `identityProviders[0]`)."""
    return {
        "alias": settings.keycloak_idp_alias,
        "displayName": "TikTok (via tiktok-keycloak-bridge)",
        "providerId": IDP_TYPE,
        "enabled": True,
        "hideOnLogin": True,
        "trustEmail": False,
        "config": {
            "issuer": settings.issuer_url,
            "useJwksUrl": "true",
            "jwksUrl": jwks_url,
            "jwtAuthorizationGrantAssertionSignatureAlg": "ES256",
            "jwtAuthorizationGrantMaxAllowedAssertionExpiration": "120",
            "jwtAuthorizationGrantAllowedClockSkew": "10",
            "jwtAuthorizationGrantAssertionReuseAllowed": "false",
            "jwtAuthorizationGrantLimitAccessTokenExp": "false",
        },
    }


def client(settings: Settings) -> dict[str, Any]:
    """The bridge's confidential client, without its secret and mapper (compared separately)."""
    return {
        "clientId": settings.keycloak_client_id,
        "name": "tiktok-keycloak-bridge",
        "description": "The bridge: provisions TikTok users (service account) and mints their tokens "
        "(JWT Authorization Grant)",
        "enabled": True,
        "protocol": "openid-connect",
        "publicClient": False,
        "bearerOnly": False,
        "clientAuthenticatorType": "client-secret",
        "standardFlowEnabled": False,
        "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "serviceAccountsEnabled": True,
        "fullScopeAllowed": True,
        "attributes": {
            "oauth2.jwt.authorization.grant.enabled": "true",
            "oauth2.jwt.authorization.grant.idp": settings.keycloak_idp_alias,
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


_DISPLAY_NAMES = {
    ATTR_OPEN_ID: "TikTok open_id",
    ATTR_UNION_ID: "TikTok union_id",
    ATTR_DISPLAY_NAME: "TikTok display name",
    ATTR_USERNAME: "TikTok username",
    ATTR_VERIFIED: "TikTok verified account",
}


def profile_attribute(name: str) -> dict[str, Any]:
    """One user-profile attribute: admin-editable, visible to the user, single-valued, optional."""
    return {
        "name": name,
        "displayName": _DISPLAY_NAMES[name],
        "group": ATTRIBUTE_GROUP,
        "validations": {"length": {"max": 5 if name == ATTR_VERIFIED else 255}},
        "permissions": {"view": ["admin", "user"], "edit": ["admin"]},
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
