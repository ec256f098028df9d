"""The OpenAPI 3.1 description of every endpoint, served at GET /openapi.json.

Written by hand (the app has few routes and their contracts are RFC-defined); a test checks that it
names exactly the routes the app serves, with the same methods. It describes the deployment it is served
by: the subject and requested token types, and the client authentication, that are switched on.
"""

from __future__ import annotations

from typing import Any

from bridge.protocol.rfc6749 import GRANT_TYPE_REFRESH_TOKEN
from bridge.protocol.rfc8693 import (
    GRANT_TYPE_TOKEN_EXCHANGE,
    SUPPORTED_REQUESTED_TOKEN_TYPES,
    TOKEN_TYPE_ACCESS_TOKEN,
)
from bridge.providers.strapi.tokens import TOKEN_TYPE_STRAPI_JWT
from bridge.providers.tiktok.tokens import SUBJECT_TOKEN_TYPES, TOKEN_TYPE_TIKTOK_ACCESS_TOKEN

# The public surface names TikTok's credentials: the subject token types /token and linking accept.
SUPPORTED_SUBJECT_TOKEN_TYPES = SUBJECT_TOKEN_TYPES.supported

_OAUTH_ERROR = {
    "type": "object",
    "required": ["error", "error_description"],
    "properties": {
        "error": {
            "type": "string",
            "enum": [
                "invalid_request",
                "invalid_client",
                "unauthorized_client",
                "invalid_grant",
                "invalid_dpop_proof",
                "unsupported_grant_type",
                "invalid_scope",
                "invalid_target",
                "invalid_token",
                "access_denied",
                "link_conflict",
                "temporarily_unavailable",
                "server_error",
            ],
        },
        "error_description": {"type": "string"},
    },
    "additionalProperties": False,
}
_STRAPI_ERROR = {
    "type": "object",
    "required": ["data", "error"],
    "properties": {
        "data": {"type": "null"},
        "error": {
            "type": "object",
            "required": ["status", "name", "message", "details"],
            "properties": {
                "status": {"type": "integer"},
                "name": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        },
    },
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}
# RFC 6749 §5.2: a 401 invalid_client names the authentication scheme the client should use.
_BASIC_CHALLENGE = {
    "WWW-Authenticate": {
        "required": True,
        "schema": {"type": "string", "pattern": "^Basic "},
        "description": "RFC 6749 §5.2, RFC 7617",
    }
}
# RFC 6749 §2.3.1 client_secret_post: a public client names itself with client_id alone.
_CLIENT_PARAMETERS = {
    "client_id": {"type": "string", "description": "A client of the allow-list (RFC 6749 §2.3.1)"},
    "client_secret": {"type": "string", "description": "A confidential client's secret, or HTTP Basic"},
}
# HTTP Basic for a confidential client; or nothing the scheme can express: a public client's client_id,
# a confidential client's client_secret in the form, or no client at all (refused with 401 while the
# allow-list is on, or where the token vault is asked).
_CLIENT_SECURITY: list[dict[str, list[str]]] = [{"clientBasic": []}, {}]


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _oauth_errors() -> dict[str, Any]:
    error = {"$ref": "#/components/schemas/OAuthError"}
    return {
        "400": _json(error, "Invalid request (RFC 6749 §5.2, RFC 8693 §2.2.2)"),
        "401": _json(
            error,
            "invalid_client: no, unknown, malformed or doubled client authentication, or a wrong secret "
            "(only with a client allow-list)",
            _BASIC_CHALLENGE,
        ),
        "408": _json(error, "The body did not arrive within the body timeout"),
        "413": _json(error, "Body larger than 16 KiB"),
        "431": _json(error, "Request line and headers over 16 KiB, or more than 64 headers"),
        "429": _json(error, "Rate limited (RFC 6585)", _RETRY_AFTER),
        "500": _json(error, "The bridge's own configuration or a bug"),
        "503": _json(error, "TikTok or Keycloak unavailable", _RETRY_AFTER),
    }


def _link_operations() -> dict[str, Any]:
    """/account/links/tiktok: the signed-in user's TikTok link (RFC 6750 bearer, a realm access token)."""
    error = {"$ref": "#/components/schemas/OAuthError"}
    challenge = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "RFC 6750 §3"}}
    link_state = {
        "type": "object",
        "required": ["provider", "linked", "user_id", "open_id"],
        "properties": {
            "provider": {"type": "string", "const": "tiktok"},
            "linked": {"type": "boolean"},
            "user_id": {"type": "string", "description": "The Keycloak user (the token's sub)"},
            "open_id": {"type": ["string", "null"]},
            "tiktok_username": {"type": ["string", "null"]},
            "tiktok_display_name": {"type": ["string", "null"]},
        },
    }
    common = {
        "401": _json(
            error,
            "Bearer token missing, invalid, expired, of another realm or client, or its "
            "user is disabled or deleted",
            challenge,
        ),
        "403": _json(
            error,
            "access_denied: the account is outside the bridge's group (an administrator must allow it)",
        ),
        "408": _json(error, "The body did not arrive within the body timeout"),
        "413": _json(error, "Body larger than 16 KiB"),
        "431": _json(error, "Request line and headers over 16 KiB, or more than 64 headers"),
        "429": _json(error, "Rate limited (RFC 6585)", _RETRY_AFTER),
        "500": _json(error, "The bridge's own configuration or a bug"),
        "503": _json(error, "TikTok or Keycloak unavailable", _RETRY_AFTER),
    }
    security: list[dict[str, list[str]]] = [{"keycloakBearer": []}]
    proof = {
        "type": "object",
        "required": ["subject_token", "subject_token_type"],
        "properties": {
            "subject_token": {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^[!-~]+$"},
            "subject_token_type": {"type": "string", "enum": list(SUPPORTED_SUBJECT_TOKEN_TYPES)},
            "code_verifier": {"type": "string", "pattern": "^[A-Za-z0-9._~-]{32,128}$"},
            "redirect_uri": {"type": "string", "format": "uri"},
        },
    }
    return {
        "get": {
            "summary": "Whether the signed-in user has a TikTok identity linked, and which",
            "security": security,
            "responses": {"200": _json(link_state, "The link (Cache-Control: no-store)"), **common},
        },
        "post": {
            "summary": "Link the TikTok identity the form proves (a code with PKCE, or an access token) to "
            "the signed-in user; relinking the same identity changes nothing",
            "security": security,
            "requestBody": {
                "required": True,
                "content": {"application/x-www-form-urlencoded": {"schema": proof}},
            },
            "responses": {
                "200": _json(link_state, "Linked"),
                "400": _json(error, "Malformed form, or TikTok refused the credential"),
                "409": _json(
                    error, "The identity is linked to another user, or the user to another identity"
                ),
                **common,
            },
        },
        "delete": {
            "summary": "Unlink the signed-in user's TikTok identity and end its bridge sessions",
            "security": security,
            "responses": {"200": _json(link_state, "Unlinked (or there was no link)"), **common},
        },
    }


def _vault_request(client_parameters: dict[str, Any]) -> dict[str, Any]:
    """The token vault's request (docs/vault.md): a realm user's access token for the user's TikTok one.
    Only an authenticated confidential client of BRIDGE_VAULT_CLIENT_IDS is answered."""
    return {
        "type": "object",
        "description": "The token vault: a confidential client of BRIDGE_VAULT_CLIENT_IDS (HTTP Basic or "
        "client_id and client_secret) swaps a realm user's access token for the user's TikTok access "
        "token",
        "required": ["grant_type", "subject_token", "subject_token_type", "requested_token_type"],
        "properties": {
            "grant_type": {"type": "string", "const": GRANT_TYPE_TOKEN_EXCHANGE},
            "subject_token": {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^[!-~]+$"},
            "subject_token_type": {"type": "string", "const": TOKEN_TYPE_ACCESS_TOKEN},
            "requested_token_type": {"type": "string", "const": TOKEN_TYPE_TIKTOK_ACCESS_TOKEN},
            "scope": {"type": "string", "description": "TikTok scopes the user's grant must carry"},
            **client_parameters,
        },
    }


def _vault_response() -> dict[str, Any]:
    """RFC 8693 §2.2.1 answer of the vault: TikTok's access token, as TikTok scoped it."""
    return {
        "type": "object",
        "required": ["access_token", "issued_token_type", "token_type", "expires_in", "scope"],
        "properties": {
            "access_token": {"type": "string", "minLength": 1},
            "issued_token_type": {"type": "string", "const": TOKEN_TYPE_TIKTOK_ACCESS_TOKEN},
            "token_type": {"type": "string", "const": "Bearer"},
            "expires_in": {"type": "integer", "minimum": 0, "description": "What is left of TikTok's"},
            "scope": {"type": "string", "description": "The TikTok scopes the token carries"},
        },
        "additionalProperties": False,
    }


def _token_examples(*, strapi_jwt: bool, vault: bool) -> dict[str, Any]:
    """A request of each kind /token serves, as the guides show them (the tokens are placeholders)."""
    jws = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJleGFtcGxlIn0.c2lnbmF0dXJl"
    examples: dict[str, Any] = {
        "tiktok_access_token": {
            "summary": "Sign in with a TikTok access token",
            "value": {
                "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
                "subject_token": "act.example",
                "subject_token_type": TOKEN_TYPE_ACCESS_TOKEN,
            },
        }
    }
    if strapi_jwt:
        examples["strapi_jwt"] = {
            "summary": "Trade a Strapi plugin's jwt for a session (docs/migrating-from-strapi.md)",
            "value": {
                "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
                "subject_token": jws,
                "subject_token_type": TOKEN_TYPE_STRAPI_JWT,
            },
        }
    if vault:
        examples["vault"] = {
            "summary": "A vault client swaps a user's realm access token for the user's TikTok access token "
            "(docs/vault.md; the client authenticates)",
            "value": {
                "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
                "subject_token": jws,
                "subject_token_type": TOKEN_TYPE_ACCESS_TOKEN,
                "requested_token_type": TOKEN_TYPE_TIKTOK_ACCESS_TOKEN,
                "scope": "video.list",
            },
        }
    return examples


def _token_operation(*, strapi_jwt: bool, vault: bool, clients: bool, confidential: bool) -> dict[str, Any]:
    """POST /token: exchange (RFC 8693), refresh (RFC 6749 §6) and, with the vault on, TikTok's token."""
    client_parameters = _CLIENT_PARAMETERS if clients else {}
    # /token also takes a Strapi jwt when BRIDGE_STRAPI_JWT_SECRET is set (linking never does). A bearer
    # credential travels alone; an authorization code with its PKCE verifier and redirect URI, which go
    # with nothing else (two alternatives, so a generated request is one the bridge would read).
    bearer_types = [*SUBJECT_TOKEN_TYPES.access_tokens, *([TOKEN_TYPE_STRAPI_JWT] if strapi_jwt else [])]
    exchange_properties = {
        "grant_type": {"type": "string", "const": GRANT_TYPE_TOKEN_EXCHANGE},
        "subject_token": {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^[!-~]+$"},
        "requested_token_type": {"type": "string", "enum": list(SUPPORTED_REQUESTED_TOKEN_TYPES)},
        "scope": {"type": "string"},
        "audience": {"type": "string", "description": "An API the token is for (configured audiences)"},
        "resource": {"type": "string", "format": "uri", "description": "RFC 8707, like audience"},
        **client_parameters,
    }
    bearer_request = {
        "type": "object",
        "required": ["grant_type", "subject_token", "subject_token_type"],
        "properties": {
            **exchange_properties,
            "subject_token_type": {"type": "string", "enum": bearer_types},
        },
    }
    code_request = {
        "type": "object",
        "required": ["grant_type", "subject_token", "subject_token_type", "code_verifier", "redirect_uri"],
        "properties": {
            **exchange_properties,
            "subject_token_type": {"type": "string", "enum": list(SUBJECT_TOKEN_TYPES.codes)},
            "code_verifier": {"type": "string", "pattern": "^[A-Za-z0-9._~-]{32,128}$"},
            "redirect_uri": {"type": "string", "format": "uri"},
        },
    }
    refresh_request = {
        "type": "object",
        "required": ["grant_type", "refresh_token"],
        "properties": {
            "grant_type": {"type": "string", "const": GRANT_TYPE_REFRESH_TOKEN},
            "refresh_token": {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^[!-~]+$"},
            "scope": {"type": "string"},
            "audience": {"type": "string", "description": "Keep or narrow the session's audiences"},
            "resource": {"type": "string", "format": "uri"},
            **client_parameters,
        },
    }
    token_request: list[dict[str, Any]] = [bearer_request, code_request, refresh_request]
    token_response: dict[str, Any] = {
        "type": "object",
        "required": ["access_token", "token_type"],
        "properties": {
            "access_token": {"type": "string"},
            "issued_token_type": {"type": "string", "enum": list(SUPPORTED_REQUESTED_TOKEN_TYPES)},
            "token_type": {"type": "string", "enum": ["Bearer", "N_A"]},
            "expires_in": {"type": "integer"},
            "scope": {"type": "string"},
            "id_token": {"type": "string"},
            "refresh_token": {"type": "string", "pattern": "^tkb1\\."},
            "refresh_expires_in": {"type": "integer", "minimum": 0},
        },
    }
    answers: list[dict[str, Any]] = [token_response]
    refusals = _oauth_errors()
    if vault:
        token_request.append(_vault_request(client_parameters))
        answers.append(_vault_response())
        refusals["400"]["description"] += (
            "; the vault: unauthorized_client for a client not allowed it, invalid_request for a "
            "subject_token or user it cannot serve, invalid_scope"
        )
    error = {"$ref": "#/components/schemas/OAuthError"}
    # Adopting an existing account, or the vault reading the subject's user, outside the bridge's group.
    refusals["403"] = _json(error, "access_denied: the account is outside the bridge's group")
    dpop_header = {
        "name": "DPoP",
        "in": "header",
        "required": False,
        "description": "A DPoP proof (RFC 9449): binds the session's refresh token to the proof's key",
        "schema": {"type": "string"},
    }
    operation: dict[str, Any] = {
        "summary": "Token Exchange (RFC 8693): TikTok credential in, Keycloak token and a session "
        "out; or refresh a session (RFC 6749 §6)"
        + ("; or, for a vault client, a realm user's token in, the user's TikTok token out" if vault else ""),
        "parameters": [dpop_header],
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {"oneOf": token_request},
                    "examples": _token_examples(strapi_jwt=strapi_jwt, vault=vault),
                }
            },
        },
        "responses": {
            "200": _json(
                answers[0] if len(answers) == 1 else {"oneOf": answers},
                "RFC 8693 §2.2.1 (Cache-Control: no-store)",
                {"Cache-Control": {"schema": {"type": "string", "const": "no-store"}}},
            ),
            **refusals,
        },
    }
    if confidential:
        operation["security"] = _CLIENT_SECURITY
    return operation


def document(
    issuer: str,
    *,
    strapi: bool,
    webhook: bool = True,
    linking: bool = False,
    strapi_jwt: bool = False,
    vault: bool = False,
    clients: bool = False,
    confidential_clients: bool = False,
) -> dict[str, Any]:
    """The document of a deployment: `clients` when the client allow-list is on (BRIDGE_PUBLIC_CLIENT_IDS
    or BRIDGE_CONFIDENTIAL_CLIENTS), `confidential_clients` when some client authenticates with a secret."""
    revocation: dict[str, Any] = {
        "summary": "Token revocation (RFC 7009): end the session of a refresh token",
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["token"],
                        # Untyped on purpose: RFC 7009 §2.2 answers 200 to any token at all, so no
                        # value of it can be refused (form values are strings).
                        "properties": {
                            "token": {"minLength": 1},
                            "token_type_hint": {},
                            **(_CLIENT_PARAMETERS if clients else {}),
                        },
                    }
                }
            },
        },
        "responses": {
            "200": {"description": "Revoked, or unknown (RFC 7009 §2.2): the same answer"},
            # A token issued to another client (§2.1) is answered 400 unauthorized_client.
            **_oauth_errors(),
        },
    }
    if confidential_clients:
        revocation["security"] = _CLIENT_SECURITY
    paths: dict[str, Any] = {
        "/token": {
            "post": _token_operation(
                strapi_jwt=strapi_jwt, vault=vault, clients=clients, confidential=confidential_clients
            )
        },
        "/revoke": {"post": revocation},
        "/.well-known/oauth-authorization-server": {
            "get": {
                "summary": "Authorization server metadata (RFC 8414)",
                "responses": {
                    "200": _json({"type": "object", "required": ["issuer", "token_endpoint"]}, "Metadata")
                },
            }
        },
        "/.well-known/jwks.json": {
            "get": {
                "summary": "The public keys Keycloak uses to verify the bridge's assertions",
                "responses": {"200": _json({"type": "object", "required": ["keys"]}, "JWK Set (RFC 7517)")},
            }
        },
        "/healthz": {
            "get": {"summary": "Alive", "responses": {"200": _json({"type": "object"}, "The process runs")}}
        },
        "/readyz": {
            "get": {
                "summary": (
                    "Ready: Keycloak reachable; the cache reachable or degraded to memory (checked at most "
                    "every few seconds; the checks themselves are on the admin listener)"
                ),
                "responses": {
                    "200": _json({"type": "object"}, "ready or degraded"),
                    "503": _json({"type": "object"}, "unavailable"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
    }
    if strapi:
        paths["/api/tiktok-auth-mobile/connect"] = {
            "post": {
                "summary": "Strapi plugin 'TikTok Auth Mobile' compatible sign-in",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["access_token"],
                                "properties": {"access_token": {"type": "string", "minLength": 1}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["jwt", "user"],
                            "properties": {
                                "jwt": {"type": "string"},
                                "user": {"type": "object"},
                                "refresh_token": {"type": "string"},
                            },
                        },
                        "A Keycloak token, the Strapi-shaped user and a bridge refresh token",
                    ),
                    "400": _json(_STRAPI_ERROR, "The plugin's error shape and messages"),
                    "408": _json(_STRAPI_ERROR, "The body did not arrive within the body timeout"),
                    "413": _json(_STRAPI_ERROR, "Body larger than 16 KiB"),
                    "431": _json(
                        {"$ref": "#/components/schemas/OAuthError"},
                        "Request line and headers over 16 KiB, or more than 64 headers",
                    ),
                    "429": _json(_STRAPI_ERROR, "Rate limited", _RETRY_AFTER),
                    "500": _json(_STRAPI_ERROR, "Internal error"),
                    "503": _json(_STRAPI_ERROR, "TikTok or Keycloak unavailable", _RETRY_AFTER),
                },
            }
        }
    if webhook:
        paths["/webhooks/tiktok"] = {
            "post": {
                "summary": "TikTok webhook: authorization.removed (signed with the app's client secret)",
                "parameters": [
                    {
                        "name": "TikTok-Signature",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"status": {"enum": ["accepted", "duplicate", "ignored"]}},
                        },
                        "Acknowledged at once; the policy is applied afterwards",
                    ),
                    "400": _json({"$ref": "#/components/schemas/OAuthError"}, "Not a TikTok event"),
                    "401": _json(
                        {"$ref": "#/components/schemas/OAuthError"}, "Signature missing, stale or wrong"
                    ),
                    "408": _json(
                        {"$ref": "#/components/schemas/OAuthError"},
                        "The body did not arrive within the body timeout",
                    ),
                    "413": _json({"$ref": "#/components/schemas/OAuthError"}, "Body larger than 16 KiB"),
                    "429": _json(
                        {"$ref": "#/components/schemas/OAuthError"}, "Rate limited per address", _RETRY_AFTER
                    ),
                    "503": _json(
                        {"$ref": "#/components/schemas/OAuthError"},
                        "The session store is unavailable: TikTok delivers again later",
                        _RETRY_AFTER,
                    ),
                    "431": _json(
                        {"$ref": "#/components/schemas/OAuthError"},
                        "Request line and headers over 16 KiB, or more than 64 headers",
                    ),
                },
            }
        }
    components: dict[str, Any] = {"schemas": {"OAuthError": _OAUTH_ERROR}}
    schemes: dict[str, Any] = {}
    if confidential_clients:
        schemes["clientBasic"] = {
            "type": "http",
            "scheme": "basic",
            "description": "A confidential client of BRIDGE_CONFIDENTIAL_CLIENTS, its id and secret "
            "form-encoded (RFC 6749 §2.3.1); the same pair may travel as client_id and client_secret in the "
            "form instead, never both. Public clients send client_id alone. The token vault answers the "
            "confidential clients of BRIDGE_VAULT_CLIENT_IDS only.",
        }
    if linking:
        paths["/account/links/tiktok"] = _link_operations()
        schemes["keycloakBearer"] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An access token of the realm, issued to a client in BRIDGE_LINK_CLIENT_IDS",
        }
    if schemes:
        components["securitySchemes"] = schemes
    return {
        "openapi": "3.1.0",
        "info": {"title": "tiktok-keycloak-bridge", "version": "0.1.0"},
        "servers": [{"url": issuer}],
        "paths": paths,
        "components": components,
    }
