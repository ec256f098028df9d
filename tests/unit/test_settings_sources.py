"""Where settings come from: the environment, and secret files (Docker/Kubernetes secrets)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.settings import Settings
from tests.unit.test_signing_keys import ENV

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def test_secrets_are_read_from_files_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():
        if name not in {"BRIDGE_TIKTOK_CLIENT_SECRET", "BRIDGE_KEYCLOAK_CLIENT_SECRET"}:
            monkeypatch.setenv(name, value)
    (tmp_path / "bridge_tiktok_client_secret").write_text("tiktok-from-file\n")
    (tmp_path / "bridge_keycloak_client_secret").write_text("keycloak-from-file")
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(tmp_path))

    settings = Settings.load()
    assert settings.tiktok_client_secret.get_secret_value() == "tiktok-from-file"
    assert settings.keycloak_client_secret.get_secret_value() == "keycloak-from-file"
    assert "from-file" not in repr(settings)

    monkeypatch.setenv("BRIDGE_KEYCLOAK_CLIENT_SECRET", "from-env")
    assert Settings.load().keycloak_client_secret.get_secret_value() == "from-env"


def test_without_a_secrets_dir_files_are_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bridge_tiktok_client_secret").write_text("ignored")
    assert Settings.load().tiktok_client_secret.get_secret_value() == ENV["BRIDGE_TIKTOK_CLIENT_SECRET"]
