"""The wheel users install (``pip install .`` from a clone, or from an index)
holds the templates and the CUDA kernel sources as package data, every
module of the source tree and nothing else.

The install itself -- the wheel into a fresh virtual environment, then the
quick start's first steps run from it -- is in .ci/run (it needs the
dependencies installed, a minute, too long for a unit test).
"""
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# build outputs and local state that must not reach the copy the wheel is
# built from (a stale build/lib would put modules removed since into it)
NOT_SOURCES = ("build", "dist", "*.egg-info", ".venv", ".git", "__pycache__", "runs",
               ".pytest_cache", ".whl", ".gl")


def _build_isolation_args():
    """Build without an isolated environment when this one can (setuptools
    >= 70.1 writes wheels itself, older ones need the wheel package): fast,
    and no index needed.  Otherwise pip fetches setuptools and wheel."""
    try:
        import setuptools
        major, minor = (int(v) for v in setuptools.__version__.split(".")[:2])
    except (ImportError, ValueError):
        return []
    if (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None:
        return ["--no-build-isolation"]
    return []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built by ``pip wheel --no-deps`` from a clean copy of the
    source tree; returns (wheel path, its file names)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    env = dict(os.environ, PYTHONPATH=str(src))  # setup.py's import of layergraph: the copy
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
         *_build_isolation_args(), "-w", str(tmp / "dist"), str(src)],
        capture_output=True, text=True, env=env, cwd=str(tmp), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = glob.glob(str(tmp / "dist" / "layergraph-*.whl"))
    with zipfile.ZipFile(path) as zf:
        return path, zf.namelist()


def _relative_files(folder, pattern):
    root = os.path.join(REPO, folder)
    return sorted(os.path.relpath(p, root).replace(os.sep, "/")
                  for p in glob.glob(os.path.join(root, pattern), recursive=True)
                  if os.path.isfile(p))


def test_wheel_holds_the_templates(wheel):
    _, names = wheel
    templates = _relative_files("model_templates", "*/*")
    assert any(t.startswith("TripletNet_28x28/train_val.prototxt") for t in templates)
    shipped = sorted(n[len("layergraph/model_templates/"):] for n in names
                     if n.startswith("layergraph/model_templates/"))
    assert shipped == templates


def test_wheel_holds_the_kernels(wheel):
    _, names = wheel
    kernels = _relative_files("kernels", "**/*")   # kernels/cpu/ too
    assert "common.cuh" in kernels and "relu.cu" in kernels
    assert {"cpu/window_ops.cpp", "cpu/solver_ops.cpp", "cpu/parallel_for.h"} <= set(kernels)
    shipped = sorted(n[len("layergraph/cuda_kernels/"):] for n in names
                     if n.startswith("layergraph/cuda_kernels/"))
    assert shipped == kernels


def test_wheel_holds_every_module_and_no_other(wheel):
    _, names = wheel
    modules = sorted(os.path.relpath(p, REPO).replace(os.sep, "/")
                     for p in glob.glob(os.path.join(REPO, "layergraph", "**", "*.py"),
                                        recursive=True))
    assert "layergraph/cli/__init__.py" in modules
    assert sorted(n for n in names if n.endswith(".py")) == modules
    sample = _relative_files(os.path.join("layergraph", "imagedb", "mnist_sample"), "*")
    assert {f"layergraph/imagedb/mnist_sample/{f}" for f in sample} <= set(names)


def test_wheel_metadata_names_the_command(wheel):
    path, names = wheel
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(path) as zf:
        text = zf.read(entry_points).decode()
    assert "layergraph = layergraph.cli:main" in text


def test_package_data_is_found_where_a_wheel_puts_it(tmp_path):
    """With no checkout beside the package (as in site-packages), the
    templates and kernels are the package data under layergraph/."""
    site = tmp_path / "site-packages"
    shutil.copytree(os.path.join(REPO, "layergraph"), site / "layergraph",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(REPO, "model_templates"), site / "layergraph" /
                    "model_templates")
    shutil.copytree(os.path.join(REPO, "kernels"), site / "layergraph" / "cuda_kernels")
    code = ("import layergraph, layergraph.kernels as k, layergraph.tools.templates as t;"
            "print(layergraph.__file__); print(k.kernel_dir()); print(t.TEMPLATE_DIR);"
            "print(','.join(t.list_templates()))")
    proc = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                           f"{str(site)!r}); {code}"], capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    package, kernel_dir, template_dir, found = proc.stdout.splitlines()
    assert package == str(site / "layergraph" / "__init__.py")
    assert kernel_dir == str(site / "layergraph" / "cuda_kernels")
    assert template_dir == str(site / "layergraph" / "model_templates")
    assert "TripletNet_28x28" in found.split(",")
