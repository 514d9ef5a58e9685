"""The shape of the code, read from the source with ``ast`` (nothing is imported): no import circle
inside ``l2o_lib``, counting imports inside functions (a lazy import that dodges a circle is still
one), and benches that use only public names of the library."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the files next to this test, also when run on another tree
PACKAGE = "l2o_lib"


def module_name(path: Path, root: Path = ROOT) -> str:
    """``l2o_lib/optim/base.py`` -> ``l2o_lib.optim.base``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, importer: str, is_package: bool) -> list[str]:
    """Full dotted names an ``import`` / ``from ... import`` node asks for: a module, or a module
    followed by a name defined in it (``from .optim import sgd`` -> ``l2o_lib.optim.sgd``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: level 1 is the importer's own package
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [f"{base}.{alias.name}" for alias in node.names]


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` over every ``.py`` file of the package.

    A dotted name leads to its longest prefix that is a module (``from . import name`` needs the
    package's ``__init__`` when ``name`` is not a submodule). Importing ``a.b.c`` also runs the
    ``__init__`` of ``a.b``: that edge counts too, except to a package the importer itself lives in
    (already being imported when the importer runs).
    """
    files = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(f, root): f for f in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for dotted in _imported(node, name, path.name == "__init__.py"):
                prefixes = [".".join(dotted.split(".")[:i]) for i in range(1, dotted.count(".") + 2)]
                found = [m for m in prefixes if m in modules]
                if found:
                    edges |= {found[-1]} | {m for m in found[:-1] if m not in own}
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_cycle_finder_sees_a_circle_through_a_function_level_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    lazy = ast.parse("def f():\n    from .sl2o import LSTMRule\n")
    assert [t for n in ast.walk(lazy) for t in _imported(n, "l2o_lib.fused", False)] == \
        ["l2o_lib.sl2o.LSTMRule"]


def test_no_import_cycles():
    graph = import_graph()
    assert f"{PACKAGE}.sl2o" in graph and graph[f"{PACKAGE}.sl2o"], "the graph found no imports: wrong root?"
    found = cycles(graph)
    assert not found, "import circles in l2o_lib (imports inside functions count):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def private(name: str) -> bool:
    """``_x`` is private; ``__doc__`` and the like are not."""
    return name.startswith("_") and not name.startswith("__")


def private_uses(path: Path) -> list[str]:
    """``line: name`` for every private (``_x``, not dunder) library name a file imports or reads off a
    library module: ``from l2o_lib.m import _x``, ``import l2o_lib.m as m; m._x``, ``l2o_lib.m._x``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules, out = set(), []  # local names bound to library modules
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PACKAGE:
            for alias in node.names:
                if private(alias.name):
                    out.append((node.lineno, f"from {node.module} import {alias.name}"))
                modules.add(alias.asname or alias.name)  # harmless when it is not a module
        elif isinstance(node, ast.Import):
            modules |= {alias.asname or alias.name.split(".")[0] for alias in node.names
                        if alias.name.split(".")[0] == PACKAGE}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            value = node.value
            while isinstance(value, ast.Attribute):
                value = value.value
            if isinstance(value, ast.Name) and value.id in modules:
                out.append((node.lineno, ast.unparse(node)))
    return [f"{line}: {text}" for line, text in sorted(out)]


def test_private_use_finder_sees_imports_and_attributes(tmp_path):
    f = tmp_path / "b.py"
    f.write_text("from l2o_lib.sl2o import LSTMRule, _run_task\nfrom l2o_lib import sl2o\nimport l2o_lib.meta\n"
                 "sl2o._descend(1)\nl2o_lib.meta._x\nsl2o.__doc__\nself._y\n")
    assert private_uses(f) == ["1: from l2o_lib.sl2o import _run_task", "4: sl2o._descend", "5: l2o_lib.meta._x"]


def test_benches_use_only_public_names():
    benches = sorted((ROOT / "bench").glob("*.py"))
    assert benches, "no benches found: wrong root?"
    found = [f"{b.name}:{use}" for b in benches for use in private_uses(b)]
    assert not found, "benches use private library names (give them public names):\n" + "\n".join(found)


# The layers of README's "Architecture" section, lowest first; a module may import its own layer
# (the cycle test keeps that acyclic) and the layers below, never one above.
LAYERS = [
    ("ground", {"config", "finite", "files", "rundir", "results", "data", "corruptions", "models", "functional"}),
    ("optim", {"optim"}),
    ("engine", {"tasks", "training", "population", "runs", "tune", "subspace", "lora", "meta", "finetuning",
                "metrics"}),
    ("methods", {"pbfgs", "rnnprop", "sl2o", "mlrsnet", "l3rs"}),
    ("analysis", {"artifacts", "landscape", "symbolic", "distill", "claims"}),
    ("application", {"plots", "widgets", "nbparams", "runner", "upstream", "benchmark", "report", "cli"}),
]


def component(module: str) -> str:
    """``l2o_lib.mlrsnet.network`` -> ``mlrsnet``; the package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """``a -> b`` for every import from a lower layer to a higher one (the package ``__init__``, which
    re-exports the public API, sits above all layers)."""
    level = {name: i for i, (_, names) in enumerate(layers) for name in names}
    top = len(layers)
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if level.get(component(b), top) > level.get(component(a), top))


def test_the_layer_check_sees_an_upward_import():
    graph = {"l2o_lib.data.registry": {"l2o_lib.sl2o"}, "l2o_lib.sl2o": {"l2o_lib.optim.base"}}
    assert upward_imports(graph) == ["l2o_lib.data.registry -> l2o_lib.sl2o"]


def test_every_module_has_a_layer_and_imports_only_downwards():
    graph = import_graph()
    known = {name for _, names in LAYERS for name in names}
    unplaced = sorted({component(m) for m in graph} - known - {""})
    assert not unplaced, f"modules without a layer (add them to LAYERS and README's Architecture): {unplaced}"
    found = upward_imports(graph)
    assert not found, "imports that point up a layer:\n" + "\n".join(found)
