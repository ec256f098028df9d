"""Thin HTTP adapters: read the request, call the use case, shape the answer. No logic of their own."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from bridge.domain.errors import (
    NO_STORE,
    BridgeError,
    InvalidClient,
    InvalidDPoPProof,
    UnsupportedGrantType,
    to_oauth_error,
)
from bridge.domain.model import Caller
from bridge.observability.metrics import VAULT_ANSWERS, count, exposition
from bridge.operations.readiness import DeploymentChecks, Readiness
from bridge.protocol.dpop import ALGORITHMS as DPOP_ALGORITHMS
from bridge.protocol.dpop import verify_proof
from bridge.protocol.rfc6749 import (
    GRANT_TYPE_REFRESH_TOKEN,
    RefreshRequest,
    parse_form,
    parse_refresh_request,
    parse_revocation_request,
)
from bridge.protocol.rfc8693 import (
    GRANT_TYPE_TOKEN_EXCHANGE,
    SUPPORTED_REQUESTED_TOKEN_TYPES,
    AccessTokenExchange,
    exchange_response,
    parse_exchange_request,
    parse_stored_token_request,
    refresh_response,
    stored_token_response,
)
from bridge.providers.strapi.tokens import TOKEN_TYPE_STRAPI_JWT
from bridge.providers.tiktok.tokens import TOKEN_TYPE_TIKTOK_ACCESS_TOKEN
from bridge.services.exchange import SessionOrder
from bridge.web.support import client_ip, counts_exchanges, read_body, resources_of

if TYPE_CHECKING:
    from starlette.requests import Request

    from bridge.factory import Resources

log = logging.getLogger(__name__)

TOKEN_PATH = "/token"  # noqa: S105 - a path
REVOCATION_PATH = "/revoke"
JWKS_PATH = "/.well-known/jwks.json"


@counts_exchanges("token")
async def token(request: Request) -> Response:
    """The token endpoint: token exchange (RFC 8693) starts a session, refresh (RFC 6749 §6) extends it."""
    resources = resources_of(request)
    await resources.limiter.check_ip(client_ip(request))
    form = parse_form(await read_body(request), request.headers.get("content-type"))
    if form.get("grant_type") == GRANT_TYPE_REFRESH_TOKEN:
        return await _refresh(request, resources, parse_refresh_request(form))
    if resources.vault is not None and form.get("requested_token_type") == TOKEN_TYPE_TIKTOK_ACCESS_TOKEN:
        return await _vault(request, resources, form)
    exchange_request = parse_exchange_request(form, resources.exchange_token_types)
    client_id = resources.clients.authenticate(
        request.headers.get("authorization"), exchange_request.client_id, exchange_request.client_secret
    )
    jkt = await _dpop_thumbprint(request, resources)
    caller = Caller(address=client_ip(request), trusted=client_id in resources.clients.confidential)
    order = None if resources.sessions is None else SessionOrder(resources.sessions, jkt, client_id)
    service = resources.apps.exchange_for(client_id)
    if exchange_request.subject_token_type == TOKEN_TYPE_STRAPI_JWT and resources.strapi_jwt is not None:
        assert isinstance(exchange_request, AccessTokenExchange)  # noqa: S101 - a bearer type, never a code
        exchanged = await resources.strapi_jwt.exchange(
            exchange_request.access_token,
            service,
            exchange_request.scope,
            audiences=exchange_request.audiences,
            session=order,
        )
    else:
        exchanged = await service.exchange(exchange_request, caller, session=order)
    answer = exchange_response(exchanged.issued, exchange_request.requested_token_type)
    if (session := exchanged.session) is not None:
        answer |= {"refresh_token": session.refresh_token, "refresh_expires_in": session.refresh_expires_in}
    if resources.vault is not None and exchanged.provider_grant is not None:
        await resources.vault.keep(exchanged.user_id, exchanged.provider_grant)
    log.info(
        "token exchanged",
        extra={
            "outcome": "issued",
            "keycloak_user_id": exchanged.user_id,
            "user_created": exchanged.created,
            "subject_token_type": exchange_request.subject_token_type,
            "client_id": client_id,
            "dpop_bound": jkt is not None,
        },
    )
    return JSONResponse(answer, headers=NO_STORE)


async def _refresh(request: Request, resources: Resources, refresh: RefreshRequest) -> Response:
    client_id = resources.clients.authenticate(
        request.headers.get("authorization"), refresh.client_id, refresh.client_secret
    )
    if resources.sessions is None:
        raise UnsupportedGrantType("Sessions are switched off: only token exchange is supported.")
    jkt = await _dpop_thumbprint(request, resources)
    refreshed = await resources.sessions.refresh(
        refresh.refresh_token, refresh.scope, jkt=jkt, client_id=client_id, audiences=refresh.audiences
    )
    answer = refresh_response(refreshed.issued)
    answer |= {
        "refresh_token": refreshed.grant.refresh_token,
        "refresh_expires_in": refreshed.grant.refresh_expires_in,
    }
    log.info("session refreshed", extra={"outcome": "issued", "client_id": client_id})
    return JSONResponse(answer, headers=NO_STORE)


async def _vault(request: Request, resources: Resources, form: dict[str, str]) -> Response:
    """The token vault (docs/vault.md): a confidential backend swaps a user's realm access token for
    the user's TikTok access token. Every answer is logged (client, user, scopes) and counted."""
    assert resources.vault is not None  # noqa: S101 - routed here only with the vault on
    client_id: str | None = None
    try:
        stored = parse_stored_token_request(form, TOKEN_TYPE_TIKTOK_ACCESS_TOKEN)
        client_id = resources.clients.authenticate(
            request.headers.get("authorization"), stored.client_id, stored.client_secret
        )
        if client_id is None or client_id not in resources.clients.confidential:
            # A backend authenticates: a public client, or none, never receives a TikTok token.
            client_id = None
            raise InvalidClient("The token vault answers authenticated confidential clients only.")
        handed = await resources.vault.hand_out(client_id, stored.subject_token, stored.scope)
    except BridgeError as refused:
        _audit_vault(
            client_id,
            to_oauth_error(refused).error,
            keycloak_user_id=None,
            scopes=None,
            detail=refused.detail,
        )
        raise
    _audit_vault(
        client_id,
        "refreshed" if handed.refreshed else "issued",
        keycloak_user_id=handed.user_id,
        scopes=handed.scopes,
    )
    answer = stored_token_response(
        handed.access_token, TOKEN_TYPE_TIKTOK_ACCESS_TOKEN, handed.expires_in, handed.scopes
    )
    return JSONResponse(answer, headers=NO_STORE)


def _audit_vault(
    client_id: str | None,
    outcome: str,
    *,
    keycloak_user_id: str | None,
    scopes: tuple[str, ...] | None,
    detail: str | None = None,
) -> None:
    """One log line and one count per vault answer; never a token (only the client, user and scopes)."""
    client = client_id or "unauthenticated"
    count(VAULT_ANSWERS, client, outcome)
    extra: dict[str, Any] = {"outcome": outcome, "client_id": client, "keycloak_user_id": keycloak_user_id}
    if scopes is not None:
        extra["tiktok_scopes"] = " ".join(scopes)
    if detail:
        extra["detail"] = detail
    log.info("tiktok token handed out" if scopes is not None else "tiktok token refused", extra=extra)


async def _dpop_thumbprint(request: Request, resources: Resources) -> str | None:
    proofs = request.headers.getlist("dpop")
    if len(proofs) > 1:
        raise InvalidDPoPProof(detail="more than one DPoP header")
    return await verify_proof(
        proofs[0] if proofs else None,
        method="POST",
        url=f"{resources.settings.issuer_url}{TOKEN_PATH}",
        # The shared cache, falling back to memory in an outage: replay protection per replica then.
        replays=resources.dpop_proofs,
    )


async def revoke(request: Request) -> Response:
    """RFC 7009: end the session of a refresh token. 200 whether or not the token was known (§2.2);
    400 unauthorized_client for a token issued to another client (§2.1), which stays valid."""
    resources = resources_of(request)
    await resources.limiter.check_ip(client_ip(request))
    revocation = parse_revocation_request(
        parse_form(await read_body(request), request.headers.get("content-type"))
    )
    client_id = resources.clients.authenticate(
        request.headers.get("authorization"), revocation.client_id, revocation.client_secret
    )
    ended = resources.sessions is not None and await resources.sessions.revoke(revocation.token, client_id)
    log.info("revocation", extra={"session_ended": ended, "client_id": client_id})
    return Response(status_code=HTTPStatus.OK, headers=NO_STORE)


async def authorization_server_metadata(request: Request) -> Response:
    """RFC 8414 metadata, so clients discover the token endpoint and what it accepts."""
    resources = resources_of(request)
    issuer = resources.settings.issuer_url
    auth_methods = (
        ["none", "client_secret_basic", "client_secret_post"] if resources.clients.confidential else ["none"]
    )
    grant_types = [GRANT_TYPE_TOKEN_EXCHANGE]
    if resources.sessions is not None:
        grant_types.append(GRANT_TYPE_REFRESH_TOKEN)
    metadata: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": f"{issuer}{TOKEN_PATH}",
        "jwks_uri": f"{issuer}{JWKS_PATH}",
        "grant_types_supported": grant_types,
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint": f"{issuer}{REVOCATION_PATH}",
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "response_types_supported": [],
        "dpop_signing_alg_values_supported": list(DPOP_ALGORITHMS),
        # Not registered RFC 8414 names, but what clients ask for most: which token types we take.
        "subject_token_types_supported": list(resources.exchange_token_types.supported),
        "requested_token_types_supported": list(SUPPORTED_REQUESTED_TOKEN_TYPES),
    }
    if resources.vault is not None:
        metadata["requested_token_types_supported"].append(TOKEN_TYPE_TIKTOK_ACCESS_TOKEN)
    return JSONResponse(metadata, headers={"Cache-Control": "public, max-age=3600"})


async def jwks(request: Request) -> Response:
    # Short max-age: Keycloak and others must see a rotated key soon after it is published.
    return JSONResponse(resources_of(request).signer.jwks(), headers={"Cache-Control": "public, max-age=300"})


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _readiness_of(request: Request) -> Readiness:
    state = request.app.state
    if not hasattr(state, "readiness"):
        state.readiness = Readiness()
    readiness: Readiness = state.readiness
    return readiness


async def readyz(request: Request) -> Response:
    """Public: the verdict only (which dependency failed is for the admin listener)."""
    ready = await _readiness_of(request).current(resources_of(request))
    return JSONResponse({"status": ready.status}, status_code=ready.code, headers=NO_STORE)


async def readyz_detailed(request: Request) -> Response:
    """Admin listener: the verdict and each check; with `?verbose=true`, also every check of
    `bridge doctor` (the whole minting path, TikTok's credentials, the realm's set-up), cached a minute."""
    resources = resources_of(request)
    ready = await _readiness_of(request).current(resources)
    body: dict[str, Any] = {"status": ready.status, "checks": ready.checks}
    if request.query_params.get("verbose") in {"1", "true"}:
        state = request.app.state
        if not hasattr(state, "deployment_checks"):
            state.deployment_checks = DeploymentChecks()
        deployment: DeploymentChecks = state.deployment_checks
        body |= await deployment.current(resources)
    return JSONResponse(body, status_code=ready.code, headers=NO_STORE)


async def metrics(_request: Request) -> Response:
    body, media_type = exposition()
    return Response(body, media_type=media_type, headers=NO_STORE)
