"""Keycloak on PostgreSQL (scripts/test-keycloak-postgres runs this with `KEYCLOAK_TEST_DB=postgres`): what
the bridge makes in Keycloak lands in the database, as in production. The default run, on H2, skips it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.conftest import KEYCLOAK_TEST_DB, BridgeClient, Stack
from tests.integration.test_exchange import verified_claims

if TYPE_CHECKING:
    from devstack.postgres import PostgresServer
    from devstack.tiktok_emulator import TikTokEmulator

pytestmark = pytest.mark.skipif(
    KEYCLOAK_TEST_DB != "postgres",
    reason="opt-in: KEYCLOAK_TEST_DB=postgres (scripts/test-keycloak-postgres)",
)


async def test_a_first_sign_in_is_a_row_of_keycloaks_postgresql_database(
    stack: Stack, postgres: PostgresServer | None, emulator: TikTokEmulator, bridge: BridgeClient
) -> None:
    """The user a first exchange provisions, linked to its TikTok open_id, is in Keycloak's tables."""
    assert postgres is not None
    assert stack.keycloak.database is not None
    user = emulator.create_user(display_name="Stored User", username="stored")
    token = emulator.issue_access_token(user.open_id, ["user.info.basic"])

    response = await bridge.exchange(token)

    assert response.status_code == 200, response.text
    subject = verified_claims(stack, response.json()["access_token"])["sub"]
    row = postgres.psql(
        """
        SELECT u.id, r.name FROM federated_identity f
        JOIN user_entity u ON u.id = f.user_id
        JOIN realm r ON r.id = u.realm_id
        WHERE f.identity_provider = 'tiktok' AND f.federated_user_id = :'open_id';
        """,
        database=stack.keycloak.database.url.rsplit("/", 1)[1],
        open_id=user.open_id,
    )
    assert row == f"{subject}|{stack.realm}"
