"""The architecture's promises, checked on the source: the folders are layers that import downward only, no import
cycle (inside functions too, but for the method registry's lazy import of its own built-ins), methods and the model
core never reach into the speed options (those install themselves from outside), and ``import adaptformer`` loads
neither the training engine, the command line, the video decoder nor the server."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.paths import SRC

# Layers, lowest first: a module imports (at module level or inside a function) only from its own layer or below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "validation", "files", "version"),  # shared helpers
    ("precision", "preprocessing", "heads"),
    ("backbones", "data"),  # backbone families, models, checkpoint converters; datasets, sampling, decoding, transforms
    ("methods",),  # the registry and one module per method
    ("model",),  # spec, freezing, parameter report
    ("factory", "saving", "cards"),  # building a model; the adapter file and its model card
    ("segmentation",),  # an adapted backbone's patch features, decode heads, the segmentation model
    ("speed",),  # options installed from outside
    ("engine",),  # training: config, splits, loaders, loop, optim, schedule, run folders
    ("inference",),  # evaluate/predict/loading, multi-task, export, inspect, serve
    ("recipes", "suite", "study"),  # the paper's recipes, benchmark/sweep drivers, the research code
    ("cli", "__init__"),  # the command line; the package root (its public API) imports from every layer below
)
LAYER_OF = {room: level for level, rooms in enumerate(LAYERS) for room in rooms}
TOP_LEVEL_MODULES = {"__init__", "errors", "validation", "files", "version", "precision", "preprocessing", "heads",
                     "model", "factory", "saving", "cards"}  # fmt: skip


@dataclass(frozen=True)
class Import:
    target: str  # dotted module name inside the package
    lazy: bool  # inside a function (runs on call), not at import time


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> list[Import]:
    """The package modules ``path`` imports at run time (``if TYPE_CHECKING:`` blocks left out), each resolved to the
    module itself (``from .methods import lora`` -> ``adaptformer.methods.lora``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom):
                base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                module = ".".join(p for p in ((base if child.level else ""), child.module or "") if p)
                for alias in child.names:
                    full = f"{module}.{alias.name}"
                    found.append(Import(full if full in MODULES else module, inner))
            elif isinstance(child, ast.Import):
                found.extend(Import(alias.name, inner) for alias in child.names)
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return [i for i in found if i.target == "adaptformer" or i.target.startswith("adaptformer.")]


def room(module: str) -> str:
    """The top-level part of the package a module belongs to (``adaptformer.engine.loop`` -> ``engine``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_room_has_a_layer() -> None:
    rooms = {room(m) for m in MODULES}
    assert rooms <= set(LAYER_OF), f"place these in LAYERS: {sorted(rooms - set(LAYER_OF))}"


def test_every_source_folder_is_a_package() -> None:
    """setuptools' package discovery skips a folder without ``__init__.py``: a wheel would then lack its modules."""
    folders = {p.parent for p in SRC.rglob("*.py")}
    assert sorted(str(f.relative_to(SRC)) for f in folders if not (f / "__init__.py").is_file()) == []


def test_only_shared_helpers_and_the_core_sit_at_the_top() -> None:
    top = {p.stem for p in SRC.glob("*.py")}
    assert top <= TOP_LEVEL_MODULES, f"move into a subpackage: {sorted(top - TOP_LEVEL_MODULES)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "adaptformer"))
def test_layers_import_downward_only(module: str) -> None:
    level = LAYER_OF[room(module)]
    upward = sorted({i.target for i in imports(MODULES[module]) if LAYER_OF[room(i.target)] > level})
    assert not upward, f"{module} (layer {LAYERS[level]}) imports from a higher layer: {upward}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return out


def test_no_import_cycles() -> None:
    """No cycle, counting imports inside functions too, except the method registry's lazy import of its own built-ins
    (the one place a lower module names the modules that register with it)."""

    def allowed(module: str, imported: Import) -> bool:
        return (
            module == "adaptformer.methods.registry"
            and imported.lazy
            and imported.target.startswith("adaptformer.methods.")
        )

    graph = {
        m: {i.target for i in imports(p) if i.target in MODULES and i.target != m and not allowed(m, i)}
        for m, p in MODULES.items()
    }
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


CORE = [m for m in MODULES if m != "adaptformer" and LAYER_OF.get(room(m), 9) <= LAYER_OF["model"]]


@pytest.mark.parametrize("module", sorted(CORE))
def test_methods_and_model_core_never_import_the_speed_options(module: str) -> None:
    assert not [i.target for i in imports(MODULES[module]) if room(i.target) == "speed"]


def test_adapted_blocks_are_their_backbone_block_plus_the_method() -> None:
    """An adapted block's forward names no speed flag or hand-written kernel (speed swaps in its own subclass)."""
    for path in (SRC / "methods" / "adaptformer.py", SRC / "methods" / "vpt.py"):
        text = path.read_text()
        assert "frozen_backward" not in text and "fused_attn" not in text and "class_token" not in text


def test_importing_the_library_loads_no_engine_cli_decoder_or_server() -> None:
    code = (
        "import sys, adaptformer; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('av', 'fastapi', 'uvicorn', 'jsonargparse') "
        "or m.startswith(('adaptformer.engine', 'adaptformer.cli', 'adaptformer.data.video', 'adaptformer.suite', "
        "'adaptformer.study', 'adaptformer.inference.serve'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


# adaptformer 0.2's public API (its ``adaptformer.__all__``): every name still imports from the package top.
PUBLIC_0_2 = ("AdaptFormerConfig", "AdapterFileError", "AdapterPlusConfig", "CheckpointError", "FullConfig",
              "LinearConfig", "LoRAConfig", "Method", "MethodConfig", "ModelSpec", "MultiTaskModel", "ParameterReport",
              "Preprocessing", "SpeedConfig", "UnsupportedModelError", "VPTConfig", "VideoVisionTransformer", "adapt",
              "apply_method", "apply_speed", "build_backbone", "count_trainable", "create_model", "get_method",
              "load_adapter", "load_pretrained", "merge_lora", "method_names", "parameter_report",
              "read_adapter_config", "register_converter", "register_method", "save_adapter",
              "unmerge_lora")  # fmt: skip


def test_the_public_api_of_0_2_still_imports() -> None:
    import adaptformer

    assert set(PUBLIC_0_2) <= set(adaptformer.__all__)
    missing = [name for name in PUBLIC_0_2 if not hasattr(adaptformer, name)]
    assert missing == []
