"""What the use-case tests share: the profile the fake TikTok vouches for, requests, and the use cases
over the fakes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.domain.model import ExternalIdentity
from bridge.protocol.rfc8693 import TOKEN_TYPE_ACCESS_TOKEN, AccessTokenExchange, CodeExchange
from bridge.storage.cache import MemoryCache
from tests.unit.fakes import FakeKeycloak, FakeTikTok, UseCases, make_policy, use_cases

if TYPE_CHECKING:
    from bridge.storage.engine import GuardedCache
    from bridge.storage.recent_profiles import RecentProfiles


PROFILE = ExternalIdentity(open_id="-000AbC", union_id="u-1", display_name="Tik Toker")
REDIRECT = "https://app.example/callback"
VERIFIER = "v" * 43


def request(token: str = "act.one", scope: tuple[str, ...] = ()) -> AccessTokenExchange:
    return AccessTokenExchange(access_token=token, requested_token_type=TOKEN_TYPE_ACCESS_TOKEN, scope=scope)


def code_request(code: str = "code-1", redirect_uri: str = REDIRECT) -> CodeExchange:
    return CodeExchange(
        code=code,
        code_verifier=VERIFIER,
        redirect_uri=redirect_uri,
        requested_token_type=TOKEN_TYPE_ACCESS_TOKEN,
        scope=(),
    )


def service(
    tiktok: FakeTikTok,
    keycloak: FakeKeycloak,
    *,
    cache: GuardedCache | None = None,
    recent: RecentProfiles | None = None,
    strapi_jwt: bool = False,
    **policy: object,
) -> UseCases:
    """The use cases over the fakes, with the default policy changed by `policy`."""
    return use_cases(
        tiktok=tiktok,
        keycloak=keycloak,
        cache=cache if cache is not None else MemoryCache(),
        policy=make_policy(**policy),
        recent=recent,
        strapi_jwt=strapi_jwt,
    )


class CountingCache(MemoryCache):
    """The shared cache, counting the keys read from it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def get(self, key: str) -> bytes | None:
        self.reads.append(key)
        return await super().get(key)

    async def get_many(self, *keys: str) -> list[bytes | None]:
        self.reads.extend(keys)
        return [await super(CountingCache, self).get(key) for key in keys]
