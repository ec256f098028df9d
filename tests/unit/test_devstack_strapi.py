"""The Strapi harness: when it installs, and the one case in which its tests are skipped."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest

from devstack import strapi

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed on this machine")
def test_an_unreachable_registry_is_npm_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing installed and a registry that does not answer, the install raises NpmUnreachable
    (the Strapi tests' reason to skip) and leaves nothing behind in the cache."""
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setattr(strapi, "PING_RETRIES", 0)
    with pytest.raises(strapi.NpmUnreachable, match="npm cannot reach its registry"):
        strapi.install(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_installed_strapi_is_reused_without_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installation of the same package list is used as it is: npm is neither looked for nor run."""
    home = tmp_path / "strapi" / f"install-{strapi.package_hash()}"
    (home / "node_modules" / ".bin").mkdir(parents=True)
    (home / "node_modules" / ".bin" / "strapi").touch()
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert strapi.install(tmp_path) == home


def test_the_package_hash_follows_the_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another Strapi version is another installation."""
    before = strapi.package_hash()
    monkeypatch.setitem(strapi.DEPENDENCIES, "@strapi/strapi", "5.0.0")
    assert strapi.package_hash() != before
