"""The realm access-token verifier: signature, issuer, expiry, token type, and bounded JWKS refetches."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from bridge.domain.errors import InvalidToken
from bridge.keycloak.bearer import RealmTokenVerifier

ISSUER = "https://kc.example/realms/app"


class FakeRealm:
    """Publishes the public halves of `keys`; counts JWKS fetches."""

    def __init__(self, *keys: RSAKey) -> None:
        self.keys = list(keys)
        self.fetches = 0

    async def issuer(self) -> str:
        return ISSUER

    async def realm_keys(self) -> dict[str, Any]:
        self.fetches += 1
        return {"keys": [k.as_dict(private=False) | {"use": "sig", "alg": "RS256"} for k in self.keys]}


def key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid})


def token(signer: RSAKey, **claims: Any) -> str:  # noqa: ANN401 - any claim
    now = int(time.time())
    body = {"iss": ISSUER, "sub": "user-1", "azp": "app", "typ": "Bearer", "iat": now, "exp": now + 300}
    return jwt.encode({"alg": "RS256", "kid": signer.kid}, body | claims, signer)


async def test_a_realm_access_token_is_accepted_with_its_subject_and_client() -> None:
    """Signed by a published key, by the realm, unexpired, typ Bearer: subject and azp come back."""
    signer = key("k1")
    verified = await RealmTokenVerifier(FakeRealm(signer)).verify(token(signer))
    assert (verified.subject, verified.client_id) == ("user-1", "app")


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "https://kc.example/realms/other"},
        {"exp": int(time.time()) - 60},
        {"typ": "ID"},
        {"sub": ""},
    ],
)
async def test_tokens_of_another_realm_expired_or_not_access_tokens_are_refused(
    claims: dict[str, Any],
) -> None:
    """Another issuer, a past exp, an ID token or no subject: invalid_token."""
    signer = key("k1")
    with pytest.raises(InvalidToken):
        await RealmTokenVerifier(FakeRealm(signer)).verify(token(signer, **claims))


async def test_unknown_key_ids_refetch_the_jwks_at_most_once_per_interval() -> None:
    """A rotated realm key is found by one refetch; a stream of made-up key ids costs Keycloak one
    fetch per interval, not one per request."""
    old, new, stranger = key("old"), key("new"), key("stranger")
    realm = FakeRealm(old)
    now = [1000.0]
    verifier = RealmTokenVerifier(realm, refetch_interval=30, clock=lambda: now[0])

    async def check(signer: RSAKey) -> None:
        await verifier.verify(token(signer, iat=int(now[0]), exp=int(now[0]) + 300))

    await check(old)
    realm.keys.append(new)
    with pytest.raises(InvalidToken):
        await check(new)  # within the interval of the first fetch: not refetched
    now[0] += 31
    await check(new)
    for _ in range(5):
        with pytest.raises(InvalidToken):
            await check(stranger)
    assert realm.fetches == 2


async def test_garbage_is_refused_without_asking_keycloak() -> None:
    """Not a JWS at all, or a header without a key id: refused before any JWKS fetch."""
    realm = FakeRealm(key("k1"))
    for garbage in ("", "abc", "a.b.c", "é.x.y", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"):
        with pytest.raises(InvalidToken):
            await RealmTokenVerifier(realm).verify(garbage)
    assert realm.fetches == 0


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": float("nan")},
        {"exp": float("inf")},
        {"exp": True},
        {"exp": str(int(time.time()) + 300)},
        {"nbf": float("nan")},
        {"nbf": float("-inf")},
        {"nbf": False},
        {"iat": float("nan")},
        {"iat": "now"},
    ],
    ids=repr,
)
async def test_numeric_dates_that_are_not_finite_numbers_are_refused(claims: dict[str, Any]) -> None:
    """exp, nbf and iat (RFC 7519 NumericDate) must be finite numbers: a NaN exp compared false with
    the clock and never expired, an infinite one never would; booleans and strings are not dates."""
    signer = key("k1")
    with pytest.raises(InvalidToken):
        await RealmTokenVerifier(FakeRealm(signer)).verify(token(signer, **claims))


async def test_fractional_numeric_dates_are_accepted() -> None:
    """RFC 7519 §2: a NumericDate may be non-integer, so finite fractional exp, nbf and iat pass."""
    signer = key("k1")
    now = time.time()
    verified = await RealmTokenVerifier(FakeRealm(signer)).verify(
        token(signer, iat=now - 0.5, nbf=now - 0.5, exp=now + 299.5)
    )
    assert verified.subject == "user-1"


async def test_a_token_without_exp_is_refused() -> None:
    """A realm access token always carries `exp`; one without it would never expire."""
    signer = key("k1")
    claims = {"iss": ISSUER, "sub": "user-1", "azp": "app", "typ": "Bearer", "iat": int(time.time())}
    unlimited = jwt.encode({"alg": "RS256", "kid": signer.kid}, claims, signer)
    with pytest.raises(InvalidToken, match="without exp"):
        await RealmTokenVerifier(FakeRealm(signer)).verify(unlimited)
