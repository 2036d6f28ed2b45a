"""Config and tokenizer for a model source (the cheap half of loading; weights are in weights.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ModelSourceError
from . import gguf_cache
from .sources import ModelSource, check_model_type

log = logging.getLogger(__name__)


def meta_dir(source: ModelSource, cache_root: Path) -> Path | None:
    """The directory holding config.json and tokenizer files for ``source``."""
    if source.kind == "hf_dir":
        return source.path
    if source.kind == "gguf":
        assert source.path is not None
        return gguf_cache.ensure_meta(gguf_cache.cache_dir_for(cache_root, source.path), source.path)
    if source.path is not None:  # random:path/to/config.json: a tokenizer may lie beside it
        return source.path.parent
    return None


def load_config(source: ModelSource, cache_root: Path) -> Any:
    from transformers import AutoConfig, PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if source.kind == "random":
        assert source.random_config is not None
        raw: dict[str, Any] = dict(source.random_config)
        model_type = str(raw.pop("model_type"))
        check_model_type(model_type, source.name)
        for k in ("architectures", "transformers_version", "torch_dtype", "dtype"):
            raw.pop(k, None)
        config: PretrainedConfig = CONFIG_MAPPING[model_type](**raw)
    else:
        where = meta_dir(source, cache_root)
        try:
            config = AutoConfig.from_pretrained(str(where))
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"cannot read the model config of {source.name}: {exc}") from exc
    check_model_type(getattr(config, "model_type", None), source.name)
    return config


def load_tokenizer(source: ModelSource, cache_root: Path) -> Any | None:
    """The model's own tokenizer (and chat template); None for random presets without one."""
    from transformers import AutoTokenizer

    where = meta_dir(source, cache_root)
    if where is None or not any((where / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        if source.kind == "random":
            log.warning("model %s has no tokenizer: only token-id prompts are accepted", source.name)
            return None
        raise ModelSourceError(f"model {source.name} has no tokenizer files in {where}")
    try:
        return AutoTokenizer.from_pretrained(str(where))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load the tokenizer of {source.name}: {exc}") from exc
