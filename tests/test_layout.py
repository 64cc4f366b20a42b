"""The package's layout keeps its promises: no import cycles, no module reaching into another's
private names, and the search importable without torch or SQL."""

import ast
import subprocess
import sys
from pathlib import Path

import cellsearch

PACKAGE = Path(cellsearch.__file__).parent


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = modules()


def imports(path: Path) -> list[tuple[ast.AST, str, str | None]]:
    """(node, module imported, name imported from it or None) for every cellsearch import run,
    top-level or inside a function (not those for type checkers only); `from package import
    module` counts as the module."""
    found = []
    tree = ast.parse(path.read_text())
    typing_only = {id(inner) for node in ast.walk(tree)  # `if TYPE_CHECKING:` runs no import
                   if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
                   for inner in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(node, a.name, None) for a in node.names if a.name.startswith("cellsearch")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cellsearch"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((node, submodule, None) if submodule in MODULES
                             else (node, node.module, alias.name))
    return found


def test_there_are_no_import_cycles():
    graph = {name: {module for _, module, _ in imports(path) if module != name}
             for name, path in MODULES.items()}

    def parents(name: str) -> set[str]:  # importing a.b.c runs a and a.b first
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    for name in graph:  # a module's own packages are not a cycle of its making
        graph[name] = {m for m in graph[name] if m not in parents(name)}
    state: dict[str, str] = {}
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_module_uses_another_modules_private_names():
    offences = []
    for name, path in MODULES.items():
        aliases = {}
        for node, module, imported in imports(path):
            if imported is not None and imported.startswith("_") and module != name:
                offences.append(f"{name} imports {module}.{imported}")
            if imported is None:
                bound = next((a.asname or a.name.split(".")[-1] for a in node.names
                              if module.endswith(a.name)), None)
                if bound:
                    aliases[bound] = module
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                offences.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    assert not offences, "\n".join(offences)


def test_this_test_would_see_a_cycle_and_a_private_import(tmp_path, monkeypatch):
    # the checks above are not vacuous: they find what they look for
    (tmp_path / "a.py").write_text(
        "from cellsearch.cells import graph\nfrom cellsearch.x import _y\n")
    found = imports(tmp_path / "a.py")
    assert (found[0][1], found[0][2]) == ("cellsearch.cells.graph", None)
    assert (found[1][1], found[1][2]) == ("cellsearch.x", "_y")
    assert "cellsearch.engine.kernels.fused" in MODULES and len(MODULES) > 60


def test_importing_the_search_loads_neither_torch_nor_sqlite():
    code = ("import sys, cellsearch.search, cellsearch.storage, cellsearch.evaluation.job; "
            "print(sorted({'torch', 'sqlite3', 'numpy'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"
