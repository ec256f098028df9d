"""The soak's load: the requests real apps make, in the proportions of `MIX`, each checked as it is
answered (whose token is it?) and recorded as a `Record`.

The generator keeps what an app population would hold: TikTok users who signed in (their TikTok access
token, for warm exchanges), bridge sessions (their current refresh token), password users of an existing
app who link and unlink TikTok, and every session that was ended (revoked, deauthorized, unlinked), to
check at the end that none of them can be refreshed.

Every request to the bridge opens a new connection through the proxy: the load balancer then chooses a
replica per request, and a replica's drain or death never strands a kept-alive connection of the
generator's (which would be the generator's failure, not the bridge's).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import httpx2

from bench.soak.verdict import Record

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
CODE_TYPE = "urn:tiktok-keycloak-bridge:params:oauth:token-type:tiktok-authorization-code"
STRAPI_PATH = "/api/tiktok-auth-mobile/connect"
LINKS_PATH = "/account/links/tiktok"
OK = 200
# Shares of the requests, in percent: most traffic is returning users and refreshes.
MIX = {
    "warm": 38,
    "refresh": 20,
    "first": 8,
    "code": 7,
    "strapi": 8,
    "link": 4,
    "unlink": 4,
    "revoke": 6,
    "deauth": 5,
}
MAX_USERS = 3000
MAX_SESSIONS = 3000
REQUEST_TIMEOUT = 30.0
DEAUTHORIZE_TIMEOUT = 120.0  # the emulator redelivers the webhook while the bridge does not take it


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified: the soak asks whose token it is, not whether it is genuine
    (the bridge's own tests verify Keycloak's signatures)."""
    try:
        payload = token.split(".")[1]
        decoded: Any = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


@dataclass
class User:
    open_id: str
    token: str
    expected_sub: str | None = None  # a password user's id, once TikTok is linked to it
    busy: bool = False


@dataclass
class Session:
    open_id: str
    refresh_token: str
    expected_sub: str | None = None
    busy: bool = False


@dataclass
class PasswordUser:
    user_id: str
    username: str
    password: str
    linked: User | None = None
    busy: bool = False
    done: bool = False  # linked and unlinked once: not used again


@dataclass
class Identities:
    """Who each answer was for: the first token for an open_id fixes its subject, and no subject may
    ever answer for two open_ids."""

    subject_of: dict[str, str] = field(default_factory=dict)
    open_id_of: dict[str, str] = field(default_factory=dict)

    def right_user(self, open_id: str, claims: dict[str, Any], expected_sub: str | None) -> bool:
        sub = claims.get("sub")
        if not isinstance(sub, str):
            return False
        if expected_sub is not None:
            return sub == expected_sub
        claimed = claims.get("tiktok_open_id")
        if claimed is not None and claimed != open_id:
            return False
        return (
            self.subject_of.setdefault(open_id, sub) == sub
            and self.open_id_of.setdefault(sub, open_id) == open_id
        )


@dataclass
class Driver:
    bridge_url: str
    emulator_url: str
    keycloak_url: str
    realm: str
    account_app: str
    redirect_uri: str
    started: float = field(default_factory=time.monotonic)
    records: list[Record] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    ended: list[tuple[str, Session]] = field(default_factory=list)
    password_users: list[PasswordUser] = field(default_factory=list)
    identities: Identities = field(default_factory=Identities)
    shed: int = 0
    generator_errors: list[str] = field(default_factory=list)
    recording: bool = True
    rng: random.Random = field(default_factory=random.Random)
    _bridge: httpx2.AsyncClient | None = None
    _emulator: httpx2.AsyncClient | None = None
    _keycloak: httpx2.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        # No kept-alive connections to the bridge: a new one per request, so the proxy picks a replica
        # for each (what an app population across the internet looks like to a load balancer).
        self._bridge = httpx2.AsyncClient(
            base_url=self.bridge_url,
            timeout=REQUEST_TIMEOUT,
            limits=httpx2.Limits(max_keepalive_connections=0, max_connections=1000),
        )
        self._emulator = httpx2.AsyncClient(base_url=self.emulator_url, timeout=DEAUTHORIZE_TIMEOUT)
        self._keycloak = httpx2.AsyncClient(base_url=self.keycloak_url, timeout=REQUEST_TIMEOUT)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for client in (self._bridge, self._emulator, self._keycloak):
            if client is not None:
                await client.aclose()

    @property
    def bridge(self) -> httpx2.AsyncClient:
        assert self._bridge is not None
        return self._bridge

    @property
    def emulator(self) -> httpx2.AsyncClient:
        assert self._emulator is not None
        return self._emulator

    def now(self) -> float:
        return time.monotonic() - self.started

    # ------------------------------------------------------------------------------ the mix

    def pick_kind(self) -> str:
        return self.rng.choices(list(MIX), weights=list(MIX.values()))[0]

    async def one(self, kind: str | None = None) -> None:
        operations: dict[str, Callable[[], Awaitable[None]]] = {
            "warm": self.warm,
            "refresh": self.refresh,
            "first": self.first,
            "code": self.code,
            "strapi": self.strapi,
            "link": self.link,
            "unlink": self.unlink,
            "revoke": self.revoke,
            "deauth": self.deauthorize,
        }
        try:
            await operations[kind or self.pick_kind()]()
        except httpx2.HTTPError:
            pass  # a control call (emulator, Keycloak's password grant) failed: not the bridge's request
        except Exception as exc:  # noqa: BLE001 - a bug of the generator's is reported, not fatal to the run
            self.generator_errors.append(f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------ recording

    async def send(
        self,
        kind: str,
        method: str,
        path: str,
        **request: Any,  # noqa: ANN401 - httpx2's arguments
    ) -> httpx2.Response | None:
        """One request to the bridge, recorded; None when no answer came."""
        began = time.monotonic()
        try:
            response = await self.bridge.request(method, path, **request)
        except httpx2.HTTPError as exc:
            self.record(kind, began, None, error=type(exc).__name__)
            return None
        error = ""
        if response.status_code != OK:
            try:
                body = response.json()
                found = body.get("error", "") if isinstance(body, dict) else ""
                # OAuth answers name the error; the Strapi endpoint's is an object with a name.
                error = str(found.get("name", "")) if isinstance(found, dict) else str(found)
            except ValueError:
                error = "not-json"
        self.record(
            kind, began, response.status_code, error=error, retry_after="retry-after" in response.headers
        )
        return response

    def record(
        self,
        kind: str,
        began: float,
        status: int | None,
        *,
        error: str = "",
        retry_after: bool = False,
        wrong_user: bool = False,
    ) -> None:
        if not self.recording:
            return
        self.records.append(
            Record(
                start=began - self.started,
                seconds=time.monotonic() - began,
                kind=kind,
                status=status,
                retry_after=retry_after,
                error=error,
                wrong_user=wrong_user,
            )
        )

    def check_answer(self, open_id: str, token: str, expected_sub: str | None) -> None:
        """Flag the request just recorded if its token is not the user's."""
        if not self.identities.right_user(open_id, claims_of(token), expected_sub) and self.records:
            last = self.records[-1]
            self.records[-1] = Record(**{**last.__dict__, "wrong_user": True})

    def keep_session(self, open_id: str, body: dict[str, Any], expected_sub: str | None) -> None:
        refresh = body.get("refresh_token")
        if isinstance(refresh, str) and len(self.sessions) < MAX_SESSIONS:
            self.sessions.append(Session(open_id, refresh, expected_sub))

    # ------------------------------------------------------------------------------ pools

    def drop(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.remove(session)

    def idle_user(self) -> User | None:
        for _ in range(8):
            if not self.users:
                return None
            user = self.rng.choice(self.users)
            if not user.busy:
                return user
        return None

    def idle_session(self) -> Session | None:
        for _ in range(8):
            if not self.sessions:
                return None
            session = self.rng.choice(self.sessions)
            if not session.busy:
                return session
        return None

    async def new_tiktok_user(self) -> User:
        made = await self.emulator.post("/_emulator/users", json={})
        open_id = made.json()["open_id"]
        issued = await self.emulator.post(
            "/_emulator/tokens", json={"open_id": open_id, "scopes": ["user.info.basic", "user.info.profile"]}
        )
        return User(open_id, issued.json()["access_token"])

    # ------------------------------------------------------------------------------ operations

    async def exchange(self, kind: str, user: User, form: dict[str, str]) -> dict[str, Any] | None:
        response = await self.send(kind, "POST", "/token", data=form)
        if response is None or response.status_code != OK:
            return None
        body: dict[str, Any] = response.json()
        self.check_answer(user.open_id, str(body.get("access_token", "")), user.expected_sub)
        self.keep_session(user.open_id, body, user.expected_sub)
        return body

    async def warm(self) -> None:
        user = self.idle_user()
        if user is None:
            await self.first()
            return
        user.busy = True
        try:
            form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": ACCESS_TOKEN_TYPE}
            await self.exchange("warm", user, {**form, "subject_token": user.token})
        finally:
            user.busy = False

    async def first(self) -> None:
        user = await self.new_tiktok_user()
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": ACCESS_TOKEN_TYPE}
        answered = await self.exchange("first", user, {**form, "subject_token": user.token})
        if answered is not None and len(self.users) < MAX_USERS:
            self.users.append(user)

    async def code(self) -> None:
        """A Login Kit code redeemed with PKCE (TikTok's hex S256): half by returning users."""
        known = self.idle_user() if self.rng.random() < 0.5 else None
        user = known or await self.new_tiktok_user()
        user.busy = True
        try:
            verifier = secrets.token_urlsafe(48)
            issued = await self.emulator.post(
                "/_emulator/codes",
                json={
                    "open_id": user.open_id,
                    "redirect_uri": self.redirect_uri,
                    "code_challenge": hashlib.sha256(verifier.encode()).hexdigest(),
                    "scopes": ["user.info.basic", "user.info.profile"],
                },
            )
            form = {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token_type": CODE_TYPE,
                "subject_token": issued.json()["code"],
                "code_verifier": verifier,
                "redirect_uri": self.redirect_uri,
            }
            answered = await self.exchange("code", user, form)
            if answered is not None and known is None and len(self.users) < MAX_USERS:
                self.users.append(user)
        finally:
            user.busy = False

    async def strapi(self) -> None:
        """The Strapi plugin's endpoint: half first sign-ins, half returning users."""
        known = self.idle_user() if self.rng.random() < 0.5 else None
        user = known or await self.new_tiktok_user()
        user.busy = True
        try:
            response = await self.send("strapi", "POST", STRAPI_PATH, json={"access_token": user.token})
            if response is None or response.status_code != OK:
                return
            body: dict[str, Any] = response.json()
            self.check_answer(user.open_id, str(body.get("jwt", "")), user.expected_sub)
            self.keep_session(user.open_id, body, user.expected_sub)
            if known is None and len(self.users) < MAX_USERS:
                self.users.append(user)
        finally:
            user.busy = False

    async def refresh(self) -> None:
        session = self.idle_session()
        if session is None:
            await self.warm()
            return
        session.busy = True
        try:
            response = await self.send(
                "refresh",
                "POST",
                "/token",
                data={"grant_type": "refresh_token", "refresh_token": session.refresh_token},
            )
            if response is None or (response.status_code != OK and response.status_code < 500):
                # No answer: whether the token rotated is unknown. Refused: the session is over. Either
                # way it leaves the pool (a refusal is in the records, by its error).
                self.drop(session)
                return
            if response.status_code == OK:
                body = response.json()
                self.check_answer(session.open_id, str(body.get("access_token", "")), session.expected_sub)
                session.refresh_token = body["refresh_token"]
        finally:
            session.busy = False

    async def revoke(self) -> None:
        session = self.idle_session()
        if session is None:
            await self.warm()
            return
        session.busy = True
        try:
            response = await self.send("revoke", "POST", "/revoke", data={"token": session.refresh_token})
            if response is not None and response.status_code == OK:
                self.drop(session)
                self.ended.append(("revoked", session))
        finally:
            session.busy = False

    async def deauthorize(self) -> None:
        """TikTok's authorization.removed, delivered by the emulator (which first kills the user's TikTok
        tokens and redelivers until the bridge answers 200): every session of the user must end."""
        user = self.idle_user()
        if user is None or user.expected_sub is not None:
            return
        own = [s for s in self.sessions if s.open_id == user.open_id]
        if any(s.busy for s in own):
            return
        self.users.remove(user)
        for session in own:
            self.drop(session)
        began = time.monotonic()
        answer = await self.emulator.post(f"/_emulator/users/{user.open_id}/deauthorize", json={"reason": 1})
        deliveries = answer.json().get("deliveries", [])
        last = deliveries[-1] if deliveries else None
        status = last if isinstance(last, int) else None
        failed_first = sum(1 for d in deliveries[:-1] if not isinstance(d, int) or d >= 500)
        self.record("deauth", began, status, error=f"{failed_first} redeliveries" if failed_first else "")
        if status == OK:
            self.ended.extend(("deauthorized", s) for s in own)

    async def password_bearer(self, user: PasswordUser) -> str:
        assert self._keycloak is not None
        answer = await self._keycloak.post(
            f"/realms/{self.realm}/protocol/openid-connect/token",
            data={
                "grant_type": "password",
                "client_id": self.account_app,
                "username": user.username,
                "password": user.password,
            },
        )
        answer.raise_for_status()
        return str(answer.json()["access_token"])

    async def link(self) -> None:
        """A password user of an existing app links a TikTok identity; that identity's sign-ins must
        then answer for the password user."""
        free = [p for p in self.password_users if not p.busy and not p.done and p.linked is None]
        if not free:
            await self.warm()
            return
        account = self.rng.choice(free)
        account.busy = True
        try:
            bearer = await self.password_bearer(account)
            tiktok = await self.new_tiktok_user()
            response = await self.send(
                "link",
                "POST",
                LINKS_PATH,
                headers={"Authorization": f"Bearer {bearer}"},
                data={"subject_token": tiktok.token, "subject_token_type": ACCESS_TOKEN_TYPE},
            )
            if response is not None and response.status_code == OK:
                tiktok.expected_sub = account.user_id
                account.linked = tiktok
                self.users.append(tiktok)
        finally:
            account.busy = False

    async def unlink(self) -> None:
        linked = [p for p in self.password_users if not p.busy and p.linked is not None and not p.linked.busy]
        if not linked:
            await self.warm()
            return
        account = self.rng.choice(linked)
        tiktok = account.linked
        assert tiktok is not None
        own = [s for s in self.sessions if s.open_id == tiktok.open_id]
        if any(s.busy for s in own):
            return
        account.busy = tiktok.busy = True
        for session in own:  # no refresh or revocation of them may start while the link goes
            session.busy = True
        try:
            bearer = await self.password_bearer(account)
            response = await self.send(
                "unlink", "DELETE", LINKS_PATH, headers={"Authorization": f"Bearer {bearer}"}
            )
            if response is not None and response.status_code == OK:
                account.done, account.linked = True, None
                self.users.remove(tiktok)
                for session in own:
                    self.drop(session)
                self.ended.extend(("unlinked", s) for s in own)
        finally:
            account.busy = tiktok.busy = False
            for session in own:
                session.busy = False

    # ------------------------------------------------------------------------------ at the end

    async def refresh_refused(self, session: Session, attempts: int = 5) -> bool | None:
        """Whether the bridge refuses to refresh the session (None: no clear answer in `attempts`)."""
        for _ in range(attempts):
            try:
                response = await self.bridge.post(
                    "/token", data={"grant_type": "refresh_token", "refresh_token": session.refresh_token}
                )
            except httpx2.HTTPError:
                await asyncio.sleep(1)
                continue
            if response.status_code == OK:
                return False
            if response.status_code < 500:
                return True
            await asyncio.sleep(1)
        return None
