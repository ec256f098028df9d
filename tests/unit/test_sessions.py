"""Bridge sessions over in-memory fakes and an injectable clock: rotation, reuse, grace, lifetimes,
revocation and the TikTok re-check."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from bridge.domain.errors import (
    AccountDisabled,
    IdentityRefused,
    InvalidGrant,
    InvalidScope,
    InvalidTarget,
    NotLinked,
    Refused,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UpstreamUnavailable,
)
from bridge.domain.model import IssuedToken, KeycloakUser, ProviderGrant
from bridge.services.sessions import (
    LinkedAccounts,
    NewSession,
    SessionPolicy,
    SessionService,
    parse_token,
)
from bridge.storage import keys
from bridge.storage.sealing import Sealer, new_key
from bridge.storage.sessions import SessionStore
from tests.unit.fakes import RecordingStore

if TYPE_CHECKING:
    from bridge.services.ports import GrantForgetter, LinkedUsers, Minter, ProviderGrants
    from bridge.storage.engine import Store
    from tests.conftest import Clock

DAY = 86400.0


@dataclass
class FakeMinter:
    refused: type[Exception] | None = None
    minted: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    # (audiences, client_id) of each mint, beside `minted`.
    targets: list[tuple[tuple[str, ...], str | None]] = field(default_factory=list)
    # The Keycloak account each TikTok identity is linked to: the `sub` of the tokens minted for it.
    accounts: dict[str, str] = field(default_factory=lambda: {"-000a": "kc-1"})
    # The accounts linked to the Strapi jwt provider (by their own id), and which provider each mint used.
    strapi_jwt_links: set[str] = field(default_factory=lambda: {"kc-1"})
    by_account: list[bool] = field(default_factory=list)

    async def mint(
        self,
        open_id: str,
        scope: tuple[str, ...],
        *,
        audiences: tuple[str, ...] = (),
        client_id: str | None = None,
        by_account: bool = False,
    ) -> IssuedToken:
        if self.refused is not None:
            raise self.refused
        self.minted.append((open_id, scope))
        self.targets.append((audiences, client_id))
        self.by_account.append(by_account)
        subject = self.accounts.get(open_id)
        if by_account:
            if open_id not in self.strapi_jwt_links:
                raise NotLinked
            subject = open_id
        return IssuedToken(
            access_token=f"kc-{len(self.minted)}",
            expires_in=300,
            scope=" ".join(scope) or None,
            subject=subject,
        )


@dataclass
class FakeTikTokGrants:
    """TikTok's refresh grant with rotation: each refresh retires the refresh token it was given."""

    live: set[str] = field(default_factory=lambda: {"rft.1"})
    unavailable: bool = False
    revoked: list[str] = field(default_factory=list)
    refreshes: int = 0

    async def refresh(self, refresh_token: str) -> ProviderGrant:
        self.refreshes += 1
        if self.unavailable:
            raise UpstreamUnavailable("tiktok", "down")
        if refresh_token not in self.live:
            raise IdentityRefused("tiktok", Refused.CODE, detail="invalid_grant")
        self.live.discard(refresh_token)
        successor = f"rft.{self.refreshes + 1}"
        self.live.add(successor)
        return ProviderGrant(
            access_token=f"act.{self.refreshes + 1}",
            open_id="-000a",
            scopes=frozenset(),
            expires_in=7200,
            refresh_token=successor,
        )

    async def revoke(self, access_token: str) -> None:
        self.revoked.append(access_token)
        self.live.clear()


@dataclass
class FakeLinkedUsers:
    """Keycloak's users per (provider alias, linked identity), and the lookups made."""

    linked: dict[tuple[str, str], list[KeycloakUser]] = field(default_factory=dict)
    asked: list[tuple[str, str]] = field(default_factory=list)

    async def linked_users(self, idp_alias: str, idp_user_id: str) -> list[KeycloakUser]:
        self.asked.append((idp_alias, idp_user_id))
        return self.linked.get((idp_alias, idp_user_id), [])


GRANT = ProviderGrant(
    access_token="act.1", open_id="-000a", scopes=frozenset(), expires_in=7200, refresh_token="rft.1"
)
_ports: tuple[Minter, ProviderGrants, LinkedUsers] = (FakeMinter(), FakeTikTokGrants(), FakeLinkedUsers())


@pytest.fixture
def minter() -> FakeMinter:
    return FakeMinter()


@pytest.fixture
def tiktok() -> FakeTikTokGrants:
    return FakeTikTokGrants()


_store: Store = RecordingStore()  # the recording store fits the port


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore()


def make_sessions(
    store: RecordingStore,
    minter: FakeMinter,
    tiktok: FakeTikTokGrants,
    clock: Clock,
    grants: GrantForgetter | None = None,
    accounts: LinkedAccounts | None = None,
) -> SessionService:
    return SessionService(
        store=SessionStore(store, idp_alias="tiktok", max_lifetime=int(90 * DAY)),
        minter=minter,
        provider=tiktok,
        sealer=Sealer.from_keys([new_key()]),
        policy=SessionPolicy(
            idle_timeout=int(30 * DAY),
            max_lifetime=int(90 * DAY),
            reuse_grace=5.0,
            provider_recheck=True,
            provider_recheck_interval=int(DAY),
        ),
        clock=clock,
        grants=grants,
        accounts=accounts,
    )


@pytest.fixture
def sessions(
    store: RecordingStore, minter: FakeMinter, tiktok: FakeTikTokGrants, clock: Clock
) -> SessionService:
    return make_sessions(store, minter, tiktok, clock)


async def start(sessions: SessionService, grant: ProviderGrant | None = None, jkt: str | None = None) -> str:
    started = await sessions.start(
        NewSession(
            user_id="kc-1", open_id="-000a", scope=("openid", "profile"), provider_grant=grant, jkt=jkt
        )
    )
    assert started.refresh_expires_in == int(30 * DAY)
    return started.refresh_token


async def test_each_refresh_rotates_and_mints_a_fresh_keycloak_token(
    sessions: SessionService, minter: FakeMinter
) -> None:
    """A refresh answers a new Keycloak token and a new refresh token; the chain goes on."""
    first = await start(sessions)
    one = await sessions.refresh(first, ())
    two = await sessions.refresh(one.grant.refresh_token, ())
    assert len({first, one.grant.refresh_token, two.grant.refresh_token}) == 3
    assert [i.access_token for i in (one.issued, two.issued)] == ["kc-1", "kc-2"]
    assert minter.minted == [("-000a", ("openid", "profile"))] * 2


async def test_the_store_keeps_no_refresh_token(sessions: SessionService, store: RecordingStore) -> None:
    """What is stored cannot be replayed: neither the token nor its secret appears in the record."""
    token = await start(sessions)
    parsed = parse_token(token)
    assert parsed is not None
    raw = await store.get(keys.session(parsed[0]))
    assert raw is not None
    assert parsed[1] not in raw.decode()
    assert token not in raw.decode()


async def test_a_retired_token_after_the_grace_ends_the_whole_family(
    sessions: SessionService, clock: Clock
) -> None:
    """Reuse beyond the grace window is theft: refused, and the newest token dies with it."""
    first = await start(sessions)
    newest = (await sessions.refresh(first, ())).grant.refresh_token
    clock.now += 6
    with pytest.raises(InvalidGrant):
        await sessions.refresh(first, ())
    with pytest.raises(InvalidGrant):
        await sessions.refresh(newest, ())


async def test_a_retry_within_the_grace_gets_the_same_successor(
    sessions: SessionService, clock: Clock
) -> None:
    """A client that lost the answer retries with the old token and is handed the same successor, which
    then keeps working; the retry does not rotate again."""
    first = await start(sessions)
    answer = await sessions.refresh(first, ())
    clock.now += 3
    retried = await sessions.refresh(first, ())
    assert retried.grant.refresh_token == answer.grant.refresh_token
    assert retried.issued.access_token != answer.issued.access_token  # a fresh Keycloak token
    assert (await sessions.refresh(answer.grant.refresh_token, ())).grant.refresh_token


async def test_two_holders_taking_turns_within_the_grace_end_the_session_at_the_second_turn(
    sessions: SessionService, clock: Clock
) -> None:
    """Found under attack (SECURITY.md, "credentials and sessions", finding 7): a thief with a copy of the
    token and its user refreshing in turns, each within the grace, went undetected for 6 rounds (24 s). The
    first retry looks like a lost answer and is served; but the token it handed out a second time, once
    rotated by one holder, is reuse when the other presents it: the whole session ends."""
    first = await start(sessions)
    users = (await sessions.refresh(first, ())).grant.refresh_token
    clock.now += 2
    thiefs = (await sessions.refresh(first, ())).grant.refresh_token  # in the grace: the same successor
    assert thiefs == users
    clock.now += 2
    thiefs = (await sessions.refresh(thiefs, ())).grant.refresh_token  # the thief rotates first
    clock.now += 2
    with pytest.raises(InvalidGrant):
        await sessions.refresh(users, ())  # within the grace of that rotation, but handed out twice
    with pytest.raises(InvalidGrant):
        await sessions.refresh(thiefs, ())  # the thief's newest token died with the session


async def test_a_lost_answer_keeps_its_grace_however_often_it_happens_between_rotations(
    sessions: SessionService, clock: Clock
) -> None:
    """A client that loses an answer, retries, and later loses another answer is retried again: only
    the token a retry handed out is denied a grace of its own. Two answers lost in a row (the retried
    successor's own answer lost too) cannot be told from two holders, and end the session."""
    first = await start(sessions)
    second = (await sessions.refresh(first, ())).grant.refresh_token  # answer lost
    assert (await sessions.refresh(first, ())).grant.refresh_token == second
    assert (await sessions.refresh(first, ())).grant.refresh_token == second  # and retried once more
    third = (await sessions.refresh(second, ())).grant.refresh_token
    clock.now += 60
    fourth = (await sessions.refresh(third, ())).grant.refresh_token  # answer lost
    assert (await sessions.refresh(third, ())).grant.refresh_token == fourth
    fifth = (await sessions.refresh(fourth, ())).grant.refresh_token  # answer lost as well
    with pytest.raises(InvalidGrant):
        await sessions.refresh(fourth, ())
    with pytest.raises(InvalidGrant):
        await sessions.refresh(fifth, ())


async def test_a_token_two_rotations_old_is_reuse_even_within_the_grace(sessions: SessionService) -> None:
    """Only the token retired by the very last rotation has a grace; an older one ends the session."""
    first = await start(sessions)
    second = (await sessions.refresh(first, ())).grant.refresh_token
    third = (await sessions.refresh(second, ())).grant.refresh_token
    with pytest.raises(InvalidGrant):
        await sessions.refresh(first, ())
    with pytest.raises(InvalidGrant):
        await sessions.refresh(third, ())


async def test_idle_sessions_expire(sessions: SessionService, clock: Clock) -> None:
    """Unused for longer than the idle timeout, a session is over; used in time, it goes on."""
    token = await start(sessions)
    clock.now += 29 * DAY
    token = (await sessions.refresh(token, ())).grant.refresh_token
    clock.now += 30 * DAY + 1
    with pytest.raises(InvalidGrant):
        await sessions.refresh(token, ())


async def test_sessions_end_at_their_absolute_maximum(sessions: SessionService, clock: Clock) -> None:
    """However active, a session ends 90 days after it started; refresh_expires_in says when."""
    token = await start(sessions)
    for _ in range(4):
        clock.now += 20 * DAY
        refreshed = await sessions.refresh(token, ())
        token = refreshed.grant.refresh_token
    assert refreshed.grant.refresh_expires_in == int(10 * DAY)  # the maximum comes before the idle limit
    clock.now += 10 * DAY
    with pytest.raises(InvalidGrant):
        await sessions.refresh(token, ())


async def test_scope_may_narrow_but_never_widen(sessions: SessionService, minter: FakeMinter) -> None:
    """A refresh may ask for less than the session was granted, never for more."""
    token = await start(sessions)
    narrowed = await sessions.refresh(token, ("openid",))
    assert minter.minted[-1] == ("-000a", ("openid",))
    with pytest.raises(InvalidScope):
        await sessions.refresh(narrowed.grant.refresh_token, ("openid", "offline_access"))


async def test_audiences_and_app_are_kept_and_may_narrow_but_never_widen(
    sessions: SessionService, minter: FakeMinter
) -> None:
    """A refresh mints for the session's app and audiences, may ask for fewer, and never for another."""
    started = await sessions.start(
        NewSession(
            user_id="kc-1", open_id="-000a", scope=(), client_id="ios", audiences=("orders", "billing")
        )
    )
    kept = await sessions.refresh(started.refresh_token, (), client_id="ios")
    narrowed = await sessions.refresh(kept.grant.refresh_token, (), client_id="ios", audiences=("orders",))
    assert minter.targets == [(("orders", "billing"), "ios"), (("orders",), "ios")]
    with pytest.raises(InvalidTarget):
        await sessions.refresh(narrowed.grant.refresh_token, (), client_id="ios", audiences=("admin",))
    assert len(minter.targets) == 2  # refused before Keycloak was asked


@pytest.mark.parametrize("refusal", [NotLinked, AccountDisabled])
async def test_a_user_keycloak_refuses_ends_the_session(
    sessions: SessionService, minter: FakeMinter, refusal: type[Exception]
) -> None:
    """Disabled, deleted or unlinked in Keycloak: invalid_grant now, and the session is gone."""
    token = await start(sessions)
    minter.refused = refusal
    with pytest.raises(InvalidGrant):
        await sessions.refresh(token, ())
    minter.refused = None
    with pytest.raises(InvalidGrant):
        await sessions.refresh(token, ())


async def test_a_session_never_mints_for_another_account(
    sessions: SessionService, minter: FakeMinter
) -> None:
    """The identity now links another account (the session's was deleted, the identity linked to a
    password user): invalid_grant, the token minted for the other account is not answered, and the
    session is over even once the link is back."""
    token = await start(sessions)
    minter.accounts["-000a"] = "kc-password-user"
    with pytest.raises(InvalidGrant, match="another account"):
        await sessions.refresh(token, ())
    minter.accounts["-000a"] = "kc-1"
    with pytest.raises(InvalidGrant):
        await sessions.refresh(token, ())
    assert len(minter.minted) == 1


async def test_only_the_client_a_session_was_issued_to_may_revoke_it(sessions: SessionService) -> None:
    """RFC 7009 §2.1: another client (or none) revoking an app's refresh token is unauthorized_client and
    the session goes on; the app itself revokes it."""
    started = await sessions.start(NewSession(user_id="kc-1", open_id="-000a", scope=(), client_id="app-a"))
    token = started.refresh_token

    for other in ("app-b", None):
        with pytest.raises(UnauthorizedClient):
            await sessions.revoke(token, other)
    refreshed = await sessions.refresh(token, (), client_id="app-a")

    assert await sessions.revoke(refreshed.grant.refresh_token, "app-a")


async def test_revocation_ends_the_family_and_is_idempotent(
    sessions: SessionService, tiktok: FakeTikTokGrants
) -> None:
    """RFC 7009: revoking ends the session (TikTok's grant too); revoking again or revoking garbage is
    no error."""
    token = await start(sessions, GRANT)
    assert await sessions.revoke(token)
    assert tiktok.revoked == ["act.1"]
    assert not await sessions.revoke(token)
    assert not await sessions.revoke("not-a-token")
    with pytest.raises(InvalidGrant):
        await sessions.refresh(token, ())


class ForgottenGrants:
    """The token vault's `GrantForgetter`: records the identities whose grant was forgotten."""

    def __init__(self) -> None:
        self.forgotten: list[str] = []

    async def forget(self, open_id: str) -> None:
        self.forgotten.append(open_id)


async def test_a_sign_out_revoked_at_tiktok_leaves_the_vault_nothing(
    store: RecordingStore, minter: FakeMinter, tiktok: FakeTikTokGrants, clock: Clock
) -> None:
    """Revoking a code-started session revokes TikTok's grant and forgets the vault's copy of it; a
    session that holds no TikTok grant (bare token) revokes nothing at TikTok and forgets nothing."""
    grants = ForgottenGrants()
    sessions = make_sessions(store, minter, tiktok, clock, grants)
    assert await sessions.revoke(await start(sessions))
    assert (tiktok.revoked, grants.forgotten) == ([], [])
    assert await sessions.revoke(await start(sessions, GRANT))
    assert (tiktok.revoked, grants.forgotten) == (["act.1"], ["-000a"])


async def test_ending_an_identity_ends_its_sessions_but_not_later_ones(
    sessions: SessionService, clock: Clock
) -> None:
    """Deauthorization or an operator ends every session started until then; a later sign-in's lives."""
    old = await start(sessions)
    clock.now += 1
    await sessions.end_identity("-000a")
    clock.now += 1
    new = await start(sessions)
    with pytest.raises(InvalidGrant):
        await sessions.refresh(old, ())
    assert (await sessions.refresh(new, ())).grant.refresh_token


async def test_tiktok_is_rechecked_when_due_and_its_rotation_kept(
    sessions: SessionService, tiktok: FakeTikTokGrants, clock: Clock
) -> None:
    """No TikTok call within the interval; after it, one refresh at TikTok, whose new refresh token is
    used the next time (the old one no longer works at TikTok)."""
    token = await start(sessions, GRANT)
    token = (await sessions.refresh(token, ())).grant.refresh_token
    assert tiktok.refreshes == 0
    clock.now += DAY
    token = (await sessions.refresh(token, ())).grant.refresh_token
    clock.now += DAY
    token = (await sessions.refresh(token, ())).grant.refresh_token
    assert tiktok.refreshes == 2
    assert tiktok.live == {"rft.3"}


async def test_a_revoked_tiktok_grant_ends_the_session(
    sessions: SessionService, tiktok: FakeTikTokGrants, clock: Clock
) -> None:
    """TikTok refusing the refresh means the user removed the app: invalid_grant, session over."""
    token = await start(sessions, GRANT)
    tiktok.live.clear()
    clock.now += DAY
    with pytest.raises(InvalidGrant):
        await sessions.refresh(token, ())


async def test_tiktok_down_postpones_the_recheck(
    sessions: SessionService, tiktok: FakeTikTokGrants, clock: Clock
) -> None:
    """An unreachable TikTok says nothing about the user: the refresh succeeds and TikTok is asked next
    time."""
    token = await start(sessions, GRANT)
    tiktok.unavailable = True
    clock.now += DAY
    token = (await sessions.refresh(token, ())).grant.refresh_token
    tiktok.unavailable = False
    await sessions.refresh(token, ())
    assert tiktok.refreshes == 2


async def test_tiktok_tokens_are_kept_sealed(sessions: SessionService, store: RecordingStore) -> None:
    """The TikTok refresh token is stored encrypted, never in clear."""
    token = await start(sessions, GRANT)
    parsed = parse_token(token)
    assert parsed is not None
    raw = await store.get(keys.session(parsed[0]))
    assert raw is not None
    assert "rft.1" not in raw.decode()
    assert json.loads(raw)["tiktok"]


async def test_a_dpop_bound_session_needs_the_same_key(sessions: SessionService) -> None:
    """Bound to a key thumbprint, a refresh without a proof of that key is refused and consumes nothing."""
    token = await start(sessions, jkt="thumb-1")
    with pytest.raises(InvalidGrant):
        await sessions.refresh(token, ())
    with pytest.raises(InvalidGrant):
        await sessions.refresh(token, (), jkt="thumb-2")
    assert (await sessions.refresh(token, (), jkt="thumb-1")).grant.refresh_token


@pytest.mark.parametrize("garbage", ["", "tkb1.x.y", "tkb1." + "a" * 22 + "." + "b" * 43, "act.x"])
async def test_unknown_and_malformed_tokens_are_invalid_grant(sessions: SessionService, garbage: str) -> None:
    """Anything the bridge did not issue, or no longer knows, is invalid_grant."""
    with pytest.raises(InvalidGrant):
        await sessions.refresh(garbage, ())


def session_id(token: str) -> str:
    parsed = parse_token(token)
    assert parsed is not None
    return parsed[0]


async def test_a_rotation_reads_as_it_locks_and_releases_as_it_writes(
    sessions: SessionService, store: RecordingStore
) -> None:
    """A refresh asks the store two things (two Redis round trips): the lock with the record, then the
    rotated record written with the lock's release, unless the identity's not-before time (read in the
    same step) ended the session; the lock is free after. Three before: the not-before time was read
    apart."""
    token = await start(sessions)
    store.operations.clear()
    refreshed = await sessions.refresh(token, ())
    assert store.operations == [
        "locked_entry session",
        "save_and_release_unless_ended session sessions-not-before",
    ]
    assert await store.lock_is_free(session_id(token))
    raw = await store.memory.get(keys.session(session_id(token)))
    assert raw is not None
    parsed = parse_token(refreshed.grant.refresh_token)
    assert parsed is not None
    assert json.loads(raw)["current"] == hashlib.sha256(parsed[1].encode()).hexdigest()  # the write


async def test_refreshes_that_write_nothing_or_end_the_session_release_the_lock(
    sessions: SessionService, store: RecordingStore, clock: Clock
) -> None:
    """A retry in the grace window writes, with the release, which token it handed out twice (the first
    retry only: later ones write nothing); reuse, idleness and a revoked identity delete the record:
    each leaves the lock free, as the rotation does."""
    first = await start(sessions)
    await sessions.refresh(first, ())
    store.operations.clear()
    await sessions.refresh(first, ())  # within the grace
    assert store.operations == ["locked_entry session", "get sessions-not-before", "save_and_release session"]
    assert await store.lock_is_free(session_id(first))
    store.operations.clear()
    await sessions.refresh(first, ())  # again
    assert store.operations == ["locked_entry session", "get sessions-not-before"]
    assert await store.lock_is_free(session_id(first))

    clock.now += 6
    store.operations.clear()
    with pytest.raises(InvalidGrant):
        await sessions.refresh(first, ())  # reuse
    assert store.operations == ["locked_entry session", "get sessions-not-before", "delete session"]
    assert await store.lock_is_free(session_id(first))

    idle = await start(sessions)
    clock.now += 31 * DAY
    store.operations.clear()
    with pytest.raises(InvalidGrant):
        await sessions.refresh(idle, ())
    assert store.operations == ["locked_entry session", "delete session"]
    assert await store.lock_is_free(session_id(idle))

    revoked = await start(sessions)
    clock.now += 1
    await sessions.end_identity("-000a")
    store.operations.clear()
    with pytest.raises(InvalidGrant, match="every session of this identity was ended"):
        await sessions.refresh(revoked, ())
    assert store.operations == [
        "locked_entry session",
        "save_and_release_unless_ended session sessions-not-before",
    ]
    assert await store.lock_is_free(session_id(revoked))
    assert await store.memory.get(keys.session(session_id(revoked))) is None  # deleted, not rotated


async def test_a_due_tiktok_recheck_writes_its_rotation_before_the_rotation_writes_and_releases(
    sessions: SessionService, store: RecordingStore, clock: Clock
) -> None:
    """TikTok's rotated refresh token is kept at once (a plain write under the lock), then the
    rotation's write releases the lock as usual."""
    token = await start(sessions, GRANT)
    clock.now += DAY
    store.operations.clear()
    await sessions.refresh(token, ())
    assert store.operations == [
        "locked_entry session",
        "set session",
        "save_and_release_unless_ended session sessions-not-before",
    ]
    assert await store.lock_is_free(session_id(token))


async def test_a_held_lock_is_waited_for_then_refused_without_consuming_the_token(
    sessions: SessionService, store: RecordingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another refresh holds the session's lock, a refresh waits; past its wait it is
    temporarily_unavailable and the token stays good. A holder that lets go in time is waited for."""
    monkeypatch.setattr("bridge.services.sessions.LOCK_WAIT", 0.05)
    token = await start(sessions)
    lock_key = keys.session_lock(session_id(token))
    async with store.memory.lock(lock_key, ttl=5, wait=0):
        with pytest.raises(TemporarilyUnavailable):
            await sessions.refresh(token, ())

    released = asyncio.Event()

    async def hold_briefly() -> None:
        async with store.memory.lock(lock_key, ttl=5, wait=0):
            await released.wait()

    holder = asyncio.create_task(hold_briefly())
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_later(0.02, released.set)
    assert (await sessions.refresh(token, ())).grant.refresh_token
    await holder


async def test_concurrent_refreshes_of_one_token_yield_one_live_successor(
    sessions: SessionService, minter: FakeMinter
) -> None:
    """Ten refreshes of one token at once: one rotation, nine retries within the grace handed the same
    successor, which is live."""
    token = await start(sessions)
    answers = await asyncio.gather(*(sessions.refresh(token, ()) for _ in range(10)))
    assert len({a.grant.refresh_token for a in answers}) == 1
    assert len(minter.minted) == 10
    assert (await sessions.refresh(answers[0].grant.refresh_token, ())).grant.refresh_token


# ------------------------------------------------------------------------- Strapi jwt sessions


async def start_by_account(sessions: SessionService, user_id: str = "kc-1") -> str:
    """A session the Strapi jwt exchange started for an account without a TikTok link."""
    started = await sessions.start(
        NewSession(user_id=user_id, open_id=user_id, scope=("openid",), by_account=True)
    )
    return started.refresh_token


async def test_a_strapi_jwt_session_refreshes_by_the_strapi_jwt_provider_and_keeps_saying_so(
    sessions: SessionService, minter: FakeMinter, store: RecordingStore
) -> None:
    """Each refresh of a Strapi jwt session mints for the account by the Strapi jwt provider, and the
    rotated record still says so; a TikTok session's refresh does not."""
    token = await start_by_account(sessions)
    token = (await sessions.refresh(token, ())).grant.refresh_token
    refreshed = await sessions.refresh(token, ())
    assert refreshed.issued.subject == "kc-1"
    await sessions.refresh(await start(sessions), ())
    assert minter.minted == [("kc-1", ("openid",))] * 2 + [("-000a", ("openid", "profile"))]
    assert minter.by_account == [True, True, False]
    raw = await store.get(keys.session(session_id(refreshed.grant.refresh_token)))
    assert raw is not None
    assert json.loads(raw)["by_account"] is True


async def test_a_strapi_jwt_session_ends_when_keycloak_refuses_the_account(
    sessions: SessionService, minter: FakeMinter
) -> None:
    """The account disabled, deleted, unlinked, or the Strapi jwt exchange closed: the refresh is
    invalid_grant and the session is over, even once the account could be minted for again."""
    token = await start_by_account(sessions)
    minter.strapi_jwt_links.clear()
    with pytest.raises(InvalidGrant, match="refused the session's user"):
        await sessions.refresh(token, ())
    minter.strapi_jwt_links.add("kc-1")
    with pytest.raises(InvalidGrant, match="unknown, expired or revoked"):
        await sessions.refresh(token, ())


async def test_ending_an_account_ends_its_strapi_jwt_sessions_and_no_tiktok_session(
    sessions: SessionService, clock: Clock
) -> None:
    """`end_account` ends the account's Strapi jwt sessions, not the TikTok sessions of the same
    account; `end_identity` ends the TikTok ones, not the Strapi jwt ones; later sessions live."""
    by_account, by_tiktok = await start_by_account(sessions), await start(sessions)
    other_account = await start_by_account(sessions, "kc-2")
    clock.now += 1
    await sessions.end_account("kc-1")
    with pytest.raises(InvalidGrant, match="every session of this identity was ended"):
        await sessions.refresh(by_account, ())
    by_tiktok = (await sessions.refresh(by_tiktok, ())).grant.refresh_token
    clock.now += 1
    later = await start_by_account(sessions)
    await sessions.end_identity("-000a")
    with pytest.raises(InvalidGrant, match="every session of this identity was ended"):
        await sessions.refresh(by_tiktok, ())
    assert (await sessions.refresh(later, ())).grant.refresh_token
    with pytest.raises(InvalidGrant, match="refused the session's user"):
        await sessions.refresh(other_account, ())  # kc-2 has no Strapi jwt link: ended by Keycloak


async def test_a_deauthorization_ends_the_strapi_jwt_sessions_of_the_linked_account(
    store: RecordingStore, minter: FakeMinter, tiktok: FakeTikTokGrants, clock: Clock
) -> None:
    """TikTok's deauthorization of an identity ends its sessions and, when the Strapi jwt exchange is
    on, the Strapi jwt sessions of the account linked to it (asked of Keycloak by the TikTok alias);
    with the exchange off nobody is asked, and a Strapi jwt session is not reached."""
    account = KeycloakUser("kc-1", "tiktok_strapi-4", enabled=True)
    keycloak = FakeLinkedUsers({("tiktok", "-000a"): [account]})
    on = make_sessions(store, minter, tiktok, clock, accounts=LinkedAccounts(keycloak, "tiktok"))
    off = make_sessions(store, minter, tiktok, clock)
    by_account, by_tiktok, unrelated = (
        await start_by_account(on),
        await start(on),
        await start_by_account(on, "kc-2"),
    )
    minter.strapi_jwt_links.add("kc-2")
    clock.now += 1
    await off.deauthorized("-000a")
    assert keycloak.asked == []
    by_account = (await on.refresh(by_account, ())).grant.refresh_token
    with pytest.raises(InvalidGrant, match="every session of this identity was ended"):
        await on.refresh(by_tiktok, ())
    clock.now += 1
    await on.deauthorized("-000a")
    assert keycloak.asked == [("tiktok", "-000a")]
    with pytest.raises(InvalidGrant, match="every session of this identity was ended"):
        await on.refresh(by_account, ())
    assert (await on.refresh(unrelated, ())).grant.refresh_token
