"""The package's layering: imports only go down, never round in a cycle, never reach for a private name.

Read from the source (every `import` statement, at the top of a module or inside a function), so
a lazy import inside a function counts as much as one at the top: it is a dependency all the same.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "rnn_train"

LAYERS: list[tuple[str, ...]] = [
    # leaves: what everything may use
    ("rnn_train.errors", "rnn_train.files", "rnn_train.runfiles", "rnn_train.cli", "rnn_train.model.cells"),
    # settings and the machine
    ("rnn_train.config", "rnn_train.recipes", "rnn_train.runtime"),
    # text in, ids out; the speed kernels
    ("rnn_train.data", "rnn_train.kernels"),
    # the model and its checkpoints
    ("rnn_train.model",),
    # what is done with a model: training, prediction, teaching
    ("rnn_train.training", "rnn_train.prediction", "rnn_train.teaching"),
    # commands built on all of that
    ("rnn_train.experiments", "rnn_train.explore", "rnn_train.serve", "rnn_train.export", "rnn_train.tune",
     "rnn_train.commands", "rnn_train.__main__"),
]
"""Each module's layer is that of the longest entry that prefixes its name; it may import its own
layer and the layers above it in this list (never one further down)."""


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__") if path.name == "__init__.py" else name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(imported module, imported attribute or None) for every rnn_train import in the file."""
    out = []
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names if alias.name.startswith("rnn_train")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("rnn_train"):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    out.append((sub, None) if sub in modules else (base, alias.name))
    return out


def _layer(name: str) -> int:
    if name == "rnn_train":
        return 0  # the package's __init__: its version string
    best, layer = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), index
    assert layer is not None, f"{name} is in no layer of tests/test_layering.py: add it where it belongs"
    return layer


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {target for target, _ in _imports(name, path, modules) if target in modules and target != name}
            for name, path in modules.items()}


def test_no_module_imports_from_a_layer_below_its_own():
    upward = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets if _layer(b) > _layer(a)]
    assert upward == []


def test_the_import_graph_has_no_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue  # a package importing its own submodule is how packages work, not a cycle
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_module_imports_a_private_name_of_another():
    modules = _modules()
    private = [f"{name} imports {base}.{attr}" for name, path in modules.items()
               for base, attr in _imports(name, path, modules)
               if attr and attr.startswith("_") and not attr.startswith("__") and base != name]
    assert private == []
