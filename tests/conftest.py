"""Shared fixtures: tiny random models saved with save_pretrained."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a GPU, Triton kernels run in Triton's interpreter (numpy); it is chosen when a kernel is defined,
# so before any swarmd engine module is imported.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from model_factory import make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: make_tiny_model(root / f"tiny-{arch}", arch) for arch in ("llama", "qwen2", "mistral")}


@pytest.fixture()
def short_tmp() -> Iterator[Path]:
    """Unix socket paths must stay under 108 bytes: pytest's tmp_path can be longer."""
    d = Path(tempfile.mkdtemp(prefix="swd-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture()
def key_file(short_tmp: Path) -> Path:
    """A fresh swarm key file, mode 0600."""
    from swarmd.keys import generate_key

    path = short_tmp / "swarm.key"
    path.write_text(generate_key() + "\n")
    path.chmod(0o600)
    return path
