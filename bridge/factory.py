"""Per-process clients and the use cases over them, built once per process and closed once at its end:
in the app's lifespan for `bridge serve`, for the command's run for `bridge sessions end` and
`bridge strapi import` (each a process of its own), never per request."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import aiohttp
import httpx2
from limits.aio.storage import MemoryStorage, Storage

from bridge.domain.model import Policy, strapi_jwt_idp_alias, strapi_jwt_issuer
from bridge.keycloak.assertions import AssertionSigner, signer_from_settings
from bridge.keycloak.bearer import RealmTokenVerifier
from bridge.keycloak.client import KeycloakClient
from bridge.outbound.aiohttp_transport import AiohttpTransport, env_proxy
from bridge.protocol.clients import ClientRegistry
from bridge.providers.strapi.jwt import StrapiJwtVerifier
from bridge.providers.strapi.tokens import with_strapi_jwt
from bridge.providers.tiktok import client as tiktok_provider
from bridge.providers.tiktok.attributes import ATTRIBUTES
from bridge.providers.tiktok.client import TikTokClient
from bridge.providers.tiktok.tokens import SUBJECT_TOKEN_TYPES
from bridge.services.adoption import AdoptionPolicy, AdoptionService
from bridge.services.apps import App, Apps
from bridge.services.deauthorization import DeauthorizationService
from bridge.services.exchange import ExchangeService
from bridge.services.identity import IdentityService
from bridge.services.linking import LinkingService, LinkPolicy
from bridge.services.minting import MintingService
from bridge.services.provisioning import ProvisioningService
from bridge.services.sessions import LinkedAccounts, SessionPolicy, SessionService
from bridge.services.strapi_ids import HighWaterMark, StrapiIds
from bridge.services.strapi_jwt import StrapiJwtExchange
from bridge.services.vault import VaultPolicy, VaultService
from bridge.storage.admin_tokens import AdminTokenStore
from bridge.storage.cache import FallbackCache, MemoryCache, RedisCache
from bridge.storage.deauthorizations import DeauthorizationQueue
from bridge.storage.identities import IdentityStore
from bridge.storage.profiles import ProfileStore
from bridge.storage.ratelimit import ProfileQuota, RateLimiter, RefusalCounts
from bridge.storage.recent_profiles import RecentProfiles
from bridge.storage.redis_connection import RedisConnection
from bridge.storage.sealing import sealer_from_settings
from bridge.storage.seen import SeenOnce
from bridge.storage.sessions import SessionStore
from bridge.storage.strapi_ids import StrapiIdCounter
from bridge.storage.vault import GrantStore

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from aiohttp.abc import AbstractResolver

    from bridge.protocol.rfc8693 import SubjectTokenTypes
    from bridge.settings import Settings
    from bridge.storage.engine import GuardedCache, Store

USER_AGENT = "tiktok-keycloak-bridge/0.1"
# The pool of `Resources.http` (TikTok, Keycloak's admin API): what httpx2's own pool had here.
HTTP_LIMITS = httpx2.Limits(max_connections=200, max_keepalive_connections=50)
# The JWT grant's connections to Keycloak, per worker process: as many as the worker serves requests at
# once (`server.DEFAULT_LIMIT_CONCURRENCY`), each holding at most one for its grant, so a grant never
# waits for the pool. A wait there would end as a timeout, which the breaker counts as a Keycloak outage
# (httpx2's pool, which carried the grant before, allowed 200). Only as many are open as were in flight
# in the last TOKEN_KEEPALIVE_SECONDS: a worker saturates its core at 8 to 32 (bench/README.md).
TOKEN_CONNECTIONS = 256
# Idle connections are closed by us after this long: well under the usual idle timeouts of proxies and
# load balancers (60 s and more), so that we, not they, close a kept-alive connection (a POST sent on a
# connection the other side is closing at that moment fails, and a grant is never repeated).
TOKEN_KEEPALIVE_SECONDS = 15.0

log = logging.getLogger(__name__)


def token_session(
    settings: Settings,
    *,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
    resolver: AbstractResolver | None = None,
) -> aiohttp.ClientSession:
    """The aiohttp session of the JWT grant (`KeycloakClient.issue_token`), the one outbound call of
    every exchange and refresh; everything else goes through the httpx2 client (over a session of its
    own: `AiohttpTransport`). Built in the lifespan
    (it needs the running loop) and closed at shutdown.

    Kept-alive connections, reused across exchanges; no cookie jar (a token endpoint must never carry
    one user's cookies into another's request); status codes are read, never raised; the same timeouts
    as the httpx2 client: `connect` covers waiting for a pooled connection (httpx2's pool timeout),
    `sock_connect` the TCP connect, `sock_read` each read. `resolver` is a test seam, as `mounts` is for
    httpx2: where host names lead (tests: a fake token endpoint on a loopback port)."""
    timeout = settings.http_timeout
    connector = aiohttp.TCPConnector(
        limit=TOKEN_CONNECTIONS, keepalive_timeout=TOKEN_KEEPALIVE_SECONDS, resolver=resolver
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=min(2.0, timeout), sock_read=timeout
        ),
        headers={"User-Agent": USER_AGENT},
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
        trust_env=False,
        proxy=env_proxy(settings.keycloak_base_url),
        trace_configs=list(trace_configs) or None,
    )


def policy_from_settings(settings: Settings) -> Policy:
    """The account rules the use cases follow, from the settings (the defaults live there only)."""
    return Policy(
        idp_alias=settings.keycloak_idp_alias,
        username_prefix=settings.username_prefix,
        email_template=settings.email_template,
        registration_open=settings.registration_open,
        redirect_uris=settings.tiktok.redirect_uris,
        default_groups=settings.provisioning_groups,
        # With a bridge group, the group carries these roles (`bridge keycloak apply` maps them): the
        # service account then never maps a role to a user, which Keycloak allows only realm-wide.
        default_realm_roles=() if settings.keycloak_group else settings.default_realm_roles,
        deauthorization=settings.deauthorization_policy,
        deauthorization_retry_max_delay=settings.deauthorization_retry_max_delay,
        deauthorization_retry_horizon=settings.deauthorization_retry_horizon,
        profile_ttl=settings.profile_cache_ttl,
        user_ttl=settings.user_cache_ttl,
        negative_ttl=settings.negative_cache_ttl,
        attributes=ATTRIBUTES,
        audience_scopes=MappingProxyType(settings.audience_scopes()),
        reserved_scopes=frozenset(settings.audience_scopes().values()),
    )


def adoption_policy(settings: Settings) -> AdoptionPolicy:
    """Which existing accounts a first sign-in adopts (`services/adoption.py`)."""
    return AdoptionPolicy(
        idp_alias=settings.keycloak_idp_alias,
        union_id_attribute=ATTRIBUTES.union_id,
        imported=settings.adopt_imported_users,
        union_id_idp_aliases=settings.union_id_idp_aliases,
        group=settings.keycloak_group,
    )


def tiktok_client(http: httpx2.AsyncClient, settings: Settings) -> TikTokClient:
    """TikTok as the bridge's identity provider, over the process's HTTP client."""
    tiktok = settings.tiktok
    return TikTokClient(
        http,
        base_url=tiktok.base_url,
        client_key=tiktok.client_key,
        client_secret=tiktok.client_secret.get_secret_value(),
        scopes=tiktok.access_token_scopes,
        access_token_prefix=tiktok.access_token_prefix,
    )


@dataclass(frozen=True)
class Resources:
    """Everything a request handler needs; one instance per process."""

    settings: Settings
    # TikTok and Keycloak's discovery, service-account token and admin API: httpx2's API over aiohttp
    # (`AiohttpTransport`, for its CPU cost); `mounts` replace the transport per URL in tests.
    http: httpx2.AsyncClient
    # The JWT grant's own client (`token_session`): the hot path, kept off httpx2 for its CPU cost.
    token_http: aiohttp.ClientSession
    # The one Redis client (cache, rate limits, tracing), None when no Redis is configured.
    redis: RedisConnection | None
    cache: GuardedCache
    # Webhook deliveries and DPoP proofs already seen (the shared cache, falling back to memory).
    webhook_deliveries: SeenOnce
    dpop_proofs: SeenOnce
    signer: AssertionSigner
    tiktok: TikTokClient
    keycloak: KeycloakClient
    exchange: ExchangeService
    # Verifying TikTok identities, provisioning their users, applying TikTok's deauthorizations: one
    # each per process, whatever the app.
    identity: IdentityService
    provisioning: ProvisioningService
    deauthorization: DeauthorizationService
    # The use case per app of the allow-list: its own Keycloak client and audiences, where configured.
    apps: Apps
    # None when BRIDGE_LINK_CLIENT_IDS is empty (linking off).
    linking: LinkingService | None
    # The Strapi-compatible endpoint's use case: the same, minting as its own Keycloak client if set.
    strapi_exchange: ExchangeService
    # None when BRIDGE_SESSIONS_ENABLED=false.
    sessions: SessionService | None
    # Where sessions are kept: Redis itself, never the memory fallback (a session must
    # not be served from one replica's memory while others cannot see it, nor revived by a stale copy).
    session_store: Store
    limiter: RateLimiter
    clients: ClientRegistry
    # What linking accepts as a subject token: the identity provider's credentials.
    subject_token_types: SubjectTokenTypes = SUBJECT_TOKEN_TYPES
    # What /token accepts: the same, and a Strapi jwt when BRIDGE_STRAPI_JWT_SECRET is set.
    exchange_token_types: SubjectTokenTypes = SUBJECT_TOKEN_TYPES
    # None when BRIDGE_STRAPI_JWT_SECRET is unset.
    strapi_jwt: StrapiJwtExchange | None = None
    # The token vault (docs/vault.md); None when BRIDGE_VAULT_CLIENT_IDS is empty.
    vault: VaultService | None = None
    # Numeric ids for the Strapi-compatible endpoint's users; None when the endpoint is off.
    strapi_ids: StrapiIds | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        mounts: Mapping[str, httpx2.AsyncBaseTransport] | None = None,
        clock: Callable[[], float] | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
        token_resolver: AbstractResolver | None = None,
    ) -> Resources:
        """Open every client. Called with the event loop running (the lifespan, or a command's
        coroutine). `trace_configs` and `token_resolver` go to `token_session`."""
        token_http = token_session(settings, trace_configs=trace_configs, resolver=token_resolver)
        transport = AiohttpTransport(limits=HTTP_LIMITS)
        try:
            return cls._assemble(settings, token_http, transport, mounts=mounts, clock=clock)
        except BaseException:
            # A setting refused on the way: nothing was sent yet, so the sessions hold no connection
            # and are dropped without the "unclosed client session" warning.
            token_http.detach()
            transport.detach()
            raise

    @classmethod
    def _assemble(
        cls,
        settings: Settings,
        token_http: aiohttp.ClientSession,
        transport: AiohttpTransport,
        *,
        mounts: Mapping[str, httpx2.AsyncBaseTransport] | None,
        clock: Callable[[], float] | None,
    ) -> Resources:
        signer = signer_from_settings(settings)
        timeout = httpx2.Timeout(settings.http_timeout, connect=min(2.0, settings.http_timeout))
        http = httpx2.AsyncClient(
            transport=transport,  # its pool is HTTP_LIMITS; it reads the proxy variables (httpx2 would not)
            timeout=timeout,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            mounts=dict(mounts or {}),
        )
        redis: RedisConnection | None = None
        cache: GuardedCache
        session_store: Store
        limits_storage: Storage
        if settings.redis_url is not None:
            redis = RedisConnection.from_url(
                settings.redis_url.get_secret_value(), timeout=settings.redis_timeout
            )
            session_store = RedisCache(
                redis.client, wait_replicas=settings.wait_replicas, wait_timeout=settings.wait_timeout
            )
            cache = FallbackCache(session_store, MemoryCache(), retry_interval=settings.redis_retry_interval)
            limits_storage = redis.limits_storage
        else:
            cache = session_store = MemoryCache()
            limits_storage = MemoryStorage()
            if settings.sessions_enabled:
                log.warning(
                    "sessions are kept in this process's memory: they end when it stops and are not "
                    "shared with other replicas; set BRIDGE_REDIS_URL in production"
                )
        tiktok = tiktok_client(http, settings)
        keycloak = KeycloakClient(
            http,
            AdminTokenStore(cache),
            token_http=token_http,
            base_url=settings.keycloak_base_url,
            realm=settings.keycloak_realm,
            client_id=settings.admin_client[0],
            client_secret=settings.admin_client[1],
            minting_client=(settings.keycloak_client_id, settings.keycloak_client_secret.get_secret_value()),
        )
        limiter = RateLimiter(
            limits_storage,
            per_ip=settings.rate_limit_per_ip if settings.rate_limit_enabled else None,
            per_identity=settings.rate_limit_per_identity if settings.rate_limit_enabled else None,
            webhook_per_ip=settings.rate_limit_webhook_per_ip if settings.rate_limit_enabled else None,
        )
        policy = policy_from_settings(settings)
        # One per process, shared by every use case: a profile is the same whichever app asked; this
        # process's copies of profiles in front of the shared cache.
        profiles = ProfileStore.from_policy(
            cache, policy, RecentProfiles(settings.profile_memory_entries, settings.profile_cache_ttl)
        )
        identities = IdentityStore.from_policy(cache, policy)
        quota = ProfileQuota(
            limits_storage,
            per_minute=settings.tiktok.user_info_quota,
            unproven_share=settings.tiktok.unproven_share,
            upstream=tiktok_provider.UPSTREAM,
            name=tiktok_provider.NAME,
        )
        refusals = None
        if settings.rate_limit_enabled and settings.rate_limit_refused_tokens_per_ip:
            refusals = RefusalCounts(
                limits_storage,
                per_address=settings.rate_limit_refused_tokens_per_ip,
                upstream=tiktok_provider.UPSTREAM,
            )
        # One per process, whatever the app: none of them reads an app's own client or audiences.
        identity = IdentityService(
            provider=tiktok, profiles=profiles, policy=policy, quota=quota, refusals=refusals
        )
        adoption = AdoptionService(keycloak=keycloak, policy=adoption_policy(settings))
        provisioning = ProvisioningService(
            keycloak=keycloak, identities=identities, policy=policy, adoption=adoption
        )
        vault = cls._vault(settings, session_store, keycloak, tiktok, clock or time.time)
        deauthorization = DeauthorizationService(
            keycloak=keycloak,
            identities=identities,
            queue=DeauthorizationQueue.from_policy(cache, policy),
            policy=policy,
            grants=vault,
        )

        # The Strapi jwt exchange mints by a provider of its own (docs/migrating-from-strapi.md).
        strapi_jwt = cls._strapi_jwt(settings, keycloak, cache, policy, clock or time.time)
        strapi_jwt_signer = (
            None if strapi_jwt is None else signer.with_issuer(strapi_jwt_issuer(settings.issuer_url))
        )

        def use_case(minting: KeycloakClient, app_policy: Policy) -> App:
            # Per app: the Keycloak client it mints as, its audiences, and the identities its exchange
            # signed in lately; every app shares the process's clients, caches, limits and TikTok quota.
            minter = MintingService(
                keycloak=minting, minter=signer, policy=app_policy, strapi_jwt_minter=strapi_jwt_signer
            )
            exchange = ExchangeService(
                identity=identity,
                provisioning=provisioning,
                minting=minter,
                identities=identities,
                policy=app_policy,
                limiter=limiter,
            )
            return App(exchange, minter)

        default = use_case(keycloak, policy)
        strapi = default
        if settings.strapi_keycloak_client_id and settings.strapi_keycloak_client_secret is not None:
            strapi_keycloak = keycloak.minting_as(
                settings.strapi_keycloak_client_id, settings.strapi_keycloak_client_secret.get_secret_value()
            )
            strapi = use_case(strapi_keycloak, policy)
        apps = Apps(default, cls._per_app(settings, policy, keycloak, use_case))
        sessions = None
        if settings.sessions_enabled:
            sessions = SessionService(
                store=SessionStore(
                    session_store,
                    idp_alias=settings.keycloak_idp_alias,
                    max_lifetime=settings.session_max_lifetime,
                ),
                minter=apps,
                provider=tiktok,
                sealer=sealer_from_settings(settings),
                policy=SessionPolicy(
                    idle_timeout=settings.session_idle_timeout,
                    max_lifetime=settings.session_max_lifetime,
                    reuse_grace=settings.session_reuse_grace,
                    provider_recheck=settings.tiktok.recheck_enabled,
                    provider_recheck_interval=settings.tiktok.recheck_interval,
                ),
                clock=clock or time.time,
                grants=vault,
                accounts=None
                if strapi_jwt is None
                else LinkedAccounts(keycloak, settings.keycloak_idp_alias),
            )
        linking = None
        if settings.link_client_ids:
            linking = LinkingService(
                keycloak=keycloak,
                bearer=RealmTokenVerifier(keycloak, clock=clock or time.time),
                proofs=identity,
                identities=identities,
                policy=LinkPolicy(
                    idp_alias=settings.keycloak_idp_alias,
                    link_clients=frozenset(settings.link_client_ids),
                    attributes=ATTRIBUTES,
                ),
                sessions=sessions,
                adoption=adoption,
                grants=vault,
            )
        return cls(
            settings=settings,
            http=http,
            token_http=token_http,
            redis=redis,
            cache=cache,
            webhook_deliveries=SeenOnce.webhook_deliveries(cache),
            dpop_proofs=SeenOnce.dpop_proofs(cache),
            signer=signer,
            tiktok=tiktok,
            keycloak=keycloak,
            exchange=default.exchange,
            identity=identity,
            provisioning=provisioning,
            deauthorization=deauthorization,
            apps=apps,
            linking=linking,
            strapi_exchange=strapi.exchange,
            sessions=sessions,
            session_store=session_store,
            limiter=limiter,
            clients=ClientRegistry.of(
                frozenset(settings.public_client_ids),
                settings.client_secrets(),
                strapi=settings.strapi_compat_enabled,
            ),
            exchange_token_types=SUBJECT_TOKEN_TYPES
            if strapi_jwt is None
            else with_strapi_jwt(SUBJECT_TOKEN_TYPES),
            strapi_jwt=strapi_jwt,
            vault=vault,
            strapi_ids=StrapiIds(
                keycloak=keycloak,
                counter=StrapiIdCounter(cache),
                mark=HighWaterMark(keycloak, groups=policy.default_groups),
                identities=identities,
            )
            if settings.strapi_compat_enabled
            else None,
        )

    @staticmethod
    def _strapi_jwt(
        settings: Settings,
        keycloak: KeycloakClient,
        cache: GuardedCache,
        policy: Policy,
        clock: Callable[[], float],
    ) -> StrapiJwtExchange | None:
        """The Strapi jwt exchange, when BRIDGE_STRAPI_JWT_SECRET is set."""
        if settings.strapi_jwt_secret is None:
            return None
        alias = strapi_jwt_idp_alias(settings.keycloak_idp_alias)
        return StrapiJwtExchange(
            verifier=StrapiJwtVerifier(settings.strapi_jwt_secret.get_secret_value(), clock=clock),
            keycloak=keycloak,
            # Linking locks keyed by the Keycloak user id, under the provider's alias.
            locks=IdentityStore(
                cache, idp_alias=alias, user_ttl=policy.user_ttl, tombstone_ttl=policy.profile_ttl
            ),
            idp_alias=alias,
        )

    @staticmethod
    def _vault(
        settings: Settings,
        store: Store,
        keycloak: KeycloakClient,
        tiktok: TikTokClient,
        clock: Callable[[], float],
    ) -> VaultService | None:
        """The token vault over the session store (Redis itself, never the memory fallback), when on."""
        if not settings.vault_client_ids:
            return None
        return VaultService(
            store=GrantStore(
                store, sealer_from_settings(settings), idp_alias=settings.keycloak_idp_alias, clock=clock
            ),
            bearer=RealmTokenVerifier(keycloak, clock=clock),
            keycloak=keycloak,
            provider=tiktok,
            policy=VaultPolicy(
                idp_alias=settings.keycloak_idp_alias,
                clients=frozenset(settings.vault_client_ids),
                subject_clients=MappingProxyType(settings.vault_option(settings.vault_subject_clients)),
                scopes=MappingProxyType(settings.vault_option(settings.vault_scopes)),
            ),
            clock=clock,
        )

    @staticmethod
    def _per_app(
        settings: Settings,
        policy: Policy,
        keycloak: KeycloakClient,
        use_case: Callable[[KeycloakClient, Policy], App],
    ) -> dict[str, App]:
        """The exchange and minting of each app with a Keycloak client or an audience list of its own."""
        clients, audiences = settings.keycloak_client_map(), settings.client_audience_map()
        catalog = settings.audience_scopes()
        per_app = {}
        for app in sorted(set(clients) | set(audiences)):
            app_policy = policy
            if app in audiences:
                allowed = {a: catalog[a] for a in audiences[app]}
                app_policy = dataclasses.replace(policy, audience_scopes=MappingProxyType(allowed))
            minting = keycloak.minting_as(*clients[app]) if app in clients else keycloak
            per_app[app] = use_case(minting, app_policy)
        return per_app

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.token_http.close()
        await self.cache.aclose()
        if self.redis is not None:
            await self.redis.aclose()
