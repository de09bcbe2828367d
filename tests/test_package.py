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
