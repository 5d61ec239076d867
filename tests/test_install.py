"""`pip install .` gives a working `rnn-train` from any directory, recipes included.

A real install: a copy of the tree goes into a temporary venv that also sees this interpreter's
packages (so torch and friends are not downloaded again; setuptools from here builds it without
network when it is there), and every command runs from an empty directory with no PYTHONPATH, so
nothing can come from the checkout.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

_EVERYWHERE = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", "*.pt")
_AT_ROOT = {".git", ".venv", "build", "data", "runs"}  # user data and build output, not the source


def _not_source(directory, names):
    top = _AT_ROOT & set(names) if Path(directory) == ROOT else set()
    return top | _EVERYWHERE(directory, names)


def _run(cmd, cwd, env=None, check=True):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def _has(python, module, cwd) -> bool:
    return _run([python, "-c", f"import {module}"], cwd, check=False).returncode == 0


def _see_our_site_packages(python, cwd) -> None:
    """Let the venv import what this interpreter imports (torch, numpy, ...) after its own packages.

    Like `venv --system-site-packages`, which only reaches the base interpreter's packages: when the
    tests themselves run in a venv (CI), torch lives in that venv, so its site-packages are named here.
    """
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd).stdout.strip()
    ours = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    Path(site, "_tests_parent_site.pth").write_text("\n".join(ours) + "\n")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(run, workdir): `run("rnn-train", ...)` in an empty directory, with the venv's bin/ first on PATH."""
    base = tmp_path_factory.mktemp("install")
    shutil.copytree(ROOT, base / "src", ignore=_not_source)  # the build writes build/ and *.egg-info there
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = str(bindir / "python")
    _see_our_site_packages(python, base)
    if not _has(python, "pip", base):  # an environment without pip (e.g. made by uv): the venv brings its own
        _run([python, "-m", "ensurepip", "--default-pip"], base)
    offline = ["--no-build-isolation", "--no-index"] if _has(python, "setuptools", base) else []
    _run([python, "-m", "pip", "install", "--no-deps", "--quiet", *offline, str(base / "src")], base)

    work = base / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"

    def run(*cmd, check=True):
        return _run(list(cmd), work, env, check)

    return run, work


def test_pyproject_lists_every_package_and_maps_configs_into_it():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    from setuptools import find_packages

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = find_packages(where=str(ROOT), include=["rnn_train", "rnn_train.*"])
    assert sorted(setup["packages"]) == sorted(found + ["rnn_train.configs"])
    assert setup["package-dir"] == {"rnn_train.configs": "configs"}


def test_the_installed_package_comes_from_the_venv_with_every_recipe(installed):
    run, work = installed
    where = Path(run("python", "-c", "import rnn_train.recipes as r; print(r.__file__); print(r.recipe_dir())")
                 .stdout.split()[0])
    site = where.parent
    assert ROOT not in where.parents and "site-packages" in where.parts
    for pattern in ("*.yaml", "spaces/*.yaml"):  # the recipes and tune's search spaces
        shipped = {p.name: p.read_bytes() for p in (site / "configs").glob(pattern)}
        assert shipped and shipped == {p.name: p.read_bytes() for p in (ROOT / "configs").glob(pattern)}
    for sub in ("data", "model", "training", "prediction", "kernels", "teaching/bptt", "experiments/sweep", "explore"):
        assert (site / sub / "__init__.py").is_file(), sub
    # the explorer's page and every cell's JavaScript step travel as package data
    for name in ("explore.html", "explore.css", "explore.js", "cells/gru.js", "cells/lstm.js", "cells/rnn.js"):
        assert (site / "explore" / "static" / name).read_bytes() == (ROOT / "rnn_train/explore/static" / name).read_bytes()


def test_rnn_train_help_lists_the_commands_and_recipes_one_line_each(installed):
    run, _ = installed
    help_text = run("rnn-train", "--help").stdout
    for command in ("train", "predict", "sweep", "gradflow", "bptt", "bench", "config", "recipes", "download"):
        assert f"\n  {command} " in help_text, command
    listing = run("rnn-train", "recipes").stdout.splitlines()
    assert [line.split()[0] for line in listing] == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert "| `train.lr` |" in run("rnn-train", "config").stdout


def test_train_a_packaged_recipe_by_name_then_predict_from_any_directory(installed):
    run, work = installed
    run("rnn-train", "train", "--config", "debug", "--quiet", "--cache-dir", "cache", "log.dir=runs",
        "train.max_steps=4", "train.eval_every=2", "train.threads=1", "log.sample_length=0")
    assert (work / "runs" / "debug" / "best.pt").is_file()
    out = run("rnn-train", "predict", "--checkpoint", "runs/debug", "--prefix", "zhong ", "-k", "5").stdout
    assert "next character" in out and "zhong " in out


def test_bad_input_from_the_installed_command_is_one_line_with_status_2(installed):
    run, work = installed
    for argv, message in ((["train", "--config", "pinyn_gru"], "unknown recipe 'pinyn_gru' (did you mean pinyin_gru?); "
                                                               "`rnn-train recipes` lists them"),
                          (["trian"], "unknown command 'trian' (did you mean train?)"),
                          ([], "no command given; one of train, predict, score"),
                          (["download", "shakespeare"], "unknown corpus 'shakespeare' (did you mean tinyshakespeare?)")):
        out = run("rnn-train", *argv, check=False)
        assert out.returncode == 2, argv
        [line] = out.stderr.splitlines()
        assert line.startswith("error: ") and message in line, line


def test_the_installed_metadata_carries_the_readme_as_its_long_description(installed):
    run, _ = installed
    body = run("python", "-c", "import importlib.metadata as m; print(m.metadata('rnn-train').get_payload())").stdout
    assert body.startswith((ROOT / "README.md").read_text().splitlines()[0])
