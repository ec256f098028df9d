"""`/account/links/tiktok`: the signed-in Keycloak user links, inspects or removes their TikTok identity.

A thin adapter over `LinkingService`: read the bearer token (RFC 6750 §2.1, the Authorization header
only: never a form field or query parameter, which end up in logs), the TikTok credential (the same form
parameters as /token), and answer the link as JSON. Served only when BRIDGE_LINK_CLIENT_IDS is set.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse, Response

from bridge.domain.errors import NO_STORE, BearerRequired, InvalidToken
from bridge.protocol.rfc6749 import parse_form
from bridge.protocol.rfc8693 import CodeExchange, parse_subject_proof
from bridge.web.support import client_ip, read_body, resources_of

if TYPE_CHECKING:
    from starlette.requests import Request

    from bridge.domain.model import ExternalIdentity, KeycloakUser, ProviderGrant
    from bridge.factory import Resources
    from bridge.services.linking import LinkingService

log = logging.getLogger(__name__)

PATH = "/account/links/tiktok"
PROVIDER = "tiktok"


def _bearer(request: Request) -> str:
    values = request.headers.getlist("authorization")
    if not values:
        raise BearerRequired(detail="no Authorization header")
    scheme, _, token = values[0].partition(" ")
    if len(values) > 1 or scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken(detail="Authorization is not one Bearer token")
    return token.strip()


async def _user(request: Request) -> tuple[Resources, LinkingService, KeycloakUser]:
    resources = resources_of(request)
    await resources.limiter.check_ip(client_ip(request))
    linking = resources.linking
    if linking is None:  # routes are mounted only with linking on; this keeps the types honest
        raise InvalidToken(detail="linking is off")
    return resources, linking, await linking.signed_in_user(_bearer(request))


async def link(request: Request) -> Response:
    """POST: attach the TikTok identity the form proves to the bearer's user."""
    resources, linking, user = await _user(request)
    form = parse_form(await read_body(request), request.headers.get("content-type"))
    proof = parse_subject_proof(form, resources.subject_token_types)
    profile: ExternalIdentity
    grant: ProviderGrant | None = None
    if isinstance(proof, CodeExchange):
        profile, grant = await linking.proofs.verify_code(proof.code, proof.code_verifier, proof.redirect_uri)
    else:
        profile = await linking.proofs.verify_access_token_fresh(proof.access_token)
    state = await linking.link(user, profile)
    if resources.vault is not None and grant is not None:
        # A link made with a code gives the token vault the identity's newest grant.
        await resources.vault.keep(user.id, grant)
    return JSONResponse(state.to_json(PROVIDER), headers=NO_STORE)


async def show(request: Request) -> Response:
    """GET: whether the bearer's user has a TikTok identity, and which."""
    _resources, linking, user = await _user(request)
    return JSONResponse((await linking.state(user)).to_json(PROVIDER), headers=NO_STORE)


async def unlink(request: Request) -> Response:
    """DELETE: remove the bearer's user's TikTok identity (200 also when there was none)."""
    _resources, linking, user = await _user(request)
    return JSONResponse((await linking.unlink(user)).to_json(PROVIDER), headers=NO_STORE)


async def endpoint(request: Request) -> Response:
    """One route, three methods (the router has already refused any other with 405; HEAD is GET)."""
    handlers = {"POST": link, "DELETE": unlink}
    return await handlers.get(request.method, show)(request)
