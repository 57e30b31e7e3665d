"""The architecture's promises, checked on the source: methods and the model core never reach into the speed options
(those install themselves from outside), and the library core never imports the research code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "adaptformer"
# what a method needs to compute: the methods, the model and its spec, the backbone families, heads, the factory
METHOD_CORE = [*sorted((SRC / "methods").glob("*.py")), *(SRC / f for f in ("model.py", "families.py", "heads.py",
                                                                           "factory.py", "validation.py"))]  # fmt: skip


def _imports(path: Path) -> set[str]:
    """Absolute names of the adaptformer modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("adaptformer")}


@pytest.mark.parametrize("path", METHOD_CORE, ids=lambda p: str(p.relative_to(SRC)))
def test_methods_and_model_core_never_import_the_speed_options(path: Path) -> None:
    assert not {n for n in _imports(path) if n.startswith("adaptformer.speed")}


def test_adapted_blocks_are_their_backbone_block_plus_the_method() -> None:
    """An adapted block's forward names no speed flag or hand-written kernel (speed swaps in its own subclass)."""
    for path in (SRC / "methods" / "adaptformer.py", SRC / "methods" / "vpt.py"):
        text = path.read_text()
        assert "frozen_backward" not in text and "fused_attn" not in text and "class_token" not in text


@pytest.mark.parametrize("path", sorted(p for p in SRC.rglob("*.py") if "study" not in p.parts),
                         ids=lambda p: str(p.relative_to(SRC)))  # fmt: skip
def test_the_core_never_imports_the_research_code(path: Path) -> None:
    imported = {n for n in _imports(path) if n.startswith("adaptformer.study")}
    if path.name == "cli.py":  # the demo/study commands import it inside their own functions, on demand
        tree = ast.parse(path.read_text())
        top_level = {n for node in tree.body if isinstance(node, ast.ImportFrom) for n in [node.module or ""]}
        assert not {m for m in top_level if m and "study" in m}
    else:
        assert not imported
