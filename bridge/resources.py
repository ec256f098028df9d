"""Per-process clients, opened once in the app's lifespan and closed once at shutdown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx2

from bridge.assertions import AssertionSigner, signer_from_settings
from bridge.cache import Cache, FallbackCache, MemoryCache, RedisCache, limits_storage_uri
from bridge.clients import ClientRegistry
from bridge.exchange import ExchangeService, Policy
from bridge.keycloak import KeycloakClient
from bridge.ratelimit import RateLimiter
from bridge.tiktok import TikTokClient

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bridge.settings import Settings

USER_AGENT = "tiktok-keycloak-bridge/0.1"


@dataclass(frozen=True)
class Resources:
    """Everything a request handler needs; one instance per process."""

    settings: Settings
    http: httpx2.AsyncClient
    cache: Cache
    signer: AssertionSigner
    tiktok: TikTokClient
    keycloak: KeycloakClient
    exchange: ExchangeService
    limiter: RateLimiter
    clients: ClientRegistry

    @classmethod
    def from_settings(
        cls, settings: Settings, *, mounts: Mapping[str, httpx2.AsyncBaseTransport] | None = None
    ) -> Resources:
        signer = signer_from_settings(settings)
        timeout = httpx2.Timeout(settings.http_timeout, connect=min(2.0, settings.http_timeout))
        http = httpx2.AsyncClient(
            timeout=timeout,
            limits=httpx2.Limits(max_connections=200, max_keepalive_connections=50),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            mounts=dict(mounts or {}),
        )
        cache: Cache
        shared_redis = None
        if settings.redis_url is not None:
            redis_url = settings.redis_url.get_secret_value()
            redis_cache = RedisCache.from_url(redis_url, timeout=settings.redis_timeout)
            shared_redis = (limits_storage_uri(redis_url), redis_cache.connection_pool)
            cache = FallbackCache(redis_cache, MemoryCache(), retry_interval=settings.redis_retry_interval)
        else:
            cache = MemoryCache()
        tiktok = TikTokClient(
            http,
            base_url=settings.tiktok_base_url,
            client_key=settings.tiktok_client_key,
            client_secret=settings.tiktok_client_secret.get_secret_value(),
        )
        keycloak = KeycloakClient(
            http,
            cache,
            base_url=settings.keycloak_base_url,
            realm=settings.keycloak_realm,
            client_id=settings.keycloak_client_id,
            client_secret=settings.keycloak_client_secret.get_secret_value(),
        )
        limiter = RateLimiter.build(
            shared_redis,
            per_ip=settings.rate_limit_per_ip if settings.rate_limit_enabled else None,
            per_identity=settings.rate_limit_per_identity if settings.rate_limit_enabled else None,
        )
        policy = Policy(
            idp_alias=settings.keycloak_idp_alias,
            username_prefix=settings.username_prefix,
            email_template=settings.email_template,
            profile_ttl=settings.profile_cache_ttl,
            user_ttl=settings.user_cache_ttl,
            negative_ttl=settings.negative_cache_ttl,
            registration_open=settings.registration_open,
            redirect_uris=settings.tiktok_redirect_uris,
            access_token_scopes=settings.tiktok_access_token_scopes,
            default_groups=settings.default_groups,
            default_realm_roles=settings.default_realm_roles,
            deauthorization=settings.deauthorization_policy,
        )
        exchange = ExchangeService(
            tiktok=tiktok, keycloak=keycloak, cache=cache, minter=signer, policy=policy, limiter=limiter
        )
        return cls(
            settings=settings,
            http=http,
            cache=cache,
            signer=signer,
            tiktok=tiktok,
            keycloak=keycloak,
            exchange=exchange,
            limiter=limiter,
            clients=ClientRegistry(
                public=frozenset(settings.public_client_ids), confidential=settings.client_secrets()
            ),
        )

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.cache.aclose()
