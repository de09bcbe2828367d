"""The package's imports run one way (docs/architecture.md) and form no circle.

Every module of ``camzoo/`` is parsed with ``ast``; every import in it (module level or inside
a function) that names a camzoo module is an edge. A module may import its own layer or a
lower one (the list below, top to bottom); an edge pointing up, or a circle of edges, fails
the test with the file and line of each offending import.
"""
import ast
import os
from typing import Dict, List, Set, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "camzoo")

#: top to bottom; an import may only point down (or stay in its layer)
LAYERS = ["api", "cli", "engine", "train", "results", "metrics", "explainers", "models", "data",
          "base"]
#: top-level modules of the package and their layers (sub-packages are their own layer)
TOP_LEVEL = {"__init__": "api", "__main__": "api", "bench": "api", "stats": "api", "sanity": "api",
             "utils": "base", "progress": "base",
             "registry": "base", "version": "base"}


def module_names(root: str, package: str) -> Dict[str, str]:
    """Dotted module name -> file path for every ``.py`` below ``root``."""
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join([package, *rel])] = os.path.join(dirpath, f)
    return out


def layer_of(module: str, package: str, top_level: Dict[str, str]) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return top_level["__init__"]
    sub = parts[1]
    return top_level.get(sub, sub)


def imports(path: str, module: str, known: Set[str]) -> List[Tuple[int, str]]:
    """``(line, imported module)`` for every import of a module in ``known``."""
    tree = ast.parse(open(path).read(), path)
    is_pkg = os.path.basename(path) == "__init__.py"
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((node.lineno, a.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            # ``from . import fakecam`` imports the submodule; ``from .base import X`` the module
            out += [(node.lineno, s) for s in subs] or [(node.lineno, target)]
    resolved = []
    for line, name in out:
        # the longest known module the name starts with (``camzoo.models.zoo.BACKBONES`` -> zoo)
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            cand = ".".join(parts[:k])
            if cand in known:
                if cand != module and (line, cand) not in resolved:
                    resolved.append((line, cand))
                break
    return resolved


def check(root: str, package: str, layers=LAYERS, top_level=TOP_LEVEL) -> List[str]:
    """Every upward import and every import circle in the package at ``root``, as messages."""
    mods = module_names(root, package)
    known = set(mods)
    rank = {name: i for i, name in enumerate(layers)}
    problems: List[str] = []
    edges: Dict[str, List[Tuple[int, str]]] = {}
    for mod, path in sorted(mods.items()):
        lay = layer_of(mod, package, top_level)
        if lay not in rank:
            problems.append(f"{os.path.relpath(path, os.path.dirname(root))}: module {mod} is in no "
                            f"layer (add {lay!r} to the layer list)")
            continue
        edges[mod] = imports(path, mod, known)
        for line, target in edges[mod]:
            tl = layer_of(target, package, top_level)
            if rank.get(tl, len(layers)) < rank[lay]:
                problems.append(f"{os.path.relpath(path, os.path.dirname(root))}:{line}: {mod} "
                                f"({lay}) imports {target} ({tl}), a layer above it")
    # circles: strongly connected components of the import graph (Tarjan)
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for _, w in edges.get(v, []):
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
                members = set(comp)
                where = [f"{os.path.relpath(mods[a], os.path.dirname(root))}:{line} -> {b}"
                         for a in sorted(members) for line, b in edges.get(a, []) if b in members]
                problems.append("import circle between " + ", ".join(sorted(members)) + ": "
                                + "; ".join(where))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return problems


def test_camzoo_imports_point_down_and_form_no_circle():
    problems = check(PACKAGE, "camzoo")
    assert not problems, "\n".join(problems)


def test_the_checker_finds_upward_imports_and_circles(tmp_path):
    pkg = tmp_path / "pkg"
    for sub in ("models", "explainers", "train"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "zoo.py").write_text("import os\n")
    (pkg / "explainers" / "a.py").write_text("from . import b\n\n\ndef f():\n    from ..train import loop\n")
    (pkg / "explainers" / "b.py").write_text("from .a import f\nfrom ..models.zoo import x\n")
    (pkg / "train" / "loop.py").write_text("from pkg.models import zoo\n")
    problems = check(str(pkg), "pkg")
    assert any("pkg/explainers/a.py:5:" in p and "pkg.train.loop (train), a layer above" in p
               for p in problems), problems
    circles = [p for p in problems if p.startswith("import circle")]
    assert len(circles) == 1 and "pkg.explainers.a, pkg.explainers.b" in circles[0], problems
    assert "pkg/explainers/a.py:1 -> pkg.explainers.b" in circles[0]
    # models -> nothing, train -> explainers (down): no other problem
    assert len(problems) == 2, problems


@pytest.mark.parametrize("layer", [l for l in LAYERS if l not in ("api", "base")])
def test_every_layer_is_a_package(layer):
    assert os.path.isfile(os.path.join(PACKAGE, layer, "__init__.py"))
