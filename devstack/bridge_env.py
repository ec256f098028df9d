"""The variables a development, test or benchmark stack is configured with, built in one place.

Two sets: what Keycloak imports `keycloak-config/` with (the realm, the bridge's client and its secret,
and the issuer whose JWKS Keycloak trusts for the JWT grant), and the BRIDGE_* variables of a bridge
started as a process against the TikTok emulator, that Keycloak and a Redis. `tests/conftest.py`,
`bench/run.py` and `python -m devstack` use them, each adding what is its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

# The TikTok app the emulator serves by default (`devstack.tiktok_emulator`).
EMULATOR_CLIENT_KEY = "emulated-client-key"
EMULATOR_CLIENT_SECRET = "emulated-client-secret"  # noqa: S105 - the emulator's, public on purpose


# The client whose service account provisions users (`keycloak-config/app-realm.json`).
ADMIN_CLIENT_ID = "tiktok-bridge-admin"


def realm_variables(
    *,
    realm: str,
    client_id: str,
    client_secret: str,
    issuer: str,
    admin_client_secret: str,
    admin_client_id: str = ADMIN_CLIENT_ID,
    **more: str,
) -> dict[str, str]:
    """What `keycloak-config/` is imported with; `more` adds other clients' secrets."""
    return {
        "BRIDGE_KEYCLOAK_REALM": realm,
        "BRIDGE_KEYCLOAK_CLIENT_ID": client_id,
        "BRIDGE_KEYCLOAK_CLIENT_SECRET": client_secret,
        "BRIDGE_KEYCLOAK_ADMIN_CLIENT_ID": admin_client_id,
        "BRIDGE_KEYCLOAK_ADMIN_CLIENT_SECRET": admin_client_secret,
        "BRIDGE_ISSUER": issuer,
        "BRIDGE_JWKS_URL": f"{issuer}/.well-known/jwks.json",
        **more,
    }


def bridge_variables(
    *,
    tiktok_api_url: str,
    keycloak_url: str,
    realm: str,
    client_id: str,
    client_secret: str,
    issuer: str,
    signing_key_file: Path,
    redis_url: str | None,
    admin_client_secret: str | None = None,
    admin_client_id: str = ADMIN_CLIENT_ID,
    tiktok_client_key: str = EMULATOR_CLIENT_KEY,
    tiktok_client_secret: str = EMULATOR_CLIENT_SECRET,
    **more: str,
) -> dict[str, str]:
    """The BRIDGE_* variables of a bridge process (no Redis URL: the in-memory cache); `more` adds or
    overrides any."""
    variables = {
        "BRIDGE_TIKTOK_CLIENT_KEY": tiktok_client_key,
        "BRIDGE_TIKTOK_CLIENT_SECRET": tiktok_client_secret,
        "BRIDGE_TIKTOK_API_URL": tiktok_api_url,
        "BRIDGE_KEYCLOAK_URL": keycloak_url,
        "BRIDGE_KEYCLOAK_REALM": realm,
        "BRIDGE_KEYCLOAK_CLIENT_ID": client_id,
        "BRIDGE_KEYCLOAK_CLIENT_SECRET": client_secret,
        "BRIDGE_ISSUER": issuer,
        "BRIDGE_SIGNING_KEY_FILE": str(signing_key_file),
    }
    if redis_url is not None:
        variables["BRIDGE_REDIS_URL"] = redis_url
    if admin_client_secret is not None:
        variables["BRIDGE_KEYCLOAK_ADMIN_CLIENT_ID"] = admin_client_id
        variables["BRIDGE_KEYCLOAK_ADMIN_CLIENT_SECRET"] = admin_client_secret
    return {**variables, **more}
