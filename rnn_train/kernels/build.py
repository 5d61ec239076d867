"""Building the C++ time loops (csrc/recurrence.cpp) once per machine, and loading them.

``extension()`` returns the ops (``torch.ops.rnn_train_kernels``) or None, and never raises:
where there is no compiler, no ninja or an unwritable cache, it prints ONE line saying so on
stderr and the fused layers run their Python loops instead. A build that starts says so first
(it takes tens of seconds, once); one that fails says why, and the failure is remembered in the
cache, so later runs do not try again until that directory is deleted.

Where the build lives: ``$RNN_TRAIN_CACHE`` (default ``~/.cache/rnn-train``, or under
``$XDG_CACHE_HOME``), in ``kernels-<key>/``, where the key hashes everything the binary depends
on: the source, the compiler flags, the torch and Python versions and the CPU (model and
feature flags). The flags are ``-march=native``, so a binary is only ever reused on the CPU it
was built for; with torch's own ISA cap ``ATEN_CPU_CAPABILITY=avx2`` (or ``default``) the code
is built for that ISA instead. ``RNN_TRAIN_NO_CPP=1`` turns the C++ path off.

Each new version of the sources (or of torch, Python, the flags) gets a new ``kernels-<key>/``
(~1 MB), so a build also removes the builds that no process has loaded for ``STALE_DAYS`` days
(loading one marks it used); a build still in use somewhere, by another environment or under an
ISA cap, is kept.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "recurrence.cpp"  # includes the headers beside it
# built with it into one library: the generation and scoring steps (rnn_train/prediction/kernel_stepper.py)
SOURCES = (SOURCE, SOURCE.with_name("decode.cpp"))
CACHE_ENV = "RNN_TRAIN_CACHE"
OFF_ENV = "RNN_TRAIN_NO_CPP"
_OK, _FAILED = "built.ok", "build.failed"
STALE_DAYS = 30


def cache_root() -> Path:
    """The per-user cache of built kernels and autotuning decisions."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rnn-train"


def compile_flags() -> list[str]:
    """-O3 for the CPU at hand, or for the ISA that ATEN_CPU_CAPABILITY caps torch to; OpenMP for the row blocks.

    -fno-trapping-math (torch is built with it too) lets GCC turn the clamps in the gate loops into
    vector min/max: without it, the AVX2 build left those loops scalar. -mprefer-vector-width=512:
    for an Intel CPU with AVX-512 GCC otherwise vectorises the gate loops 8 floats wide (the
    explicit tiles are 16 wide either way); the same arithmetic per element, so the same results.
    (No effect where the ISA has no 512-bit vectors.)"""
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    isa = {"avx2": ["-mavx2", "-mfma"], "default": []}.get(cap, ["-march=native", "-mprefer-vector-width=512"])
    return ["-O3", *isa, "-fno-trapping-math", "-fopenmp"]


def cpu_signature() -> str:
    """The CPU's model name and feature flags (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f]
        wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
        if wanted:
            return "\n".join(dict.fromkeys(wanted))  # each distinct line once (every core repeats them)
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def build_key() -> str:
    sources = [*SOURCES, *sorted(SOURCE.parent.glob("*.h"))]
    parts = [*(f.read_bytes().decode() for f in sources), " ".join(compile_flags()), torch.__version__,
             f"{sys.version_info[0]}.{sys.version_info[1]}", cpu_signature()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def build_dir() -> Path:
    return cache_root() / f"kernels-{build_key()}"


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def _one_line(error: BaseException) -> str:
    """The most telling line of a build failure: the compiler's first "error:", else the first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    diagnostics = [line for line in lines if "error:" in line.lower()]
    text = (diagnostics or lines or [type(error).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def missing_tool() -> str | None:
    """Why a build cannot even start here (no compiler, no ninja), or None."""
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")  # what torch.utils.cpp_extension compiles with
    if shutil.which(compiler) is None:
        return f"no C++ compiler: {compiler!r} is not on PATH"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def _mark_used(directory: Path) -> None:
    """Record that this build was loaded now (the mtime of its built.ok), for `prune_stale_builds`."""
    try:
        os.utime(directory / _OK)
    except OSError:  # a read-only cache still loads
        pass


def prune_stale_builds(keep: Path, days: float = STALE_DAYS) -> list[Path]:
    """Remove the kernels-* directories beside `keep` that were last used (built, loaded or failed)
    more than `days` ago; -> the removed ones. Errors leave a directory where it is."""
    removed = []
    cutoff = time.time() - days * 86400
    for directory in keep.parent.glob("kernels-*"):
        if directory == keep or not directory.is_dir():
            continue
        marks = [directory / _OK, directory / _FAILED, directory]
        try:
            last = max(m.stat().st_mtime for m in marks if m.exists())
        except OSError:
            continue
        if last < cutoff:
            shutil.rmtree(directory, ignore_errors=True)
            if not directory.exists():
                removed.append(directory)
    return removed


def _compile(directory: Path, name: str) -> None:
    from torch.utils import cpp_extension

    flags = compile_flags()
    cpp_extension.load(name=name, sources=[str(s) for s in SOURCES], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                       build_directory=str(directory), is_python_module=False, verbose=False)


@functools.cache
def extension():
    """torch.ops.rnn_train_kernels, built on first use (tens of seconds, once per machine), or None."""
    if os.environ.get(OFF_ENV, "").strip() not in ("", "0"):
        return None
    try:
        directory = build_dir()
        name = f"rnn_train_kernels_{directory.name.split('-')[-1]}"
        if (directory / _FAILED).is_file():
            reason = (directory / _FAILED).read_text(encoding="utf-8").strip()
            _note(f"C++ kernels unavailable ({reason}); using the Python loops. Delete {directory} to retry.")
            return None
        if (directory / _OK).is_file():
            torch.ops.load_library(str(directory / f"{name}.so"))
            _mark_used(directory)
        else:
            missing = missing_tool()
            if missing is not None:  # nothing to remember: installing the tool is enough to build next time
                _note(f"C++ kernels unavailable ({missing}); using the Python loops")
                return None
            directory.mkdir(parents=True, exist_ok=True)
            _note(f"building the C++ kernels for this machine, once (cached in {directory})")
            try:
                _compile(directory, name)
            except Exception as error:  # a missing compiler/ninja or a failing build: remember it, fall back
                reason = _one_line(error)
                (directory / _FAILED).write_text(reason + "\n", encoding="utf-8")
                _note(f"C++ kernels unavailable ({reason}); using the Python loops. Delete {directory} to retry.")
                return None
            (directory / _OK).write_text("ok\n", encoding="utf-8")
            prune_stale_builds(directory)
        ops = torch.ops.rnn_train_kernels
        ops.blas_available()  # fails here, not mid-training, if the library did not register its ops
        return ops
    except Exception as error:  # an unreadable cache, a library that does not load
        _note(f"C++ kernels unavailable ({_one_line(error)}); using the Python loops")
        return None
