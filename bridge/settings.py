"""Configuration, read once from `BRIDGE_*` environment variables (docs/configuration.md)."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, HttpUrl, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from bridge.providers.tiktok.settings import TikTokSettings
from bridge.setting_types import DAY, CommaList, PositiveSeconds, SessionSeconds, check_rate, split_list

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

# The settings nested per identity provider: BRIDGE_TIKTOK_CLIENT_KEY is `tiktok.client_key`.
NESTED: dict[str, type[BaseModel]] = {"tiktok": TikTokSettings}


class Settings(BaseSettings):
    """Every knob of the bridge. Secrets are `SecretStr`, so they never show in a repr or a log line."""

    # One "_" after the prefix splits off a nested model's name: BRIDGE_TIKTOK_CLIENT_KEY is
    # tiktok.client_key. Only nested models' variables are split; every other keeps its whole name.
    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_", extra="forbid", frozen=True, env_nested_delimiter="_", env_nested_max_split=1
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # pydantic-settings reads no secret file into a nested model: `_NestedSecrets` does.
        assert isinstance(file_secret_settings, SecretsSettingsSource)  # noqa: S101 - pydantic-settings' own
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
            _NestedSecrets(settings_cls, file_secret_settings.secrets_dir),
        )

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data: Any) -> Any:  # noqa: ANN401 - what pydantic hands a before-validator
        """Keywords spelt like the variables (`tiktok_client_key=...`) go to their nested model, as the
        variables do, and win over what the environment gave it (keywords always win)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in NESTED:
            prefix = f"{name}_"
            flat = {
                key.removeprefix(prefix): data.pop(key) for key in [k for k in data if k.startswith(prefix)]
            }
            if not flat:
                continue
            given = data.get(name)
            if isinstance(given, BaseModel):
                data[name] = given.model_copy(update=flat)
            else:
                data[name] = {**(given if isinstance(given, dict) else {}), **flat}
        return data
        data = dict(data)
        for name in NESTED:
            prefix = f"{name}_"
            flat = {k.removeprefix(prefix): data.pop(k) for k in [k for k in data if k.startswith(prefix)]}
            if flat:
                nested = data.get(name)
                data[name] = (
                    {**flat, **(nested if isinstance(nested, dict) else {})}
                    if not isinstance(nested, BaseModel)
                    else nested.model_copy(update=flat)
                )
        return data

    @classmethod
    def load(cls) -> Settings:
        """The environment, plus one file per setting in BRIDGE_SECRETS_DIR if set (Docker and
        Kubernetes secrets: /run/secrets/bridge_tiktok_client_secret holds BRIDGE_TIKTOK_CLIENT_SECRET).
        A variable in the environment wins over its file. Unknown BRIDGE_* variables are refused:
        pydantic-settings would ignore them, and a misspelt optional setting (say the client allow-list)
        would silently be off."""
        known = _known_variables() | NOT_SETTINGS
        problems = [
            _problem(name.lower().removeprefix("bridge_"), "unknown setting{hint}", hint=_hint(name))
            for name in sorted(os.environ)
            if name.startswith("BRIDGE_") and name not in known
        ]
        secrets_dir = os.environ.get("BRIDGE_SECRETS_DIR")
        if secrets_dir and not Path(secrets_dir).is_dir():
            # pydantic-settings would only warn and go on without the files, silently dropping optional
            # secrets (an unset BRIDGE_CONFIDENTIAL_CLIENTS turns the client allow-list off).
            problems.append(_problem("secrets_dir", "not an existing directory: {path}", path=secrets_dir))
        if problems:
            # A ValidationError is reported like every other setting by `bridge check-config` and `serve`.
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return cls(_secrets_dir=secrets_dir) if secrets_dir else cls()

    # TikTok: every BRIDGE_TIKTOK_* variable (`providers/tiktok/settings.py`).
    tiktok: TikTokSettings

    # Keycloak
    keycloak_url: HttpUrl
    keycloak_realm: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    keycloak_client_id: str = Field(min_length=1)
    keycloak_client_secret: SecretStr
    # The realm's identity provider (type jwt-authorization-grant) that trusts the bridge's assertions.
    keycloak_idp_alias: str = "tiktok"
    # The client whose service account calls the Admin API (finds, creates and links users). A client of
    # its own, so that the clients that mint users' tokens carry no admin role in their scope. Unset:
    # the bridge's client does both, which `bridge doctor` reports (docs/existing-keycloak.md, "Least
    # privilege").
    keycloak_admin_client_id: str | None = None
    keycloak_admin_client_secret: SecretStr | None = None
    # The group of every account the bridge may manage: the users it provisions join it, accounts that
    # link TikTok must be in it, and the service account's permissions reach its members only. Empty:
    # no group (the service account then needs realm-wide user management).
    keycloak_group: str = "/tiktok-users"

    # The bridge itself
    issuer: HttpUrl
    signing_key_file: Path | None = None
    # Keys published in the JWKS without signing, so a key rotation overlaps: the next key before it
    # signs, the previous one until its last assertions expired (docs/operations.md, "Rotating the
    # signing key").
    published_key_files: Annotated[tuple[Path, ...], NoDecode] = ()
    # Where a generated development signing key is kept, so restarts and local replicas agree.
    data_dir: Path = Path("var")
    redis_url: SecretStr | None = None
    # Short: while Redis hangs, every request waits this long once before falling back to memory.
    redis_timeout: float = Field(default=0.5, gt=0, le=30)
    # While Redis is down, how often one request tries it again.
    redis_retry_interval: float = Field(default=5.0, gt=0, le=300)
    # Ending writes (a revocation, a deauthorization's tombstone and queue entry, an identity's sessions
    # ended, a vault grant forgotten) wait for this many replicas before they are acknowledged, so a
    # failover cannot lose them; fewer in time answers 503 and the caller retries. Unset: 1 with
    # `redis+sentinel://` (a failover promotes a replica), 0 otherwise (a lone Redis has no failover;
    # Redis Cluster cannot WAIT through its client, see SECURITY.md).
    redis_wait_replicas: int | None = Field(default=None, ge=0, le=16)
    # How long such a write waits for the replicas: below redis_timeout, so that a lagging replica is
    # not mistaken for an outage. Unset: 0.2 s, or half of redis_timeout if that is shorter.
    redis_wait_timeout: float | None = Field(default=None, gt=0, le=30)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Slow clients: request headers must be complete this long after connecting (or after the last
    # response on a kept-alive connection), and a body must arrive within this long of its headers.
    client_header_timeout: float = Field(default=10.0, gt=0, le=300)
    client_body_timeout: float = Field(default=10.0, gt=0, le=300)

    # Account policies
    registration_open: bool = True
    default_groups: CommaList = ()  # group paths, e.g. /tiktok-users
    default_realm_roles: CommaList = ()
    # The Strapi "TikTok Auth Mobile" compatible endpoint, POST /api/tiktok-auth-mobile/connect.
    strapi_compat_enabled: bool = True
    # Rate limits ("N/second|minute|hour"), shared through Redis when configured. Empty string: off.
    rate_limit_enabled: bool = True
    rate_limit_per_ip: str = "60/minute"
    rate_limit_per_identity: str = "20/minute"
    rate_limit_webhook_per_ip: str = "600/minute"
    # Optional client allow-list for /token: when either is set, every request must name a client_id
    # (form or HTTP Basic). Public (mobile) clients need none; confidential ones "id=secret,id2=secret2".
    public_client_ids: CommaList = ()
    confidential_clients: SecretStr | None = None
    # TikTok's deauthorization webhook (POST /webhooks/tiktok, on with BRIDGE_TIKTOK_WEBHOOK_ENABLED):
    # what "authorization.removed" does to the linked Keycloak user, and how old a signed delivery may be.
    deauthorization_policy: Literal["record", "disable", "unlink"] = "record"
    webhook_max_age: int = Field(default=300, ge=30, le=3600)
    # A policy Keycloak could not take (it was down) is kept in Redis and retried by every replica, with
    # delays doubling from 5 s up to this many seconds, until this long after the event arrived.
    deauthorization_retry_max_delay: float = Field(default=300.0, ge=1, le=3600)
    deauthorization_retry_horizon: int = Field(default=72 * 3600, ge=60, le=30 * DAY)
    # Prometheus metrics at GET /metrics, on the admin listener only.
    metrics_enabled: bool = True
    # The admin listener (same host as the public one): /metrics, the detailed /readyz and /healthz.
    # `bridge serve --admin-port` sets it for the workers; 0 switches the listener off.
    admin_port: int = Field(default=9000, ge=0, le=65535)
    # Readiness checks call Keycloak: one check per process at most this often (seconds), however many
    # probes ask. 0: every probe checks.
    readiness_cache_ttl: float = Field(default=3.0, ge=0, le=60)
    # OpenTelemetry tracing (needs the `otel` extra); exporter configured by OTEL_EXPORTER_OTLP_* variables.
    otel_enabled: bool = False
    otel_service_name: str = "tiktok-keycloak-bridge"
    username_prefix: str = Field(default="tiktok_", pattern=r"^[a-z0-9._-]{0,32}$")
    # A pseudo-email template with the placeholders {open_id} and {union_id}. Off when unset.
    email_template: str | None = None

    # Bare access tokens TikTok may refuse in a row from one client address, per window starting with the
    # first of them; past it the address is refused (429) before the quota is spent, until the window
    # ends. A token TikTok accepts starts the count again. Auth0 throttles an address after 10 failed
    # custom token exchanges. Empty string (or BRIDGE_RATE_LIMIT_ENABLED=false): off.
    rate_limit_refused_tokens_per_ip: str = "10/hour"

    # Bridge sessions (docs/sessions.md): refresh tokens issued with every exchange, rotated on use.
    sessions_enabled: bool = True
    session_idle_timeout: SessionSeconds = 30 * DAY
    session_max_lifetime: SessionSeconds = 90 * DAY
    # A retired refresh token still yields its successor this long (a client retrying a lost answer).
    session_reuse_grace: float = Field(default=5.0, ge=0, le=60)
    # Fernet keys sealing TikTok tokens and rotated refresh tokens at rest, newest first, comma-separated
    # (`python -m bridge generate-session-key`). Unset: a development key generated into data_dir.
    session_encryption_keys: SecretStr | None = None
    # The Keycloak client that mints the Strapi-compatible endpoint's `jwt` (its own, longer access-token
    # lifespan: apps built on the plugin never refresh). Unset: the bridge's own client.
    strapi_keycloak_client_id: str | None = None
    strapi_keycloak_client_secret: SecretStr | None = None
    # Strapi's JWT secret (its JWT_SECRET, `plugin::users-permissions.jwtSecret`): when set, /token
    # exchanges a jwt the plugin issued for a session of the imported user it names. Unset once the
    # apps of the plugin's days have updated: the token type is then neither accepted nor announced.
    strapi_jwt_secret: SecretStr | None = None
    # One Keycloak client per app (docs/apps-and-audiences.md): "app_client_id=keycloak_client_id:secret",
    # comma-separated, so the tokens of an app name it in `azp` and get its client's settings. Apps must
    # be in the client allow-list (their id is authenticated); unmapped apps mint as the bridge's client.
    keycloak_clients: SecretStr | None = None
    # The audiences a token may be asked for (`audience` or `resource` on /token): "audience=client-scope",
    # comma-separated. The Keycloak client scope (optional, with an audience mapper) puts it in `aud`.
    audiences: CommaList = ()
    # Per app, the audiences it may ask for: "app_client_id=aud1 aud2", comma-separated. Apps not listed
    # may ask for every audience above.
    client_audiences: CommaList = ()
    # Linking TikTok to a signed-in Keycloak user (/account/links/tiktok): the `azp` values whose user
    # tokens may link. Empty (the default): linking is off and its routes are not served.
    link_client_ids: CommaList = ()
    # The realm's identity providers whose links are keyed by TikTok's union_id (the TikTok web sign-in
    # of the community extension keycloak-tiktok), comma-separated: a first sign-in through the bridge
    # links the account found there (docs/migrating-from-strapi.md, "TikTok web sign-ins of the realm").
    union_id_idp_aliases: CommaList = ()
    # At a first sign-in, look for a user imported from Strapi with the identity's union_id and link it:
    # one Admin API search per new identity. Switch it off when no imported user is left to adopt.
    adopt_imported_users: bool = True
    # The token vault (docs/vault.md): the confidential clients that may swap a user's Keycloak access
    # token for the user's TikTok access token. Empty (the default): the vault is off, nothing is kept.
    vault_client_ids: CommaList = ()
    # Per vault client, the Keycloak clients (`azp`) whose user tokens it may present, and the TikTok
    # scopes a token it receives may carry: "client=a b", comma-separated. A client not listed: any.
    vault_subject_clients: CommaList = ()
    vault_scopes: CommaList = ()

    # How long cache entries live, in seconds.
    profile_cache_ttl: PositiveSeconds = 300
    user_cache_ttl: PositiveSeconds = 3600
    negative_cache_ttl: PositiveSeconds = 30
    # Profiles each process also keeps in its own memory, in front of Redis (`recent_profiles.py`):
    # a returning token then costs one Redis round trip less. 0 switches it off.
    profile_memory_entries: int = Field(default=10_000, ge=0, le=1_000_000)

    # Outbound calls
    http_timeout: float = Field(default=5.0, gt=0, le=60)
    assertion_lifetime: int = Field(default=60, ge=10, le=300)

    @field_validator(
        "default_groups",
        "default_realm_roles",
        "published_key_files",
        "public_client_ids",
        "audiences",
        "client_audiences",
        "link_client_ids",
        "union_id_idp_aliases",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return split_list(value)

    @field_validator("vault_client_ids", "vault_subject_clients", "vault_scopes", mode="before")
    @classmethod
    def _vault_lists(cls, value: object) -> object:
        return split_list(value)

    @model_validator(mode="after")
    def _check_vault(self) -> Settings:
        """Vault clients must be confidential ones (a backend authenticates); per-client options must
        name vault clients, or they would silently never apply."""
        if stray := set(self.vault_client_ids) - set(self.client_secrets()):
            raise ValueError(f"vault_client_ids not in confidential_clients: {sorted(stray)}")
        for name, entries in (
            ("vault_subject_clients", self.vault_subject_clients),
            ("vault_scopes", self.vault_scopes),
        ):
            for client, values in _pairs(",".join(entries), f"{name} entries are client=value value"):
                if client not in self.vault_client_ids:
                    raise ValueError(f"{name} names {client!r}, which is not in vault_client_ids")
                if not all(_SCOPE_TOKEN.match(v) for v in values.split()):
                    raise ValueError(f"{name} of {client!r} is not a list of names")
        return self

    @model_validator(mode="after")
    def _check_redis_wait(self) -> Settings:
        if self.redis_wait_timeout is not None and self.redis_wait_timeout >= self.redis_timeout:
            raise ValueError("redis_wait_timeout must be shorter than redis_timeout")
        if self.redis_wait_replicas and self._redis_scheme().endswith("+cluster"):
            raise ValueError("redis_wait_replicas must be 0 with Redis Cluster (redis+cluster://)")
        return self

    def _redis_scheme(self) -> str:
        url = "" if self.redis_url is None else self.redis_url.get_secret_value()
        return url.partition("://")[0].lower()

    @property
    def wait_timeout(self) -> float:
        """`redis_wait_timeout`, or its default below `redis_timeout`."""
        if self.redis_wait_timeout is not None:
            return self.redis_wait_timeout
        return min(0.2, self.redis_timeout / 2)

    @property
    def wait_replicas(self) -> int:
        """`redis_wait_replicas`, or its default for the kind of Redis the URL names."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self._redis_scheme().endswith("+sentinel") else 0

    def vault_option(self, entries: tuple[str, ...]) -> dict[str, frozenset[str]]:
        """`vault_subject_clients` or `vault_scopes` as client -> its set."""
        return {client: frozenset(values.split()) for client, values in _pairs(",".join(entries), "")}

    @field_validator("default_groups")
    @classmethod
    def _check_groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(g if g.startswith("/") else f"/{g}" for g in value)

    @field_validator("keycloak_group")
    @classmethod
    def _check_group(cls, value: str) -> str:
        value = value.strip()
        return value if not value or value.startswith("/") else f"/{value}"

    @field_validator("confidential_clients")
    @classmethod
    def _check_clients(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            for entry in value.get_secret_value().split(","):
                client_id, _, secret = entry.strip().partition("=")
                if not client_id or not secret:
                    raise ValueError("confidential_clients entries are id=secret, comma-separated")
        return value

    @field_validator("keycloak_clients")
    @classmethod
    def _check_keycloak_clients(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            problem = "keycloak_clients entries are app=keycloak_client:secret, comma-separated"
            secrets: dict[str, str] = {}
            for _app, client in _pairs(value.get_secret_value(), problem):
                client_id, _, secret = client.partition(":")
                if not client_id or not secret:
                    raise ValueError(problem)
                # Apps may share a Keycloak client, which has one secret.
                if secrets.setdefault(client_id, secret) != secret:
                    raise ValueError(f"keycloak_clients gives Keycloak client {client_id!r} two secrets")
        return value

    @field_validator("audiences")
    @classmethod
    def _check_audiences(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for audience, scope in _pairs(",".join(value), "audiences entries are audience=client-scope"):
            if not _SCOPE_TOKEN.match(scope) or not _SCOPE_TOKEN.match(audience):
                raise ValueError(f"audience or client scope is not a scope token: {audience!r}")
        return value

    @model_validator(mode="after")
    def _check_admin_client(self) -> Settings:
        if (self.keycloak_admin_client_id is None) != (self.keycloak_admin_client_secret is None):
            raise ValueError("keycloak_admin_client_id and keycloak_admin_client_secret go together")
        if self.keycloak_admin_client_id == self.keycloak_client_id:
            raise ValueError("keycloak_admin_client_id names the minting client: leave it unset instead")
        return self

    @property
    def admin_client(self) -> tuple[str, str]:
        """(id, secret) of the client whose service account calls the Admin API."""
        if self.keycloak_admin_client_id is not None and self.keycloak_admin_client_secret is not None:
            return self.keycloak_admin_client_id, self.keycloak_admin_client_secret.get_secret_value()
        return self.keycloak_client_id, self.keycloak_client_secret.get_secret_value()

    @property
    def provisioning_groups(self) -> tuple[str, ...]:
        """The groups a new user joins: the bridge's own first, then BRIDGE_DEFAULT_GROUPS."""
        groups = (self.keycloak_group,) if self.keycloak_group else ()
        return tuple(dict.fromkeys((*groups, *self.default_groups)))

    @model_validator(mode="after")
    def _check_apps(self) -> Settings:
        """Per-app settings must name apps the allow-list authenticates, and audiences that exist:
        otherwise a mapping would silently never apply."""
        known_apps = set(self.public_client_ids) | set(self.client_secrets())
        unknown = (set(self.keycloak_client_map()) | set(self.client_audience_map())) - known_apps
        if unknown:
            names = sorted(unknown)
            raise ValueError(
                f"keycloak_clients, client_audiences: apps not in the client allow-list: {names}"
            )
        catalog = self.audience_scopes()
        for app, audiences in self.client_audience_map().items():
            if missing := set(audiences) - set(catalog):
                raise ValueError(f"client_audiences of {app} names unknown audiences: {sorted(missing)}")
        return self

    def keycloak_client_map(self) -> dict[str, tuple[str, str]]:
        """App client id -> (Keycloak client id, its secret)."""
        if self.keycloak_clients is None:
            return {}
        pairs = _pairs(self.keycloak_clients.get_secret_value(), "")
        return {app: (kc.partition(":")[0], kc.partition(":")[2]) for app, kc in pairs}

    def audience_scopes(self) -> dict[str, str]:
        """Audience -> the Keycloak client scope that adds it to `aud`."""
        return dict(_pairs(",".join(self.audiences), ""))

    def client_audience_map(self) -> dict[str, tuple[str, ...]]:
        return {app: tuple(auds.split()) for app, auds in _pairs(",".join(self.client_audiences), "")}

    def client_secrets(self) -> dict[str, str]:
        """Confidential clients by id (empty when none are configured)."""
        if self.confidential_clients is None:
            return {}
        pairs = (
            e.strip().partition("=")
            for e in self.confidential_clients.get_secret_value().split(",")
            if e.strip()
        )
        return {client_id: secret for client_id, _, secret in pairs}

    @field_validator(
        "rate_limit_per_ip",
        "rate_limit_per_identity",
        "rate_limit_webhook_per_ip",
        "rate_limit_refused_tokens_per_ip",
    )
    @classmethod
    def _check_rate(cls, value: str) -> str:
        return check_rate(value)

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


def _pairs(text: str, problem: str) -> list[tuple[str, str]]:
    """`a=b,c=d` as pairs; `problem` is the message for a malformed entry (never echoing a value)."""
    pairs = []
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        key, _, value = entry.partition("=")
        if problem and (not key.strip() or not value.strip()):
            raise ValueError(problem)
        pairs.append((key.strip(), value.strip()))
    return pairs


# RFC 6749 §3.3 scope-token: audiences travel as scope names to Keycloak, and as form values here.
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")


# BRIDGE_* variables that are not settings of the service: read by `load` itself and by the project's
# scripts (scripts/_common.sh, devstack: the local stack's port, caches, JDK and audit strictness).
NOT_SETTINGS = frozenset(
    {"BRIDGE_SECRETS_DIR", "BRIDGE_PORT", "BRIDGE_CACHE_DIR", "BRIDGE_JAVA_HOME", "BRIDGE_AUDIT_REQUIRED"}
)


def variables() -> dict[str, FieldInfo]:
    """Every setting by the variable that sets it (a nested model's fields under their own names)."""
    fields = {name: info for name, info in Settings.model_fields.items() if name not in NESTED}
    for nest, model in NESTED.items():
        fields |= {f"{nest}_{name}": info for name, info in model.model_fields.items()}
    return {f"BRIDGE_{name.upper()}": info for name, info in fields.items()}


def _known_variables() -> set[str]:
    return set(variables())


class _NestedSecrets(PydanticBaseSettingsSource):
    """The nested models' secret files, named like their variables: bridge_tiktok_client_secret in
    BRIDGE_SECRETS_DIR is `tiktok.client_secret` (the environment still wins)."""

    def __init__(self, settings_cls: type[BaseSettings], secrets_dir: object) -> None:
        super().__init__(settings_cls)
        dirs = secrets_dir if isinstance(secrets_dir, list | tuple) else [secrets_dir]
        self._dirs = [Path(str(d)).expanduser() for d in dirs if d is not None]

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # noqa: ANN401, ARG002
        return None, field_name, False  # not used: __call__ reads every nested field at once

    def __call__(self) -> dict[str, Any]:
        found: dict[str, dict[str, str]] = {}
        for nest, model in NESTED.items():
            for name in model.model_fields:
                for directory in self._dirs:
                    path = directory / f"bridge_{nest}_{name}"
                    if path.is_file():
                        found.setdefault(nest, {})[name] = path.read_text().strip()
        return found


def _hint(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(_known_variables()), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _problem(field: str, message: str, **context: str) -> InitErrorDetails:
    """One configuration problem, in the shape pydantic reports every other one."""
    error = PydanticCustomError("bridge_setting", message, context)
    return InitErrorDetails(type=error, loc=(field,), input=None)
