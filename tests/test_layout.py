"""The package's imports point one way: no module imports, directly or through others, a module
that imports it back (function-level imports included); the layers import down only (cli >
training and inference > evaluation and config > features > models > data > losses and utils);
and docs/README.md's map of the source tree names every module."""

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
            base = PACKAGE.parent / node.module.replace(".", "/")
            submodules = {a.name for a in node.names if (base / f"{a.name}.py").exists()}
            found |= {f"{node.module}.{name}" for name in submodules}
            if len(submodules) < len(node.names):  # names defined in the module itself
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


LOWER = ("selhn.losses", "selhn.utils", "selhn.data", "selhn.models", "selhn.features",
         "selhn.evaluation", "selhn.config", "selhn.checkpoint")  # fmt: skip
UPPER = ("selhn.training", "selhn.inference", "selhn.cli")


def test_the_layers_import_down_only():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith(("selhn.losses", "selhn.utils")):  # the foundations
            assert all(t.startswith(name.rsplit(".", 1)[0]) for t in targets), name
        if name in ("selhn.evaluation.metrics", "selhn.utils.distributed"):
            assert targets == set(), name
        if name.startswith("selhn.data"):
            assert not any(t.startswith("selhn.models") for t in targets), name
        if name.startswith(LOWER):
            assert not any(t.startswith(UPPER) for t in targets), (name, targets)
        if name.startswith("selhn.training"):
            assert not any(t.startswith("selhn.inference") for t in targets), name
        if name.startswith("selhn.inference"):
            assert not any(t.startswith("selhn.training") for t in targets), name
        assert not any(t.startswith("selhn.cli") for t in targets) or name.startswith(
            ("selhn.cli", "selhn.__main__")
        ), name


def test_the_docs_map_names_every_module():
    text = (PACKAGE.parents[1] / "docs" / "README.md").read_text(encoding="utf-8")
    tree = text[text.index("## The source tree") :]
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative == Path("__init__.py"):
            continue
        named = f"{relative.parent.name}/" if path.name == "__init__.py" else path.name
        assert named in tree, f"docs/README.md's source map does not name {relative}"
