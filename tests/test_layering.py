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


def module_level_imports(path: Path) -> set[str]:
    """Absolute names of the swarmd modules imported at a module's top level (not inside functions)."""
    tree = ast.parse(path.read_text())
    pkg = ".".join(("swarmd", *path.relative_to(PKG).parent.parts))
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                out.add(".".join([*base, node.module]))
            else:
                out.add(node.module)
    return out


def test_outside_the_engine_only_its_declared_interface_is_imported_eagerly() -> None:
    """ring/, the node, status and the rest name the engine through engine/interface.py (torch-free);
    the engine's torch modules are imported lazily, where a span is really loaded."""
    offenders = {
        str(p.relative_to(PKG)): sorted(m for m in module_level_imports(p)
                                        if m.startswith("swarmd.engine") and m != "swarmd.engine.interface")
        for p in PKG.rglob("*.py") if "engine" not in p.relative_to(PKG).parts
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert not imported_roots(PKG / "engine" / "interface.py") & HEAVY
