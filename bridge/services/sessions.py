"""Bridge sessions: long-lived, rotating refresh tokens, while Keycloak stays the only issuer of access
and ID tokens (its JWT Authorization Grant never issues a refresh token).

A session starts with a successful exchange (`start`; for an identity the exchange minted before reading
its cached state, `start_if_current` checks that state with the write) and is refreshed with
`grant_type=refresh_token`; every refresh mints a fresh Keycloak token through the same grant, so a user
disabled, deleted or unlinked in Keycloak is refused at the next refresh.

Refresh tokens (`tkb1.<session id>.<secret>`, 384 random bits) are opaque to clients. The store keeps
only the SHA-256 of the current and of the previous secret, so a leaked store replays nothing. Rules:
- **Rotation** (RFC 9700 §4.14.2): each refresh returns a new token and retires the presented one.
- **Reuse detection**: a retired token presented again ends the whole session, its newest token
  included. Exception, the **grace window**: within `reuse_grace` seconds of a rotation, the token
  just retired yields the same successor again (a mobile client whose network dropped the answer
  retries and is not signed out). The successor is kept sealed (encrypted) for that purpose only. A
  successor handed out that way has no grace of its own: two holders taking turns within the grace
  end the session at their second turn.
- **Lifetimes**: an idle timeout and an absolute maximum; `refresh_expires_in` says which comes first.
- **Revocation**: RFC 7009 (`revoke`), TikTok's deauthorization and an operator (`end_identity`: every
  session of a TikTok identity started before now is over), Keycloak refusing the grant.
- **Strapi jwt sessions** (`by_account`): started by the Strapi jwt exchange for an imported account
  without a TikTok link, they mint by the Strapi jwt provider for the Keycloak user id itself, and are
  ended per account (`end_account`). TikTok's deauthorization (`deauthorized`) ends them too for the
  account the identity is linked to; an identity linked to no account cannot name one (SECURITY.md).
- **TikTok in the loop**: sessions started from a code keep TikTok's refresh and access tokens, sealed.
  At most every `provider_recheck_interval` seconds a refresh also refreshes at TikTok (TikTok rotates its
  refresh token); TikTok refusing means the user revoked the app, and the session ends. Logging out
  revokes the TikTok grant, best effort.
- **Concurrency**: the refreshes of one session are serialised across replicas by a lock in the shared
  store; concurrent refreshes of one token yield one live successor. The lock shares its Redis slot
  with the record, so a rotation costs two Redis round trips: take the lock and read the record in
  one (`SessionStore.locked`); after the grant, write the rotated record and release the lock in one,
  which also reads the identity's not-before time and deletes the record instead if `end_identity`
  ended the session (`LockedSession.save_and_release_unless_ended`; on Redis Cluster that time lies in
  another slot and is read first: three). An ended session thus costs the grant whose token is never
  answered. A retry in the grace window and a reused token read the not-before time first, then release
  (the first retry of a token writes, with the release, which token it handed out twice), or delete the
  record, then release; a due TikTok re-check writes once more.
- **Store failure**: the store is Redis itself, never the process-memory fallback, so while Redis is
  unreachable refreshes answer 503 rather than guess. A session missing from the store is over: Redis
  losing its data signs users out (they sign in with TikTok again) and can never revive a revoked one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bridge.domain.errors import (
    AccountDisabled,
    IdentityRefused,
    InvalidGrant,
    InvalidScope,
    InvalidTarget,
    NotLinked,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UpstreamUnavailable,
)
from bridge.domain.model import IdentityState, NewSession, SessionGrant, SessionRecord, ended_by
from bridge.observability.metrics import SESSIONS, count

if TYPE_CHECKING:
    from collections.abc import Callable

    from bridge.domain.model import IdentityCheck, IssuedToken, ProviderGrant
    from bridge.services.ports import (
        GrantForgetter,
        LinkedUsers,
        LockedSession,
        Minter,
        ProviderGrants,
        Sealing,
        SessionStore,
    )

__all__ = ["LinkedAccounts", "NewSession", "SessionGrant", "SessionPolicy", "SessionService", "parse_token"]

log = logging.getLogger(__name__)

TOKEN_PREFIX = "tkb1"  # noqa: S105 - the prefix of every bridge refresh token, not a secret
_TOKEN = re.compile(r"tkb1\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})")
# One refresh may wait on TikTok and Keycloak (each bounded by the HTTP timeout and its retries).
LOCK_TTL = 30.0
LOCK_WAIT = 10.0
# Ends that someone still holding the refresh token must never get undone by a Redis failover.
DURABLE_ENDS = frozenset({"revoked", "reused"})


@dataclass(frozen=True)
class SessionPolicy:
    idle_timeout: int
    max_lifetime: int
    reuse_grace: float
    provider_recheck: bool
    provider_recheck_interval: int


@dataclass(frozen=True, slots=True)
class LinkedAccounts:
    """Where to ask who is linked to a TikTok identity: Keycloak, by the bridge's provider alias."""

    keycloak: LinkedUsers
    idp_alias: str


@dataclass(frozen=True, slots=True)
class Refreshed:
    issued: IssuedToken
    grant: SessionGrant


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_token(session_id: str) -> tuple[str, str]:
    """(token, hash of its secret)."""
    secret = secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}.{session_id}.{secret}", _digest(secret)


def parse_token(token: str) -> tuple[str, str] | None:
    """(session id, secret) of a well-formed bridge refresh token, None for anything else."""
    match = _TOKEN.fullmatch(token)
    return (match[1], match[2]) if match else None


class SessionService:
    def __init__(
        self,
        *,
        store: SessionStore,
        minter: Minter,
        provider: ProviderGrants,
        sealer: Sealing,
        policy: SessionPolicy,
        clock: Callable[[], float] = time.time,
        grants: GrantForgetter | None = None,
        accounts: LinkedAccounts | None = None,
    ) -> None:
        self._store = store
        self._minter = minter
        self._provider = provider
        self._sealer = sealer
        self._policy = policy
        self._clock = clock
        # The token vault's grants, when the vault is on: a sign-out that revokes at the provider
        # leaves the vault nothing to hand out.
        self._grants = grants
        # While the Strapi jwt exchange is on: its deauthorization also ends the Strapi jwt sessions of
        # the account a TikTok identity is linked to.
        self._accounts = accounts

    # ------------------------------------------------------------------------------ starting

    async def start(self, new: NewSession) -> SessionGrant:
        now = self._clock()
        session_id, record, grant = self._opened(new, now)
        await self._save(session_id, record, now)
        count(SESSIONS, "started")
        return grant

    async def start_if_current(self, new: NewSession, check: IdentityCheck) -> SessionGrant | IdentityState:
        """Start the session only if the identity's cached state is `check`'s, read in the same step
        as the write (one Redis round trip): the session of a sign-in minted before that state was
        read. The state otherwise, and nothing is written."""
        now = self._clock()
        session_id, record, grant = self._opened(new, now)
        state = await self._store.start_if_current(check, session_id, record, self._expires_in(record, now))
        if state is not IdentityState.CURRENT:
            return state
        count(SESSIONS, "started")
        return grant

    def _opened(self, new: NewSession, now: float) -> tuple[str, SessionRecord, SessionGrant]:
        """A new session's id, record and grant; not stored yet."""
        session_id = secrets.token_urlsafe(16)
        token, digest = _new_token(session_id)
        sealed_tiktok = None
        grant = new.provider_grant
        if self._policy.provider_recheck and grant is not None and grant.refresh_token:
            sealed_tiktok = self._seal_tiktok(grant)
        record = SessionRecord(
            user_id=new.user_id,
            open_id=new.open_id,
            scope=new.scope,
            created=now,
            last_used=now,
            current=digest,
            jkt=new.jkt,
            tiktok=sealed_tiktok,
            tiktok_checked=now if sealed_tiktok else None,
            client_id=new.client_id,
            audiences=new.audiences,
            by_account=new.by_account,
        )
        return session_id, record, SessionGrant(token, self._expires_in(record, now))

    # ---------------------------------------------------------------------------- refreshing

    async def refresh(
        self,
        token: str,
        scope: tuple[str, ...],
        *,
        jkt: str | None = None,
        client_id: str | None = None,
        audiences: tuple[str, ...] = (),
    ) -> Refreshed:
        parsed = parse_token(token)
        if parsed is None:
            raise InvalidGrant(detail="not a bridge refresh token")
        session_id, secret = parsed
        async with self._store.locked(session_id, ttl=LOCK_TTL, wait=LOCK_WAIT) as entry:
            if not entry.held:
                raise TemporarilyUnavailable(detail="session lock not acquired in time")
            return await self._refresh_locked(
                session_id, entry, _digest(secret), scope, jkt=jkt, client_id=client_id, audiences=audiences
            )

    async def _refresh_locked(
        self,
        session_id: str,
        entry: LockedSession,
        digest: str,
        scope: tuple[str, ...],
        *,
        jkt: str | None,
        client_id: str | None,
        audiences: tuple[str, ...],
    ) -> Refreshed:
        now = self._clock()
        record = await self._unexpired_record(session_id, entry.record, now)
        if record.client_id is not None and client_id != record.client_id:
            # RFC 6749 §6: a refresh token is good only for the client it was issued to.
            raise InvalidGrant(detail="refresh token issued to another client")
        if record.jkt is not None and not (jkt is not None and hmac.compare_digest(jkt, record.jkt)):
            # Sender-constrained: without a proof of the bound key the token is useless (and not consumed).
            raise InvalidGrant("The refresh token is bound to a DPoP key; a proof of it is required.")
        granted = self._narrowed(record.scope, scope)
        targets = self._narrowed_audiences(record.audiences, audiences)

        if hmac.compare_digest(digest, record.current):
            record = await self._recheck_tiktok(session_id, record, now)
            issued = await self._mint(session_id, record, granted, targets)
            token, new_digest = _new_token(session_id)
            record = replace(
                record,
                previous=record.current,
                current=new_digest,
                rotated_at=now,
                successor=self._sealer.seal(token.encode()),
                last_used=now,
            )
            # Written only if the identity's sessions were not ended since this one started: the
            # not-before time is read by the script that writes (one round trip less than reading it
            # first). An ended session costs the token just minted, which is never answered.
            if not await entry.save_and_release_unless_ended(record, self._expires_in(record, now)):
                self._ended(record, "revoked")
                raise InvalidGrant(detail="every session of this identity was ended")
            count(SESSIONS, "refreshed")
            return Refreshed(issued, SessionGrant(token, self._expires_in(record, now)))

        # The rare paths write little, or end the session: the not-before time is read first.
        await self._refuse_if_ended(session_id, record)
        in_grace = record.rotated_at is not None and now - record.rotated_at <= self._policy.reuse_grace
        # A retry hands the successor out a second time. A token handed out twice that one holder has
        # just rotated, presented again, is a second holder: two clients taking turns would otherwise
        # never leave the grace. Reuse, then.
        in_grace = in_grace and not (
            record.retried is not None and hmac.compare_digest(record.retried, digest)
        )
        if record.previous is not None and hmac.compare_digest(digest, record.previous) and in_grace:
            # The client lost the answer to its last refresh and retries: the same successor again.
            assert record.successor is not None  # noqa: S101 - set with every rotation
            issued = await self._mint(session_id, record, granted, targets)
            token = self._sealer.open(record.successor).decode()
            if record.retried != record.current:
                # Written with the lock's release, the one round trip a retry made anyway.
                retried = replace(record, retried=record.current)
                await entry.save_and_release(retried, self._expires_in(retried, now))
            count(SESSIONS, "retried_in_grace")
            return Refreshed(issued, SessionGrant(token, self._expires_in(record, now)))

        # A retired token: someone holds a copy. End the whole session, its newest token included.
        await self._end(session_id, record, "reused")
        log.warning("refresh token reuse detected; session ended", extra={"keycloak_user_id": record.user_id})
        raise InvalidGrant(detail="retired refresh token presented again: session revoked")

    async def _unexpired_record(
        self, session_id: str, record: SessionRecord | None, now: float
    ) -> SessionRecord:
        if record is None:
            raise InvalidGrant(detail="unknown, expired or revoked session")
        if now >= record.last_used + self._policy.idle_timeout:
            await self._end(session_id, record, "idle")
            raise InvalidGrant(detail="session idle for too long")
        if now >= record.created + self._policy.max_lifetime:
            await self._end(session_id, record, "expired")
            raise InvalidGrant(detail="session reached its maximum lifetime")
        return record

    async def _refuse_if_ended(self, session_id: str, record: SessionRecord) -> None:
        """`end_identity` ended every session of the identity started until then: this one too?"""
        if ended_by(await self._store.ended_at(record.open_id, by_account=record.by_account), record.created):
            await self._end(session_id, record, "revoked")
            raise InvalidGrant(detail="every session of this identity was ended")

    @staticmethod
    def _narrowed(original: tuple[str, ...], requested: tuple[str, ...]) -> tuple[str, ...]:
        """RFC 6749 §6: a refresh may ask for the original scope or less, never more."""
        if not requested:
            return original
        if not set(requested) <= set(original):
            raise InvalidScope("The scope exceeds what the session was granted.")
        return requested

    @staticmethod
    def _narrowed_audiences(original: tuple[str, ...], requested: tuple[str, ...]) -> tuple[str, ...]:
        """RFC 8707 §2.2: a refresh keeps the granted audiences, or asks for fewer; never for more."""
        if not requested:
            return original
        if not set(requested) <= set(original):
            raise InvalidTarget("The audience exceeds what the session was granted.")
        return requested

    async def _mint(
        self, session_id: str, record: SessionRecord, scope: tuple[str, ...], audiences: tuple[str, ...]
    ) -> IssuedToken:
        try:
            issued = await self._minter.mint(
                record.open_id,
                scope,
                audiences=audiences,
                client_id=record.client_id,
                by_account=record.by_account,
            )
        except (NotLinked, AccountDisabled) as exc:
            # Keycloak refuses the user now (disabled, deleted, unlinked): the session is over.
            await self._end(session_id, record, "refused_by_keycloak")
            raise InvalidGrant(detail=f"keycloak refused the session's user: {type(exc).__name__}") from exc
        if issued.subject != record.user_id:
            # The grant follows the TikTok identity's link, which now names another account (the
            # session's was deleted and the identity linked elsewhere): a session only ever mints for
            # the account it was issued for. The token minted is dropped, never answered.
            await self._end(session_id, record, "account_changed")
            raise InvalidGrant(detail="the identity is linked to another account than the session's")
        return issued

    async def _recheck_tiktok(self, session_id: str, record: SessionRecord, now: float) -> SessionRecord:
        """Refresh at TikTok when a re-check is due: proves the user has not revoked the app."""
        if record.tiktok is None or not self._policy.provider_recheck:
            return record
        if (
            record.tiktok_checked is not None
            and now - record.tiktok_checked < self._policy.provider_recheck_interval
        ):
            return record
        tokens = json.loads(self._sealer.open(record.tiktok))
        try:
            grant = await self._provider.refresh(tokens["refresh_token"])
        except IdentityRefused as exc:
            await self._end(session_id, record, "revoked_at_tiktok")
            raise InvalidGrant(detail="TikTok refused the session's grant: the user revoked the app") from exc
        except UpstreamUnavailable as exc:
            # TikTok being down says nothing about the user: keep the session, check again next time.
            log.warning("tiktok re-check postponed", extra={"detail": exc.detail})
            return record
        # TikTok rotated its refresh token (the old one no longer works): keep the new pair at once.
        record = replace(record, tiktok=self._seal_tiktok(grant), tiktok_checked=now)
        await self._save(session_id, record, now)
        return record

    # ---------------------------------------------------------------------------- revoking

    async def revoke(self, token: str, client_id: str | None = None) -> bool:
        """RFC 7009: end the session of a refresh token. Unknown tokens are ignored (True if one ended);
        one issued to another client is refused (§2.1) and left alone."""
        parsed = parse_token(token)
        if parsed is None:
            return False
        session_id, secret = parsed
        record = await self._store.read(session_id)
        if record is None:
            return False
        digest = _digest(secret)
        if not any(
            h is not None and hmac.compare_digest(digest, h) for h in (record.current, record.previous)
        ):
            return False
        if record.client_id is not None and client_id != record.client_id:
            raise UnauthorizedClient(detail="revocation of a refresh token issued to another client")
        await self._end(session_id, record, "revoked")
        await self._revoke_at_tiktok(record)
        return True

    async def end_identity(self, open_id: str) -> None:
        """End every session of a TikTok identity started until now (deauthorization, operator)."""
        await self._store.end_identity(open_id, self._clock())

    async def end_account(self, user_id: str) -> None:
        """End every session a Strapi jwt started for the Keycloak account `user_id` until now."""
        await self._store.end_identity(user_id, self._clock(), by_account=True)

    async def deauthorized(self, open_id: str) -> None:
        """The user removed the app at TikTok: every session of the identity ends, and (while the
        Strapi jwt exchange is on) every Strapi jwt session of the account linked to it. The identity's
        sessions are ended first; a Keycloak that cannot say who is linked raises (the webhook then
        answers 503, and TikTok delivers again)."""
        now = self._clock()
        await self._store.end_identity(open_id, now)
        if self._accounts is None:
            return
        for user in await self._accounts.keycloak.linked_users(self._accounts.idp_alias, open_id):
            await self._store.end_identity(user.id, now, by_account=True)
            log.info(
                "strapi jwt sessions of a deauthorized identity ended", extra={"keycloak_user_id": user.id}
            )

    async def _revoke_at_tiktok(self, record: SessionRecord) -> None:
        if record.tiktok is None:
            return
        try:
            tokens = json.loads(self._sealer.open(record.tiktok))
            await self._provider.revoke(tokens["access_token"])
        except Exception as exc:  # noqa: BLE001 - best effort: logging out never fails on TikTok's account
            log.warning("tiktok revocation failed", extra={"error_type": type(exc).__name__})
        if self._grants is not None:
            # TikTok's revocation ends the user's grant of the app: the vault's copy is dead too, and
            # must not be handed out until its refresh fails.
            try:
                await self._grants.forget(record.open_id)
            except Exception as exc:  # noqa: BLE001 - best effort, as the revocation; refreshing would fail
                log.warning("vault grant not forgotten at sign-out", extra={"error_type": type(exc).__name__})

    async def _end(self, session_id: str, record: SessionRecord, reason: str) -> None:
        # A revoked or reused session lost in a failover would be usable again: confirmed by the
        # replicas. The others end again by themselves (idle, expired, refused at the next grant).
        await self._store.delete(session_id, durable=reason in DURABLE_ENDS)
        self._ended(record, reason)

    @staticmethod
    def _ended(record: SessionRecord, reason: str) -> None:
        count(SESSIONS, f"ended_{reason}")
        log.info("session ended", extra={"reason": reason, "keycloak_user_id": record.user_id})

    # ------------------------------------------------------------------------------ storage

    def _seal_tiktok(self, grant: ProviderGrant) -> str:
        payload = {"refresh_token": grant.refresh_token, "access_token": grant.access_token}
        return self._sealer.seal(json.dumps(payload).encode())

    def _expires_in(self, record: SessionRecord, now: float) -> int:
        ends = min(record.last_used + self._policy.idle_timeout, record.created + self._policy.max_lifetime)
        return max(0, int(ends - now))

    async def _save(self, session_id: str, record: SessionRecord, now: float) -> None:
        # Kept as long as it could still be used.
        await self._store.save(session_id, record, self._expires_in(record, now))
