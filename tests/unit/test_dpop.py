"""DPoP proofs (RFC 9449 §4.3) as the token endpoint checks them."""

from __future__ import annotations

import json
import secrets
import time
from typing import TYPE_CHECKING, Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey

from bridge.domain.errors import InvalidDPoPProof
from bridge.protocol.dpop import verify_proof
from bridge.storage.cache import MemoryCache
from bridge.storage.seen import SeenOnce

if TYPE_CHECKING:
    import httpx2

URL = "https://bridge.example/token"


def _replays() -> SeenOnce:
    """A fresh replay guard over process memory."""
    return SeenOnce.dpop_proofs(MemoryCache())


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
    assert await verify_proof(proof(key), method="POST", url=URL, replays=_replays()) == key.thumbprint()


async def test_no_proof_is_no_binding() -> None:
    """Without a DPoP header the exchange is a plain one."""
    assert await verify_proof(None, method="POST", url=URL, replays=_replays()) is None


async def test_ed25519_proofs_are_accepted() -> None:
    """Ed25519 (RFC 9864) is advertised, so an Ed25519 key signs a valid proof."""
    okp = OKPKey.generate_key("Ed25519")
    thumbprint = await verify_proof(proof(okp, alg="Ed25519"), method="POST", url=URL, replays=_replays())
    assert thumbprint == okp.thumbprint()


async def test_a_proof_is_single_use(key: ECKey) -> None:
    """The same proof twice: the second is a replay."""
    replays = _replays()
    once = proof(key)
    await verify_proof(once, method="POST", url=URL, replays=replays)
    with pytest.raises(InvalidDPoPProof):
        await verify_proof(once, method="POST", url=URL, replays=replays)


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
        await verify_proof(candidate, method="POST", url=URL, replays=_replays())
    assert refused.value.error == "invalid_dpop_proof"


async def test_a_proof_signed_by_another_key_than_its_jwk_is_refused(key: ECKey) -> None:
    """The header's jwk must be the key that signed: swapping it breaks the signature."""
    other = ECKey.generate_key("P-256")
    with pytest.raises(InvalidDPoPProof):
        await verify_proof(
            proof(key, jwk=other.as_dict(private=False)), method="POST", url=URL, replays=_replays()
        )


async def test_a_private_key_in_the_header_is_refused(key: ECKey) -> None:
    """A proof that publishes its private key proves nothing."""
    with pytest.raises(InvalidDPoPProof):
        await verify_proof(
            proof(key, jwk=key.as_dict(private=True)), method="POST", url=URL, replays=_replays()
        )


@pytest.mark.parametrize("garbage", ["x", "a.b.c", "e30.e30.e30", "." * 3, "é.b.c"])
async def test_garbage_is_refused_cleanly(garbage: str) -> None:
    """Anything that is not a compact JWS is invalid_dpop_proof, never another error."""
    with pytest.raises(InvalidDPoPProof):
        await verify_proof(garbage, method="POST", url=URL, replays=_replays())


def proof_with_raw_claims(key: ECKey, iat_json: str, htu: str = URL) -> str:
    """A proof whose `iat` is written as raw JSON text (NaN and Infinity are what Python's json.dumps
    writes for non-finite floats, and what its json.loads accepts unless told otherwise)."""
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    payload = f'{{"htm": "POST", "htu": "{htu}", "iat": {iat_json}, "jti": "{secrets.token_urlsafe(12)}"}}'
    return jws.serialize_compact(header, payload, key, algorithms=["ES256"])


@pytest.mark.parametrize(
    "iat_json",
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "1" + "0" * 400,
        "true",
        "false",
        '"1700000000"',
        "null",
        "[1]",
    ],
    ids=lambda text: text if len(text) < 20 else f"{len(text)} digits",
)
async def test_an_iat_that_is_not_a_finite_number_is_refused(key: ECKey, iat_json: str) -> None:
    """NaN (an outside test's proof that never expired: every comparison with it is false), the
    infinities, numbers too large for a float, a boolean, a string, null or a list: invalid_dpop_proof."""
    with pytest.raises(InvalidDPoPProof) as refused:
        await verify_proof(proof_with_raw_claims(key, iat_json), method="POST", url=URL, replays=_replays())
    assert refused.value.error == "invalid_dpop_proof"


async def test_a_fractional_iat_is_accepted(key: ECKey) -> None:
    """RFC 7519 §2: a NumericDate may be non-integer; a finite one within the window is a valid iat."""
    thumbprint = await verify_proof(
        proof_with_raw_claims(key, f"{time.time():.3f}"), method="POST", url=URL, replays=_replays()
    )
    assert thumbprint == key.thumbprint()


@pytest.mark.httpx2(assert_all_called=False)
async def test_the_token_endpoint_answers_a_nan_iat_proof_400_invalid_dpop_proof(
    client: httpx2.AsyncClient, key: ECKey
) -> None:
    """At the token endpoint a proof with `"iat": NaN` is refused before anything else is asked."""
    response = await client.post(
        "/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "subject_token": "act.example",
        },
        headers={"DPoP": proof_with_raw_claims(key, "NaN", htu="https://bridge.example/token")},
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_dpop_proof",
        "error_description": "The DPoP proof is invalid.",
    }
    assert response.headers["cache-control"] == "no-store"


async def test_a_proof_without_iat_is_refused(key: ECKey) -> None:
    """No `iat` at all: the proof's age cannot be told, so it is invalid_dpop_proof."""
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    claims = json.dumps({"htm": "POST", "htu": URL, "jti": secrets.token_urlsafe(12)})
    with pytest.raises(InvalidDPoPProof, match="iat missing"):
        await verify_proof(
            jws.serialize_compact(header, claims, key, algorithms=["ES256"]),
            method="POST",
            url=URL,
            replays=_replays(),
        )
