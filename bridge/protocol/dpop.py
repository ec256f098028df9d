"""DPoP proofs (RFC 9449) at the token endpoint: an optional sender constraint for refresh tokens.

A mobile app keeps a key pair in its secure hardware and signs a proof for each token request. When
the exchange that starts a session carries a valid proof, the session's refresh token is bound to that
key's RFC 7638 thumbprint (`jkt`); a refresh without a proof by the same key is refused, so a refresh
token stolen off the device is useless. The access tokens stay Keycloak's Bearer tokens.

Checks (§4.3): one `DPoP` header; a compact JWS with `typ: dpop+jwt`, an asymmetric `alg` from the
advertised list, a public `jwk` in its header that verifies the signature; claims `htm` = POST, `htu`
= this endpoint's URL (without query and fragment), `iat` a finite number within `MAX_SKEW` seconds, a
`jti` not seen within the replay window. Signature verification and thumbprints are joserfc's; the
header and claims are parsed as strict JSON (`claims.py`: no NaN or Infinity).
"""

from __future__ import annotations

import base64
import time
from typing import Any, Protocol

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from bridge.domain import claims as jwt_claims
from bridge.domain.errors import InvalidDPoPProof


class SeenOnce(Protocol):
    """Where proofs' `jti`s are remembered for a while (`storage/seen.py` over the shared cache)."""

    async def first_time(self, seen: str | bytes) -> bool: ...


ALGORITHMS = ("ES256", "Ed25519", "RS256", "PS256")  # Ed25519: RFC 9864, which deprecates "EdDSA"
MAX_SKEW = 60
MAX_PROOF_BYTES = 8192
_KEY_TYPES: dict[str, type[ECKey | OKPKey | RSAKey]] = {"EC": ECKey, "OKP": OKPKey, "RSA": RSAKey}


def _header(proof: str) -> dict[str, Any]:
    try:
        encoded = proof.split(".", 1)[0]
        header = jwt_claims.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidDPoPProof(detail="proof header is not base64url JSON") from exc
    if not isinstance(header, dict):
        raise InvalidDPoPProof(detail="proof header is not an object")
    return header


def _public_key(header: dict[str, Any]) -> ECKey | OKPKey | RSAKey:
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or jwk.get("kty") not in _KEY_TYPES:
        raise InvalidDPoPProof(detail="proof has no usable jwk")
    if any(private in jwk for private in ("d", "p", "q", "dp", "dq", "qi")):
        raise InvalidDPoPProof(detail="proof jwk carries a private key")
    try:
        return _KEY_TYPES[jwk["kty"]].import_key(jwk)
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidDPoPProof(detail="proof jwk cannot be imported") from exc


async def verify_proof(proof: str | None, *, method: str, url: str, replays: SeenOnce) -> str | None:
    """The thumbprint of the key that signed a valid proof, None when there is no proof at all."""
    if proof is None:
        return None
    if len(proof) > MAX_PROOF_BYTES or proof.count(".") != 2:  # noqa: PLR2004 - a compact JWS
        raise InvalidDPoPProof(detail="not a compact JWS")
    header = _header(proof)
    if header.get("typ") != "dpop+jwt" or header.get("alg") not in ALGORITHMS:
        raise InvalidDPoPProof(detail="wrong typ or alg")
    key = _public_key(header)
    try:
        verified = jws.deserialize_compact(proof, key, algorithms=list(ALGORITHMS))
        claims = jwt_claims.loads(verified.payload)
    except (JoseError, ValueError, UnicodeDecodeError) as exc:
        raise InvalidDPoPProof(detail="signature does not verify") from exc
    jti = _checked_jti(claims, method=method, url=url)
    if not await replays.first_time(jti):
        raise InvalidDPoPProof(detail="proof replayed")
    return key.thumbprint()


def _checked_jti(claims: object, *, method: str, url: str) -> str:
    """The `jti` of claims that name this request and were issued within `MAX_SKEW` seconds."""
    if not isinstance(claims, dict):
        raise InvalidDPoPProof(detail="claims are not an object")
    if claims.get("htm") != method or claims.get("htu") != url:
        raise InvalidDPoPProof(detail="htm/htu do not name this request")
    try:
        issued_at = jwt_claims.numeric_date(claims, "iat")
    except ValueError as exc:
        raise InvalidDPoPProof(detail="iat not a finite number") from exc
    if issued_at is None:
        raise InvalidDPoPProof(detail="iat missing")
    if abs(time.time() - issued_at) > MAX_SKEW:
        raise InvalidDPoPProof(detail="iat out of range")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= 256:  # noqa: PLR2004
        raise InvalidDPoPProof(detail="jti missing")
    return jti
