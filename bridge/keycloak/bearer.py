"""Verifying the realm's own access tokens, for the endpoints a signed-in Keycloak user calls (linking).

A token is accepted when it is signed by a key of the realm's JWKS, issued by the realm (`iss` exactly as
Keycloak's discovery names it), unexpired, and an access token (`typ` Bearer: an ID token proves who
signed in, not that the holder may act). Which client it was issued to is checked by the use case. Its
parts are parsed as strict JSON and `exp` (and `nbf`, `iat` when present) must be finite numbers
(`claims.py`): a NaN `exp` would never expire.

The JWKS is fetched once and kept; a token signed with a key id not in it (Keycloak rotated its keys)
fetches it again, at most once per `refetch_interval`, so tokens with made-up key ids cannot turn the
bridge into a request amplifier against Keycloak.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from bridge.domain import claims as jwt_claims
from bridge.domain.errors import InvalidToken
from bridge.domain.model import VerifiedBearer

if TYPE_CHECKING:
    from collections.abc import Callable

    from bridge.services.ports import RealmKeys

# Keycloak's default and the algorithms it offers for realm keys; never "none" or a symmetric one.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
MAX_TOKEN_LENGTH = 8192
# Seconds of clock difference tolerated between Keycloak and the bridge.
LEEWAY = 5


class RealmTokenVerifier:
    def __init__(
        self,
        keycloak: RealmKeys,
        *,
        refetch_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keycloak = keycloak
        self._refetch_interval = refetch_interval
        self._clock = clock
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> VerifiedBearer:
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:  # noqa: PLR2004 - JWS parts
            raise InvalidToken(detail="not a compact JWS")
        kid = _header(token).get("kid")
        if not isinstance(kid, str):
            raise InvalidToken(detail="no key id in the token header")
        keys = await self._keys_with(kid)
        try:
            claims = jwt.decode(
                token, keys, algorithms=list(ALGORITHMS), decoder_cls=jwt_claims.StrictJSONDecoder
            ).claims
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidToken(detail=f"signature or claims not verified: {type(exc).__name__}") from exc
        return self._check(claims, await self._keycloak.issuer())

    def _check(self, claims: dict[str, Any], issuer: str) -> VerifiedBearer:
        now = self._clock()
        try:
            # Every NumericDate the token carries is a finite number, iat included though unused.
            exp = jwt_claims.numeric_date(claims, "exp")
            nbf = jwt_claims.numeric_date(claims, "nbf")
            jwt_claims.numeric_date(claims, "iat")
        except ValueError as exc:
            raise InvalidToken(detail=str(exc)) from exc
        if exp is None:
            raise InvalidToken(detail="without exp")
        if exp <= now - LEEWAY:
            raise InvalidToken(detail="expired")
        if nbf is not None and nbf > now + LEEWAY:
            raise InvalidToken(detail="not yet valid")
        if claims.get("iss") != issuer:
            raise InvalidToken(detail="issued by another realm or server")
        if claims.get("typ") != "Bearer":
            raise InvalidToken(detail="not an access token")
        subject, azp = claims.get("sub"), claims.get("azp")
        if not isinstance(subject, str) or not subject:
            raise InvalidToken(detail="no subject")
        return VerifiedBearer(subject=subject, client_id=azp if isinstance(azp, str) else None)

    async def _keys_with(self, kid: str) -> KeySet:
        if self._keys is not None and kid in self._kids:
            return self._keys
        async with self._lock:
            if self._keys is not None and kid in self._kids:
                return self._keys
            if self._clock() - self._fetched_at >= self._refetch_interval:
                self._fetched_at = self._clock()
                jwks = await self._keycloak.realm_keys()
                signing = [k for k in jwks.get("keys", []) if isinstance(k, dict) and k.get("use") != "enc"]
                try:
                    self._keys = KeySet.import_key_set({"keys": signing})
                except (JoseError, ValueError, TypeError) as exc:
                    raise InvalidToken(detail="realm JWKS could not be imported") from exc
                self._kids = frozenset(str(k.get("kid")) for k in signing)
            if self._keys is None or kid not in self._kids:
                raise InvalidToken(detail="signed with a key the realm does not publish")
            return self._keys


def _header(token: str) -> dict[str, Any]:
    encoded = token.split(".", 1)[0]
    try:
        header = jwt_claims.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidToken(detail="token header is not JSON") from exc
    if not isinstance(header, dict):
        raise InvalidToken(detail="token header is not an object")
    return header
