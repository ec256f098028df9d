"""Signing keys: published-only keys for an overlapping rotation, and the key commands of the CLI."""

from __future__ import annotations

import errno
import io
import itertools
import json
import os
from typing import TYPE_CHECKING, Any, cast

import pytest
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError
from joserfc.jwk import ECKey, KeySet, RSAKey

from bridge.cli.main import main
from bridge.domain.errors import ServerError
from bridge.keycloak.assertions import (
    AssertionSigner,
    load_key,
    load_public_key,
    signer_from_settings,
    write_new_key,
)
from bridge.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from joserfc.jwk import KeySetSerialization

AUDIENCE = "https://kc.example/realms/app"
ENV = {
    "BRIDGE_TIKTOK_CLIENT_KEY": "k",
    "BRIDGE_TIKTOK_CLIENT_SECRET": "s",
    "BRIDGE_KEYCLOAK_URL": "https://kc.example",
    "BRIDGE_KEYCLOAK_REALM": "app",
    "BRIDGE_KEYCLOAK_CLIENT_ID": "bridge",
    "BRIDGE_KEYCLOAK_CLIENT_SECRET": "s",
    "BRIDGE_ISSUER": "https://bridge.example",
}


def new_key_file(path: Path) -> Path:
    path.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    return path


def signer(active: Path, *published: Path) -> AssertionSigner:
    return AssertionSigner(
        key=load_key(active),
        issuer="https://bridge.example",
        published=tuple(load_public_key(p) for p in published),
    )


def verify(token: str, jwks: dict[str, Any]) -> None:
    jwt.decode(token, KeySet.import_key_set(cast("KeySetSerialization", jwks)), algorithms=["ES256"])


def test_adjacent_rotation_steps_can_run_side_by_side(tmp_path: Path) -> None:
    """Old key; pre-published new key; new key signing with the old still published; old retired.
    Replicas of two adjacent steps run side by side during a roll-out, so whichever JWKS a verifier
    fetched, it must accept what either signs. Skipping the pre-publish step breaks exactly that."""
    old, new = new_key_file(tmp_path / "old.pem"), new_key_file(tmp_path / "new.pem")
    steps = [signer(old), signer(old, new), signer(new, old), signer(new)]
    for before, after in itertools.pairwise(steps):
        for fetched in (before, after):
            for signing in (before, after):
                verify(signing.mint("-000a", AUDIENCE), fetched.jwks())
    with pytest.raises(
        InvalidKeyIdError
    ):  # a verifier that cached the old JWKS, if the new key signs at once
        verify(steps[2].mint("-000a", AUDIENCE), steps[0].jwks())
    with pytest.raises(InvalidKeyIdError):  # after retirement the old key is no longer accepted
        verify(steps[0].mint("-000a", AUDIENCE), steps[3].jwks())


def test_jwks_lists_the_active_key_first_and_each_key_once(tmp_path: Path) -> None:
    """The signing key leads the JWKS; a key listed as both active and published appears once."""
    active, extra = new_key_file(tmp_path / "a.pem"), new_key_file(tmp_path / "b.pem")
    keys = signer(active, extra, active).jwks()["keys"]
    assert [k["kid"] for k in keys] == [load_key(active).kid, load_key(extra).kid]
    assert all("d" not in k and k["alg"] == "ES256" and k["use"] == "sig" for k in keys)


def test_published_keys_may_be_public_pems_and_never_sign(tmp_path: Path) -> None:
    """A public PEM is enough to publish a key; a private one is reduced to its public half."""
    private = ECKey.generate_key("P-256")
    public_pem = tmp_path / "public.pem"
    public_pem.write_bytes(private.as_pem(private=False))
    private_pem = new_key_file(tmp_path / "private.pem")
    assert not load_public_key(public_pem).is_private
    assert not load_public_key(private_pem).is_private
    assert load_public_key(public_pem).kid == private.thumbprint()


@pytest.mark.parametrize("loader", [load_key, load_public_key])
def test_an_rsa_key_is_refused_by_name(tmp_path: Path, loader: Callable[[Path], ECKey]) -> None:
    """An RSA key file is a configuration error naming the file (it once escaped as a joserfc error)."""
    rsa = tmp_path / "rsa.pem"
    rsa.write_bytes(RSAKey.generate_key(2048).as_pem(private=True))
    with pytest.raises(ServerError) as caught:
        loader(rsa)
    assert str(rsa) in caught.value.detail


def test_settings_read_published_keys_from_a_comma_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BRIDGE_PUBLISHED_KEY_FILES is comma-separated, like every other list setting."""
    active, a, b = (new_key_file(tmp_path / n) for n in ("active.pem", "a.pem", "b.pem"))
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BRIDGE_SIGNING_KEY_FILE", str(active))
    monkeypatch.setenv("BRIDGE_PUBLISHED_KEY_FILES", f"{a}, {b}")
    built = signer_from_settings(Settings())
    assert built.kids == [load_key(active).kid, load_key(a).kid, load_key(b).kid]


def test_generate_key_writes_a_private_key_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`bridge generate-key` makes an owner-only key, prints its kid, and never overwrites a key."""
    path = tmp_path / "next.pem"
    main(["generate-key", str(path)])
    assert capsys.readouterr().out.strip() == load_key(path).kid
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    before = path.read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        main(["generate-key", str(path)])
    assert path.read_bytes() == before


def test_generate_key_into_a_missing_directory_is_a_one_line_error(tmp_path: Path) -> None:
    """A key path whose directory does not exist ends in a one-line error naming it, not a traceback."""
    path = tmp_path / "missing" / "next.pem"
    with pytest.raises(SystemExit) as caught:
        main(["generate-key", str(path)])
    message = str(caught.value.code)
    assert str(path) in message
    assert "No such file or directory" in message
    assert "\n" not in message


def test_a_key_is_never_visible_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the PEM is written `path` does not exist, and a write failing midway leaves no file at all."""
    path = tmp_path / "signing-key.pem"
    seen_while_writing: list[bool] = []

    class DiskFull(io.FileIO):
        def write(self, data: bytes, /) -> int:  # type: ignore[override]
            seen_while_writing.append(path.exists())
            super().write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, _mode: DiskFull(fd, "w"))
    with pytest.raises(OSError, match="No space left"):
        write_new_key(path)
    assert seen_while_writing == [False]
    assert list(tmp_path.iterdir()) == []  # neither a partial key nor the temporary file


def test_losing_the_race_keeps_the_first_key_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """A second writer is told the key exists, the first key stays as it was, and nothing is left over."""
    path = tmp_path / "signing-key.pem"
    assert write_new_key(path)
    first = path.read_bytes()
    assert not write_new_key(path)
    assert path.read_bytes() == first
    assert list(tmp_path.iterdir()) == [path]


def test_jwks_command_prints_every_published_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bridge jwks` prints what the endpoint would serve, without starting any client."""
    active, extra = new_key_file(tmp_path / "a.pem"), new_key_file(tmp_path / "b.pem")
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BRIDGE_SIGNING_KEY_FILE", str(active))
    monkeypatch.setenv("BRIDGE_PUBLISHED_KEY_FILES", str(extra))
    # The command configures process-wide logging, which would unhook the test run's log audit.
    monkeypatch.setattr("bridge.observability.logs.configure", lambda _level: None)
    main(["jwks"])
    printed = json.loads(capsys.readouterr().out)
    assert [k["kid"] for k in printed["keys"]] == [load_key(active).kid, load_key(extra).kid]
