"""One live daemon shared by every case of the hostile catalogue, so the last case (test_zz_memory.py)
measures the memory the whole catalogue left behind. A case file adds its attacks; it must leave the
daemon serving."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster
from helpers import shared_cache_dir
from hostile_peer import RSS_MB, rss_mb, still_serves


@pytest.fixture(scope="package")
def daemon(tiny_models: dict[str, Path]) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="swh-", dir="/tmp"))
    cluster = Cluster(root, str(tiny_models["llama"]), ["0:4"], shared_cache_dir()).start()
    for _ in range(3):
        still_serves(cluster)  # warm: the first requests allocate what every later one reuses
    RSS_MB["start"] = rss_mb(cluster)
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)
