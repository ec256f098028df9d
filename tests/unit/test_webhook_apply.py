"""What the webhook's policy task reports once TikTok has had its 200 (the deauthorization was recorded
before it)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import pytest

from bridge.domain.errors import UpstreamUnavailable
from bridge.web.webhook import _attempt

if TYPE_CHECKING:
    from bridge.services.deauthorization import DeauthorizationService


class ScriptedDeauthorization:
    """Stands in for the deauthorization use case: answers `outcome`, or raises it."""

    def __init__(self, outcome: str | Exception) -> None:
        self.outcome = outcome
        self.attempted: list[str] = []

    async def attempt(self, open_id: str) -> str:
        self.attempted.append(open_id)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize(
    ("outcome", "logged", "level"),
    [
        ("disabled", "tiktok deauthorization", logging.INFO),
        ("pending", "deauthorization pending: Keycloak did not take it, retrying", logging.WARNING),
        (
            UpstreamUnavailable("cache", "down"),
            "deauthorization not applied yet, kept for a retry",
            logging.WARNING,
        ),
    ],
)
async def test_the_attempt_after_the_answer_reports_its_outcome(
    outcome: str | Exception, logged: str, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Applied, left pending, or failed (kept for the retry loop): each is one log line, never a raise."""
    deauthorization = ScriptedDeauthorization(outcome)
    with caplog.at_level(logging.INFO, logger="bridge.web.webhook"):
        await _attempt(cast("DeauthorizationService", deauthorization), "-000AbC", "unknown")
    assert deauthorization.attempted == ["-000AbC"]
    found: list[Any] = [(record.getMessage(), record.levelno) for record in caplog.records]
    assert found == [(logged, level)]
