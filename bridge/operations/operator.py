"""Operator commands that act on a running deployment's state (`python -m bridge sessions end`)."""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

from bridge.domain.errors import BridgeError
from bridge.domain.model import strapi_jwt_idp_alias
from bridge.factory import Resources
from bridge.providers.tiktok.attributes import ATTRIBUTES

if TYPE_CHECKING:
    from bridge.services.sessions import SessionService
    from bridge.settings import Settings

# What can stand as one segment of Keycloak's `/users/{id}` path: no separator, query or fragment, no
# dot segment (`--user ../clients` would read another resource), no white space.
_USER_ID = re.compile(r"(?!\.{1,2}\Z)[^/?#%\s]+")
# TikTok's open_ids are printable and carry no white space (a pasted line break must not end the
# sessions of an identity nobody has).
_OPEN_ID = re.compile(r"\S+")


class _Refused(Exception):
    """The command cannot do what it was asked: its one line to the operator says why."""


def _say(line: str) -> None:
    print(line, file=sys.stderr)  # noqa: T201 - a command's answer to the operator


async def end_sessions(settings: Settings, *, user_id: str | None, open_id: str | None) -> int:
    """End every session of a Keycloak user (through its TikTok open_id, and the Strapi jwt sessions
    of the account) or of an open_id. Exit status."""
    try:
        await _end_sessions(settings, user_id=user_id, open_id=open_id)
    except _Refused as refused:
        _say(str(refused))
        return 1
    _say("every session of that user started until now is ended")
    return 0


def _check(settings: Settings, user_id: str | None, open_id: str | None) -> None:
    """Refuse input and configuration the command cannot act on, before it connects anywhere."""
    if user_id is not None and not _USER_ID.fullmatch(user_id):
        raise _Refused(f"sessions not ended: not a Keycloak user id: {user_id!r}")
    if open_id is not None and not _OPEN_ID.fullmatch(open_id):
        raise _Refused(f"sessions not ended: not a TikTok open_id: {open_id!r}")
    if settings.sessions_enabled and settings.redis_url is None:
        # The sessions are in the serving processes' memory: writing to this process's would end
        # nothing, while saying it had.
        raise _Refused(
            "sessions not ended: without BRIDGE_REDIS_URL sessions live in the memory of each bridge "
            "process, out of this command's reach (restarting the bridge ends them all)"
        )


async def _end_sessions(settings: Settings, *, user_id: str | None, open_id: str | None) -> None:
    _check(settings, user_id, open_id)
    try:
        resources = Resources.from_settings(settings)
    except BridgeError as exc:  # e.g. a signing key file that cannot be read
        raise _Refused(f"sessions not ended: {exc.detail}") from exc
    except ValueError as exc:  # a Redis URL the client cannot use
        raise _Refused(f"sessions not ended: {exc}") from exc
    try:
        if resources.sessions is None:
            raise _Refused("sessions are switched off (BRIDGE_SESSIONS_ENABLED=false): nothing to end")
        if open_id is None:
            assert user_id is not None  # noqa: S101 - argparse requires one of the two
            await _end_user(resources, resources.sessions, user_id)
            return
        await resources.sessions.end_identity(open_id)
        if resources.vault is not None:
            await resources.vault.forget(open_id)
    except BridgeError as exc:
        raise _Refused(f"sessions not ended: {exc.detail}") from exc
    finally:
        await resources.aclose()


async def _end_user(resources: Resources, sessions: SessionService, user_id: str) -> None:
    """The sessions of the user's TikTok identity, and those a Strapi jwt started for the account
    (linked to the Strapi jwt provider: `bridge/services/strapi_jwt.py`)."""
    user = await resources.keycloak.get_user(user_id)
    if user is None:
        raise _Refused(f"no Keycloak user {user_id} in realm {resources.settings.keycloak_realm}")
    open_id = user.attribute(ATTRIBUTES.subject)
    strapi_jwt_alias = strapi_jwt_idp_alias(resources.settings.keycloak_idp_alias)
    by_strapi_jwt = any(
        link.identity_provider == strapi_jwt_alias for link in await resources.keycloak.user_links(user_id)
    )
    if open_id is None and not by_strapi_jwt:
        raise _Refused(
            f"Keycloak user {user_id} has no TikTok identity ({ATTRIBUTES.subject}): no bridge sessions"
        )
    if by_strapi_jwt:
        await sessions.end_account(user_id)
    if open_id is not None:
        await sessions.end_identity(open_id)
        if resources.vault is not None:
            await resources.vault.forget(open_id)
