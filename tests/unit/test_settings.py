"""cli/settings.py: flag > SWARMD_* env > TOML file > default, and --print-config's account of each value."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmd.cli.settings import OPTIONS, default_config_files, describe, load_config
from swarmd.config import DEFAULT_MODEL, EngineConfig, NetConfig
from swarmd.errors import ConfigError

SYSTEM_FILE = Path("/etc/swarmd/swarmd.toml")
needs_no_system_file = pytest.mark.skipif(SYSTEM_FILE.exists(), reason=f"{SYSTEM_FILE} would leak in")


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no real SWARMD_* variables, no user config file, fixed runtime/cache dirs."""
    (tmp_path / "xdg").mkdir()
    return {
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@needs_no_system_file
def test_defaults_when_nothing_is_given(env: dict[str, str], tmp_path: Path) -> None:
    cfg, origin, _ = load_config([], env)
    assert cfg.model.source == DEFAULT_MODEL
    assert cfg.engine == EngineConfig()
    assert cfg.net == NetConfig()
    assert cfg.api.socket == tmp_path / "run" / "swarmd" / "swarmd.sock"
    assert cfg.model.cache_dir == tmp_path / "cache" / "swarmd"
    assert set(origin) == {o.key for o in OPTIONS}
    assert set(origin.values()) == {"default"}


def test_flag_beats_env_beats_file(env: dict[str, str], tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "a.toml", 'model = "from-file"\nseed = 1\nthreads = 3\n')
    env |= {"SWARMD_MODEL": "from-env", "SWARMD_SEED": "2"}
    cfg, origin, _ = load_config(["--config", str(cfg_file), "--model", "from-flag"], env)
    assert cfg.model.source == "from-flag"
    assert cfg.model.seed == 2
    assert cfg.engine.threads == 3
    assert origin["model"] == "flag --model"
    assert origin["seed"] == "env SWARMD_SEED"
    assert origin["threads"] == f"file {cfg_file}"
    assert origin["dtype"] == "default"


def test_swarmd_config_env_names_the_file(env: dict[str, str], tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "b.toml", 'dtype = "bfloat16"\nmemory_budget = "2GiB"\n')
    cfg, origin, _ = load_config([], env | {"SWARMD_CONFIG": str(cfg_file)})
    assert cfg.engine.dtype == "bfloat16"
    assert cfg.engine.memory_budget == 2 * 1024**3
    assert origin["memory_budget"] == f"file {cfg_file}"


def test_config_flag_beats_swarmd_config_env(env: dict[str, str], tmp_path: Path) -> None:
    by_env = write(tmp_path / "env.toml", "seed = 1\n")
    by_flag = write(tmp_path / "flag.toml", "seed = 7\n")
    cfg, _, _ = load_config(["--config", str(by_flag)], env | {"SWARMD_CONFIG": str(by_env)})
    assert cfg.model.seed == 7


@needs_no_system_file
def test_user_config_file_is_found_under_xdg_config_home(env: dict[str, str]) -> None:
    user = write(Path(env["XDG_CONFIG_HOME"]) / "swarmd" / "swarmd.toml", "max_sessions = 5\n")
    assert default_config_files(env) == [user]
    cfg, origin, _ = load_config([], env)
    assert cfg.api.max_sessions == 5
    assert origin["max_sessions"] == f"file {user}"


def test_empty_env_value_counts_as_unset(env: dict[str, str]) -> None:
    cfg, origin, _ = load_config([], env | {"SWARMD_MODEL": ""})
    assert cfg.model.source == DEFAULT_MODEL
    assert origin["model"] == "default"


def test_unknown_toml_key_is_named(env: dict[str, str], tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "c.toml", 'model = "x"\nmemory_budgett = "1GiB"\n')
    with pytest.raises(ConfigError, match="memory_budgett"):
        load_config(["--config", str(cfg_file)], env)


def test_invalid_toml(env: dict[str, str], tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "d.toml", "model = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(["--config", str(cfg_file)], env)


def test_missing_config_file(env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(["--config", str(tmp_path / "nope.toml")], env)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--memory-budget", "abc"], "--memory-budget"),
        (["--listen", "nohostport"], "--listen"),
        (["--api-listen", "host:70000"], "--api-listen"),
        (["--dtype", "float64"], "float64"),
        (["--seed", "one"], "--seed"),
        (["--kv-wait", "soon"], "--kv-wait"),
        (["--log-level", "LOUD"], "LOUD"),
        (["--peer", "a:1", "--peer", "bad"], "--peer"),
    ],
)
def test_bad_flag_values(env: dict[str, str], argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(argv, env)


def test_bad_env_value_names_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="SWARMD_MEMORY_BUDGET"):
        load_config([], env | {"SWARMD_MEMORY_BUDGET": "lots"})
    with pytest.raises(ConfigError, match="SWARMD_INSECURE"):
        load_config([], env | {"SWARMD_INSECURE": "maybe"})


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('peer = "a:1"', "list"),
        ("no_mdns = 1", "true or false"),
        ('dtype = "float64"', "float64"),
        ('threads = "many"', "threads"),
    ],
)
def test_bad_toml_values(env: dict[str, str], tmp_path: Path, toml: str, needle: str) -> None:
    cfg_file = write(tmp_path / "e.toml", toml + "\n")
    with pytest.raises(ConfigError, match=needle):
        load_config(["--config", str(cfg_file)], env)


def test_values_are_parsed(env: dict[str, str]) -> None:
    cfg, _, _ = load_config(
        ["--memory-budget", "512MiB", "--kv-wait", "2.5", "--log-level", "debug", "--cache-dir", "/c",
         "--listen", "[::1]:7000"],
        env,
    )
    assert cfg.engine.memory_budget == 512 * 1024**2
    assert cfg.engine.kv_wait_s == 2.5
    assert cfg.log_level == "DEBUG"
    assert cfg.model.cache_dir == Path("/c")
    assert cfg.net.listen == "[::1]:7000"


def test_peer_flag_is_repeatable(env: dict[str, str]) -> None:
    cfg, origin, _ = load_config(["--peer", "a:1", "--peer", "b:2"], env | {"SWARMD_PEER": "c:3"})
    assert cfg.net.peers == ("a:1", "b:2")
    assert origin["peer"] == "flag --peer"


def test_peer_env_is_comma_separated(env: dict[str, str]) -> None:
    cfg, origin, _ = load_config([], env | {"SWARMD_PEER": "a:1, b:2,,"})
    assert cfg.net.peers == ("a:1", "b:2")
    assert origin["peer"] == "env SWARMD_PEER"


def test_peer_list_in_toml(env: dict[str, str], tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "f.toml", 'peer = ["a:1", "b:2"]\n')
    cfg, _, _ = load_config(["--config", str(cfg_file)], env)
    assert cfg.net.peers == ("a:1", "b:2")


def test_boolean_flags(env: dict[str, str]) -> None:
    cfg, origin, _ = load_config(["--no-mdns", "--insecure"], env)
    assert cfg.net.mdns is False
    assert cfg.net.insecure is True
    assert origin["no_mdns"] == "flag --no-mdns"
    cfg, _, _ = load_config([], env)
    assert cfg.net.mdns is True
    assert cfg.net.insecure is False


@pytest.mark.parametrize(("text", "mdns"), [("1", False), ("yes", False), ("off", True), ("false", True)])
def test_boolean_env(env: dict[str, str], text: str, mdns: bool) -> None:
    cfg, _, _ = load_config([], env | {"SWARMD_NO_MDNS": text, "SWARMD_INSECURE": text})
    assert cfg.net.mdns is mdns
    assert cfg.net.insecure is (not mdns)


def test_boolean_toml(env: dict[str, str], tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "g.toml", "no_mdns = true\ninsecure = true\n")
    cfg, _, _ = load_config(["--config", str(cfg_file)], env)
    assert cfg.net.mdns is False
    assert cfg.net.insecure is True


def test_describe_names_every_source(env: dict[str, str], tmp_path: Path) -> None:
    cfg_file = write(tmp_path / "h.toml", "seed = 9\n")
    cfg, origin, _ = load_config(
        ["--config", str(cfg_file), "--model", "m", "--no-mdns", "--peer", "a:1"],
        env | {"SWARMD_THREADS": "4"},
    )
    lines = {line.split(" = ")[0]: line for line in describe(cfg, origin).splitlines()}
    assert set(lines) == {o.key for o in OPTIONS}
    assert lines["model"] == 'model = "m"  # flag --model'
    assert lines["threads"] == "threads = 4  # env SWARMD_THREADS"
    assert lines["seed"] == f"seed = 9  # file {cfg_file}"
    assert lines["no_mdns"] == "no_mdns = true  # flag --no-mdns"
    assert lines["peer"] == 'peer = ["a:1"]  # flag --peer'
    assert lines["insecure"] == "insecure = false  # default"
    assert lines["memory_budget"].endswith("# unset  # default")


def test_describe_env_model(env: dict[str, str]) -> None:
    cfg, origin, _ = load_config([], env | {"SWARMD_MODEL": 'we"ird'})
    assert 'model = "we\\"ird"  # env SWARMD_MODEL' in describe(cfg, origin).splitlines()
