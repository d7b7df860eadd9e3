"""The package's shape: no import circles, a method-agnostic engine, profiling through the public
API. Read from the source with ``ast`` (module-level and function-local imports alike)."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _modules() -> dict[str, str]:
    mods = {}
    for top in ("lmsrr", "kernels"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(folder, f)
                    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    mods[name.removesuffix(".__init__")] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (a name resolves to its longest known prefix)."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        pkg = m if path.endswith("__init__.py") else m.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in names:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != m and not m.startswith(target + "."):
                    graph[m].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "modules that import each other in a circle: " + "; ".join(map(", ".join, found))


def test_kernels_never_import_the_trainer():
    graph = import_graph()
    bad = {m: sorted(t for t in ts if t.startswith("lmsrr")) for m, ts in graph.items() if m.startswith("kernels")}
    assert not any(bad.values()), bad


def _source(*parts) -> str:
    return open(os.path.join(ROOT, *parts), encoding="utf-8").read()


def test_engine_and_baselines_know_no_switch_vector():
    for parts in (("lmsrr", "engine.py"), ("lmsrr", "methods", "common.py")):
        assert "switch" not in _source(*parts), parts


def test_train_task_fits_on_one_screen():
    tree = ast.parse(_source("lmsrr", "engine.py"))
    (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "train_task"]
    assert fn.end_lineno - fn.lineno + 1 < 40


@pytest.mark.parametrize("script", ["profile.py"])
def test_bench_scripts_use_only_public_names(script):
    tree = ast.parse(_source("bench", script))
    private = set()
    lmsrr_names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmsrr"):
            lmsrr_names |= {a.asname or a.name for a in node.names}
            private |= {a.name for a in node.names if a.name.startswith("_")}
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            private.add(node.attr)
    assert lmsrr_names and not private, private
