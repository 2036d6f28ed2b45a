"""House rule: torch and transformers are imported only inside swarmd/engine/."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "swarmd"
HEAVY = {"torch", "transformers", "safetensors", "gguf", "accelerate"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_heavy_imports_stay_in_engine() -> None:
    offenders = {
        str(p.relative_to(PKG)): sorted(imported_roots(p) & HEAVY)
        for p in PKG.rglob("*.py")
        if "engine" not in p.relative_to(PKG).parts and imported_roots(p) & HEAVY
    }
    assert offenders == {}


def test_only_codec_may_import_msgpack() -> None:
    users = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if "msgpack" in imported_roots(p)]
    assert set(users) <= {"wire/codec.py"}
