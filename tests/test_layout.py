"""The package's imports point one way: no module imports, directly or through others, a module
that imports it back (function-level imports included), and the foundations import nothing of
selhn's."""

import ast
from pathlib import Path

import selhn

PACKAGE = Path(selhn.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def selhn_imports(path: Path) -> set[str]:
    """Every selhn module ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selhn"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("selhn")}
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports; importing a package's module counts as importing the
    package's ``__init__`` too, which runs first."""
    graph = {module_name(p): selhn_imports(p) for p in PACKAGE.rglob("*.py")}
    for name, targets in graph.items():
        for target in list(targets):
            parent = target.rpartition(".")[0]
            if parent != "selhn" and parent in graph and not name.startswith(parent):
                targets.add(parent)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                found.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 30 and "selhn.training.trainer" in graph
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_foundations_import_no_other_part_of_selhn():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("selhn.losses"):
            assert all(t.startswith("selhn.losses") for t in targets), name
        if name in ("selhn.evaluation.metrics", "selhn.utils.distributed"):
            assert targets == set(), name
        if name.startswith("selhn.data"):
            assert not any(t.startswith("selhn.models") for t in targets), name
        assert "selhn.cli" not in targets or name == "selhn.__main__", name
