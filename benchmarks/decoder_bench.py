"""The decoder's three products in training, by each backend the kernels have, at a run's shapes.

A CharRNN's decoder maps all B*T hidden states to the vocab's logits: per step of training
[B*T, H] @ [H, V] (logits), [V, B*T] @ [B*T, H] (dW) and [B*T, V] @ [V, H] (dx). nn.Linear computes
them with torch.mm (MKL in the x86 wheels), rnn_train.kernels.fused.onednn_linear with oneDNN and the
C++ kernels' tiled weight gradient. The autotuner chooses between the two per machine by timing them
(docs/kernels.md, "The decoder's products"); this prints each product alone, median of --rounds
bursts, wall time on --threads threads:

    python benchmarks/decoder_bench.py                         # H 256 and 512, V 65 and 1000
    python benchmarks/decoder_bench.py --hidden 384 --vocab 4000 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rnn_train.kernels import gemm  # noqa: E402


def ms_per_call(fn, rounds: int, calls: int = 20) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times) * 1e3


def backends(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor) -> dict[str, dict[str, callable]]:
    """product -> backend -> a call computing it from the operands as training holds them."""
    out = {"logits": {"mm": lambda: torch.mm(x, w.t())},
           "dW": {"mm": lambda: dy.t() @ x},
           "dx": {"mm": lambda: dy @ w}}
    if gemm.onednn_available():
        out["logits"]["oneDNN"] = lambda: gemm.linear(x, w, gemm.ONEDNN)
        out["dW"]["oneDNN"] = lambda: gemm.weight_grad(dy, x, gemm.ONEDNN)
        out["dx"]["oneDNN"] = lambda: gemm.linear(dy, w.t(), gemm.ONEDNN)
    if gemm.tiled_available():
        out["dW"]["tiles"] = lambda: gemm.weight_grad(dy, x, gemm.TILED)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", default="256,512", help="comma-separated H")
    p.add_argument("--vocab", default="65,1000", help="comma-separated V")
    p.add_argument("--rows", type=int, default=32 * 35, help="B*T (default 32 x 35)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    try:
        hs, vs = [int(h) for h in a.hidden.split(",")], [int(v) for v in a.vocab.split(",")]
    except ValueError:
        p.error("--hidden and --vocab take comma-separated whole numbers")
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    print(f"decoder products, rows {a.rows}, {a.threads} thread(s), ms per call (median of {a.rounds} bursts):")
    for H in hs:
        for V in vs:
            x, w = torch.randn(a.rows, H, generator=g), torch.randn(V, H, generator=g)
            dy = torch.randn(a.rows, V, generator=g)
            cells = [f"{what} " + " / ".join(f"{name} {ms_per_call(fn, a.rounds):.3f}" for name, fn in ways.items())
                     for what, ways in backends(x, w, dy).items()]
            print(f"  H {H:>5} V {V:>5}:  " + ";  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
