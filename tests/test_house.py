"""The package's layout rules (docs/contributing.md, "The house"), read from its source with ``ast``:
no import circles between its modules, no module over 500 lines, no function body over 80 lines,
no private name imported from another module, imports of the package at the top of a module."""
import ast
import os

import pytest

import diffstride

ROOT = os.path.dirname(diffstride.__file__)
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80  # the body, after the docstring


def _modules():
    found = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = "diffstride." + os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(open(path).read()) for name, path in MODULES.items()}


def _imports(name):
    """``(node, module imported, names imported from it)`` for every import of the package in ``name``."""
    is_package = MODULES[name].endswith("__init__.py")
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[:len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.startswith("diffstride"):
                yield node, base, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("diffstride"):
                    yield node, alias.name, []


def _graph():
    graph = {}
    for name in MODULES:
        edges = set()
        for _, base, names in _imports(name):
            submodules = {f"{base}.{imported}" for imported in names} & set(MODULES)
            edges |= submodules
            # a package's own names (not its submodules: importing one runs the package's
            # __init__ first in any case, whoever imports it)
            if base in MODULES and (not names or len(submodules) < len(names)):
                edges.add(base)
        graph[name] = edges - {name}
    return graph


def _cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checks_see_the_whole_package():
    assert {"diffstride.pooling", "diffstride.data.loading", "diffstride.train.loop",
            "diffstride.experiments.report"} <= set(MODULES)
    assert "diffstride.pooling" in _graph()["diffstride.convert"]


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_between_modules():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    with open(MODULES[name]) as f:
        lines = sum(1 for _ in f)
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines: split it by topic"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_functions_stay_short(name):
    long = []
    for node in ast.walk(TREES[name]):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring does not count
            lines = node.end_lineno - body[0].lineno + 1
            if lines > MAX_FUNCTION_LINES:
                long.append(f"{node.name} ({lines} lines)")
    assert not long, f"{name}: {long}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_is_imported_from_another_module(name):
    private = []
    for _, base, names in _imports(name):
        private += [f"{base}.{n}" for n in names if n.startswith("_") and f"{base}.{n}" not in MODULES]
    # and no module.attribute access to another module's private names
    aliases = {}
    for _, base, names in _imports(name):
        for n in names:
            if f"{base}.{n}" in MODULES:
                aliases[n] = f"{base}.{n}"
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.asname and alias.name in aliases:
                    aliases[alias.asname] = aliases[alias.name]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("diffstride") and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(TREES[name]):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            private.append(f"{aliases[node.value.id]}.{node.attr}")
    assert not private, f"{name} uses private names of other modules: {sorted(set(private))}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_the_package_is_imported_at_the_top(name):
    top = {id(node) for node in TREES[name].body}
    inside = [f"line {node.lineno}: {base}" for node, base, _ in _imports(name) if id(node) not in top]
    assert not inside, f"{name} imports diffstride modules inside functions: {inside}"
