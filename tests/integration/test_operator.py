"""`python -m bridge sessions end`, the operator's command, run as a process against the real Keycloak and
redis-server that an in-process bridge keeps its sessions in."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from bridge.storage.sealing import new_key
from tests.conftest import _TOKEN_SHAPES, CLIENT_SECRET, BridgeClient, Stack
from tests.integration.test_exchange import linked_users
from tests.integration.test_linking import password_user

if TYPE_CHECKING:
    from pathlib import Path

    from devstack.tiktok_emulator import TikTokEmulator

ENDED = "every session of that user started until now is ended"


def sessions_end(
    stack: Stack, data_dir: Path, *args: str, unset: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m bridge sessions end ARGS` with the bridge's environment (`env` added, `unset` removed),
    session encryption keys included, as in a deployment (else it warns that it made a development key)."""
    configured = {"BRIDGE_DATA_DIR": str(data_dir), "BRIDGE_SESSION_ENCRYPTION_KEYS": new_key(), **env}
    environment = {**os.environ, **stack.env(**configured)}
    for name in unset:
        environment.pop(name)
    return subprocess.run(
        [sys.executable, "-m", "bridge", "sessions", "end", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def signed_in(bridge: BridgeClient, emulator: TikTokEmulator, open_id: str) -> dict[str, Any]:
    answer = await bridge.exchange(emulator.issue_access_token(open_id))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


@pytest.mark.parametrize("by", ["--user", "--open-id"])
async def test_ending_a_users_sessions_refuses_their_refresh_tokens_and_no_one_elses(
    stack: Stack, emulator: TikTokEmulator, bridge: BridgeClient, tmp_path: Path, by: str
) -> None:
    """Ended by Keycloak user id or by open_id: both sessions of the user are refused at their next
    refresh, another user's session refreshes, and a sign-in after the command starts a session that
    works; the command says so in one line and exits 0, printing no token or secret."""
    user, bystander = emulator.create_user(), emulator.create_user()
    sessions = [await signed_in(bridge, emulator, user.open_id) for _ in range(2)]
    other = await signed_in(bridge, emulator, bystander.open_id)
    (keycloak_user,) = linked_users(stack, user.open_id)

    ended = sessions_end(stack, tmp_path, by, keycloak_user["id"] if by == "--user" else user.open_id)

    assert (ended.returncode, ended.stdout) == (0, "")
    assert ended.stderr.splitlines() == [ENDED], ended.stderr
    for session in sessions:
        refused = await bridge.refresh(session["refresh_token"])
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
    assert (await bridge.refresh(other["refresh_token"])).status_code == 200
    after = await signed_in(bridge, emulator, user.open_id)
    assert (await bridge.refresh(after["refresh_token"])).status_code == 200

    output = ended.stdout + ended.stderr
    for secret in (
        *(s[name] for s in (*sessions, other) for name in ("refresh_token", "access_token")),
        stack.client_secret,
        CLIENT_SECRET,
    ):
        assert secret not in output
    assert not _TOKEN_SHAPES.search(output)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown user", "no Keycloak user {user} in realm app"),
        (
            "user without TikTok",
            "Keycloak user {user} has no TikTok identity (tiktok_open_id): no bridge sessions",
        ),
        ("empty user id", "sessions not ended: not a Keycloak user id: ''"),
        ("user id with a path", "sessions not ended: not a Keycloak user id: '../clients'"),
        ("empty open_id", "sessions not ended: not a TikTok open_id: ''"),
        ("open_id with a line break", "sessions not ended: not a TikTok open_id: '-000a\\n'"),
        (
            "no Redis",
            (
                "sessions not ended: without BRIDGE_REDIS_URL sessions live in the memory of each "
                "bridge process, out of this command's reach (restarting the bridge ends them all)"
            ),
        ),
        ("no signing key", "sessions not ended: cannot load signing key {key}: FileNotFoundError"),
        ("sessions off", "sessions are switched off (BRIDGE_SESSIONS_ENABLED=false): nothing to end"),
    ],
)
async def test_bad_input_is_one_line_and_a_non_zero_exit(
    stack: Stack,
    emulator: TikTokEmulator,
    bridge: BridgeClient,
    tmp_path: Path,
    case: str,
    message: str,
) -> None:
    """Each thing the command cannot act on is said in one line on stderr, exit status 1, no traceback;
    and nothing was ended: a live session still refreshes."""
    live = await signed_in(bridge, emulator, emulator.create_user().open_id)
    user, key = str(uuid.uuid4()), tmp_path / "no-such-key.pem"
    args: tuple[str, ...] = ("--open-id", emulator.create_user().open_id)
    env: dict[str, str] = {}
    unset: tuple[str, ...] = ()
    if case == "unknown user":
        args = ("--user", user)
    elif case == "user without TikTok":
        user = password_user(stack)[0]
        args = ("--user", user)
    elif case == "empty user id":
        args = ("--user", "")
    elif case == "user id with a path":
        args = ("--user", "../clients")
    elif case == "empty open_id":
        args = ("--open-id", "")
    elif case == "open_id with a line break":
        args = ("--open-id", "-000a\n")
    elif case == "no Redis":
        unset = ("BRIDGE_REDIS_URL",)
    elif case == "no signing key":
        env = {"BRIDGE_SIGNING_KEY_FILE": str(key)}
    else:
        env = {"BRIDGE_SESSIONS_ENABLED": "false"}

    refused = sessions_end(stack, tmp_path, *args, unset=unset, **env)

    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.splitlines() == [message.format(user=user, key=key)], refused.stderr
    assert (await bridge.refresh(live["refresh_token"])).status_code == 200


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((), "one of the arguments --user --open-id is required"),
        (("--user", "a", "--open-id", "b"), "argument --open-id: not allowed with argument --user"),
    ],
)
def test_naming_no_one_or_two_ways_is_a_usage_error(
    stack: Stack, tmp_path: Path, args: tuple[str, ...], error: str
) -> None:
    """Without exactly one of --user and --open-id the command refuses at once: usage, exit 2."""
    refused = sessions_end(stack, tmp_path, *args)

    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.splitlines()[-1] == f"bridge sessions end: error: {error}"
    assert "Traceback" not in refused.stderr
