"""The layering the code promises: the use case loads no web framework, HTTP client or Redis client."""

from __future__ import annotations

import subprocess
import sys

ADAPTER_LIBRARIES = ("httpx2", "httpcore2", "aiohttp", "yarl", "redis", "starlette", "limits", "uvicorn")


def test_the_use_case_imports_no_adapter_library() -> None:
    """`import bridge.exchange` in a fresh interpreter loads none of the adapters' libraries."""
    probe = (
        "import sys, bridge.exchange; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {ADAPTER_LIBRARIES!r}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert loaded == "[]"


def test_the_domain_modules_import_only_the_standard_library_and_each_other() -> None:
    """model, errors, keys, ports and claims are importable with nothing outside the standard library
    loaded."""
    probe = (
        "import sys; before = set(sys.modules); "
        "import bridge.model, bridge.errors, bridge.keys, bridge.ports, bridge.claims; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names) - {'bridge'}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert loaded == "[]"
