"""The import rules of the package (README, Design): layers without cycles.

    bottom   errors, faults, files      import nothing of learnpos (but errors, faults), no torch
             config                     imports no task, no model, no torch
    data     data.*                     the bottom only (no model, no torch in tokenizers)
    model    positional, attention, model, generate, reference, hardware
    library  optim, runs, distributed, verify, analysis
    tasks    tasks.*                    above the model; the library never imports them
    top      load, train, chat, inspection, compare, hf, cli
Every import is read from the source (also those inside functions), so a lazy import
cannot hide a cycle.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "learnpos"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """learnpos modules imported anywhere in `path`, resolved to modules of the package."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n.split(".")[0] == "learnpos"}
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    g = {}
    for name, path in modules.items():
        deps = set()
        for imp in imports_of(path):
            while imp not in modules and "." in imp:  # `from learnpos.x import name` -> learnpos.x
                imp = imp.rsplit(".", 1)[0]
            if imp in modules and imp != name and imp != "learnpos":
                deps.add(imp)
        g[name] = deps
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
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

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle():  # the rule above can fail
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


LAYER = {"learnpos.errors": 0, "learnpos.faults": 0, "learnpos.files": 0, "learnpos.config": 1,
         "learnpos.hardware": 1, "learnpos.data": 2, "learnpos.reference": 2, "learnpos.positional": 3,
         "learnpos.attention": 3, "learnpos.cache": 3,
         "learnpos.model": 4, "learnpos.generate": 4, "learnpos.optim": 5, "learnpos.runs": 5,
         "learnpos.distributed": 5, "learnpos.fixtures": 5,
         "learnpos.verify": 6, "learnpos.verify_optim": 6, "learnpos.analysis": 6, "learnpos.tasks": 7,
         "learnpos.load": 8, "learnpos.resume": 8,
         "learnpos.train": 9, "learnpos.chat": 9, "learnpos.inspection": 9, "learnpos.compare": 9, "learnpos.hf": 9,
         "learnpos.derive": 9, "learnpos.tune": 9,
         "learnpos.cli": 10,
         "learnpos.__main__": 11}


def layer(module: str) -> int:
    name = module
    while name not in LAYER:
        if "." not in name:
            raise AssertionError(f"{module} has no layer: add it (or its package) to LAYER")
        name = name.rsplit(".", 1)[0]
    return LAYER[name]


def test_every_import_points_down(graph):
    """A module imports only its own layer or below (the model layer's `generate` and `model`
    share a layer: GPT.generate is a convenience that calls learnpos.generate)."""
    upward = [(m, d) for m, deps in graph.items() if m != "learnpos" for d in deps
              if layer(d) > layer(m)]
    assert upward == []


@pytest.mark.parametrize("module", ["learnpos.config", "learnpos.data.tokenizers", "learnpos.files",
                                    "learnpos.errors", "learnpos.faults", "learnpos.data.text"])
def test_bottom_modules_import_neither_the_model_nor_torch(module):
    code = (f"import sys, {module}; bad = [m for m in ('torch', 'learnpos.model', 'learnpos.tasks') "
            f"if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
