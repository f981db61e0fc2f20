"""The package is a house by layers: no import cycles among ``tl_lvlm`` modules, and each
layer imports only the layers below it.

The graph is built from the source (``ast``), deferred function-level imports counted and
``if TYPE_CHECKING:`` imports left out (they never run). Importing ``a.b.c`` also imports
the packages ``a.b`` and ``a``, so those count as edges too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tl_lvlm

PACKAGE = Path(tl_lvlm.__file__).parent

#: Layer of each subpackage (the longest matching prefix wins), bottom first; a module may
#: import its own layer and those below. The zoo's checkpoint registry and data (digits,
#: questions, the tiny LLaVA builder) sit under the model, whose ``from_pretrained`` resolves
#: zoo names; its trainer and evaluation run the model, so they sit above the analyses.
LAYERS = {
    "_utils": 0,
    "inputs": 1,
    "zoo": 2,
    "families": 3,
    "model": 4,
    "ablation": 5,
    "analysis": 6,
    "flow": 6,
    "patching": 6,
    "zoo.train_digits": 7,
    "zoo.evaluate_digits": 7,
    "report": 7,
    "study": 8,
    "cli": 9,
    "testing": 9,
}


def _module_name(path: Path) -> str:
    parts = ["tl_lvlm", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The ``tl_lvlm`` modules ``tree`` imports (and the packages that importing them runs)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports pkg.sub when that is a module.
            names = [base, *(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)]
        else:
            for child in ast.iter_child_nodes(node):
                visit(child)
            return
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                # A module's own ancestor packages are always imported before it runs.
                if prefix in known and prefix != "tl_lvlm" and not module.startswith(prefix + "."):
                    found.add(prefix)

    visit(tree)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``tl_lvlm`` modules it imports (``tl_lvlm`` itself left out: its exports
    are lazy and import nothing at import time)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {
        name: _imports(ast.parse(p.read_text()), name, p.name == "__init__.py", known)
        for name, p in paths.items()
        if name != "tl_lvlm"
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def _layer(module: str) -> int:
    name = module.removeprefix("tl_lvlm.")
    prefixes = [p for p in LAYERS if name == p or name.startswith(p + ".")]
    return LAYERS[max(prefixes, key=len)]


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_deferred_imports_count_and_type_checking_imports_do_not():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from tl_lvlm.model import HookedLVLM\n"
        "def f():\n    from tl_lvlm.ablation.engine import AblationEngine\n"
    )
    known = {"tl_lvlm.model", "tl_lvlm.ablation", "tl_lvlm.ablation.engine"}
    found = _imports(ast.parse(source), "tl_lvlm.flow", False, known)
    assert found == {"tl_lvlm.ablation", "tl_lvlm.ablation.engine"}


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_subpackage_has_a_layer():
    assert {m.split(".")[1] for m in import_graph()} == {p.split(".")[0] for p in LAYERS}


def test_each_layer_imports_only_the_layers_below():
    upward = sorted(
        f"{module} imports {dep}"
        for module, deps in import_graph().items()
        for dep in deps
        if _layer(dep) > _layer(module)
    )
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_production_code_never_imports_the_testing_kit():
    users = sorted(
        module
        for module, deps in import_graph().items()
        if not module.startswith("tl_lvlm.testing")
        and any(d.startswith("tl_lvlm.testing") for d in deps)
    )
    assert not users, f"production modules importing tl_lvlm.testing: {users}"
