"""Stateful fakes of TikTok and Keycloak that behave like them and count what the bridge asks of them.

Each fake is type-checked against the protocol it stands in for (`mypy --strict` covers tests/), so a
method added to a port cannot be forgotten here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
import uuid
from collections import Counter
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import SecretStr

from bridge.domain.errors import (
    AccountDisabled,
    IdentityRefused,
    NotLinked,
    Refused,
    UpstreamUnavailable,
    UserConflict,
)
from bridge.domain.model import (
    FederatedLink,
    Held,
    IdentityState,
    IssuedToken,
    KeycloakUser,
    Policy,
    ProviderGrant,
)
from bridge.factory import policy_from_settings
from bridge.keycloak.client import user_from_representation
from bridge.providers.tiktok.settings import TikTokSettings
from bridge.services.deauthorization import DeauthorizationService
from bridge.services.exchange import ExchangeService
from bridge.services.identity import IdentityService
from bridge.services.minting import MintingService
from bridge.services.provisioning import ProvisioningService
from bridge.settings import Settings
from bridge.storage import keys
from bridge.storage.admin_tokens import AdminTokenStore
from bridge.storage.cache import MemoryCache
from bridge.storage.deauthorizations import DeauthorizationQueue
from bridge.storage.engine import EntryCheck
from bridge.storage.identities import IdentityStore
from bridge.storage.profiles import ProfileStore
from bridge.storage.seen import SeenOnce
from bridge.storage.sessions import SessionStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from bridge.domain.model import ExternalIdentity
    from bridge.services import ports
    from bridge.services.ports import (
        AssertionMinter,
        IdentityLimiter,
        IdentityProvider,
        KeycloakGateway,
        ProviderQuota,
        RefusalBudget,
    )
    from bridge.storage.engine import Cache, GuardedCache, Store, StoreEntry
    from bridge.storage.recent_profiles import RecentProfiles

ISSUER = "https://kc.example/realms/app"


def make_policy(**overrides: Any) -> Policy:  # noqa: ANN401 - any Policy field
    """The policy of a bridge configured with the settings' defaults, with `overrides` applied."""
    settings = Settings(
        tiktok=TikTokSettings(client_key="key", client_secret=SecretStr("secret")),
        keycloak_url="https://kc.example",
        keycloak_realm="app",
        keycloak_client_id="bridge",
        keycloak_client_secret="secret",
        issuer="https://bridge.example",
    )
    return dataclasses.replace(policy_from_settings(settings), **overrides)


@dataclass
class FakeTikTok:
    """TikTok as an identity provider: access tokens map to profiles; codes map to (verifier, redirect
    URI, grant). Refusals are upstream errors, as the real adapter's are."""

    profiles: dict[str, ExternalIdentity] = field(default_factory=dict)
    codes: dict[str, tuple[str, str, ProviderGrant]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    prefix: str = "act."
    name: str = "TikTok"

    def plausible(self, access_token: str) -> bool:
        return access_token.startswith(self.prefix)

    async def fetch_profile(
        self, access_token: str, scopes: Iterable[str] = ("user.info.basic",)
    ) -> ExternalIdentity:
        self.calls.append(access_token)
        try:
            return self.profiles[access_token]
        except KeyError:
            raise IdentityRefused("tiktok", Refused.ACCESS_TOKEN, detail="unknown token") from None

    async def verify_access_token(self, access_token: str) -> ExternalIdentity:
        return await self.fetch_profile(access_token)

    async def read_profile(self, grant: ProviderGrant) -> ExternalIdentity:
        return await self.fetch_profile(grant.access_token, sorted(grant.scopes))

    async def redeem_code(self, code: str, *, code_verifier: str, redirect_uri: str) -> ProviderGrant:
        self.calls.append(f"redeem:{code}")
        entry = self.codes.pop(code, None)  # single-use, as at TikTok
        if entry is None or entry[:2] != (code_verifier, redirect_uri):
            raise IdentityRefused(
                "tiktok",
                Refused.CODE,
                description="The TikTok authorization code is invalid, expired or already used.",
                detail="unknown code",
            )
        if "user.info.basic" not in entry[2].scopes:
            raise IdentityRefused("tiktok", Refused.SCOPE, detail="no user.info.basic")
        return entry[2]

    async def refresh(self, refresh_token: str) -> ProviderGrant:
        raise IdentityRefused("tiktok", Refused.CODE, detail="no refresh at this fake")

    async def revoke(self, access_token: str) -> None:
        self.calls.append(f"revoke:{access_token}")


@dataclass
class FakeKeycloak:
    """Keeps users like Keycloak does: unique usernames and e-mails, links by (alias, open_id), groups
    that must exist, realm roles that can be mapped (or made to fail)."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The bridge's own group exists, as keycloak-config/ and `bridge keycloak apply` make it.
    groups: set[str] = field(default_factory=lambda: {"/tiktok-users"})
    realm_roles: set[str] = field(default_factory=set)
    # Group path -> its attributes (`bridge keycloak apply` records union_id-keyed providers there).
    group_attrs: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    fail_role_mapping: bool = False
    calls: Counter[str] = field(default_factory=Counter)
    scopes: list[tuple[str, ...]] = field(default_factory=list)  # asked of the token endpoint
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    async def issuer(self) -> str:
        return ISSUER

    def _linked(self, idp_alias: str, idp_user_id: str) -> KeycloakUser | None:
        for rep in self.users.values():
            for link in rep.get("federatedIdentities", []):
                if (link["identityProvider"], link["userId"]) == (idp_alias, idp_user_id):
                    return user_from_representation(rep)
        return None

    async def find_linked_user(self, idp_alias: str, idp_user_id: str) -> KeycloakUser | None:
        self.calls["find"] += 1
        return self._linked(idp_alias, idp_user_id)

    async def linked_users(self, idp_alias: str, idp_user_id: str) -> list[KeycloakUser]:
        self.calls["find_by_idp"] += 1
        return [
            user_from_representation(rep)
            for rep in self.users.values()
            if any(
                (link["identityProvider"], link["userId"]) == (idp_alias, idp_user_id)
                for link in rep.get("federatedIdentities", [])
            )
        ][:2]

    async def users_with_attribute(self, name: str, value: str) -> list[KeycloakUser]:
        """Like Keycloak's exact attribute search: the value compared ignoring case."""
        self.calls["find_by_attribute"] += 1
        return [
            user_from_representation(rep)
            for rep in self.users.values()
            if value.lower() in {v.lower() for v in rep.get("attributes", {}).get(name, [])}
        ]

    async def user_named(self, username: str) -> KeycloakUser | None:
        self.calls["find_by_username"] += 1
        for rep in self.users.values():
            if rep["username"] == username.lower():
                return user_from_representation(rep)
        return None

    async def user_groups(self, user_id: str) -> list[str]:
        self.calls["user_groups"] += 1
        return list(self.users[user_id].get("groups", []))

    async def get_user(self, user_id: str) -> KeycloakUser | None:
        self.calls["get"] += 1
        rep = self.users.get(user_id)
        return user_from_representation(rep) if rep else None

    async def create_user(self, representation: dict[str, Any]) -> str:
        self.calls["create"] += 1
        for rep in self.users.values():
            if rep["username"] == representation["username"]:
                raise UserConflict("User exists with same username")
            if representation.get("email") and rep.get("email") == representation["email"]:
                raise UserConflict("User exists with same email")
        user_id = f"user-{next(self._ids)}"
        self.users[user_id] = {**representation, "id": user_id}
        return user_id

    async def update_user(self, user_id: str, representation: dict[str, Any]) -> None:
        self.calls["update"] += 1
        self.users[user_id] = {**representation, "id": user_id}

    async def delete_user(self, user_id: str) -> None:
        self.calls["delete"] += 1
        self.users.pop(user_id, None)

    async def missing_groups(self, paths: tuple[str, ...]) -> list[str]:
        self.calls["groups"] += 1
        return [path for path in paths if path not in self.groups]

    async def group_attributes(self, path: str) -> dict[str, list[str]]:
        self.calls["group_attributes"] += 1
        return {k: list(v) for k, v in self.group_attrs.get(path, {}).items()}

    async def assign_realm_roles(self, user_id: str, names: tuple[str, ...]) -> None:
        self.calls["roles"] += 1
        if self.fail_role_mapping:
            raise UpstreamUnavailable("keycloak", "role mapping failed")
        self.users[user_id]["realmRoles"] = [name for name in names if name in self.realm_roles]

    async def remove_link(self, user_id: str, idp_alias: str) -> None:
        self.calls["unlink"] += 1
        rep = self.users[user_id]
        rep["federatedIdentities"] = [
            link for link in rep.get("federatedIdentities", []) if link["identityProvider"] != idp_alias
        ]

    async def user_links(self, user_id: str) -> list[FederatedLink]:
        self.calls["links"] += 1
        rep = self.users.get(user_id, {})
        return [
            FederatedLink(link["identityProvider"], link["userId"], link.get("userName"))
            for link in rep.get("federatedIdentities", [])
        ]

    async def add_link(self, user_id: str, link: FederatedLink) -> None:
        """Like Keycloak: 409 for a second link to one provider, none for an identity linked elsewhere."""
        self.calls["link"] += 1
        links = self.users[user_id].setdefault("federatedIdentities", [])
        if any(existing["identityProvider"] == link.identity_provider for existing in links):
            raise UserConflict("User is already linked with provider")
        links.append(
            {"identityProvider": link.identity_provider, "userId": link.user_id, "userName": link.user_name}
        )

    async def issue_token(self, assertion: str, scope: tuple[str, ...]) -> IssuedToken:
        self.calls["token"] += 1
        self.scopes.append(scope)
        # Like Keycloak, the provider is picked by the assertion's issuer (`FakeMinter.issuer`).
        issuer, _, subject = assertion.removeprefix("assertion-for:").rpartition("@")
        user = self._linked(PROVIDERS[issuer], subject)
        if user is None:
            raise NotLinked
        if not user.enabled:
            raise AccountDisabled
        return IssuedToken(
            access_token=f"kc-token-for:{user.id}",
            expires_in=300,
            scope=" ".join(scope) or None,
            subject=user.id,
        )

    def admin_calls(self) -> int:
        return sum(count for name, count in self.calls.items() if name != "token")


# The providers of the fake realm by the issuer the bridge signs as: TikTok's, and the Strapi jwt one.
PROVIDERS = {"": "tiktok", "strapi-jwt": "tiktok-strapi-jwt"}


@dataclass(frozen=True)
class FakeMinter:
    """Assertions naming their issuer: "" for the TikTok provider, "strapi-jwt" for the other."""

    issuer: str = ""

    def mint(self, subject: str, audience: str) -> str:
        assert audience == ISSUER
        return f"assertion-for:{self.issuer}@{subject}" if self.issuer else f"assertion-for:{subject}"


@dataclass(frozen=True)
class UseCases:
    """The exchange and the use cases it composes, over one cache, wired as the factory wires them."""

    exchange: ExchangeService
    identity: IdentityService
    provisioning: ProvisioningService
    minting: MintingService
    deauthorization: DeauthorizationService
    cache: GuardedCache


def use_cases(
    *,
    tiktok: IdentityProvider,
    keycloak: KeycloakGateway,
    cache: GuardedCache,
    policy: Policy,
    minter: AssertionMinter | None = None,
    limiter: IdentityLimiter | None = None,
    quota: ProviderQuota | None = None,
    recent: RecentProfiles | None = None,
    refusals: RefusalBudget | None = None,
    strapi_jwt: bool = False,
) -> UseCases:
    """The use cases of one app over these collaborators (`FakeMinter` unless a minter is given);
    `strapi_jwt`: minting by the Strapi jwt provider too."""
    identities = IdentityStore.from_policy(cache, policy)
    identity = IdentityService(
        provider=tiktok,
        profiles=ProfileStore.from_policy(cache, policy, recent),
        policy=policy,
        quota=quota,
        refusals=refusals,
    )
    provisioning = ProvisioningService(keycloak=keycloak, identities=identities, policy=policy)
    minting = MintingService(
        keycloak=keycloak,
        minter=minter or FakeMinter(),
        policy=policy,
        strapi_jwt_minter=FakeMinter("strapi-jwt") if strapi_jwt else None,
    )
    exchange = ExchangeService(
        identity=identity,
        provisioning=provisioning,
        minting=minting,
        identities=identities,
        policy=policy,
        limiter=limiter,
    )
    deauthorization = DeauthorizationService(
        keycloak=keycloak,
        identities=identities,
        queue=DeauthorizationQueue.from_policy(cache, policy),
        policy=policy,
    )
    return UseCases(exchange, identity, provisioning, minting, deauthorization, cache)


# The fakes stand in for these ports; mypy checks each assignment.
_tiktok: IdentityProvider = FakeTikTok()
_keycloak: KeycloakGateway = FakeKeycloak()
_minter: AssertionMinter = FakeMinter()
# The use cases are tested over the real stores on process memory; mypy checks each fits its port.
_profiles: ports.ProfileStore = ProfileStore(MemoryCache(), profile_ttl=60, negative_ttl=60)
_identities: ports.IdentityStore = IdentityStore(
    MemoryCache(), idp_alias="tiktok", user_ttl=60, tombstone_ttl=60
)
_queue: ports.DeauthorizationQueue = DeauthorizationQueue(MemoryCache(), idp_alias="tiktok", horizon=60)
_sessions: ports.SessionStore = SessionStore(MemoryCache(), idp_alias="tiktok", max_lifetime=60)
_seen: ports.SeenOnce = SeenOnce.dpop_proofs(MemoryCache())
_admin_tokens: ports.AdminTokenStore = AdminTokenStore(MemoryCache())


async def assert_lock_outcomes(cache: Cache, key: str) -> None:
    """The lock port's contract, for any cache: a free lock is taken at once, a held one is refused once
    the wait runs out, taken again at once after release, and taken after waiting while a holder lets go."""
    async with cache.lock(key, ttl=5, wait=1) as first:
        assert first is Held.AT_ONCE
        async with cache.lock(key, ttl=5, wait=0.05) as refused:
            assert refused is Held.NOT_TAKEN
            assert not refused
    async with cache.lock(key, ttl=5, wait=0.05) as again:
        assert again is Held.AT_ONCE

    released = asyncio.Event()

    async def hold() -> None:
        async with cache.lock(key, ttl=5, wait=1):
            await released.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0.05)  # the holder has it
    asyncio.get_running_loop().call_later(0.05, released.set)
    async with cache.lock(key, ttl=5, wait=2) as after:
        assert after is Held.AFTER_WAITING
        assert after
    await holder


async def assert_set_if_current_outcomes(store: Store) -> None:
    """`Store.set_if_current`'s three outcomes, as every store must give them: written only when no
    tombstone at or after the verification refuses and the user entry is exactly the one expected."""
    open_id = f"-{uuid.uuid4().hex}"
    user_key, revoked_key = keys.linked_user("tiktok", open_id), keys.deauthorized("tiktok", open_id)
    session = keys.session(uuid.uuid4().hex[:22])
    verified_at = time.time()
    check = EntryCheck(
        user_key=user_key, revoked_key=revoked_key, entry=b'{"id":"u"}', verified_at=verified_at
    )

    assert await store.set_if_current(check, session, b"s1", 60) is IdentityState.STALE  # no entry
    await store.set(user_key, b'{"id":"other"}', 60)
    assert await store.set_if_current(check, session, b"s1", 60) is IdentityState.STALE  # another
    assert await store.get(session) is None
    await store.set(user_key, check.entry, 60)
    assert await store.set_if_current(check, session, b"s1", 60) is IdentityState.CURRENT
    assert await store.get(session) == b"s1"

    await store.set(revoked_key, json.dumps(verified_at).encode(), 60)  # as `deauthorize` writes it
    assert await store.set_if_current(check, session, b"s2", 60) is IdentityState.REVOKED  # same time
    later = replace(check, verified_at=verified_at + 0.000001)
    assert await store.set_if_current(later, session, b"s2", 60) is IdentityState.CURRENT  # verified after
    assert await store.get(session) == b"s2"
    await store.set(revoked_key, json.dumps(verified_at + 1).encode(), 60)
    assert await store.set_if_current(later, session, b"s3", 60) is IdentityState.REVOKED
    assert await store.get(session) == b"s2"  # a refused check wrote nothing
    await store.delete(user_key, revoked_key, session)


async def assert_save_unless_ended_outcomes(store: Store) -> None:
    """`StoreEntry.save_and_release_unless_ended`, as every store must do it: written while no end time
    is at or after the start, deleted otherwise, and the lock released either way."""
    sid = uuid.uuid4().hex[:22]
    key, lock_key = keys.session(sid), keys.session_lock(sid)
    ended_key = keys.sessions_not_before("tiktok", f"-{uuid.uuid4().hex}")
    started = time.time()

    async def attempt(value: bytes) -> bool:
        async with store.locked_entry(key, lock_key=lock_key, ttl=5, wait=1) as entry:
            assert entry.held is Held.AT_ONCE  # the previous attempt released the lock
            return await entry.save_and_release_unless_ended(value, 60, ended_key=ended_key, started=started)

    await store.set(key, b"v0", 60)
    assert await attempt(b"v1")  # no end time
    assert await store.get(key) == b"v1"
    await store.set(ended_key, json.dumps(started - 0.000001).encode(), 60)  # as `end_identity` writes it
    assert await attempt(b"v2")  # ended before this started
    assert await store.get(key) == b"v2"
    await store.set(ended_key, json.dumps(started).encode(), 60)
    assert not await attempt(b"v3")  # ended at its very start
    assert await store.get(key) is None
    async with store.locked_entry(key, lock_key=lock_key, ttl=5, wait=0) as entry:
        assert entry.held is Held.AT_ONCE
    await store.delete(ended_key)


def _kind(key: str) -> str:
    """What a key holds, as the recording store notes it: `session`, `user`, `lock`, ..."""
    return key.split(":")[2]


class RecordingEntry:
    """A `StoreEntry` of the memory store that notes its write in the store's list."""

    def __init__(self, entry: StoreEntry, operations: list[str], kind: str) -> None:
        self._entry = entry
        self._operations = operations
        self._kind = kind

    @property
    def held(self) -> Held:
        return self._entry.held

    @property
    def value(self) -> bytes | None:
        return self._entry.value

    async def save_and_release(self, value: bytes, ttl: float) -> None:
        self._operations.append(f"save_and_release {self._kind}")
        await self._entry.save_and_release(value, ttl)

    async def save_and_release_unless_ended(
        self, value: bytes, ttl: float, *, ended_key: str, started: float
    ) -> bool:
        self._operations.append(f"save_and_release_unless_ended {self._kind} {_kind(ended_key)}")
        return await self._entry.save_and_release_unless_ended(
            value, ttl, ended_key=ended_key, started=started
        )


class RecordingStore:
    """The memory store, noting each operation asked of it and of which kind of key (`session`, `lock`,
    `sessions-not-before`, `user`, ...): with Redis, each is one round trip."""

    def __init__(self) -> None:
        self.memory = MemoryCache()
        self.operations: list[str] = []
        # (operation, key) of each write asked to be confirmed by Redis replicas.
        self.durable: list[tuple[str, str]] = []

    def _note(self, operation: str, *keys_: str) -> None:
        self.operations.append(" ".join([operation, *map(_kind, keys_)]))

    async def get(self, key: str) -> bytes | None:
        self._note("get", key)
        return await self.memory.get(key)

    async def get_many(self, *keys_: str) -> list[bytes | None]:
        self._note("get_many", *keys_)
        return await self.memory.get_many(*keys_)

    async def set(self, key: str, value: bytes, ttl: float, *, durable: bool = False) -> None:
        self._note("set", key)
        if durable:
            self.durable.append(("set", _kind(key)))
        await self.memory.set(key, value, ttl)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        self._note("add", key)
        return await self.memory.add(key, value, ttl)

    async def delete(self, *keys_: str, durable: bool = False) -> None:
        self._note("delete", *keys_)
        if durable:
            self.durable.extend(("delete", _kind(key)) for key in keys_)
        await self.memory.delete(*keys_)

    async def count_up(self, key: str, *, floor: int, jump: int) -> int:
        self._note("count_up", key)
        return await self.memory.count_up(key, floor=floor, jump=jump)

    async def schedule(self, key: str, member: str, at: float, *, durable: bool = False) -> None:
        if durable:
            self.durable.append(("schedule", _kind(key)))
        await self.memory.schedule(key, member, at)

    async def due(self, key: str, until: float, limit: int) -> list[str]:
        return await self.memory.due(key, until, limit)

    async def scheduled(self, key: str) -> int:
        return await self.memory.scheduled(key)

    async def unschedule(self, key: str, member: str) -> None:
        await self.memory.unschedule(key, member)

    def lock(self, key: str, *, ttl: float, wait: float) -> AbstractAsyncContextManager[Held]:
        self._note("lock", key)
        return self.memory.lock(key, ttl=ttl, wait=wait)

    @asynccontextmanager
    async def _locked_entry(
        self, key: str, lock_key: str, ttl: float, wait: float
    ) -> AsyncIterator[RecordingEntry]:
        self._note("locked_entry", key)
        async with self.memory.locked_entry(key, lock_key=lock_key, ttl=ttl, wait=wait) as entry:
            yield RecordingEntry(entry, self.operations, _kind(key))

    def locked_entry(
        self, key: str, *, lock_key: str, ttl: float, wait: float
    ) -> AbstractAsyncContextManager[RecordingEntry]:
        return self._locked_entry(key, lock_key, ttl, wait)

    async def ping(self) -> None:
        await self.memory.ping()

    async def aclose(self) -> None:
        await self.memory.aclose()

    @property
    def degraded(self) -> bool:
        return False

    @property
    def one_place(self) -> Literal[True]:
        return True

    async def set_if_current(self, check: EntryCheck, key: str, value: bytes, ttl: float) -> IdentityState:
        self._note("set_if_current", check.revoked_key, check.user_key, key)
        return await self.memory.set_if_current(check, key, value, ttl)

    async def lock_is_free(self, session_id: str) -> bool:
        """Whether another refresh could take the session's lock at once (not noted)."""
        return await self.key_lock_is_free(keys.session_lock(session_id))

    async def key_lock_is_free(self, lock_key: str) -> bool:
        """Whether the lock `lock_key` could be taken at once (not noted)."""
        async with self.memory.lock(lock_key, ttl=1, wait=0) as held:
            return held is Held.AT_ONCE
