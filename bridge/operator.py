"""Operator commands that act on a running deployment's state (`python -m bridge sessions end`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from bridge.errors import BridgeError
from bridge.model import ATTR_OPEN_ID
from bridge.resources import Resources

if TYPE_CHECKING:
    from bridge.settings import Settings


def _say(line: str) -> None:
    print(line, file=sys.stderr)  # noqa: T201 - a command's answer to the operator


async def end_sessions(settings: Settings, *, user_id: str | None, open_id: str | None) -> int:
    """End every session of a Keycloak user (through its TikTok open_id) or of an open_id. Exit status."""
    resources = Resources.from_settings(settings)
    try:
        if resources.sessions is None:
            _say("sessions are switched off (BRIDGE_SESSIONS_ENABLED=false): nothing to end")
            return 1
        if open_id is None:
            assert user_id is not None  # noqa: S101 - argparse requires one of the two
            user = await resources.keycloak.get_user(user_id)
            if user is None:
                _say(f"no Keycloak user {user_id} in realm {settings.keycloak_realm}")
                return 1
            open_id = user.attribute(ATTR_OPEN_ID)
            if open_id is None:
                _say(f"Keycloak user {user_id} has no TikTok identity ({ATTR_OPEN_ID}): no bridge sessions")
                return 1
        await resources.sessions.end_identity(open_id)
    except BridgeError as exc:
        _say(f"sessions not ended: {exc.detail}")
        return 1
    finally:
        await resources.aclose()
    _say("every session of that user started until now is ended")
    return 0
