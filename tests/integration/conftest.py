"""Fixtures the integration modules share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.conftest import Stack

ACCOUNT_APP = "account-app"  # an ordinary client of the realm, with direct access grants (test only)


@pytest.fixture(scope="module")
def account_app(stack: Stack) -> str:
    """A public client of the realm that signs users in with a password (what an existing app is)."""
    with stack.admin() as admin:
        created = admin.post(
            "/clients",
            json={
                "clientId": ACCOUNT_APP,
                "publicClient": True,
                "directAccessGrantsEnabled": True,
                "standardFlowEnabled": False,
            },
        )
        assert created.status_code in {201, 409}, created.text
    return ACCOUNT_APP
