"""config.py: size and address parsing, and the environment-dependent defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swarmd.config import default_cache_dir, default_socket_path, parse_hostport, parse_size
from swarmd.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024", 1024),
        ("0", 0),
        ("10b", 10),
        ("512MiB", 512 * 1024**2),
        ("512mib", 512 * 1024**2),
        ("2G", 2 * 1000**3),
        ("2GB", 2 * 1000**3),
        ("2Gi", 2 * 1024**3),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("4 KiB", 4096),
        (" 3k ", 3000),
        ("1TiB", 1024**4),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-1", "1.5.2", "12XB", "GiB", "1e9", "5 mb x", "ib"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


def test_parse_size_error_names_the_input() -> None:
    with pytest.raises(ConfigError, match="'lots'"):
        parse_size("lots")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org:7000", ("example.org", 7000)),
        ("10.0.0.1:0", ("10.0.0.1", 0)),
        (":8080", ("0.0.0.0", 8080)),
        ("[::1]:65535", ("::1", 65535)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["nohostport", "host:", "host:65536", "host:-1", "host:http", ""])
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_hostport(text)


def test_socket_path_precedence(tmp_path: Path) -> None:
    env = {
        "SWARMD_SOCKET": str(tmp_path / "explicit.sock"),
        "RUNTIME_DIRECTORY": f"{tmp_path / 'rt1'}:{tmp_path / 'rt2'}",
        "XDG_RUNTIME_DIR": str(tmp_path / "xdg"),
    }
    assert default_socket_path(env) == tmp_path / "explicit.sock"
    del env["SWARMD_SOCKET"]
    assert default_socket_path(env) == tmp_path / "rt1" / "swarmd.sock"
    env["RUNTIME_DIRECTORY"] = ""
    assert default_socket_path(env) == tmp_path / "xdg" / "swarmd" / "swarmd.sock"


def test_socket_path_fallback_depends_on_uid() -> None:
    expected = (Path("/run/swarmd/swarmd.sock") if os.geteuid() == 0
                else Path(f"/tmp/swarmd-{os.geteuid()}/swarmd.sock"))
    assert default_socket_path({}) == expected


def test_cache_dir_precedence(tmp_path: Path) -> None:
    env = {"CACHE_DIRECTORY": f"{tmp_path / 'c1'}:{tmp_path / 'c2'}", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert default_cache_dir(env) == tmp_path / "c1"
    del env["CACHE_DIRECTORY"]
    assert default_cache_dir(env) == tmp_path / "xdg" / "swarmd"
    env["XDG_CACHE_HOME"] = ""
    assert default_cache_dir(env) == Path.home() / ".cache" / "swarmd"
