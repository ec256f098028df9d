"""What TikTok's credentials look like at the token endpoint: the subject token types the bridge
accepts for TikTok, and TikTok's PKCE rule. Composition hands `SUBJECT_TOKEN_TYPES` to the RFC 8693
parser, which knows no provider."""

from __future__ import annotations

import re

from bridge.protocol.rfc8693 import TOKEN_TYPE_ACCESS_TOKEN, SubjectTokenTypes

# Our own namespace for what TikTok's mobile Login Kit hands an app (RFC 8693 §3 allows custom URIs).
TOKEN_TYPE_TIKTOK_CODE = "urn:tiktok-keycloak-bridge:params:oauth:token-type:tiktok-authorization-code"  # noqa: S105

# What the token vault hands a backend (`services/vault.py`): TikTok's own access token for a Keycloak user.
TOKEN_TYPE_TIKTOK_ACCESS_TOKEN = "urn:tiktok-keycloak-bridge:params:oauth:token-type:tiktok-access-token"  # noqa: S105

# RFC 7636 §4.1 allows 43-128 characters; TikTok's Android SDK makes 32, so the floor is 32.
CODE_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{32,128}$")

SUBJECT_TOKEN_TYPES = SubjectTokenTypes(
    access_tokens=(TOKEN_TYPE_ACCESS_TOKEN,), codes=(TOKEN_TYPE_TIKTOK_CODE,), code_verifier=CODE_VERIFIER
)
