"""The package's layers point one way: data -> model -> train / evaluate / inference -> serve /
demo -> release -> CLI, with no import cycles and no private names imported across subsystems.

Every ``import`` in ``src/medisee`` counts, the ones inside functions too (they are
imports all the same, only later); only those under ``if TYPE_CHECKING:`` do not, since
they never run.
"""

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medisee"

#: a subsystem may import only from subsystems of a lower or equal rank
RANKS = {
    "boxes": 0,
    "allocator": 0,
    "checks": 0,
    "data": 1,
    "model": 2,
    "losses": 3,
    "inference": 4,
    "evaluate": 5,
    "train": 6,
    "serve": 7,
    "client": 7,
    "demo": 8,
    "release": 9,
    "cli": 10,
    "__main__": 11,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str):
    """``(imported module, imported names)`` of every import that can run."""
    package = module.rsplit(".", 1)[0]
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, ()
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.rsplit(".", child.level - 1)[0]
                    name = f"{base}.{child.module}" if child.module else base
                else:
                    name = child.module or ""
                yield name, tuple(alias.name for alias in child.names)
            stack.append(child)


@functools.cache
def _graph() -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    graph = {}
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        edges = [
            (name, names)
            for name, names in _imports(ast.parse(path.read_text()), module)
            if name == "medisee" or name.startswith("medisee.")
        ]
        graph[module] = edges
    return graph


def _subsystem(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_subsystem_has_a_rank():
    subsystems = {_subsystem(m) for m in _graph()} - {""}
    assert subsystems <= set(RANKS), sorted(subsystems - set(RANKS))


def test_layers_point_one_way():
    wrong = []
    for module, edges in _graph().items():
        source = _subsystem(module)
        for target_module, _ in edges:
            target = _subsystem(target_module)
            if source and target and RANKS[target] > RANKS[source]:
                wrong.append(f"{module} -> {target_module}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_private_names_cross_subsystems():
    wrong = []
    for module, edges in _graph().items():
        for target_module, names in edges:
            if _subsystem(target_module) == _subsystem(module):
                continue
            private = [n for n in names if n.startswith("_") and not n.endswith("__")]
            wrong += [f"{module}: {target_module}.{n}" for n in private]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    modules = set(_graph())
    graph = {
        module: {target for target, _ in edges if target in modules}
        for module, edges in _graph().items()
    }
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
