"""Configuration, read once from `BRIDGE_*` environment variables (README: "Configuration")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, HttpUrl, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PositiveSeconds = Annotated[int, Field(gt=0, le=86400 * 30)]


class Settings(BaseSettings):
    """Every knob of the bridge. Secrets are `SecretStr`, so they never show in a repr or a log line."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", extra="forbid", frozen=True)

    # TikTok
    tiktok_client_key: str = Field(min_length=1)
    tiktok_client_secret: SecretStr
    tiktok_api_url: HttpUrl = HttpUrl("https://open.tiktokapis.com")

    # Keycloak
    keycloak_url: HttpUrl
    keycloak_realm: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    keycloak_client_id: str = Field(min_length=1)
    keycloak_client_secret: SecretStr
    # The realm's identity provider (type jwt-authorization-grant) that trusts the bridge's assertions.
    keycloak_idp_alias: str = "tiktok"

    # The bridge itself
    issuer: HttpUrl
    signing_key_file: Path | None = None
    # Where a generated development signing key is kept, so restarts and local replicas agree.
    data_dir: Path = Path("var")
    redis_url: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Provisioning
    username_prefix: str = Field(default="tiktok_", pattern=r"^[a-z0-9._-]{0,32}$")
    # A pseudo-email template with the placeholders {open_id} and {union_id}. Off when unset.
    email_template: str | None = None

    # How long cache entries live, in seconds.
    profile_cache_ttl: PositiveSeconds = 300
    user_cache_ttl: PositiveSeconds = 3600
    negative_cache_ttl: PositiveSeconds = 30

    # Outbound calls
    http_timeout: float = Field(default=5.0, gt=0, le=60)
    assertion_lifetime: int = Field(default=60, ge=10, le=300)

    @field_validator("email_template")
    @classmethod
    def _check_template(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            value.format(open_id="x", union_id="y")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"email_template may use only {{open_id}} and {{union_id}}: {exc}") from exc
        if "@" not in value:
            raise ValueError("email_template must produce an e-mail address (contain '@')")
        return value

    @property
    def issuer_url(self) -> str:
        return str(self.issuer).rstrip("/")

    @property
    def keycloak_base_url(self) -> str:
        return str(self.keycloak_url).rstrip("/")

    @property
    def tiktok_base_url(self) -> str:
        return str(self.tiktok_api_url).rstrip("/")
