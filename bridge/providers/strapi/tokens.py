"""The subject token type of a Strapi users-permissions jwt at the token endpoint. Composition adds it
to the identity provider's types when BRIDGE_STRAPI_JWT_SECRET is set, so the RFC 8693 parser, which
knows no provider, accepts it (and the metadata announces it) only then."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.protocol.rfc8693 import SubjectTokenTypes

# Our own namespace, like TikTok's code URN (RFC 8693 §3 allows custom URIs).
TOKEN_TYPE_STRAPI_JWT = "urn:tiktok-keycloak-bridge:params:oauth:token-type:strapi-jwt"  # noqa: S105 - a URN


def with_strapi_jwt(types: SubjectTokenTypes) -> SubjectTokenTypes:
    """`types` and the Strapi jwt: a bearer credential, no PKCE verifier."""
    return dataclasses.replace(types, access_tokens=(*types.access_tokens, TOKEN_TYPE_STRAPI_JWT))
