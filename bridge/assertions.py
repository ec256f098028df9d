"""The bridge's signing key, its published JWKS, and the RFC 7523 assertions it signs for Keycloak.

Keycloak trusts the bridge as an identity provider of type `jwt-authorization-grant`: it fetches this
JWKS, checks the assertion's signature, issuer, audience, lifetime and single-use `jti`, and then issues
a token for the user linked to `sub` (the TikTok open_id). ES256 keeps signatures small and cheap.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.jwk import ECKey

from bridge.errors import ServerError

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)

ALGORITHM = "ES256"
GENERATED_KEY_NAME = "signing-key.pem"


def _with_kid(key: ECKey) -> ECKey:
    # The RFC 7638 thumbprint is a stable kid: replicas loading the same PEM publish the same one.
    return ECKey.import_key(key.as_dict(private=True) | {"kid": key.thumbprint()})


def load_key(path: Path) -> ECKey:
    try:
        key = ECKey.import_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ServerError(detail=f"cannot load signing key {path}: {type(exc).__name__}") from exc
    if key.as_dict(private=False).get("crv") != "P-256" or not key.is_private:
        raise ServerError(detail=f"signing key {path} must be a private EC P-256 key (ES256)")
    return _with_kid(key)


def load_or_generate_key(data_dir: Path) -> ECKey:
    """Development default: a generated key kept in data_dir, created once even by racing replicas."""
    path = data_dir / GENERATED_KEY_NAME
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        pem = ECKey.generate_key("P-256").as_pem(private=True)
        try:
            # O_EXCL: if another process won the race, keep its key rather than overwrite it.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
            log.warning(
                "generated a development signing key",
                extra={"path": str(path), "hint": "set BRIDGE_SIGNING_KEY_FILE in production"},
            )
    return load_key(path)


@dataclass(frozen=True)
class AssertionSigner:
    """Signs assertions with the active key and publishes the JWKS (active key plus any extra public keys)."""

    key: ECKey
    issuer: str
    lifetime: int = 60

    @property
    def kid(self) -> str:
        return str(self.key.kid)

    def jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False) | {"use": "sig", "alg": ALGORITHM, "kid": self.kid}
        return {"keys": [public]}

    def mint(self, subject: str, audience: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + self.lifetime,
            # Keycloak refuses a reused jti; 128 random bits make collisions a non-issue.
            "jti": secrets.token_urlsafe(16),
        }
        return jwt.encode({"alg": ALGORITHM, "kid": self.kid, "typ": "JWT"}, claims, self.key)
