"""engine/sources.py: every --model string resolves to a source or fails with a clear ModelSourceError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swarmd.engine.sources import RANDOM_PRESETS, ModelSource, resolve_source
from swarmd.errors import ModelSourceError, UnsupportedArchitecture


def hf_dir(root: Path, model_type: object = "llama", weights: bool = True) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": 8}))
    if weights:
        (root / "model.safetensors").write_bytes(b"\0" * 8)
    return root


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"))


@pytest.mark.parametrize("name", ["model.bin", "model.safetensors", "weights"])
def test_file_that_is_not_gguf(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="unknown model format"):
        resolve_source(str(tmp_path / name))


@pytest.mark.parametrize("name", ["m.gguf", "M.GGUF"])
def test_gguf_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"GGUF")
    assert resolve_source(str(tmp_path / name)) == ModelSource("gguf", name, (tmp_path / name).resolve())


def test_dir_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_source(str(tmp_path))


def test_dir_without_safetensors(tmp_path: Path) -> None:
    d = hf_dir(tmp_path / "m", weights=False)
    (d / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="safetensors") as info:
        resolve_source(str(d))
    assert not isinstance(info.value, UnsupportedArchitecture)


@pytest.mark.parametrize("model_type", ["gpt2", None, 5])
def test_unsupported_architecture(tmp_path: Path, model_type: object) -> None:
    d = hf_dir(tmp_path / "m", model_type=model_type)
    with pytest.raises(UnsupportedArchitecture, match="unsupported architecture") as info:
        resolve_source(str(d))
    assert repr(model_type) in info.value.message


def test_unreadable_config_json(tmp_path: Path) -> None:
    d = hf_dir(tmp_path / "m")
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelSourceError, match="cannot read"):
        resolve_source(str(d))


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
def test_supported_hf_dir(tmp_path: Path, model_type: str) -> None:
    d = hf_dir(tmp_path / "my-model", model_type=model_type)
    assert resolve_source(str(d)) == ModelSource("hf_dir", "my-model", d.resolve())


def test_random_preset() -> None:
    src = resolve_source("random:tiny-llama")
    assert (src.kind, src.name, src.path) == ("random", "random:tiny-llama", None)
    assert src.random_config == RANDOM_PRESETS["tiny-llama"]
    assert src.random_config is not RANDOM_PRESETS["tiny-llama"]  # a copy: callers cannot change the preset


def test_random_unknown_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSourceError, match="no such preset") as info:
        resolve_source("random:unknown")
    assert "tiny-llama" in info.value.message


def test_random_from_config_json(tmp_path: Path) -> None:
    d = hf_dir(tmp_path / "m", weights=False)
    for spec in (d, d / "config.json"):
        src = resolve_source(f"random:{spec}")
        assert src.kind == "random"
        assert src.path == d / "config.json"
        assert src.random_config == {"model_type": "llama", "hidden_size": 8}


def test_random_from_unsupported_config(tmp_path: Path) -> None:
    d = hf_dir(tmp_path / "m", model_type="gpt2", weights=False)
    with pytest.raises(UnsupportedArchitecture):
        resolve_source(f"random:{d}")
