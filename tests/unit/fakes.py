"""Stateful fakes of TikTok and Keycloak that record what the bridge sends them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge.errors import AccountDisabled, SubjectTokenRejected
from bridge.keycloak import KeycloakUser, NotLinked, UserConflict
from bridge.rfc8693 import IssuedToken

if TYPE_CHECKING:
    from collections.abc import Iterable

    from bridge.tiktok import TikTokProfile


@dataclass
class FakeTikTok:
    profiles: dict[str, TikTokProfile] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    async def fetch_profile(
        self, access_token: str, scopes: Iterable[str] = ("user.info.basic",)
    ) -> TikTokProfile:
        self.calls.append(access_token)
        try:
            return self.profiles[access_token]
        except KeyError:
            raise SubjectTokenRejected from None


@dataclass
class FakeKeycloak:
    """Keeps users like Keycloak does: unique usernames and e-mails, links by (alias, open_id)."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    async def issuer(self) -> str:
        return "https://kc.example/realms/app"

    async def find_linked_user(self, idp_alias: str, idp_user_id: str) -> KeycloakUser | None:
        self.calls.append("find")
        for rep in self.users.values():
            for link in rep.get("federatedIdentities", []):
                if (link["identityProvider"], link["userId"]) == (idp_alias, idp_user_id):
                    return KeycloakUser.from_representation(rep)
        return None

    async def get_user(self, user_id: str) -> KeycloakUser | None:
        self.calls.append("get")
        rep = self.users.get(user_id)
        return KeycloakUser.from_representation(rep) if rep else None

    async def create_user(self, representation: dict[str, Any]) -> str:
        self.calls.append("create")
        for rep in self.users.values():
            if rep["username"] == representation["username"]:
                raise UserConflict("User exists with same username")
            if representation.get("email") and rep.get("email") == representation["email"]:
                raise UserConflict("User exists with same email")
        user_id = f"user-{next(self._ids)}"
        self.users[user_id] = {**representation, "id": user_id}
        return user_id

    async def update_user(self, user_id: str, representation: dict[str, Any]) -> None:
        self.calls.append("update")
        self.users[user_id] = {**representation, "id": user_id}

    async def remove_link(self, user_id: str, idp_alias: str) -> None:
        self.calls.append("unlink")
        rep = self.users[user_id]
        rep["federatedIdentities"] = [
            link for link in rep.get("federatedIdentities", []) if link["identityProvider"] != idp_alias
        ]

    async def issue_token(self, assertion: str, scope: tuple[str, ...]) -> IssuedToken:
        self.calls.append("token")
        subject = assertion.removeprefix("assertion-for:")
        user = await self.find_linked_user("tiktok", subject)
        self.calls.pop()  # the lookup above is Keycloak-internal, not an admin call
        if user is None:
            raise NotLinked
        if not user.enabled:
            raise AccountDisabled
        return IssuedToken(
            access_token=f"kc-token-for:{user.id}", expires_in=300, scope=" ".join(scope) or None
        )

    def admin_calls(self) -> list[str]:
        return [c for c in self.calls if c != "token"]


class FakeMinter:
    def mint(self, subject: str, audience: str) -> str:
        assert audience == "https://kc.example/realms/app"
        return f"assertion-for:{subject}"
