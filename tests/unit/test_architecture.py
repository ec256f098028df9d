"""The layers the package promises (docs/architecture.md), one test per rule.

The rules themselves are import-linter contracts in pyproject.toml, so `lint-imports` checks the same
thing from the command line; the last two tests load modules in a fresh interpreter, which also catches an
import made at run time that no static reading sees.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADAPTER_LIBRARIES = ("httpx2", "httpcore2", "aiohttp", "yarl", "redis", "starlette", "limits", "uvicorn")


@pytest.mark.parametrize(
    "contract",
    [
        # web and the command line -> operations -> factory -> adapters -> outbound -> use cases ->
        # protocol -> observability -> domain; never back up.
        "layers",
        # Keycloak's, TikTok's and the storage's adapters meet only in the factory.
        "adapters-apart",
        "use-cases-without-adapter-libraries",
        # The use cases, domain, protocol and storage know an identity provider only by its port.
        "tiktok-behind-its-port",
        # RFC 8693 extends RFC 6749, never the other way round.
        "rfc6749-at-the-bottom",
    ],
)
def test_the_import_contract_holds(contract: str) -> None:
    """import-linter finds no import that breaks the contract (its report says which, if one does)."""
    linter = Path(sys.executable).with_name("lint-imports")
    checked = subprocess.run(
        [str(linter), "--no-cache", "--contract", contract],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=ROOT,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 kept, 0 broken" in checked.stdout


def loaded_by(modules: str) -> list[str]:
    """The top-level packages outside the standard library that importing `modules` loads."""
    probe = (
        "import sys; before = set(sys.modules); "
        f"import {modules}; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names) - {'bridge'}))"
    )
    names: list[str] = eval(  # noqa: S307 - our own probe's printed list of names
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60, cwd=ROOT
        ).stdout.strip()
    )
    return names


def test_the_use_cases_load_no_adapter_library_at_run_time() -> None:
    """Every module of bridge.services, imported in a fresh interpreter, loads none of the adapters'
    libraries."""
    services = sorted(f"bridge.services.{p.stem}" for p in (ROOT / "bridge" / "services").glob("[!_]*.py"))
    assert len(services) >= 5
    assert not set(loaded_by(", ".join(services))) & set(ADAPTER_LIBRARIES)


def test_the_domain_loads_only_the_standard_library() -> None:
    """Every module of bridge.domain is importable with nothing outside the standard library loaded."""
    domain = sorted(f"bridge.domain.{p.stem}" for p in (ROOT / "bridge" / "domain").glob("[!_]*.py"))
    assert len(domain) >= 3  # claims, errors, model
    assert loaded_by(", ".join(domain)) == []
