"""What a layer's C++ time loop costs beyond its step products, with nothing else in the way.

ceiling.py charges a training step for its matrix products only. The loop ops do more: the forward
op runs T step products and T passes of gate arithmetic (sigmoid, tanh, the cell's products) that
store the gates and states the backward reads; the backward op T-1 products and T passes of the
derivatives. In a training step the ops also meet caches that the rest of the step has filled and
pages that sat idle for a step's time (idle_pages.py). Here the ops run back to back on the same
inputs, a tight loop: operands in cache, pages warm, so what the loop adds over its products here
is about what any float32 path with these equations pays for the gates at best.

One thread, CPU time, one process: each round times the forward and backward op on each step path
(the BLAS step, the tiled step) and the same products alone (the fastest of ceiling.py's candidates
at the shape, chosen once), each as the lower quartile of repeated calls; medians over --rounds.
One layer, one-hot input (the gather table), as the first layer of a CharRNN.

    python benchmarks/loop_floor.py --cell lstm --hidden 256
    python benchmarks/loop_floor.py --cell gru --hidden 512
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ceiling  # noqa: E402  (puts the repository on sys.path)
from rnn_train.kernels.build import extension  # noqa: E402
from rnn_train.kernels.layer_io import STEP_GEMMS, THREADS, gather_table  # noqa: E402
from rnn_train.model import cells  # noqa: E402
from rnn_train.runtime import keep_freed_memory  # noqa: E402


def loop_ops(ops, cell: str, H: int, B: int, T: int, V: int, path: int):
    """(forward, backward) callables of one layer's loop ops on fixed inputs, on step path `path`."""
    g = torch.Generator().manual_seed(0)
    G = cells.get(cell).num_blocks
    scale = H ** -0.5  # nn.LSTM / nn.GRU's initial range
    w_hh = (torch.rand(G * H, H, generator=g) * 2 - 1) * scale
    table = gather_table((torch.rand(G * H, V, generator=g) * 2 - 1) * scale, torch.zeros(G * H))
    ids = torch.randint(0, V, (T, B), generator=g)
    h0, c0 = torch.zeros(B, H), torch.zeros(B, H)
    d_out = torch.randn(T, B, H, generator=g) * 0.01
    d_hT, d_cT = torch.zeros(B, H), torch.zeros(B, H)
    one = THREADS["blas"]  # one block: with one thread, the loop as a one-thread training step runs it
    if cell == "lstm":
        hs, cs, tc, gates = ops.lstm_forward(table, ids, h0, c0, w_hh, path, one)
        dg = torch.empty_like(gates)
        return (lambda: ops.lstm_forward(table, ids, h0, c0, w_hh, path, one),
                lambda: ops.lstm_backward(d_out, d_hT, d_cT, w_hh, cs, gates, tc, dg, False, path, one))
    b_hn = torch.zeros(H)
    hs, gates, n = ops.gru_forward(table, ids, h0, w_hh, b_hn, path, one)
    dgh, dgi = torch.empty_like(gates), torch.empty_like(gates)
    return (lambda: ops.gru_forward(table, ids, h0, w_hh, b_hn, path, one),
            lambda: ops.gru_backward(d_out, d_hT, w_hh, hs, gates, n, dgh, dgi, False, path, one))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", default="lstm", choices=("gru", "lstm"))
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error(f"--rounds must be >= 1, got {a.rounds}")
    ops = extension()
    if ops is None:
        print("error: the C++ kernels are not available here", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    keep_freed_memory()  # as a training run does
    H, B, T, G = a.hidden, a.batch, a.steps, cells.get(a.cell).num_blocks
    tiles = ceiling.tile_products()
    products = {"forward": (B, H, G * H, "w^T", T), "backward": (B, G * H, H, "w", T - 1)}
    best = {}
    for kind, key in products.items():
        fns = ceiling.candidates(*key, "fp32", tiles, G)
        timed = {name: ceiling.seconds_per_call(fn, 1, 0.02) for name, fn in fns.items()}
        fastest = min(timed, key=timed.get)
        best[kind] = fastest, fns[fastest]
    paths = {name: loop_ops(ops, a.cell, H, B, T, a.vocab, STEP_GEMMS[name]) for name in ("blas", "tiled")}
    seconds: dict = {}
    for _ in range(a.rounds):
        for kind, (_, fn) in best.items():
            seconds.setdefault(("products", kind), []).append(ceiling.seconds_per_call(fn, 1, 0.02))
        for name, (fwd, bwd) in paths.items():
            for kind, fn in (("forward", fwd), ("backward", bwd)):
                seconds.setdefault((name, kind), []).append(ceiling.seconds_per_call(fn, 1, 0.02))
    ms = {key: statistics.median(v) * 1e3 for key, v in seconds.items()}
    print(f"{a.cell.upper()}-{H} B{B} T{T} V{a.vocab}, one layer, one-hot input, 1 thread, CPU time, "
          f"medians of {a.rounds} rounds")
    extra = {name: 0.0 for name in paths}  # per step path: forward and backward over their products
    for kind in products:
        prod = ms[("products", kind)]
        ops_text = ", ".join(f"{name} step {ms[(name, kind)]:.3f} ms ({ms[(name, kind)] - prod:+.3f})" for name in paths)
        print(f"  {kind:<8} products {prod:.3f} ms ({best[kind][0]}); the loop op: {ops_text}")
        for name in paths:
            extra[name] += ms[(name, kind)] - prod
    least = min(extra, key=extra.get)  # a step runs one path, forward and backward
    print(f"  the loops' least time over their products: {extra[least]:.3f} ms per layer and update ({least} step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
