"""What the webhook's policy task reports once TikTok has had its 200."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import pytest

from bridge.storage.cache import MemoryCache
from bridge.web.webhook import _apply

if TYPE_CHECKING:
    from bridge.services.deauthorization import DeauthorizationService


class RecordingDeauthorization:
    """Stands in for the deauthorization use case: records which identities were deauthorized."""

    def __init__(self) -> None:
        self.deauthorized: list[str] = []

    async def deauthorize(self, open_id: str) -> str:
        self.deauthorized.append(open_id)
        return "disabled"


class DegradedCache(MemoryCache):
    """A cache serving from process memory because Redis is unreachable."""

    @property
    def degraded(self) -> bool:
        return True


@pytest.mark.parametrize(("cache", "warned"), [(MemoryCache(), False), (DegradedCache(), True)])
async def test_a_revocation_kept_in_one_process_only_is_reported(
    cache: MemoryCache, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """While Redis is down the revocation reaches only this replica's memory: an operator is told."""
    deauthorization = RecordingDeauthorization()
    with caplog.at_level(logging.INFO, logger="bridge.web.webhook"):
        await _apply(cast("DeauthorizationService", deauthorization), cache, "-000AbC", 1)
    assert deauthorization.deauthorized == ["-000AbC"]
    messages: list[Any] = [record.getMessage() for record in caplog.records]
    assert "tiktok deauthorization" in messages
    assert any("this process only" in m for m in messages) is warned
