"""Recurrent-layer speed: forward + backward of one nn.RNN / nn.GRU / nn.LSTM by every kernel path.

Only the recurrent module is timed (one-hot input as ids, a gradient on every output step), so
the figures say what each path costs by itself; benchmarks/train_speed.py times whole training
steps against the textbook loop. Variants run interleaved (one pass of each per round, in a
rotating order) and the median is reported, because the machine is shared and noisy.

    python benchmarks/fused_bench.py                          # GRU, RNN, LSTM; H=256, B=32, T=35, V=65; 2 and 1 threads
    python benchmarks/fused_bench.py --cells gru --threads 2 --hidden 512 --layers 2
    python benchmarks/fused_bench.py --variants native,cpp-rows --threads 1 --clock cpu

Variants: ``native`` (the nn module on one-hot vectors: autograd per step, oneDNN's fused LSTM),
``python`` / ``python-auto`` (the fused layer's Python loop with torch.mm / with oneDNN for the
big GEMMs), ``cpp-rows`` / ``cpp-units`` (C++ loop, batch rows / hidden units split over the
threads), ``cpp-blas`` (C++ loop, BLAS threads each GEMM), ``cpp-tiled-rows`` /
``cpp-tiled-units`` / ``cpp-tiled`` (C++ loop with csrc/tiled.h's GEMMs, rows / units per thread,
one block). ``speedup`` is over the first variant.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rnn_train.kernels.fused import FusedPath, fused_rnn, loop_cells  # noqa: E402

MODULES = {"gru": nn.GRU, "rnn": nn.RNN, "lstm": nn.LSTM}
VARIANTS = {
    "native": None,
    "python": FusedPath("python", "blas"),
    "python-auto": FusedPath("python", "auto"),
    "cpp-rows": FusedPath("cpp", "blas", "blas", "rows"),
    "cpp-units": FusedPath("cpp", "blas", "blas", "units"),
    "cpp-blas": FusedPath("cpp", "blas", "blas", "blas"),
    "cpp-tiled-rows": FusedPath("cpp", "blas", "tiled", "rows"),
    "cpp-tiled-units": FusedPath("cpp", "blas", "tiled", "units"),
    "cpp-tiled": FusedPath("cpp", "blas", "tiled", "blas"),
}


def make_pass(variant: str, cell: str, V: int, H: int, layers: int, dtype):
    """A closure running forward + backward of the module by `variant` on (ids, upstream gradient)."""
    torch.manual_seed(0)
    rnn = MODULES[cell](V, H, layers, batch_first=True).to(dtype)
    params = list(rnn.parameters())
    path = VARIANTS[variant]

    def run(ids, d_out):
        if path is None:
            out, _ = rnn(F.one_hot(ids, V).to(dtype))
        else:
            out, _ = fused_rnn(rnn, ids, one_hot_ids=True, path=path)
        torch.autograd.grad(out, params, d_out)

    return run


def bench(cell: str, variants: list[str], threads: int, B: int, T: int, V: int, H: int, layers: int, rounds: int,
          warmup: int, dtype, clock=time.perf_counter) -> dict:
    torch.set_num_threads(threads)
    variants = [v for v in variants if VARIANTS[v] is None or cell in loop_cells(VARIANTS[v].loop)]
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (B, T), generator=gen)
    d_out = torch.randn(B, T, H, generator=gen, dtype=dtype)
    runs = {v: make_pass(v, cell, V, H, layers, dtype) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(warmup + rounds):
        for v in variants[r % len(variants):] + variants[: r % len(variants)]:  # rotate: no fixed neighbour
            t0 = clock()
            runs[v](ids, d_out)
            if r >= warmup:
                times[v].append(clock() - t0)
    base = statistics.median(times[variants[0]])
    rows = {}
    for v in variants:
        med = statistics.median(times[v])
        rows[v] = {"ms": round(med * 1e3, 3), "speedup": round(base / med, 3),
                   "path": "native" if VARIANTS[v] is None else VARIANTS[v].label()}
    return {"cell": cell, "threads": threads, "B": B, "T": T, "V": V, "H": H, "layers": layers,
            "dtype": str(dtype).split(".")[-1], "rounds": rounds, "variants": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="gru,rnn,lstm")
    p.add_argument("--threads", default="2,1")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: process CPU time, robust to a busy machine; meaningful with --threads 1 only")
    p.add_argument("--json", action="store_true", help="print one JSON line per (cell, threads)")
    a = p.parse_args(argv)
    if a.clock == "cpu" and a.threads != "1":
        p.error("--clock cpu needs --threads 1")
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    dtype = getattr(torch, a.dtype)
    for cell in a.cells.split(","):
        for threads in (int(t) for t in a.threads.split(",")):
            res = bench(cell, a.variants.split(","), threads, a.batch, a.steps, a.vocab, a.hidden, a.layers,
                        a.rounds, a.warmup, dtype, clock)
            if a.json:
                print(json.dumps(res), flush=True)
                continue
            print(f"{cell.upper()}-{a.hidden} x{a.layers} B={a.batch} T={a.steps} V={a.vocab} {a.dtype}, "
                  f"{threads} thread(s), forward+backward, median {a.clock} time of {a.rounds} interleaved passes:")
            for v, row in res["variants"].items():
                print(f"  {v:<15} {row['ms']:>8.2f} ms  x{row['speedup']:.2f}  {row['path']}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
