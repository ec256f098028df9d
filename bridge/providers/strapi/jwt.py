"""Verify a jwt that Strapi's users-permissions plugin issued (`issue({id})`: HS256 with Strapi's JWT
secret, claims `id`, `iat`, `exp`), with joserfc: HS256 only (`alg: none`, RS256, HS512 and every other
algorithm are refused before any key is used), the signature, and `exp` when the jwt has one (Strapi
sets 30 days unless its `jwt.expiresIn` was switched off). The answer is the Strapi user id, or None;
why a jwt was refused goes to the log, never the jwt."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

ALGORITHMS = ("HS256",)
# Strapi's clock and ours may differ a little; a jwt is refused this long after its exp at most.
LEEWAY_SECONDS = 30


class StrapiJwtVerifier:
    def __init__(self, secret: str, *, clock: Callable[[], float] = time.time) -> None:
        # Strapi signs with the secret's UTF-8 bytes as they are (jsonwebtoken), not base64-decoded.
        self._key = OctKey.import_key(secret.encode())
        self._clock = clock

    def strapi_id(self, token: str) -> int | None:
        """The `id` claim of a jwt Strapi signed and that has not expired; None for any other."""
        try:
            decoded = jwt.decode(token, self._key, algorithms=list(ALGORITHMS))
            registry = jwt.JWTClaimsRegistry(
                now=int(self._clock()), leeway=LEEWAY_SECONDS, id={"essential": True}
            )
            registry.validate(decoded.claims)
        except (JoseError, ValueError, TypeError) as exc:
            log.info("strapi jwt refused", extra={"detail": type(exc).__name__})
            return None
        value = decoded.claims["id"]
        # A JSON integer (bool is an int to Python, never to Strapi).
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            log.info("strapi jwt refused", extra={"detail": "id claim is not a positive integer"})
            return None
        return value
