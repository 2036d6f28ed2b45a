"""keys.py: the swarm key is 32 bytes of base64 in a private file or a systemd credential."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from swarmd.errors import ConfigError
from swarmd.keys import KEY_BYTES, decode_key, find_key, generate_key, read_key_file


def key_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_generate_key_is_32_random_bytes() -> None:
    a, b = generate_key(), generate_key()
    assert len(base64.b64decode(a, validate=True)) == KEY_BYTES == 32
    assert a != b
    assert decode_key(a, "test") == base64.b64decode(a)


def test_read_key_file_accepts_0600(tmp_path: Path) -> None:
    key = generate_key()
    path = key_file(tmp_path / "swarm.key", key + "\n")
    assert read_key_file(path) == base64.b64decode(key)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_read_key_file_refuses_files_others_can_read(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path / "swarm.key", generate_key(), mode)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        read_key_file(path)
    assert f"{mode:o}" in info.value.message


def test_read_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_key_file(tmp_path / "absent.key")


@pytest.mark.parametrize("nbytes", [0, 16, 31, 33, 64])
def test_wrong_length(tmp_path: Path, nbytes: int) -> None:
    path = key_file(tmp_path / "swarm.key", base64.b64encode(b"k" * nbytes).decode())
    with pytest.raises(ConfigError, match=f"got {nbytes}"):
        read_key_file(path)


@pytest.mark.parametrize("text", ["not base64!", "abc", "QUJD$", "a b c d"])
def test_bad_base64(text: str) -> None:
    with pytest.raises(ConfigError, match="not valid base64"):
        decode_key(text, "somewhere")


def test_key_file_wins_over_credential(tmp_path: Path) -> None:
    mine, cred = generate_key(), generate_key()
    path = key_file(tmp_path / "mine.key", mine)
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "swarm.key").write_text(cred)
    assert find_key(path, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}) == base64.b64decode(mine)


def test_find_key_reads_the_systemd_credential(tmp_path: Path) -> None:
    key = generate_key()
    (tmp_path / "swarm.key").write_text(key + "\n")
    (tmp_path / "swarm.key").chmod(0o444)  # credentials are not checked for mode
    assert find_key(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == base64.b64decode(key)


def test_find_key_with_bad_credential(tmp_path: Path) -> None:
    (tmp_path / "swarm.key").write_text("short")
    with pytest.raises(ConfigError, match="credential swarm.key"):
        find_key(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_find_key_returns_none_without_any_key(tmp_path: Path) -> None:
    assert find_key(None, {}) is None
    assert find_key(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) is None
