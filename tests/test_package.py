"""Whole-package checks: the README's Python example runs as written, and the package holds no C
source nor loads compiled code (the import layering: test_layers.py)."""
import ast
import os
import re

import pytest

from tests.conftest import REPO

README = os.path.join(REPO, "README.md")
PACKAGE = os.path.join(REPO, "camzoo")


@pytest.mark.slow
def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", open(README).read(), flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "1281" in out and "gradcam" in out  # scorecam on conv_head: K=1280 (+1) forwards


# -- no compiled code ------------------------------------------------------------------------------
#: modules that must not be imported anywhere in camzoo/ (function-level imports included)
FORBIDDEN_IMPORTS = ("ctypes", "subprocess", "cffi", "torch.utils.cpp_extension")
#: files allowed one of them, with the reason (no C is compiled, and nothing is loaded from a
#: folder a user can write to): glibc's mallopt through the system's libc.so.6
ALLOWED = {os.path.join("engine", "timing.py"): {"ctypes"}}
#: what C, C++ or a shared library in a string or a file of the package looks like
C_MARKERS = ("#include", "#pragma omp", "__restrict", 'extern "C"', "-fopenmp")
C_SUFFIXES = (".c", ".h", ".cc", ".cpp", ".cu", ".so", ".dll", ".dylib", ".pyx")


def _forbidden(tree: ast.AST):
    """``(line, what)`` for each import of a :data:`FORBIDDEN_IMPORTS` module and each
    ``os.system`` / ``os.popen`` call (a shell-out without subprocess)."""
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        for name in names:
            hit = [m for m in FORBIDDEN_IMPORTS if name == m or name.startswith(m + ".")]
            if hit:
                yield node.lineno, hit[0]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("system", "popen")
                and getattr(node.func.value, "id", "") == "os"):
            yield node.lineno, f"os.{node.func.attr}"


def test_the_package_holds_no_c_source_nor_loads_compiled_code():
    """ROAD's imputation ran through C kernels compiled at first use and loaded with ctypes
    (issue 22: a library planted in the cache folder was run); the package stays pure Python
    and torch: no C source in a string or a file, no ctypes / subprocess / cffi / cpp_extension."""
    found = []
    for dirpath, dirnames, files in os.walk(PACKAGE):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in files:
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, PACKAGE)
            if f.endswith(C_SUFFIXES):
                found.append(f"{rel}: a C / compiled file")
            if not f.endswith(".py"):
                continue
            text = open(path, encoding="utf-8").read()
            tree = ast.parse(text, path)
            found += [f"{rel}:{line}: {what}" for line, what in _forbidden(tree)
                      if what not in ALLOWED.get(rel, set())]
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    hits = [m for m in C_MARKERS if m in node.value]
                    if hits:
                        found.append(f"{rel}:{node.lineno}: a string with {hits}")
    assert not found, "compiled code in camzoo/:\n  " + "\n  ".join(found)
    assert not os.path.exists(os.path.join(PACKAGE, "metrics", "road_kernels.py"))


PUBLIC_MODULES = ("camzoo", "camzoo.bench", "camzoo.stats", "camzoo.sanity", "camzoo.metrics", "camzoo.train")
INTERNAL_PACKAGES = ("camzoo.data", "camzoo.models", "camzoo.explainers", "camzoo.results", "camzoo.engine")


def test_every_public_name_has_one_import_path():
    """Each name a user needs is in the ``__all__`` of exactly one public module, resolves there,
    and the internal subpackages re-export nothing (no second path to a public name)."""
    import importlib

    seen = {}
    for mod_name in PUBLIC_MODULES:
        mod = importlib.import_module(mod_name)
        for name in mod.__all__:
            assert hasattr(mod, name), f"{mod_name}.__all__ names {name!r}, which it lacks"
            obj = getattr(mod, name)
            if callable(obj) or isinstance(obj, type):
                assert obj not in seen.values() or name == "__version__", \
                    f"{mod_name}.{name} is also public as {[k for k, v in seen.items() if v is obj]}"
            seen[f"{mod_name}.{name}"] = obj
    assert 25 <= len(seen) <= 60, f"{len(seen)} public names"
    for pkg in INTERNAL_PACKAGES:
        mod = importlib.import_module(pkg)
        assert not hasattr(mod, "__all__"), f"{pkg} is internal and declares __all__"
        exported = [n for n, v in vars(mod).items() if not n.startswith("_") and not inspect_module(v)]
        assert exported == [], f"{pkg}/__init__.py re-exports {exported}"


def inspect_module(v) -> bool:
    import types

    return isinstance(v, types.ModuleType)


def test_no_module_file_name_is_used_twice_outside_the_cli():
    """Each module name means one thing; ``cli/<command>.py`` holds the command of that name
    and the subpackages' ``__init__`` are not modules of their own. The one exception: a learned
    explainer's module in ``explainers/learned`` and its training task in ``train`` carry the
    method's name (L-CAM, LFI-CAM), the same thing seen from two layers."""
    same_method = {"lcam.py", "lficam.py"}
    names = {}
    for root, _, files in os.walk(PACKAGE):
        if os.sep + "cli" in root or "__pycache__" in root:
            continue
        for f in files:
            if f.endswith(".py") and f not in ("__init__.py", "__main__.py"):
                names.setdefault(f, []).append(os.path.relpath(os.path.join(root, f), PACKAGE))
    twice = {k: v for k, v in names.items() if len(v) > 1 and k not in same_method}
    assert twice == {}, twice
