"""The installed package is the one imported, wherever camzoo runs from: a folder named ``camzoo``
in the working directory (a clone, seen from the folder above it) is not imported instead of it.

``pip install -e .`` is a static ``.pth`` holding the repository root (setup.cfg's
``package_dir``), not setuptools' import-hook finder: a regular package found on ``sys.path``
wins over a namespace portion, the finder (consulted after the path) did not, and
``python -m camzoo`` from the folder above a clone failed with
``No module named 'camzoo.results.run'``.
"""
import ast
import os
import subprocess
import sys
from importlib import metadata

import pytest

from tests.conftest import REPO


def _installed():
    try:
        metadata.distribution("camzoo")
    except metadata.PackageNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _installed(), reason="camzoo is not installed (pip install -e .)")


@pytest.fixture
def above_clone(tmp_path):
    """A folder holding ``camzoo``: a link to the repository root (a clone, seen from above)."""
    try:
        os.symlink(REPO, tmp_path / "camzoo", target_is_directory=True)
    except OSError as exc:  # no symlinks here (Windows without the privilege)
        pytest.skip(f"cannot make a symlink: {exc}")
    return tmp_path


def _python(args, cwd):
    # as a user runs it: '' (the working directory) first on sys.path, nothing added to it
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run([sys.executable, *args], cwd=str(cwd), env=env, capture_output=True,
                          text=True, timeout=300)


def test_python_m_camzoo_from_the_folder_above_a_clone_runs_the_installed_package(above_clone):
    res = _python(["-m", "camzoo", "list"], above_clone)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "explainers:" in res.stdout and "gradcam" in res.stdout and "metric protocols" in res.stdout


def test_the_module_imported_there_is_the_regular_package(above_clone):
    res = _python(["-c", "import camzoo, camzoo.results.run as r; "
                         "print(camzoo.__file__); print(r.__file__); print(list(camzoo.__path__))"],
                  above_clone)
    assert res.returncode == 0, res.stdout + res.stderr
    init, run_py, path = res.stdout.strip().splitlines()
    assert init != "None", "camzoo was imported as a namespace package: " + path
    pkg = os.path.dirname(init)
    assert os.path.isfile(os.path.join(pkg, "results", "run.py")) and os.path.dirname(os.path.dirname(run_py)) == pkg
    # the clone in the working directory is not a portion of the package
    assert not any(os.path.samefile(p, REPO) for p in ast.literal_eval(path)), path
