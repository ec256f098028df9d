"""DPoP proofs (RFC 9449 §4.3) as the token endpoint checks them."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey

from bridge.cache import MemoryCache
from bridge.dpop import InvalidDPoPProof, verify_proof

URL = "https://bridge.example/token"


def proof(
    key: ECKey | OKPKey,
    *,
    alg: str = "ES256",
    typ: str = "dpop+jwt",
    htm: str = "POST",
    htu: str = URL,
    iat: float | None = None,
    jti: str | None = None,
    jwk: dict[str, Any] | None = None,
) -> str:
    header = {"typ": typ, "alg": alg, "jwk": jwk if jwk is not None else key.as_dict(private=False)}
    claims = {
        "htm": htm,
        "htu": htu,
        "iat": int(time.time() if iat is None else iat),
        "jti": jti or secrets.token_urlsafe(12),
    }
    return jws.serialize_compact(header, json.dumps(claims), key, algorithms=[alg])


@pytest.fixture
def key() -> ECKey:
    return ECKey.generate_key("P-256")


async def test_a_valid_proof_gives_the_keys_thumbprint(key: ECKey) -> None:
    """The RFC 7638 thumbprint of the proof's key is what a session is bound to."""
    assert (
        await verify_proof(proof(key), method="POST", url=URL, replay_cache=MemoryCache()) == key.thumbprint()
    )


async def test_no_proof_is_no_binding() -> None:
    """Without a DPoP header the exchange is a plain one."""
    assert await verify_proof(None, method="POST", url=URL, replay_cache=MemoryCache()) is None


async def test_ed25519_proofs_are_accepted() -> None:
    """Ed25519 (RFC 9864) is advertised, so an Ed25519 key signs a valid proof."""
    okp = OKPKey.generate_key("Ed25519")
    thumbprint = await verify_proof(
        proof(okp, alg="Ed25519"), method="POST", url=URL, replay_cache=MemoryCache()
    )
    assert thumbprint == okp.thumbprint()


async def test_a_proof_is_single_use(key: ECKey) -> None:
    """The same proof twice: the second is a replay."""
    cache = MemoryCache()
    once = proof(key)
    await verify_proof(once, method="POST", url=URL, replay_cache=cache)
    with pytest.raises(InvalidDPoPProof):
        await verify_proof(once, method="POST", url=URL, replay_cache=cache)


@pytest.mark.parametrize(
    "change",
    [
        {"htu": "https://elsewhere.example/token"},
        {"htm": "GET"},
        {"iat": -600},  # seconds from now, made into a time when the test runs (not when it is collected)
        {"iat": 600},
        {"typ": "JWT"},
        {"alg": "HS256"},
    ],
)
async def test_proofs_for_something_else_are_refused(key: ECKey, change: dict[str, Any]) -> None:
    """Another URL or method, a stale or future iat, a wrong typ or a symmetric alg: invalid_dpop_proof."""
    if change.get("alg") == "HS256":
        token = proof(key).split(".")
        header = json.dumps({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.as_dict(private=False)})
        import base64  # noqa: PLC0415

        token[0] = base64.urlsafe_b64encode(header.encode()).rstrip(b"=").decode()
        candidate = ".".join(token)
    else:
        if "iat" in change:
            change = {"iat": time.time() + change["iat"]}
        candidate = proof(key, **change)
    with pytest.raises(InvalidDPoPProof) as refused:
        await verify_proof(candidate, method="POST", url=URL, replay_cache=MemoryCache())
    assert refused.value.error == "invalid_dpop_proof"


async def test_a_proof_signed_by_another_key_than_its_jwk_is_refused(key: ECKey) -> None:
    """The header's jwk must be the key that signed: swapping it breaks the signature."""
    other = ECKey.generate_key("P-256")
    with pytest.raises(InvalidDPoPProof):
        await verify_proof(
            proof(key, jwk=other.as_dict(private=False)), method="POST", url=URL, replay_cache=MemoryCache()
        )


async def test_a_private_key_in_the_header_is_refused(key: ECKey) -> None:
    """A proof that publishes its private key proves nothing."""
    with pytest.raises(InvalidDPoPProof):
        await verify_proof(
            proof(key, jwk=key.as_dict(private=True)), method="POST", url=URL, replay_cache=MemoryCache()
        )


@pytest.mark.parametrize("garbage", ["x", "a.b.c", "e30.e30.e30", "." * 3, "é.b.c"])
async def test_garbage_is_refused_cleanly(garbage: str) -> None:
    """Anything that is not a compact JWS is invalid_dpop_proof, never another error."""
    with pytest.raises(InvalidDPoPProof):
        await verify_proof(garbage, method="POST", url=URL, replay_cache=MemoryCache())
