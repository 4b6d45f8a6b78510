"""The imports of src/momos go one way, as docs/architecture.md draws them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "momos"

# docs/architecture.md, bottom to top; a module may import its own layer and those below.
LAYERS = [
    {"blocks", "scales", "quantization", "assign", "kernels", "lookup", "packing", "distributed", "io"},
    {"config", "motifs", "approximate", "calibration", "cost"},
    {"project", "qat", "batchnorm", "projector", "motif_tuning"},
    {"fileformat", "compact", "onnx"},
    {"complexity"},
    {"data", "models", "trainconfig", "runstate", "runfolder", "runtime", "trainlog", "train", "finetune", "sources",
     "compress", "sweep", "report", "figures"},
    {"integrations"},
    {"cli", "__main__", "__init__"},
]


def _module_name(path: Path) -> str:
    """``momos.fileformat.codec`` -> ``fileformat.codec``; a package is named by its folder, momos itself ""."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The momos modules ``path`` imports (at any depth of the file), as dotted names under momos."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.split(".")[0] == "momos":
                target = node.module.partition(".")[2]
            else:
                continue
            targets = [target] if node.module else [f"{target}.{a.name}".strip(".") for a in node.names]
            found.update(t for t in targets if t)
        elif isinstance(node, ast.Import):
            found.update(a.name.partition(".")[2] for a in node.names if a.name.startswith("momos."))
    return {t for t in found if t != name}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # an import of a package's attribute (from . import cost) names a module when one exists
        graph[name] = {t if t in modules else t.rpartition(".")[0] for t in _imports(path)} & set(modules)
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[0] or "__init__"
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_every_module_has_a_layer():
    missing = sorted({m.split(".")[0] for m in _graph() if m and not any(m.split(".")[0] in layer for layer in LAYERS)})
    assert not missing, f"add {missing} to docs/architecture.md and LAYERS"


def test_no_layer_imports_a_higher_one():
    upward = sorted(f"{a} -> {b}" for a, targets in _graph().items() for b in targets
                    if a and b and _layer(b) > _layer(a))   # "" (momos itself): __version__ only
    assert not upward, upward


def test_module_imports_form_no_cycle():
    graph = _graph()
    # a package's __init__ re-exports its submodules; an edge back from a submodule to the
    # package itself would be the cycle to find, so only that direction counts
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if not node or not target:   # momos/__init__ re-exports the API; it is no layer
                continue
            if node.startswith(target + ".") or (target.startswith(node + ".") and _is_package(node)):
                continue
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, node, target]))
            if target not in state:
                visit(target, [*path, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def _is_package(name: str) -> bool:
    return (PACKAGE / name.replace(".", "/") / "__init__.py").is_file()
