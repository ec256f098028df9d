"""A real Strapi 5 (users-permissions on SQLite), started once per test run, holding the plugin's kind of
users: TikTok sign-ins (some blocked) and a few local users with passwords, each with the jwt Strapi
itself signed for them.

The first run installs Strapi with npm into the cache folder (minutes); later runs only start it. The
tests that need Strapi are skipped, saying why, only when npm cannot reach its registry to install it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from devstack import keycloak as devstack_keycloak
from devstack.strapi import NpmUnreachable, StrapiServer, start_strapi
from tests.conftest import KNOWN_SECRETS

if TYPE_CHECKING:
    from collections.abc import Iterator


@dataclass(frozen=True)
class StrapiUser:
    """A user as Strapi answered its sign-in or sign-up, with the jwt Strapi signed for it."""

    jwt: str
    user: dict[str, Any]
    union_id: str | None = None
    password: str | None = None

    @property
    def id(self) -> int:
        return int(self.user["id"])


@dataclass(frozen=True)
class StrapiUsers:
    """What the seeded Strapi holds: TikTok users (the last ones blocked) and local users."""

    tiktok: tuple[StrapiUser, ...]
    blocked: tuple[StrapiUser, ...]
    local: tuple[StrapiUser, ...]


# TikTok's union_ids are mixed-case; the plugin keeps them lowercased inside the pseudo-email.
TIKTOK_SIGN_INS = (
    ("UnionIdAlice0001", "Alice%20A."),
    ("UnionIdBob0002", "Bob"),
    ("unionidcarol0003", "Carol%20%F0%9F%8E%B5"),  # an emoji in the display name, URL-encoded by TikTok
)
BLOCKED_SIGN_INS = (("UnionIdDave0004", "Dave"),)
LOCAL_SIGN_UPS = (("erin", "erin@example.com"), ("frank", "frank@example.com"))


@pytest.fixture(scope="session")
def strapi(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[StrapiServer]:
    """A started Strapi 5 with users-permissions on SQLite, stopped at the end of the run."""
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if capture is not None:

        def show(line: str) -> None:
            with capture.global_and_fixture_disabled():
                print(line, file=sys.stderr, flush=True)  # noqa: T201 - progress for the person waiting

        devstack_keycloak.progress_writer = show
    started = time.monotonic()
    try:
        server = start_strapi(tmp_path_factory.mktemp("strapi"))
    except NpmUnreachable as exc:
        pytest.skip(str(exc))
    KNOWN_SECRETS.add(server.jwt_secret)
    devstack_keycloak.progress(f"Strapi set up in {time.monotonic() - started:.0f} s")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def strapi_users(strapi: StrapiServer) -> StrapiUsers:
    """The users every Strapi test may rely on, made once through Strapi itself."""

    def tiktok(union_id: str, display_name: str, *, blocked: bool) -> StrapiUser:
        answer = strapi.sign_in_tiktok(union_id, display_name, blocked=blocked)
        return StrapiUser(answer["jwt"], answer["user"], union_id=union_id)

    def local(username: str, email: str) -> StrapiUser:
        password = f"{username}-Password-1"
        answer = strapi.register_local(username, email, password)
        return StrapiUser(answer["jwt"], answer["user"], password=password)

    return StrapiUsers(
        tiktok=tuple(tiktok(u, n, blocked=False) for u, n in TIKTOK_SIGN_INS),
        blocked=tuple(tiktok(u, n, blocked=True) for u, n in BLOCKED_SIGN_INS),
        local=tuple(local(u, e) for u, e in LOCAL_SIGN_UPS),
    )
