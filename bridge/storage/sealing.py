"""Authenticated encryption of what the bridge must keep but must not be able to leak: the TikTok tokens
of a session and, for a few seconds, the successor of a rotated refresh token.

Fernet (the `cryptography` package: AES-128-CBC with HMAC-SHA256, a timestamp and a version byte) through
`MultiFernet`, which is key rotation built in: the first key encrypts, every listed key decrypts, and
`rotate()` re-encrypts under the first. Nothing here is hand-made cryptography.

Keys come from BRIDGE_SESSION_ENCRYPTION_KEYS (comma-separated, newest first; from a secrets file with
BRIDGE_SECRETS_DIR), each made by `python -m bridge generate-session-key`. Without it a development key is
generated once into BRIDGE_DATA_DIR, like the signing key, so restarts and local replicas agree.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from bridge.domain.errors import ServerError, Unsealable

if TYPE_CHECKING:
    from bridge.settings import Settings

log = logging.getLogger(__name__)

GENERATED_KEY_NAME = "session-encryption.key"


@dataclass(frozen=True)
class Sealer:
    keys: MultiFernet

    @classmethod
    def from_keys(cls, keys: list[str]) -> Sealer:
        try:
            return cls(MultiFernet([Fernet(key.strip().encode()) for key in keys]))
        except (ValueError, TypeError) as exc:
            raise ServerError(
                detail="a session encryption key is not a Fernet key (32 url-safe base64 bytes)"
            ) from exc

    def seal(self, plaintext: bytes) -> str:
        return self.keys.encrypt(plaintext).decode()

    def open(self, sealed: str) -> bytes:
        try:
            return self.keys.decrypt(sealed.encode())
        except InvalidToken as exc:
            raise Unsealable(detail="sealed data opens with no configured session encryption key") from exc

    def reseal(self, sealed: str) -> str:
        """The same plaintext under the newest key (what a key rotation does to each value it touches)."""
        try:
            return self.keys.rotate(sealed.encode()).decode()
        except InvalidToken as exc:
            raise Unsealable(detail="sealed data opens with no configured session encryption key") from exc


def new_key() -> str:
    return Fernet.generate_key().decode()


def _load_or_generate(data_dir: Path) -> str:
    path = data_dir / GENERATED_KEY_NAME
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # Written whole or not at all (a replica starting beside us must never read half a key), and
        # never over a key another process wrote first.
        with tempfile.NamedTemporaryFile("w", dir=data_dir, delete=False) as handle:
            handle.write(new_key())
            temporary = Path(handle.name)
        temporary.chmod(0o600)
        try:
            os.link(temporary, path)
            log.warning(
                "generated a development session encryption key; "
                "set BRIDGE_SESSION_ENCRYPTION_KEYS in production",
                extra={"path": str(path)},
            )
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return path.read_text().strip()


def sealer_from_settings(settings: Settings) -> Sealer:
    if settings.session_encryption_keys is not None:
        keys = [k for k in settings.session_encryption_keys.get_secret_value().split(",") if k.strip()]
        if keys:
            return Sealer.from_keys(keys)
    return Sealer.from_keys([_load_or_generate(settings.data_dir)])
