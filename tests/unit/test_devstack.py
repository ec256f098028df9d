"""The local stack (`python -m devstack`): what it tells the person who started it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from devstack import keycloak
from devstack.__main__ import bridge_banner

if TYPE_CHECKING:
    from pathlib import Path

    from devstack.tiktok_emulator import TikTokEmulator


def test_the_banner_names_the_admin_port_the_bridge_was_given() -> None:
    """The banner names the port passed to the bridge, not a fixed 9000 (SECURITY.md, finding 7: someone
    checking that the admin listener is closed must look at the right port), and says when there is none."""
    assert bridge_banner("http://127.0.0.1:8000", 9100, redis=False) == (
        "starting the bridge on http://127.0.0.1:8000 (cache: memory; /metrics and the detailed /readyz "
        "on its admin listener, http://127.0.0.1:9100)"
    )
    assert bridge_banner("http://127.0.0.1:8000", 0, redis=True) == (
        "starting the bridge on http://127.0.0.1:8000 (cache: Redis; no admin listener)"
    )


@pytest.mark.parametrize(
    ("maven_says", "error"),
    [
        (
            (
                "[ERROR] Failed to execute goal ... Unable to find artifact. org.keycloak:keycloak-quarkus-"
                "dist:tar.gz:26.8.2 was not found in https://repo.maven.apache.org/maven2"
            ),
            keycloak.DistributionNotServed,
        ),
        ("[ERROR] Could not transfer artifact ...: Connection refused", keycloak.SetupError),
    ],
    ids=["not-served", "network"],
)
def test_a_release_the_repository_does_not_serve_is_told_from_other_fetch_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maven_says: str, error: type[Exception]
) -> None:
    """scripts/test-keycloak-versions tries releases the Maven repository may not serve yet (26.8.2
    here): Maven's "not found" is its own error, any other failure stays a set-up error."""
    mvn = tmp_path / "mvn"
    mvn.write_text(f"#!/bin/sh\necho '{maven_says}'\nexit 1\n")
    mvn.chmod(0o755)
    monkeypatch.setattr("devstack.keycloak.shutil.which", lambda name: str(mvn) if name == "mvn" else None)

    with pytest.raises(error) as failed:
        keycloak.fetch_distribution(tmp_path / "cache", version="26.8.2")

    assert isinstance(failed.value, keycloak.DistributionNotServed) is (
        error is keycloak.DistributionNotServed
    )
    assert "26.8.2" in str(failed.value)


async def test_the_emulator_drops_queued_faults_when_told(emulator: TikTokEmulator) -> None:
    """`DELETE /_emulator/faults` ends a fault window at once: the failures still queued are not served
    afterwards (a caller whose breaker was open leaves many behind)."""
    import httpx2  # noqa: PLC0415 - the emulator's own control API, over its ASGI app

    token = emulator.issue_access_token(emulator.create_user().open_id)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=emulator.app), base_url="https://open.tiktokapis.com"
    ) as tiktok:
        fault = {"endpoint": "user_info", "code": "internal_error", "http_status": 500, "count": 1}
        for _ in range(3):
            assert (await tiktok.post("/_emulator/faults", json=fault)).status_code == 204

        async def user_info() -> int:
            answer = await tiktok.get(
                "/v2/user/info/", params={"fields": "open_id"}, headers={"Authorization": f"Bearer {token}"}
            )
            return answer.status_code

        assert await user_info() == 500
        assert (await tiktok.delete("/_emulator/faults")).status_code == 204
        assert await user_info() == 200
