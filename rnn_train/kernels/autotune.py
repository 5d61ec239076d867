"""Choosing a recurrent module's training path by measuring the candidates, once per machine.

Why measure: which path is fastest depends on the CPU (AVX-512 or AVX2 only, so which of MKL and
oneDNN runs the better GEMM), on the thread count and on the layer's shapes; a choice fixed from
one machine's timings was wrong on the next (docs/kernels.md). So on first use for a given
module shape the candidates run a few interleaved forward+backward passes and the fastest wins
(a model too small for the choice to matter takes the C++ loop on one block without measuring):

    1. the all-steps GEMMs: torch.mm ("blas") against oneDNN for the big ones ("auto"), the C++
       kernels' tiled weight gradients ("tiled") and both ("auto-tiled"), float32 only;
    2. the time loop, with that GEMM choice: C++ with BLAS-threaded GEMMs, with batch rows or
       hidden units split over the threads, C++ with its own tiled GEMMs (csrc/tiled.h) on one
       block, batch rows or hidden units per thread, the Python loop, and (for
       model.kernel=auto) torch's own module.

The decision is stored in ``<cache>/autotune.json`` (rnn_train.kernels.build.cache_root), keyed
by the machine (CPU model and flags, torch version, the ISA caps torch honours, threads, the
C++ build) and the shapes, with the timings, the time and the load average they were taken at,
so every later run on the machine takes the same path: the same config and seed give the same
losses. Deleting that file re-measures (and may pick another path, whose rounding differs): do
that after a decision was taken while the machine was busy. The measurement runs on a copy of
the module with its own random generator: it never touches the model's gradients or the global RNG.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import sys
import time
from typing import Callable, TypeVar

import torch
from torch import nn

from rnn_train.files import atomic_write_text
from rnn_train.kernels import build
from rnn_train.kernels.fused import FusedPath, can_fuse, fused_rnn
from rnn_train.model import cells
from rnn_train.kernels.gemm import onednn_available
from rnn_train.kernels.precision import ONEDNN_ISA_ENV, autocast_reaches

NATIVE = "native"
_ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
_ISA_ENV_IF_SET = tuple(name for name in ONEDNN_ISA_ENV if name not in _ISA_ENV)
"""Caps read since decisions were first stored: in the key only where set, so that the key of a
machine without them, and the decisions stored under it, stay what they were."""
_WARMUP, _ROUNDS, _PRUNE_AFTER, _PRUNE_RATIO = 1, 6, 3, 1.5


def loop_candidates(rnn: nn.Module, gemm: str) -> list[FusedPath]:
    """The fused paths that can train `rnn` here, with `gemm` for the all-steps GEMMs."""
    out = []
    if can_fuse(rnn, loop="cpp") and build.extension() is not None:
        step = "blas" if build.extension().blas_available() else "aten"
        threads = ["blas"]
        if torch.get_num_threads() > 1:
            threads += ["rows", "units"] if step == "blas" else ["rows"]
        out += [FusedPath("cpp", gemm, step, t) for t in threads]
        out += [FusedPath("cpp", gemm, "tiled", t) for t in threads]
    if can_fuse(rnn, loop="python"):
        out.append(FusedPath("python", gemm))
    return out


def machine_key() -> str:
    """What a timing depends on besides the shapes."""
    cpp = build.build_key() if build.extension() is not None else "no-cpp"
    parts = [build.cpu_signature(), torch.__version__, str(torch.get_num_threads()), cpp,
             *(f"{k}={os.environ.get(k, '')}" for k in _ISA_ENV),
             *(f"{k}={os.environ[k]}" for k in _ISA_ENV_IF_SET if os.environ.get(k))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def shape_key(rnn: nn.Module, batch_size: int, num_steps: int, one_hot: bool, with_native: bool) -> str:
    w = rnn.weight_hh_l0
    parts = [cells.of_module(rnn).name, f"L{rnn.num_layers}", f"I{rnn.input_size}", f"H{rnn.hidden_size}", f"B{batch_size}",
             f"T{num_steps}", str(w.dtype).split(".")[-1], "ids" if one_hot else "dense",
             "bias" if rnn.bias else "nobias", getattr(rnn, "nonlinearity", "tanh"), "native" if with_native else "fused"]
    return "-".join(parts)


def _path_to_json(path: FusedPath | None) -> dict:
    return {"native": True} if path is None else {"loop": path.loop, "gemm": path.gemm, "step": path.step,
                                                   "threads": path.threads}


def _path_from_json(d: dict) -> FusedPath | None:
    return None if d.get("native") else FusedPath(d["loop"], d["gemm"], d["step"], d["threads"])


def _cache_file():
    return build.cache_root() / "autotune.json"


def _read_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict) -> None:
    try:
        table = _read_cache()
        table[key] = entry
        _cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(_cache_file(), json.dumps(table, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # an unwritable cache only means measuring again next time


def _pass(rnn: nn.Module, path: FusedPath | None, inp: torch.Tensor, one_hot: bool,
          precision: str = "fp32") -> Callable[[], None]:
    """One forward+backward of `rnn` on `inp` by `path` (None: the module itself, under bf16
    autocast for precision "bf16"), gradients discarded; on a GPU it waits for the GPU's work."""
    params = [p for p in rnn.parameters() if p.requires_grad]
    w = rnn.weight_hh_l0
    autocast = torch.autocast(w.device.type, dtype=torch.bfloat16,
                              enabled=path is None and precision == "bf16" and autocast_reaches(rnn))

    def run():
        if path is None:
            x = nn.functional.one_hot(inp, rnn.input_size).to(w.dtype) if one_hot else inp
            with autocast:
                out, _ = rnn(x)
        else:
            out, _ = fused_rnn(rnn, inp, one_hot_ids=one_hot, path=path, precision=precision)
        torch.autograd.grad(out.float().sum(), params)
        if w.is_cuda:
            torch.cuda.synchronize(w.device)

    return run


def _typical(seconds: list[float]) -> float:
    """The lower quartile of a candidate's times: other processes only ever add time, so the fast
    end is the better estimate of what the candidate costs on a quiet machine."""
    ordered = sorted(seconds)
    return ordered[(len(ordered) - 1) // 4]


def race(runs: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Typical seconds (`_typical`) of each callable over interleaved rounds; clear losers stop early."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    alive = list(runs)
    for r in range(_WARMUP + _ROUNDS):
        for name in alive[r % len(alive):] + alive[: r % len(alive)]:  # rotate: no fixed neighbour
            t0 = time.perf_counter()
            runs[name]()
            if r >= _WARMUP:
                times[name].append(time.perf_counter() - t0)
        if r == _WARMUP + _PRUNE_AFTER - 1 and len(alive) > 2:
            best = min(_typical(times[n]) for n in alive)
            alive = [n for n in alive if _typical(times[n]) <= _PRUNE_RATIO * best]
    return {name: _typical(t) for name, t in times.items()}


def _measured_copy(rnn: nn.Module, batch_size: int, num_steps: int, one_hot: bool) -> tuple[nn.Module, torch.Tensor]:
    """(a copy of `rnn` to time, an input of the run's shape): the model's own .grad stays untouched,
    no dropout (no RNG), and the input drawn from a generator of its own. In training mode, as it
    trains: cuDNN's RNN backward refuses a module in eval mode."""
    module = copy.deepcopy(rnn).train()
    module.dropout = 0.0
    g = torch.Generator().manual_seed(0)
    shape = (batch_size, num_steps) if module.batch_first else (num_steps, batch_size)
    if one_hot:
        inp = torch.randint(0, module.input_size, shape, generator=g)
    else:
        inp = torch.randn(*shape, module.input_size, generator=g, dtype=module.weight_hh_l0.dtype)
    return module, inp.to(module.weight_hh_l0.device)


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # a busy machine makes timings noisy


def measure(rnn: nn.Module, batch_size: int, num_steps: int, one_hot: bool, with_native: bool) -> dict:
    """Time the candidates for `rnn` at [batch_size, num_steps]: {"choice": path json, "ms": {label: ms}}."""
    module, inp = _measured_copy(rnn, batch_size, num_steps, one_hot)
    gemm, loops = "blas", loop_candidates(module, "blas")
    onednn, tiles = onednn_available(), build.extension() is not None
    options = ["blas"] + ["auto"] * onednn + ["tiled"] * tiles + ["auto-tiled"] * (onednn and tiles)
    if loops and module.weight_hh_l0.dtype == torch.float32 and len(options) > 1:
        first = loops[0]
        gemms = {g_: _pass(module, FusedPath(first.loop, g_, first.step, first.threads), inp, one_hot)
                 for g_ in options}
        timed = race(gemms)
        gemm = min(timed, key=timed.get)
    runs = {p.label(): (p, _pass(module, p, inp, one_hot)) for p in loop_candidates(module, gemm)}
    if with_native:
        runs[NATIVE] = (None, _pass(module, None, inp, one_hot))
    timed = race({name: run for name, (_, run) in runs.items()})
    best = min(timed, key=timed.get)
    return {"choice": _path_to_json(runs[best][0]), "ms": {k: round(v * 1e3, 3) for k, v in timed.items()},
            "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "load": _load()}


SMALL_STEP_WORK = 1 << 20
"""Multiply-adds per time step (all layers' h W_hh^T) below which nothing is measured: the
fused loop on one block wins by its lower overhead alone, and threads or GEMM backends cannot
make a difference worth the measurement (which, on a busy machine, takes longer than training
such a model)."""


def is_small(rnn: nn.Module, batch_size: int) -> bool:
    """Whether `rnn` at `batch_size` is below SMALL_STEP_WORK: too small to be worth measuring."""
    return batch_size * cells.of_module(rnn).num_blocks * rnn.hidden_size ** 2 * rnn.num_layers < SMALL_STEP_WORK


def small_model_path(rnn: nn.Module, batch_size: int) -> FusedPath | None:
    """The path for a model too small to measure (SMALL_STEP_WORK), or None if it is not that small."""
    if not is_small(rnn, batch_size):
        return None
    candidates = loop_candidates(rnn, "blas")
    serial = [p for p in candidates if p.threads == "blas"]
    return (serial or candidates or [None])[0]


def choose(rnn: nn.Module, batch_size: int, num_steps: int, one_hot: bool, with_native: bool) -> FusedPath | None:
    """The training path for `rnn` on this machine: the stored decision, else measured now and stored.
    None means the module itself (only when with_native; a small model has a fixed answer)."""
    small = small_model_path(rnn, batch_size)
    if small is not None:
        return small
    def measured() -> dict:
        with torch.enable_grad():
            return measure(rnn, batch_size, num_steps, one_hot, with_native)

    key = f"{machine_key()}/{shape_key(rnn, batch_size, num_steps, one_hot, with_native)}"
    return stored_decision(key, measured, lambda entry: _path_from_json(entry["choice"]))


def runs_here(rnn: nn.Module, path: FusedPath | None, one_hot: bool, precision: str) -> bool:
    """Whether `path` trains `rnn` in `precision` on this machine at all: one tiny forward+backward on
    a copy. (oneDNN refuses a bf16 LSTM where its ISA is capped below bf16, for one.)"""
    module, inp = _measured_copy(rnn, 2, 2, one_hot)
    try:
        with torch.enable_grad():
            _pass(module, path, inp, one_hot, precision)()
    except RuntimeError:
        return False
    return True


def _label(path: FusedPath | None, precision: str) -> str:
    return f"{NATIVE if path is None else path.label()} {precision}"


def choose_precision(rnn: nn.Module, batch_size: int, num_steps: int, one_hot: bool, kernel: str,
                     fp32_path: FusedPath | None, candidates: list[FusedPath | None],
                     requested: str) -> tuple[FusedPath | None, str]:
    """(path, precision) for `requested` "bf16" or "auto" on this machine: the fastest of the bf16
    `candidates` (paths that compute in bf16; None is the module under autocast); with "auto", that
    one only where it beat `fp32_path` (the float32 decision; unused with "bf16", which does not
    race it) by precision.BF16_MARGIN, else (fp32_path, "fp32"). Measured once per machine and
    shape like the float32 path, and stored with it; a model too small to measure takes float32
    for "auto" and the first candidate for "bf16"."""
    from rnn_train.kernels.precision import BF16_MARGIN

    if is_small(rnn, batch_size):
        return (fp32_path, "fp32") if requested == "auto" else (candidates[0], "bf16")
    fp32_json = _path_to_json(fp32_path)

    def measured() -> dict:
        module, inp = _measured_copy(rnn, batch_size, num_steps, one_hot)
        runs = {_label(p, "bf16"): _pass(module, p, inp, one_hot, "bf16") for p in candidates}
        if requested == "auto":
            runs[_label(fp32_path, "fp32")] = _pass(module, fp32_path, inp, one_hot)
        with torch.enable_grad():
            timed = race(runs)
        bf16 = {label: t for label, t in timed.items() if label.endswith(" bf16")}
        best = min(bf16, key=bf16.get)
        path = candidates[list(runs).index(best)]
        take = requested == "bf16" or bf16[best] * BF16_MARGIN <= timed[_label(fp32_path, "fp32")]
        return {"choice": _path_to_json(path if take else fp32_path), "precision": "bf16" if take else "fp32",
                "fp32": fp32_json, "ms": {k: round(v * 1e3, 3) for k, v in timed.items()},
                "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "load": _load()}

    def read(entry: dict) -> tuple[FusedPath | None, str]:
        if entry["fp32"] != fp32_json:  # the float32 decision was measured again since: so is this one
            raise KeyError("fp32")
        return _path_from_json(entry["choice"]), entry["precision"]

    w = rnn.weight_hh_l0
    device = torch.cuda.get_device_name(w.device).replace(" ", "_") if w.is_cuda else w.device.type
    key = (f"{machine_key()}/{shape_key(rnn, batch_size, num_steps, one_hot, kernel != 'fused')}"
           f"/precision-{requested}-{kernel}-{device}")
    return stored_decision(key, measured, read)


def measure_decoder(hidden: int, vocab: int, rows: int) -> dict:
    """Time the decoder's products, forward and backward, at its training shape ([rows, hidden] ->
    [rows, vocab], float32) as nn.Linear computes them and as `onednn_linear` does:
    {"choice": the faster, "ms": {name: ms}}; on tensors drawn from a generator of their own."""
    from rnn_train.kernels.fused import onednn_linear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, hidden, generator=g).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) / hidden ** 0.5).requires_grad_()
    b = torch.zeros(vocab).requires_grad_()
    dy = torch.randn(rows, vocab, generator=g)
    ways = {"blas": nn.functional.linear, "onednn": onednn_linear}

    def run(f):
        return lambda: torch.autograd.grad(f(x, w, b), (x, w, b), dy)

    with torch.enable_grad():
        timed = race({name: run(f) for name, f in ways.items()})
    return {"choice": min(timed, key=timed.get), "ms": {k: round(v * 1e3, 3) for k, v in timed.items()},
            "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "load": _load()}


def choose_decoder(rnn: nn.Module, vocab: int, batch_size: int, num_steps: int, one_hot: bool,
                   with_native: bool) -> str:
    """How the decoder of a float32 model with the recurrent module `rnn` computes its products in
    training here (rnn_train.kernels.fused.DECODER_GEMMS), stored beside the module's own decision
    (`choose`, where there is one: a module no fused loop runs has none). Where the module's path was
    read from a decisions file written before this choice existed, the decoder stays nn.Linear
    ("blas"), so that the same config and seed keep giving the losses they gave (delete the file to
    measure both again); else it is measured."""
    base = f"{machine_key()}/{shape_key(rnn, batch_size, num_steps, one_hot, with_native)}"

    def measured() -> dict:
        if base in _MEMORY and base not in _MEASURED_HERE:
            return {"choice": "blas", "kept": "the module's path was decided before the decoder's was measured"}
        return measure_decoder(rnn.hidden_size, vocab, batch_size * num_steps)

    def read(entry: dict) -> str:
        from rnn_train.kernels.fused import DECODER_GEMMS

        if entry["choice"] not in DECODER_GEMMS:
            raise ValueError(entry["choice"])
        return entry["choice"]

    return stored_decision(f"{base}/decoder-V{vocab}", measured, read)


T = TypeVar("T")


def stored_decision(key: str, measure_now: Callable[[], dict], read: Callable[[dict], T]) -> T:
    """`read(entry)` of the decision stored under `key` in the decisions file; where there is none
    that `read` can take (missing, or written by another version: KeyError, TypeError, ValueError),
    `measure_now()` makes the entry, once for processes that start together, and it is stored."""
    if key not in _MEMORY:
        with _cache_lock():  # processes starting together measure once and agree
            try:
                _MEMORY[key] = read(_read_cache().get(key))
            except (KeyError, TypeError, ValueError):
                _say_once("timing", f"timing the kernel paths for this model's shape on this machine, once (kept "
                                    f"in {_cache_file()}); the first run of a shape waits for it")
                entry = measure_now()
                if _busy(entry.get("load")):
                    _say_once("busy", f"the machine was busy while they were timed (load average {entry['load']:.1f}"
                                      f" on {os.cpu_count()} CPUs): the path kept may not be the fastest; delete "
                                      f"{_cache_file()} to time them again when it is quiet")
                _write_cache(key, entry)
                _MEMORY[key] = read(entry)
                _MEASURED_HERE.add(key)
    return _MEMORY[key]


def _say_once(kind: str, message: str) -> None:
    """A note of `kind` on a terminal, once per process: the timing takes from seconds to a few
    minutes with nothing else printed (105 s for shakespeare_best on a busy 2-core machine), which
    reads as a hang; and a timing on a busy machine is kept for good. Not where stderr is a file or
    a pipe (logs, tests): the run's output there stays the same on a busy machine and a quiet one."""
    if kind not in _SAID and sys.stderr is not None and sys.stderr.isatty():
        _SAID.add(kind)
        print(f"note: {message}", file=sys.stderr, flush=True)


_SAID: set[str] = set()


def _busy(load: float | None) -> bool:
    """Whether other work ran beside the timing: the load average it ended at, less this process's
    own threads (which the timing kept busy), is a core's worth or more."""
    return load is not None and load - torch.get_num_threads() >= 1.0


@contextlib.contextmanager
def _cache_lock():
    """An exclusive lock on the decisions file where the OS has flock; else nothing."""
    try:
        import fcntl

        _cache_file().parent.mkdir(parents=True, exist_ok=True)
        f = open(_cache_file().with_suffix(".lock"), "a")
    except (ImportError, OSError):
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_MEMORY: dict[str, object] = {}
"""Decisions already made in this process (what `read` made of them): one file read per shape, and
one answer per process."""
_MEASURED_HERE: set[str] = set()
"""The keys of _MEMORY that this process measured (rather than read)."""
