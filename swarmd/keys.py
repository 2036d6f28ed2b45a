"""The swarm key: 32 random bytes, base64 on one line, read from a private file or a systemd credential.

Only reading and generating lives here; the handshake that uses it belongs to the wire layer.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

from .errors import ConfigError

KEY_BYTES = 32
CREDENTIAL_NAME = "swarm.key"


def generate_key() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def decode_key(text: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: the swarm key is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise ConfigError(f"{where}: the swarm key must decode to {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def read_key_file(path: Path) -> bytes:
    """Read a key file, refusing one that other users can read."""
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read swarm key file {path}: {exc}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"swarm key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                          f"run: chmod 600 {path}")
    return decode_key(text, str(path))


def find_key(key_file: Path | None, env: dict[str, str] | None = None) -> bytes | None:
    """``--key-file`` first, then the systemd credential ``swarm.key``; None when neither exists."""
    if key_file is not None:
        return read_key_file(key_file)
    env = dict(os.environ) if env is None else env
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).is_file():
        # systemd already restricts credentials to the service; their mode is 0400 root-owned or similar.
        return decode_key((Path(cred_dir) / CREDENTIAL_NAME).read_text(), f"credential {CREDENTIAL_NAME}")
    return None
