"""Where settings come from: the environment, and secret files (Docker/Kubernetes secrets)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from bridge.cli.main import main
from bridge.providers.tiktok.settings import TikTokSettings
from bridge.settings import Settings, _known_variables
from tests.unit.test_signing_keys import ENV

if TYPE_CHECKING:
    from pathlib import Path


def test_secrets_are_read_from_files_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each setting may be a file in BRIDGE_SECRETS_DIR, and a variable in the environment wins over it."""
    for name, value in ENV.items():
        if name not in {"BRIDGE_TIKTOK_CLIENT_SECRET", "BRIDGE_KEYCLOAK_CLIENT_SECRET"}:
            monkeypatch.setenv(name, value)
    (tmp_path / "bridge_tiktok_client_secret").write_text("tiktok-from-file\n")
    (tmp_path / "bridge_keycloak_client_secret").write_text("keycloak-from-file")
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(tmp_path))

    settings = Settings.load()
    assert settings.tiktok.client_secret.get_secret_value() == "tiktok-from-file"
    assert settings.keycloak_client_secret.get_secret_value() == "keycloak-from-file"
    assert "from-file" not in repr(settings)

    monkeypatch.setenv("BRIDGE_KEYCLOAK_CLIENT_SECRET", "from-env")
    assert Settings.load().keycloak_client_secret.get_secret_value() == "from-env"


def test_optional_secrets_are_read_from_the_secrets_dir_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An optional secret file counts only while BRIDGE_SECRETS_DIR names its directory, never by default."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "bridge_confidential_clients").write_text("web=from-file")
    # Also the working directory: without BRIDGE_SECRETS_DIR, files there must not count either.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(tmp_path))
    assert Settings.load().client_secrets() == {"web": "from-file"}

    monkeypatch.delenv("BRIDGE_SECRETS_DIR")
    assert Settings.load().client_secrets() == {}


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_a_secrets_dir_that_is_not_a_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A BRIDGE_SECRETS_DIR that is no directory is a configuration error naming it, not a mere warning."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    secrets_dir = tmp_path / "secrets"
    if kind == "a file":
        secrets_dir.write_text("")
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(secrets_dir))
    expected = f"BRIDGE_SECRETS_DIR: not an existing directory: {secrets_dir}"
    with pytest.raises(SystemExit, match=re.escape(expected)):
        main(["check-config"])


def test_unknown_bridge_variables_are_refused_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt setting is an error naming it (with the setting it resembles), not silently ignored;
    the variables of the project's own scripts are not settings and pass."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BRIDGE_CACHE_DIR", "cache")  # read by scripts/_common.sh
    assert Settings.load().client_secrets() == {}

    monkeypatch.setenv("BRIDGE_CONFIDENTAL_CLIENTS", "web=secret-never-echoed")
    with pytest.raises(SystemExit) as exited:
        main(["check-config"])
    assert str(exited.value) == (
        "configuration error: BRIDGE_CONFIDENTAL_CLIENTS: unknown setting; "
        "did you mean BRIDGE_CONFIDENTIAL_CLIENTS?"
    )


def test_public_client_ids_are_read_from_a_comma_separated_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """BRIDGE_PUBLIC_CLIENT_IDS=ios,android is the allow-list of two apps (it used to fail to load)."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BRIDGE_PUBLIC_CLIENT_IDS", "ios, android")
    assert Settings.load().public_client_ids == ("ios", "android")


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("BRIDGE_TIKTOK_CLIENT_KEY", "key-2", "client_key", "key-2"),
        ("BRIDGE_TIKTOK_API_URL", "http://127.0.0.1:9/", "base_url", "http://127.0.0.1:9"),
        (
            "BRIDGE_TIKTOK_REDIRECT_URIS",
            "https://a.example/cb, https://b.example/cb",
            "redirect_uris",
            ("https://a.example/cb", "https://b.example/cb"),
        ),
        (
            "BRIDGE_TIKTOK_ACCESS_TOKEN_SCOPES",
            '["user.info.basic", "user.info.profile"]',
            "access_token_scopes",
            ("user.info.basic", "user.info.profile"),
        ),
        ("BRIDGE_TIKTOK_USER_INFO_QUOTA", "100/minute", "user_info_quota", "100/minute"),
        ("BRIDGE_TIKTOK_UNPROVEN_SHARE", "0.25", "unproven_share", 0.25),
        ("BRIDGE_TIKTOK_ACCESS_TOKEN_PREFIX", "", "access_token_prefix", ""),
        ("BRIDGE_TIKTOK_RECHECK_ENABLED", "false", "recheck_enabled", False),
        ("BRIDGE_TIKTOK_RECHECK_INTERVAL", "3600", "recheck_interval", 3600),
        ("BRIDGE_TIKTOK_WEBHOOK_ENABLED", "false", "webhook_enabled", False),
    ],
)
def test_tiktok_variables_keep_their_names_and_land_in_the_nested_settings(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: object
) -> None:
    """Every BRIDGE_TIKTOK_* variable users set keeps its name and is read into `settings.tiktok`."""
    for name, env_value in ENV.items():
        monkeypatch.setenv(name, env_value)
    monkeypatch.setenv(variable, value)
    assert getattr(Settings.load().tiktok, field) == expected


def test_every_tiktok_setting_has_its_variable() -> None:
    """The variables the bridge knows are exactly BRIDGE_TIKTOK_ and each nested field's name, so none
    is refused as unknown and no bare BRIDGE_TIKTOK is accepted."""
    known = {name for name in _known_variables() if name.startswith("BRIDGE_TIKTOK")}
    assert known == {f"BRIDGE_TIKTOK_{name.upper()}" for name in TikTokSettings.model_fields}
    assert "BRIDGE_TIKTOK_CLIENT_SECRET" in known


def test_a_misspelt_tiktok_variable_is_refused_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt nested variable is refused like any other, naming the one it resembles."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BRIDGE_TIKTOK_REDIRECT_URI", "https://a.example/cb")
    with pytest.raises(SystemExit) as exited:
        main(["check-config"])
    assert str(exited.value) == (
        "configuration error: BRIDGE_TIKTOK_REDIRECT_URI: unknown setting; "
        "did you mean BRIDGE_TIKTOK_REDIRECT_URIS?"
    )


def test_a_bad_tiktok_value_is_reported_by_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing or invalid nested setting names the variable to fix, as a flat one does."""
    for name, value in ENV.items():
        if name != "BRIDGE_TIKTOK_CLIENT_KEY":
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("BRIDGE_TIKTOK_USER_INFO_QUOTA", "lots")
    with pytest.raises(SystemExit) as exited:
        main(["check-config"])
    message = str(exited.value)
    assert "BRIDGE_TIKTOK_CLIENT_KEY: Field required" in message
    assert "BRIDGE_TIKTOK_USER_INFO_QUOTA: Value error, not a rate limit like '60/minute': 'lots'" in message


def test_keywords_spelt_like_the_variables_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Settings(tiktok_client_key=...)` fills the nested field, over what the environment says."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    settings = Settings(tiktok_client_key="from-keyword")  # type: ignore[call-arg]
    assert settings.tiktok.client_key == "from-keyword"
    assert settings.tiktok.client_secret.get_secret_value() == "s"
