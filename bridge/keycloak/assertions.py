"""The bridge's signing key, its published JWKS, and the RFC 7523 assertions it signs for Keycloak.

Keycloak trusts the bridge as an identity provider of type `jwt-authorization-grant`: it fetches this
JWKS, checks the assertion's signature, issuer, audience, lifetime and single-use `jti`, and then issues
a token for the user linked to `sub` (the identity provider's open_id). ES256 keeps signatures small
and cheap. The Strapi jwt provider trusts the same JWKS; Keycloak tells the two apart by the issuer
(`AssertionSigner.with_issuer`).
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from bridge.domain.errors import ServerError

if TYPE_CHECKING:
    from bridge.settings import Settings

log = logging.getLogger(__name__)

ALGORITHM = "ES256"
GENERATED_KEY_NAME = "signing-key.pem"


def _with_kid(key: ECKey) -> ECKey:
    # The RFC 7638 thumbprint is a stable kid: replicas loading the same PEM publish the same one.
    return ECKey.import_key(key.as_dict(private=True) | {"kid": key.thumbprint()})


def load_key(path: Path) -> ECKey:
    try:
        key = ECKey.import_key(path.read_bytes())
    except (OSError, ValueError, JoseError) as exc:
        raise ServerError(detail=f"cannot load signing key {path}: {type(exc).__name__}") from exc
    if key.as_dict(private=False).get("crv") != "P-256" or not key.is_private:
        raise ServerError(detail=f"signing key {path} must be a private EC P-256 key (ES256)")
    return _with_kid(key)


def load_public_key(path: Path) -> ECKey:
    """A key to publish without signing with it: the next key, or the previous one (docs/operations.md:
    "Rotating the signing key"). A private PEM is accepted, but only its public half is ever used or
    published."""
    try:
        key = ECKey.import_key(path.read_bytes())
    except (OSError, ValueError, JoseError) as exc:
        raise ServerError(detail=f"cannot load published key {path}: {type(exc).__name__}") from exc
    public = key.as_dict(private=False)
    if public.get("crv") != "P-256":
        raise ServerError(detail=f"published key {path} must be an EC P-256 key (ES256)")
    return ECKey.import_key(public | {"kid": key.thumbprint()})


def write_new_key(path: Path) -> bool:
    """Write a fresh P-256 private key to `path`, readable by the owner only; True if this call created
    it, False if the file exists: never overwrite a key. `path` is never seen half-written: the PEM is
    written and synced to a temporary file beside it, then hard-linked into place, and the link fails if
    `path` exists, so racing replicas all load the first one's complete key. A failed write leaves no
    file at `path` (nor a temporary one), so a later start generates a key again."""
    pem = ECKey.generate_key("P-256").as_pem(private=True)
    # Same directory, so the link cannot cross file systems; mkstemp creates it with mode 0600.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        tmp.unlink()
    return True


def load_or_generate_key(data_dir: Path) -> ECKey:
    """Development default: a generated key kept in data_dir, created once even by racing replicas."""
    path = data_dir / GENERATED_KEY_NAME
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        if write_new_key(path):
            log.warning(
                "generated a development signing key",
                extra={"path": str(path), "hint": "set BRIDGE_SIGNING_KEY_FILE in production"},
            )
    return load_key(path)


@dataclass(frozen=True)
class AssertionSigner:
    """Signs assertions with the active key and publishes the JWKS: the active key first, then the
    published-only keys that let a rotation overlap (the next key before it signs, the previous one
    while its last assertions are still in flight)."""

    key: ECKey
    issuer: str
    lifetime: int = 60
    published: tuple[ECKey, ...] = ()

    @property
    def kid(self) -> str:
        return str(self.key.kid)

    @property
    def kids(self) -> list[str]:
        """Every published key id, active first, each once (the active key may also be listed)."""
        return list(dict.fromkeys([self.kid, *(str(k.kid) for k in self.published)]))

    def jwks(self) -> dict[str, Any]:
        by_kid = {str(k.kid): k for k in (self.key, *self.published)}
        return {
            "keys": [
                by_kid[kid].as_dict(private=False) | {"use": "sig", "alg": ALGORITHM, "kid": kid}
                for kid in self.kids
            ]
        }

    def with_issuer(self, issuer: str) -> AssertionSigner:
        """The same keys, signing as `issuer`: Keycloak picks the provider by the assertion's `iss`."""
        return replace(self, issuer=issuer)

    def mint(self, subject: str, audience: str) -> str:
        # joserfc makes the JWS. Signing it by hand with `cryptography` measured ~60 us less per
        # assertion (bench/README.md, "History"), not worth owning a token format.
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


def signer_from_settings(settings: Settings) -> AssertionSigner:
    key = (
        load_key(settings.signing_key_file)
        if settings.signing_key_file is not None
        else load_or_generate_key(settings.data_dir)
    )
    published = tuple(load_public_key(path) for path in settings.published_key_files)
    return AssertionSigner(
        key=key, issuer=settings.issuer_url, lifetime=settings.assertion_lifetime, published=published
    )
