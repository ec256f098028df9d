"""Every cache key the bridge writes, named here and built nowhere else (the typed stores of this package
use them; the rate limiter's keys start with `RATE_LIMIT_PREFIX`, the rest is named by `limits`).

All keys share one versioned prefix, so a change of format never reads old entries. Anything derived from
a secret (a TikTok token, a webhook body) appears only as its SHA-256. Keys that are read or written
together carry one Redis Cluster hash tag (`{...}`), so they live in one slot: MGET can read them in one
round trip and a lock guards the same slot as the data it protects.
"""

from __future__ import annotations

import hashlib

PREFIX = "tkb:v1:"


def _digest(secret: str | bytes) -> str:
    # Any string hashes, lone surrogates included (JSON can carry them; found by fuzzing the Strapi
    # endpoint): refusing a malformed token is the TikTok client's job, not a crash here.
    raw = secret if isinstance(secret, bytes) else secret.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()


def profile(access_token: str) -> str:
    """The TikTok profile read with this access token."""
    return token_entries(access_token)[0]


def rejected(access_token: str) -> str:
    """A TikTok access token TikTok refused recently (negative cache)."""
    return token_entries(access_token)[1]


def token_entries(access_token: str) -> tuple[str, str]:
    """`profile` and `rejected` of one token, hashed once; one hash tag, so one MGET reads both."""
    tag = "{" + _digest(access_token) + "}"
    return f"{PREFIX}profile:{tag}", f"{PREFIX}rejected:{tag}"


def _identity_tag(idp_alias: str, open_id: str) -> str:
    return "{" + f"{idp_alias}:{open_id}" + "}"


def linked_user(idp_alias: str, open_id: str) -> str:
    """The Keycloak user id (and profile fingerprint) linked to one TikTok identity."""
    return f"{PREFIX}user:{_identity_tag(idp_alias, open_id)}"


def deauthorized(idp_alias: str, open_id: str) -> str:
    """When the identity last deauthorized the app: sign-ins never write it, so none can erase it."""
    return f"{PREFIX}revoked:{_identity_tag(idp_alias, open_id)}"


def provisioning_lock(idp_alias: str, open_id: str) -> str:
    """Single-flight lock for creating the identity's Keycloak user (same slot as `linked_user`)."""
    return f"{PREFIX}lock:provision:{_identity_tag(idp_alias, open_id)}"


def pending_deauthorization(idp_alias: str, open_id: str) -> str:
    """A deauthorization whose policy Keycloak has not taken yet: when it arrived, attempts so far."""
    return f"{PREFIX}deauth-pending:{_identity_tag(idp_alias, open_id)}"


def deauthorization_lock(idp_alias: str, open_id: str) -> str:
    """Held by the one replica applying the identity's pending deauthorization (same slot as the record)."""
    return f"{PREFIX}lock:deauth:{_identity_tag(idp_alias, open_id)}"


# Open_ids with a pending deauthorization, scored by when to try next (a sorted set every replica polls).
DEAUTHORIZATION_QUEUE = f"{PREFIX}deauth-queue"


def admin_token(realm: str, client_id: str) -> str:
    """The service-account token of the bridge's Keycloak client, shared by replicas."""
    return f"{PREFIX}kc-admin-token:{realm}:{client_id}"


def webhook_delivery(body: str | bytes) -> str:
    """A webhook delivery already handled (TikTok delivers at least once)."""
    return f"{PREFIX}webhook:{_digest(body)}"


def session(session_id: str) -> str:
    """One bridge session: its refresh-token hashes, lifetimes and sealed TikTok tokens."""
    return f"{PREFIX}session:{{{session_id}}}"


def session_lock(session_id: str) -> str:
    """Serialises the refreshes of one session across replicas (same slot as `session`)."""
    return f"{PREFIX}lock:session:{{{session_id}}}"


def sessions_not_before(idp_alias: str, open_id: str) -> str:
    """Sessions of this identity started before this time are over (deauthorization, operator)."""
    return f"{PREFIX}sessions-not-before:{_identity_tag(idp_alias, open_id)}"


def vault_grant(idp_alias: str, open_id: str) -> str:
    """The token vault's sealed provider grant of one identity (same slot as its other keys)."""
    return f"{PREFIX}vault:{_identity_tag(idp_alias, open_id)}"


def vault_lock(idp_alias: str, open_id: str) -> str:
    """Serialises the refreshes of the identity's kept grant across replicas (same slot as `vault_grant`)."""
    return f"{PREFIX}lock:vault:{_identity_tag(idp_alias, open_id)}"


def proven_client(address: str) -> str:
    """A client address that signed in successfully with a TikTok token recently (quota priority)."""
    return f"{PREFIX}proven:{_digest(address)}"


def dpop_proof(jti: str | bytes) -> str:
    """A DPoP proof already used (RFC 9449 §11.1: proofs are single-use)."""
    return f"{PREFIX}dpop-jti:{_digest(jti)}"


def doctor_probe(nonce: str) -> str:
    """The throwaway entry `bridge doctor` writes and reads back to see that Redis keeps what it is given."""
    return f"{PREFIX}doctor-probe:{nonce}"


# The Strapi-compatible endpoint's counter of numeric user ids (`strapi_ids.py`): a hint that spares
# Keycloak a search per number, never the only guard against a repeat (Keycloak keeps the high-water mark).
STRAPI_ID_COUNTER = f"{PREFIX}strapi-id-counter"

RATE_LIMIT_PREFIX = f"{PREFIX}ratelimit"
