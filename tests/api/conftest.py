from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import NodeThread, node_config, start_node


@pytest.fixture(scope="module")
def llama_node(tiny_models: dict[str, Path]) -> Iterator[NodeThread]:
    tmp = Path(tempfile.mkdtemp(prefix="swd-", dir="/tmp"))
    node = start_node(node_config(tmp, str(tiny_models["llama"])))
    yield node
    node.stop()
    shutil.rmtree(tmp, ignore_errors=True)
