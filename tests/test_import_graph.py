"""No import circles inside ``labelkeep_plugins/``: the layers import downward only.

Every import counts, at module level or inside a function (a lazy import is still a
dependency), except those under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "labelkeep_plugins"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: set[str], module: str) -> set[str]:
    """The package's modules that ``tree`` imports, outside TYPE_CHECKING blocks."""
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                found |= _imports(child, modules, module)
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{module}: a relative import; the package uses absolute ones"
            base = node.module or ""
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")
                elif base in modules:
                    found.add(base)
        found |= _imports(node, modules, module)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = {module_name(path, root): path for path in root.rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        graph[name] = _imports(ast.parse(path.read_text()), modules, name) - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    assert circles(graph) == []


def test_the_check_finds_a_circle(tmp_path: Path) -> None:
    """The check itself can fail: a lazy import back is a circle, a TYPE_CHECKING one is not."""
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from labelkeep_plugins import b\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from labelkeep_plugins import a\n"
    )
    assert circles(import_graph(package)) == []
    (package / "b.py").write_text("def f():\n    from labelkeep_plugins.a import x\n")
    assert circles(import_graph(package)) == [[f"{PACKAGE}.a", f"{PACKAGE}.b"]]


#: The layers, top first: each imports only those after it. ``loss.terms`` (the term
#: contract) sits under the plugin host that registers terms; the rest of ``loss`` above it.
LAYERS = [
    "cli",
    "bench",
    "tuning",
    "experiments",
    "zero_code",
    "injector",
    "tuners",
    "loss",
    "reference",
    "metrics",
    "budget",
    "config",
    "plugins",
    "hookspecs",
    "loss.terms",
    "patching",
    "env",
    "errors",
    "jsonfile",
    "log",
    "_version",
]


def layer_of(module: str) -> str | None:
    parts = module.split(".")[1:]
    for depth in (2, 1):
        if ".".join(parts[:depth]) in LAYERS:
            return ".".join(parts[:depth])
    return None


def test_layers_import_downward_only() -> None:
    """No arrow up: a tool that joins activation (NNI-trial mode) does so through a hook."""
    upward = set()
    for module, targets in import_graph().items():
        here = layer_of(module)
        for target in targets:
            there = layer_of(target)
            if here and there and LAYERS.index(there) < LAYERS.index(here):
                upward.add((module, target))
    assert upward == set()


@pytest.mark.parametrize("layer", ["loss", "reference", "tuners"])
def test_the_core_layers_never_import_zero_code_or_tools(layer: str) -> None:
    """Loss maths, the reference and tuners sit below activation and the tools."""
    above = (f"{PACKAGE}.zero_code", f"{PACKAGE}.cli", f"{PACKAGE}.bench", f"{PACKAGE}.tuning")
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith(f"{PACKAGE}.{layer}"):
            assert not [t for t in targets if t.startswith(above)], module


def test_only_the_table_renderer_imports_rich() -> None:
    """rich draws the tools' tables; the zero-code path of a user's training never loads it."""
    importers = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(name == "rich" or name.startswith("rich.") for name in names):
                importers.add(module_name(path))
    assert importers == {f"{PACKAGE}.experiments.tables"}
    graph = import_graph()
    reached, todo = set(), [f"{PACKAGE}.zero_code.auto", f"{PACKAGE}.zero_code.instrument"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph.get(module, ()))
    assert f"{PACKAGE}.zero_code.session" in reached  # the walk follows imports
    assert f"{PACKAGE}.experiments.tables" not in reached


ADAPTER_PACKAGES = sorted(
    path
    for path in (ROOT.parent / "adapters").glob("labelkeep-*/labelkeep_*")
    if (path / "__init__.py").is_file()
)


@pytest.mark.parametrize("package", ADAPTER_PACKAGES, ids=lambda path: path.name)
def test_no_adapter_has_an_import_circle(package: Path) -> None:
    """The adapters too (NNI's adapter and its speedup patch once imported each other)."""
    graph = import_graph(package)
    assert graph, package
    assert circles(graph) == []


def _readme_layout() -> str:
    text = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1]


def test_the_readme_layout_names_every_folder_and_top_level_module() -> None:
    """The README's Layout block and the tree agree, both ways, at the package's top level."""
    import re

    block = _readme_layout()
    lines = [line for line in block.splitlines() if line.startswith("  ") and line[2] != " "]
    named_folders = {m.group(1) for line in lines if (m := re.match(r"  (\w+)/", line))}
    named_modules = {
        name for line in lines for name in re.findall(r"(\w+)\.py", line.split("  ")[1])
    }
    folders = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in ROOT.glob("*.py")} - {"__init__", "_version"}
    assert named_folders == folders
    assert named_modules == modules
