"""TikTok's settings, nested in the bridge's as `settings.tiktok`, read from the same variables as
ever: BRIDGE_TIKTOK_CLIENT_KEY is `tiktok.client_key` (docs/configuration.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, field_validator

from bridge.setting_types import DAY, CommaList, SessionSeconds, check_rate, split_list


class TikTokSettings(BaseModel):
    """The app registered in TikTok's developer portal, and how the bridge treats TikTok's answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_key: str = Field(min_length=1)
    client_secret: SecretStr
    api_url: HttpUrl = HttpUrl("https://open.tiktokapis.com")
    # Redirect URIs a Login Kit code may have been issued for; codes with any other are refused unsent.
    redirect_uris: CommaList = ()
    # Scopes your app requests from users; decides which user-info fields are read for bare access
    # tokens (codes carry their granted scopes). Falls back to user.info.basic if a token lacks the rest.
    access_token_scopes: CommaList = ("user.info.basic",)
    # TikTok's user-info quota for the app (600 calls a minute, shared by every replica), and the share
    # of it that unproven requests may spend: a bare access token from an address that never signed in
    # successfully. The rest is kept for codes (redeemed with PKCE) and proven addresses.
    # Below TikTok's 600: the bridge counts a call when it sends it, TikTok when it arrives.
    user_info_quota: str = "580/minute"
    unproven_share: float = Field(default=0.5, gt=0, le=1)
    # What a TikTok access token starts with; anything else is refused before TikTok is asked (empty: no
    # check). TikTok's tokens have started with "act." in every answer seen since 2022.
    access_token_prefix: str = "act."  # noqa: S105 - a token prefix, not a secret
    # Sessions started from a TikTok code re-check the user's TikTok grant this often while refreshing;
    # off: nothing from TikTok is kept.
    recheck_enabled: bool = True
    recheck_interval: SessionSeconds = DAY
    # TikTok's deauthorization webhook (POST /webhooks/tiktok).
    webhook_enabled: bool = True

    @field_validator("redirect_uris", "access_token_scopes", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return split_list(value)

    @field_validator("redirect_uris")
    @classmethod
    def _check_redirects(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for uri in value:
            if not uri.startswith(("https://", "http://localhost", "http://127.0.0.1")) or "#" in uri:
                raise ValueError(f"redirect URIs must be absolute https URLs without fragment: {uri!r}")
        return value

    @field_validator("user_info_quota")
    @classmethod
    def _check_rate(cls, value: str) -> str:
        return check_rate(value)

    @property
    def base_url(self) -> str:
        return str(self.api_url).rstrip("/")
