"""The all-steps weight gradient alone: csrc/tiled.h's weight_grad (gemm=tiled) against torch.mm (MKL).

Why: a training step's dW = Y^T X (Y [T*B, O] deltas, X [T*B, D] states or inputs, both as the
step made them) is one product per weight, and which backend computes it faster is a property of
the CPU, so the autotuner races `gemm=tiled` against `blas`. This times both on those shapes,
interleaved, and prints milliseconds and G multiply-adds per second (ceiling.py's seconds_per_call:
the lower quartile of 5 timings; CPU time on one thread, wall time on more).

    python benchmarks/weight_grad_bench.py                        # dW_hh of GRU-256, LSTM-256, LSTM-512
    python benchmarks/weight_grad_bench.py --shapes 1120x65x512 --threads 1,2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import seconds_per_call  # noqa: E402
from rnn_train.kernels.build import extension  # noqa: E402


def shape(text: str) -> tuple[int, int, int]:
    try:
        n, o, d = (int(v) for v in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not NxOxD (three positive integers)") from None
    if min(n, o, d) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every size must be positive")
    return n, o, d


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", type=lambda s: [shape(v) for v in s.split(",")],
                   default=[(1120, 768, 256), (1120, 1024, 256), (1120, 2048, 512)],
                   help="NxOxD list: Y [N, O], X [N, D] (default: dW_hh of GRU-256, LSTM-256, LSTM-512, B32 T35)")
    p.add_argument("--threads", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2])
    a = p.parse_args(argv)
    ops = extension()
    if ops is None:
        print("error: the C++ kernels are not built here", file=sys.stderr)
        return 2
    g = torch.Generator().manual_seed(0)
    for n, o, d in a.shapes:
        y, x = torch.randn(n, o, generator=g), torch.randn(n, d, generator=g)
        assert torch.allclose(ops.weight_grad(y, x), y.t() @ x, rtol=1e-4, atol=1e-3), "weight_grad is wrong"
        for threads in a.threads:
            row = {}
            for _ in range(2):  # interleaved: both sides see the same machine
                for name, fn in (("torch.mm", lambda: torch.mm(y.t(), x)), ("weight_grad", lambda: ops.weight_grad(y, x))):
                    row.setdefault(name, []).append(seconds_per_call(fn, threads))
            cells = "  ".join(f"{name} {min(t) * 1e3:7.3f} ms ({n * o * d / min(t) / 1e9:5.1f} G)" for name, t in row.items())
            print(f"[{n}x{o}]^T [{n}x{d}]  {threads} thread(s): {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
