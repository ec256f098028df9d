"""The token exchange use case: verify with TikTok, find or provision in Keycloak, mint through Keycloak.

It knows its collaborators only by the protocols of `ports.py`, and imports nothing but the bridge's
dependency-free modules (model, errors, keys, ports) and its metrics, so the same logic serves the
RFC 8693 endpoint and the Strapi-compatible one, and loads without httpx2, redis or Starlette (a test
holds it to that).

Per exchange, on the warm path (token seen within the profile TTL, user seen within the user TTL):
no TikTok call, no Keycloak admin call, one Keycloak token call. When the exchange starts a session and
this process signed the identity in lately, the token call comes first and the identity's cached state
(tombstone, user entry) is read in the same Redis round trip that writes the session (`_sign_in_known`):
one round trip instead of two.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bridge.domain import keys
from bridge.domain.errors import (
    AccessTokenRejected,
    AccountDisabled,
    EmailTaken,
    IdentityMismatch,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    MissingScope,
    NotLinked,
    RegistrationClosed,
    ServerError,
    SubjectTokenRejected,
    TemporarilyUnavailable,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnavailable,
    UserConflict,
)
from bridge.domain.model import (
    ATTR_DISPLAY_NAME,
    ATTR_UNION_ID,
    ATTR_USERNAME,
    ATTR_VERIFIED,
    SCOPE_BASIC,
    Caller,
    Exchanged,
    IdentityCheck,
    IdentityState,
    KeycloakUser,
    NewSession,
    Policy,
    TikTokProfile,
    ended_by,
    fit_for_keycloak,
    profile_attributes,
)
from bridge.observability.metrics import CACHE_LOOKUPS, LOCK_WAIT_SECONDS, USERS_PROVISIONED, count
from bridge.protocol.rfc8693 import CodeExchange

if TYPE_CHECKING:
    from bridge.domain.model import CodeGrant, IssuedToken, SessionGrant
    from bridge.protocol.rfc8693 import ExchangeRequest
    from bridge.services.ports import (
        AssertionMinter,
        GuardedCache,
        IdentityLimiter,
        KeycloakGateway,
        RefusalBudget,
        RefusalReservation,
        SessionStarter,
        TikTokGateway,
        UserInfoQuota,
    )
    from bridge.storage.recent_profiles import RecentProfiles

log = logging.getLogger(__name__)

MAX_USERNAME_ATTEMPTS = 3
# How long an address that signed in successfully keeps its priority on TikTok's quota.
PROVEN_ADDRESS_TTL = 86400
# How long one replica may hold the provisioning lock, and how long another waits for it.
PROVISIONING_LOCK_TTL = 30
PROVISIONING_LOCK_WAIT = 15
# A pending deauthorization: the first retry comes this many seconds after a failure, then twice as
# late each time (up to `Policy.deauthorization_retry_max_delay`); one attempt holds its lock this long
# at most (two Keycloak calls within BRIDGE_HTTP_TIMEOUT, retries included).
DEAUTHORIZATION_FIRST_DELAY = 5.0
DEAUTHORIZATION_LOCK_TTL = 60
DEAUTHORIZATION_LOCK_WAIT = 0.1
# Identities this process signed in lately (`_sign_in_known`): bounded, so memory stays flat; only
# identities Keycloak issued a token for enter it, so garbage cannot fill it.
KNOWN_IDENTITIES = 100_000


def deterministic_username(prefix: str, open_id: str, attempt: int = 0) -> str:
    """Same open_id, same username, on every replica: a racing duplicate create gets Keycloak's 409.

    100 bits of SHA-256 in lower-case base32 fits Keycloak's username rules (stored lower-case; no
    prohibited characters) whatever characters TikTok puts in an open_id.
    """
    digest = base64.b32encode(hashlib.sha256(open_id.encode()).digest()).decode().lower()[:20]
    return f"{prefix}{digest}" if attempt == 0 else f"{prefix}{digest}-{attempt + 1}"


def _fingerprint(attributes: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(attributes, sort_keys=True).encode()).hexdigest()[:32]


def _user_entry(user_id: str, fingerprint: str) -> bytes:
    """The cached entry of an identity's Keycloak user: its id, and the fingerprint of the attributes
    last synced to it."""
    return json.dumps({"id": user_id, "fp": fingerprint}).encode()


@functools.lru_cache(maxsize=4096)
def _profile_fingerprint(profile: TikTokProfile) -> str:
    """The fingerprint of the attributes a profile syncs to Keycloak, which a returning user's cached
    entry is compared with: worked out once per distinct profile (equal fields; when it was verified
    does not count), not on every exchange. Bounded; a refused profile raises and is not kept."""
    return _fingerprint(profile_attributes(profile))


@dataclass(frozen=True, slots=True)
class SessionOrder:
    """A session asked for with an exchange: who starts it, and the caller's part of it."""

    starter: SessionStarter
    jkt: str | None = None
    client_id: str | None = None


class ExchangeService:
    def __init__(
        self,
        *,
        tiktok: TikTokGateway,
        keycloak: KeycloakGateway,
        cache: GuardedCache,
        minter: AssertionMinter,
        policy: Policy,
        limiter: IdentityLimiter | None = None,
        quota: UserInfoQuota | None = None,
        recent: RecentProfiles | None = None,
        refusals: RefusalBudget | None = None,
    ) -> None:
        self._limiter = limiter
        # Per client address, the bare tokens TikTok refused in a row: past its budget an address no
        # longer spends the quota (`ratelimit.TikTokRefusals`).
        self._refusals = refusals
        # This process's copies of profiles in front of the shared cache (`recent_profiles.py`).
        self._recent = recent
        self._quota = quota
        self._tiktok = tiktok
        self._keycloak = keycloak
        self._cache = cache
        self._minter = minter
        self._policy = policy
        self._groups_checked = False
        # open_id -> until when (wall clock) its cached user entry, written or confirmed by this
        # process, is expected to last: the identities whose token is minted before the cache is read.
        self._known: OrderedDict[str, float] = OrderedDict()

    @property
    def policy(self) -> Policy:
        return self._policy

    async def exchange(
        self, request: ExchangeRequest, caller: Caller | None = None, *, session: SessionOrder | None = None
    ) -> Exchanged:
        # Before TikTok is asked: a request for an audience this app may not have costs nothing.
        self.check_targets(request.scope, request.audiences)
        grant: CodeGrant | None = None
        if isinstance(request, CodeExchange):
            profile, grant = await self.verify_code(request.code, request.code_verifier, request.redirect_uri)
        else:
            profile = await self.verify_access_token(request.access_token, caller)
        return await self.sign_in(
            profile, request.scope, tiktok_grant=grant, audiences=request.audiences, session=session
        )

    def check_targets(self, scope: tuple[str, ...], audiences: tuple[str, ...]) -> None:
        """Only configured audiences, and only through `audience`/`resource`: an audience's client scope
        named in `scope` would bypass the per-app list, so it is refused there."""
        if unknown := set(audiences) - set(self._policy.audience_scopes):
            raise InvalidTarget(detail=f"{len(unknown)} audience(s) not configured for this app")
        if set(scope) & self._policy.reserved_scopes:
            raise InvalidScope("Ask for an audience with the audience parameter, not with scope.")

    async def sign_in(
        self,
        profile: TikTokProfile,
        scope: tuple[str, ...],
        *,
        tiktok_grant: CodeGrant | None = None,
        audiences: tuple[str, ...] = (),
        session: SessionOrder | None = None,
    ) -> Exchanged:
        """Keycloak's tokens for a verified profile, and the session asked for (if it can be kept)."""
        if self._limiter is not None:
            # Per identity, before any Keycloak work: one TikTok account cannot hammer the realm.
            await self._limiter.check_identity(profile.open_id)
        if session is not None and not self._cache.degraded and self._is_known(profile.open_id):
            known = await self._sign_in_known(profile, scope, audiences, tiktok_grant, session)
            if known is not None:
                return known
        exchanged = await self._sign_in(profile, scope, tiktok_grant, audiences)
        if session is None:
            return exchanged
        started = await self._start_session(session, self._new_session(exchanged, scope, audiences, session))
        return replace(exchanged, session=started)

    async def _sign_in(
        self,
        profile: TikTokProfile,
        scope: tuple[str, ...],
        tiktok_grant: CodeGrant | None,
        audiences: tuple[str, ...],
    ) -> Exchanged:
        """Find or provision the user (the cache first, then Keycloak), then mint."""
        user_id, created = await self.ensure_user(profile)
        try:
            issued = await self.mint(profile.open_id, scope, audiences)
        except NotLinked:
            # Our cached id outlived the link (an admin removed it): forget it and provision afresh once.
            await self._cache.delete(keys.linked_user(self._policy.idp_alias, profile.open_id))
            user_id, created = await self.ensure_user(profile)
            issued = await self.mint(profile.open_id, scope, audiences)
        if issued.subject is not None and issued.subject != user_id:
            # An admin moved the link to another account: Keycloak minted for that one, so the answer
            # and the log name it, and the stale cached id is forgotten.
            log.info("linked user changed in keycloak", extra={"keycloak_user_id": issued.subject})
            await self._cache.delete(keys.linked_user(self._policy.idp_alias, profile.open_id))
            user_id = issued.subject
        elif issued.subject is not None:
            # The cached entry names the user Keycloak minted for: next time, mint first.
            self._know(profile.open_id)
        return Exchanged(
            issued=issued, user_id=user_id, profile=profile, created=created, tiktok_grant=tiktok_grant
        )

    async def _sign_in_known(
        self,
        profile: TikTokProfile,
        scope: tuple[str, ...],
        audiences: tuple[str, ...],
        tiktok_grant: CodeGrant | None,
        session: SessionOrder,
    ) -> Exchanged | None:
        """An identity this process signed in lately: mint first, then check the identity's cached state
        and start the session in one round trip. None when the state is not what the mint assumed (the
        user entry expired, the profile changed, the link moved) or cannot be read: the caller then
        takes the path that reads the cache first, and this token is dropped.

        Every rule of that path holds: Keycloak refuses a disabled, deleted or unlinked user at the
        grant; a tombstone refuses the profile (the token minted is thrown away); the cached entry must
        name the user the token is for, with the profile's attributes synced.
        """
        try:
            issued = await self.mint(profile.open_id, scope, audiences)
        except (NotLinked, AccountDisabled):
            # Refused or unlinked since: the other path decides, in its order (a tombstone first), so
            # the answer is the same whichever path a replica took.
            self._guessed_wrong(profile.open_id)
            return None
        if issued.subject is None:
            return None
        alias = self._policy.idp_alias
        check = IdentityCheck(
            user_key=keys.linked_user(alias, profile.open_id),
            revoked_key=keys.deauthorized(alias, profile.open_id),
            entry=_user_entry(issued.subject, _profile_fingerprint(profile)),
            verified_at=profile.verified_at,
        )
        exchanged = Exchanged(
            issued=issued, user_id=issued.subject, profile=profile, created=False, tiktok_grant=tiktok_grant
        )
        new = self._new_session(exchanged, scope, audiences, session)
        try:
            started: SessionGrant | IdentityState | None = await session.starter.start_if_current(new, check)
        except UpstreamUnavailable as exc:
            # Redis went away meanwhile: the check reads the cache (memory now), the answer has no
            # session, as on the other path.
            log.warning("session not started: the session store is unavailable", extra={"detail": exc.detail})
            revoked_at, entry = await self._cache.get_many(check.revoked_key, check.user_key)
            started = None if (state := check.judge(revoked_at, entry)) is IdentityState.CURRENT else state
        if started is IdentityState.REVOKED:
            # Forgotten too: a client retrying the revoked token is refused from the cache, no grant.
            self._guessed_wrong(profile.open_id)
            raise AccessTokenRejected(detail="profile verified before the user deauthorized the app")
        if started is IdentityState.STALE:
            self._guessed_wrong(profile.open_id)
            return None
        assert not isinstance(started, IdentityState)  # noqa: S101 - CURRENT comes as a grant (or None)
        count(CACHE_LOOKUPS, "user", "hit")
        return replace(exchanged, session=started)

    @staticmethod
    def _new_session(
        exchanged: Exchanged, scope: tuple[str, ...], audiences: tuple[str, ...], session: SessionOrder
    ) -> NewSession:
        return NewSession(
            user_id=exchanged.user_id,
            open_id=exchanged.profile.open_id,
            scope=scope,
            tiktok_grant=exchanged.tiktok_grant,
            jkt=session.jkt,
            client_id=session.client_id,
            audiences=audiences,
        )

    @staticmethod
    async def _start_session(session: SessionOrder, new: NewSession) -> SessionGrant | None:
        """A session for a successful sign-in; None while the session store is down.

        A Redis outage must not stop sign-ins (the exchange itself is served from memory then): the
        answer simply has no refresh token, and the app signs in with TikTok again when the access
        token expires.
        """
        try:
            return await session.starter.start(new)
        except UpstreamUnavailable as exc:
            log.warning("session not started: the session store is unavailable", extra={"detail": exc.detail})
            return None

    def _is_known(self, open_id: str) -> bool:
        until = self._known.get(open_id)
        if until is None:
            return False
        if until <= time.time():
            del self._known[open_id]
            return False
        return True

    def _know(self, open_id: str) -> None:
        # Until the entry this sign-in relied on expires at the latest (written now, or earlier by
        # another replica: then it may expire sooner, and the check finds it absent).
        self._known[open_id] = time.time() + self._policy.user_ttl
        self._known.move_to_end(open_id)
        while len(self._known) > KNOWN_IDENTITIES:
            self._known.popitem(last=False)

    def _guessed_wrong(self, open_id: str) -> None:
        # Counted: each of these cost a Keycloak grant whose answer (if any) is dropped.
        count(CACHE_LOOKUPS, "user", "stale")
        self._known.pop(open_id, None)

    async def deauthorize(self, open_id: str) -> str:
        """Apply the deauthorization policy to the user linked to `open_id`; returns what was done, or
        "pending" when Keycloak could not take it now (it is then retried, see `retry_deauthorizations`).

        In every case a tombstone with the time of revocation is kept as long as a profile may stay
        cached. TikTok revoked the user's tokens before sending the event, but profiles cached under them
        would otherwise keep signing in for their TTL; the tombstone refuses any profile verified before
        it. It has a key of its own, which sign-ins never write, so neither a later sign-in (the user
        authorized the app again) nor one already in flight can erase it; it is read with the user id,
        in the same round trip, so the warm path pays nothing for it.

        TikTok already has its 200 when this runs, and will not deliver again: so the event is written
        to the shared cache before Keycloak is asked, and stays there until Keycloak has taken it.
        """
        alias = self._policy.idp_alias
        now = time.time()
        await self._cache.set(
            keys.deauthorized(alias, open_id), json.dumps(now).encode(), self._policy.profile_ttl
        )
        if self._policy.deauthorization == "record":
            return "recorded"
        record = {"received": now, "attempts": 0}
        await self._cache.set(
            keys.pending_deauthorization(alias, open_id),
            json.dumps(record).encode(),
            self._policy.deauthorization_retry_horizon,
        )
        await self._cache.schedule(keys.DEAUTHORIZATION_QUEUE, open_id, now)
        return await self._attempt_deauthorization(open_id) or "pending"

    async def retry_deauthorizations(self, limit: int = 20) -> int:
        """One pass over the deauthorizations due for another attempt (any replica may run it; the
        identity's lock makes one of them apply each). Returns how many were attempted."""
        due = await self._cache.due(keys.DEAUTHORIZATION_QUEUE, time.time(), limit)
        for open_id in due:
            await self._attempt_deauthorization(open_id)
        return len(due)

    async def _attempt_deauthorization(self, open_id: str) -> str | None:
        """Try the pending deauthorization of `open_id` once: its outcome, or None if it stays pending
        (Keycloak unavailable, or another replica holds it right now)."""
        alias = self._policy.idp_alias
        record_key = keys.pending_deauthorization(alias, open_id)
        # Hardly any waiting: a replica that finds the lock taken leaves the identity to its holder.
        async with self._cache.lock(
            keys.deauthorization_lock(alias, open_id),
            ttl=DEAUTHORIZATION_LOCK_TTL,
            wait=DEAUTHORIZATION_LOCK_WAIT,
        ) as mine:
            if not mine:
                return None
            stored = await self._cache.get(record_key)
            if stored is None:
                # Applied by another replica since it was listed, or expired past the horizon.
                await self._cache.unschedule(keys.DEAUTHORIZATION_QUEUE, open_id)
                return None
            record = json.loads(stored)
            try:
                outcome = await self._apply_deauthorization(open_id)
            except (UpstreamError, TemporarilyUnavailable) as exc:
                await self._postpone_deauthorization(open_id, record, exc)
                return None
            await self._cache.delete(record_key)
            await self._cache.unschedule(keys.DEAUTHORIZATION_QUEUE, open_id)
            if record["attempts"]:
                log.info(
                    "deauthorization applied after retries",
                    extra={"outcome": outcome, "attempts": record["attempts"] + 1},
                )
            return outcome

    async def _postpone_deauthorization(self, open_id: str, record: dict[str, Any], exc: Exception) -> None:
        alias = self._policy.idp_alias
        now = time.time()
        attempts = int(record["attempts"]) + 1
        age = now - float(record["received"])
        left = self._policy.deauthorization_retry_horizon - age
        detail = getattr(exc, "detail", "")
        if left <= 0:
            log.error(
                "deauthorization given up: Keycloak did not take it in time",
                extra={"attempts": attempts, "error_type": type(exc).__name__, "detail": detail},
            )
            await self._cache.delete(keys.pending_deauthorization(alias, open_id))
            await self._cache.unschedule(keys.DEAUTHORIZATION_QUEUE, open_id)
            return
        delay = min(
            self._policy.deauthorization_retry_max_delay, DEAUTHORIZATION_FIRST_DELAY * 2 ** (attempts - 1)
        )
        log.warning(
            "deauthorization not applied yet, will retry",
            extra={
                "attempts": attempts,
                "retry_in": delay,
                "error_type": type(exc).__name__,
                "detail": detail,
            },
        )
        record["attempts"] = attempts
        await self._cache.set(
            keys.pending_deauthorization(alias, open_id), json.dumps(record).encode(), max(1.0, left)
        )
        await self._cache.schedule(keys.DEAUTHORIZATION_QUEUE, open_id, now + delay)

    async def _apply_deauthorization(self, open_id: str) -> str:
        alias = self._policy.idp_alias
        user = await self._keycloak.find_linked_user(alias, open_id)
        if user is None:
            return "no linked user"
        if self._policy.deauthorization == "disable":
            await self._keycloak.update_user(user.id, {**user.representation, "enabled": False})
            outcome = "disabled"
        else:
            await self._keycloak.remove_link(user.id, alias)
            outcome = "unlinked"
        # The cached id now names a disabled or unlinked account: the next sign-in asks Keycloak.
        await self._cache.delete(keys.linked_user(alias, open_id))
        return outcome

    async def account(self, user_id: str) -> KeycloakUser:
        """The Keycloak user behind an exchange (for answers that describe the account)."""
        user = await self._keycloak.get_user(user_id)
        if user is None:
            raise UpstreamProtocolError("keycloak", "user vanished right after sign-in")
        return user

    # ------------------------------------------------------------------------- TikTok side

    async def verify_code(
        self, code: str, code_verifier: str, redirect_uri: str
    ) -> tuple[TikTokProfile, CodeGrant]:
        """Redeem a Login Kit code with our own secret, then read the profile with the fresh token.

        A code redeemed with our client secret proves the grant was made to our app, which a bare access
        token cannot. TikTok's tokens are returned for a session to keep (sealed), or to be dropped.
        """
        if redirect_uri not in self._policy.redirect_uris:
            raise InvalidRequest("The redirect_uri is not allowed.")
        grant: CodeGrant = await self._tiktok.redeem_code(
            code, code_verifier=code_verifier, redirect_uri=redirect_uri
        )
        if SCOPE_BASIC not in grant.scopes:
            raise MissingScope("The user did not grant the user.info.basic scope.")
        # A code TikTok just redeemed with our secret and the PKCE verifier is as real as it gets.
        await self._spend_quota(proven=True)
        profile = await self._tiktok.fetch_profile(grant.access_token, sorted(grant.scopes))
        if profile.open_id != grant.open_id:
            raise IdentityMismatch(detail="user info open_id differs from the token answer's")
        return profile, grant

    async def verify_access_token(self, access_token: str, caller: Caller | None = None) -> TikTokProfile:
        """The profile behind a TikTok access token: cheap checks first (shape, the profile cache, the
        negative cache), TikTok last, spending its quota by the caller's priority."""
        prefix = self._policy.access_token_prefix
        if prefix and not access_token.startswith(prefix):
            raise AccessTokenRejected(detail="not shaped like a TikTok access token; TikTok not asked")
        profile_key, rejected_key = keys.token_entries(access_token)
        if self._recent is not None and (recent := self._recent.get(profile_key)) is not None:
            count(CACHE_LOOKUPS, "profile", "memory_hit")
            return recent
        # Both in one round trip (one hash tag): a new token costs one read before TikTok, not two.
        cached, rejected = await self._cache.get_many(profile_key, rejected_key)
        if cached:
            count(CACHE_LOOKUPS, "profile", "hit")
            profile = TikTokProfile.from_json(cached)
            self._remember_profile(profile_key, profile)
            return profile
        count(CACHE_LOOKUPS, "profile", "miss")
        if rejected:
            # A recently refused token is refused again without spending TikTok's quota.
            count(CACHE_LOOKUPS, "rejected", "hit")
            raise AccessTokenRejected(detail="refused by TikTok recently (negative cache)")
        caller = caller or Caller()
        # Before the quota: an address whose tokens TikTok keeps refusing no longer spends it.
        attempt = await self._reserve_attempt(caller)
        try:
            await self._spend_quota(proven=caller.trusted or await self._proven(caller.address))
            profile = await self._fetch_with_fallback(access_token)
        except SubjectTokenRejected:
            # Counted against the address (the attempt stays reserved), and cached for the token.
            await self._cache.set(rejected_key, b"1", self._policy.negative_ttl)
            raise
        except Exception:
            if attempt is not None:
                await attempt.release()
            raise
        if attempt is not None:
            await attempt.vouched()
        await self._cache.set(profile_key, profile.to_json(), self._policy.profile_ttl)
        self._remember_profile(profile_key, profile)
        if caller.address is not None:
            # This address brought a token TikTok vouched for: its next new tokens get the kept share of
            # the quota. Written on this cold path only, so the warm path pays nothing.
            await self._cache.set(keys.proven_client(caller.address), b"1", PROVEN_ADDRESS_TTL)
        return profile

    def _remember_profile(self, key: str, profile: TikTokProfile) -> None:
        if self._recent is not None:
            self._recent.put(key, profile)

    async def verify_access_token_fresh(self, access_token: str) -> TikTokProfile:
        """Ask TikTok now, whatever is cached: linking acts on proof that the token is alive this moment
        (a cached profile may belong to a token revoked since). The caller has shown a valid realm
        token, so it spends the quota share of proven callers."""
        prefix = self._policy.access_token_prefix
        if prefix and not access_token.startswith(prefix):
            raise AccessTokenRejected(detail="not shaped like a TikTok access token; TikTok not asked")
        await self._spend_quota(proven=True)
        return await self._fetch_with_fallback(access_token)

    async def _reserve_attempt(self, caller: Caller) -> RefusalReservation | None:
        """The caller's attempt, counted as refused until TikTok answers; None when nothing counts it: a
        confidential client (one server's address for many users, and a secret proving who it is) or
        an unknown address."""
        if self._refusals is None or caller.trusted or caller.address is None:
            return None
        return await self._refusals.reserve(caller.address)

    async def _proven(self, address: str | None) -> bool:
        return address is not None and await self._cache.get(keys.proven_client(address)) is not None

    async def _spend_quota(self, *, proven: bool) -> None:
        if self._quota is not None:
            await self._quota.spend(proven=proven)

    async def _fetch_with_fallback(self, access_token: str) -> TikTokProfile:
        scopes = self._policy.access_token_scopes
        try:
            return await self._tiktok.fetch_profile(access_token, scopes)
        except MissingScope:
            if tuple(scopes) == (SCOPE_BASIC,):
                raise
            # This token was granted fewer scopes than the app usually asks for: basic fields suffice.
            return await self._tiktok.fetch_profile(access_token, (SCOPE_BASIC,))

    # ----------------------------------------------------------------------- Keycloak side

    async def ensure_user(self, profile: TikTokProfile) -> tuple[str, bool]:
        """The id of the Keycloak user linked to this TikTok identity, created if policy allows."""
        fingerprint = _profile_fingerprint(profile)
        alias = self._policy.idp_alias
        user_key, revoked_key = (
            keys.linked_user(alias, profile.open_id),
            keys.deauthorized(alias, profile.open_id),
        )
        cached, revoked_at = await self._cache.get_many(user_key, revoked_key)
        if ended_by(revoked_at, profile.verified_at):
            raise AccessTokenRejected(detail="profile verified before the user deauthorized the app")
        entry = json.loads(cached) if cached else {}
        if "id" in entry:
            count(CACHE_LOOKUPS, "user", "hit")
            if entry.get("fp") != fingerprint:
                await self._sync_profile(entry["id"], profile_attributes(profile))
                await self._remember(user_key, entry["id"], fingerprint)
            return str(entry["id"]), False

        # Not cached: ask Keycloak.
        count(CACHE_LOOKUPS, "user", "miss")
        attributes = profile_attributes(profile)
        user = await self._keycloak.find_linked_user(self._policy.idp_alias, profile.open_id)
        created = False
        if user is None:
            waiting_since = time.perf_counter()
            async with self._cache.locked_entry(
                user_key,
                lock_key=keys.provisioning_lock(alias, profile.open_id),
                ttl=PROVISIONING_LOCK_TTL,
                wait=PROVISIONING_LOCK_WAIT,
            ) as entry:
                LOCK_WAIT_SECONDS.observe(time.perf_counter() - waiting_since)
                if not entry.held:
                    raise TemporarilyUnavailable(detail="provisioning lock not acquired in time")
                # Whoever held the lock before us created the user and cached its id as it let go; the
                # entry was read as we took the lock (same round trip), so a hundred waiters queued
                # behind this lock cost no Keycloak search. One whose write was lost is still found:
                # Keycloak's 409 on the deterministic username leads `_create` to it.
                if entry.value is not None and "id" in (won := json.loads(entry.value)):
                    return str(won["id"]), False
                user_id, created = await self._create(profile, attributes)
                # Cached and unlocked together: a waiter that takes the lock finds the id.
                await entry.save_and_release(_user_entry(user_id, fingerprint), self._policy.user_ttl)
                return user_id, created
        if not user.enabled:
            raise AccountDisabled(detail=f"keycloak user {user.id} is disabled")
        if {k: user.attributes.get(k) for k in attributes} != attributes:
            await self._update_attributes(user, attributes)
        await self._remember(user_key, user.id, fingerprint)
        return user.id, created

    async def _remember(self, user_key: str, user_id: str, fingerprint: str) -> None:
        await self._cache.set(user_key, _user_entry(user_id, fingerprint), self._policy.user_ttl)

    async def _create(self, profile: TikTokProfile, attributes: dict[str, list[str]]) -> tuple[str, bool]:
        """The new user's id and True; or, when Keycloak's 409 shows another replica linked one first,
        that user's id and False (the sign-in found a user, it did not create one)."""
        if not self._policy.registration_open:
            raise RegistrationClosed(detail="new TikTok user refused: registration closed")
        representation: dict[str, Any] = {
            "enabled": True,
            "attributes": attributes,
            "federatedIdentities": [
                {
                    "identityProvider": self._policy.idp_alias,
                    "userId": profile.open_id,
                    "userName": fit_for_keycloak(profile.username or profile.open_id),
                }
            ],
        }
        if self._policy.default_groups:
            await self._check_groups()
            representation["groups"] = list(self._policy.default_groups)
        email = self._pseudo_email(profile)
        if email is not None:
            # A pseudo-address no one has proven to own: never marked verified.
            representation |= {"email": email, "emailVerified": False}
        for attempt in range(MAX_USERNAME_ATTEMPTS):
            representation["username"] = deterministic_username(
                self._policy.username_prefix, profile.open_id, attempt
            )
            try:
                user_id = await self._keycloak.create_user(representation)
            except UserConflict as conflict:
                if conflict.email_taken:
                    raise EmailTaken(detail="pseudo-email collides with another account") from conflict
                # Lost a race (then the user is linked now) or the name belongs to someone unlinked.
                linked = await self._keycloak.find_linked_user(self._policy.idp_alias, profile.open_id)
                if linked is not None:
                    if not linked.enabled:
                        raise AccountDisabled(detail=f"keycloak user {linked.id} is disabled") from conflict
                    return linked.id, False
                continue
            await self._assign_roles(user_id)
            USERS_PROVISIONED.inc()
            log.info("provisioned keycloak user", extra={"keycloak_user_id": user_id})
            return user_id, True
        raise UpstreamProtocolError("keycloak", "every candidate username is taken by an unlinked user")

    async def _check_groups(self) -> None:
        if self._groups_checked:
            return
        missing = await self._keycloak.missing_groups(self._policy.default_groups)
        if missing:
            raise ServerError(detail=f"BRIDGE_DEFAULT_GROUPS names groups that do not exist: {missing}")
        self._groups_checked = True

    async def _assign_roles(self, user_id: str) -> None:
        if not self._policy.default_realm_roles:
            return
        try:
            await self._keycloak.assign_realm_roles(user_id, self._policy.default_realm_roles)
        except UpstreamError:
            # No half-provisioned users: without its roles the account is removed again, and the next
            # sign-in provisions it afresh.
            await self._keycloak.delete_user(user_id)
            raise

    def _pseudo_email(self, profile: TikTokProfile) -> str | None:
        template = self._policy.email_template
        if template is None:
            return None
        if "{union_id}" in template and ATTR_UNION_ID not in profile_attributes(profile):
            return None  # TikTok sometimes omits union_id (or it is unstorable): no address, not a wrong one
        return template.format(open_id=profile.open_id, union_id=profile.union_id or "").lower()

    async def _sync_profile(self, user_id: str, attributes: dict[str, list[str]]) -> None:
        user = await self._keycloak.get_user(user_id)
        if user is None:
            return  # deleted; the grant will say so and the caller re-provisions
        await self._update_attributes(user, attributes)

    async def _update_attributes(self, user: KeycloakUser, attributes: dict[str, list[str]]) -> None:
        # PUT wants the whole representation (partial bodies fail user-profile validation).
        representation = dict(user.representation)
        representation["attributes"] = {**user.attributes, **attributes}
        for stale in {ATTR_UNION_ID, ATTR_DISPLAY_NAME, ATTR_USERNAME, ATTR_VERIFIED} - attributes.keys():
            representation["attributes"].pop(stale, None)
        await self._keycloak.update_user(user.id, representation)

    async def mint(
        self, open_id: str, scope: tuple[str, ...], audiences: tuple[str, ...] = ()
    ) -> IssuedToken:
        """A Keycloak token for the user linked to `open_id`, by JWT Authorization Grant (what a session
        refresh calls: Keycloak checks the link and the user's state every time).

        Each audience is asked for by its optional client scope, whose audience mapper adds it to `aud`:
        the grant has no audience parameter of its own (keycloak-config/README.md, "Audiences")."""
        if unknown := set(audiences) - set(self._policy.audience_scopes):
            raise InvalidTarget(detail=f"{len(unknown)} audience(s) not configured for this app")
        requested = (*scope, *(self._policy.audience_scopes[a] for a in audiences))
        audience = await self._keycloak.issuer()
        assertion = self._minter.mint(open_id, audience)
        return await self._keycloak.issue_token(assertion, tuple(dict.fromkeys(requested)))
