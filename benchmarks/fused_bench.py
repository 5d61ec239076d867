"""Training-step speed: nn.GRU / nn.RNN against rnn_train.fused on the CPU.

One step = forward (one-hot input -> recurrent layer -> Linear decoder on every step), mean
cross-entropy, backward, clip_grad_norm_, SGD step -- what TorchLearner.train_step does. Variants
run interleaved (one step of each per round, in a rotating order) in one process, and the median
step time of each is reported, because the machine is shared and noisy.

    python benchmarks/fused_bench.py                 # GRU and RNN, H=256, B=32, T=35, V=66, 2 and 1 threads
    python benchmarks/fused_bench.py --cells gru --threads 2 --hidden 512 --batch 64
    python benchmarks/fused_bench.py --cells lstm --variants nn     # nn.LSTM (oneDNN) for scale

Variants: ``nn`` (the module on F.one_hot input, today's CharRNN path), ``fused-onehot`` (fused
layer fed the same dense one-hot tensor), ``fused-ids`` (fused layer fed the integer ids),
``fused-ids-blas`` (the same with gemm="blas": torch.mm, no oneDNN) and ``fused-ids-tm`` (ids,
decoder run time-major on the contiguous buffer, logits transposed). The fused variants use
gemm="auto" unless named -blas. ``speedup`` is each variant's tokens/s over the first variant's.
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
from rnn_train.kernels.fused import fused_rnn  # noqa: E402

MODULES = {"gru": nn.GRU, "rnn": nn.RNN, "lstm": nn.LSTM}


def make_step(variant: str, cell: str, V: int, H: int, dtype, seed: int = 0):
    """A closure running one training step of `variant` on fixed (ids, targets) with its own weights."""
    torch.manual_seed(seed)
    rnn = MODULES[cell](V, H, batch_first=True).to(dtype)
    dec = nn.Linear(H, V).to(dtype)
    params = list(rnn.parameters()) + list(dec.parameters())
    opt = torch.optim.SGD(params, lr=0.1)

    def step(ids, y):
        if variant == "nn":
            out, _ = rnn(F.one_hot(ids, V).to(dtype))
            logits = dec(out)  # [B, T, V]
        elif variant == "fused-onehot":
            out, _ = fused_rnn(rnn, F.one_hot(ids, V).to(dtype))
            logits = dec(out)
        elif variant == "fused-ids":
            out, _ = fused_rnn(rnn, ids, one_hot_ids=True)
            logits = dec(out)
        elif variant == "fused-ids-blas":
            out, _ = fused_rnn(rnn, ids, one_hot_ids=True, gemm="blas")  # torch.mm instead of oneDNN
            logits = dec(out)
        elif variant == "fused-ids-tm":
            out, _ = fused_rnn(rnn, ids, one_hot_ids=True)  # [B, T, H] view of a [T, B, H] buffer
            logits = dec(out.transpose(0, 1)).transpose(0, 1)  # decoder on the contiguous buffer
        else:
            raise ValueError(variant)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        return loss.detach()

    return step


def bench(cell: str, variants: list[str], threads: int, B: int, T: int, V: int, H: int, rounds: int,
          warmup: int, dtype) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (B, T), generator=gen)
    y = torch.randint(0, V, (B, T), generator=gen)
    steps = {v: make_step(v, cell, V, H, dtype) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(warmup + rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]  # rotate: no fixed neighbour
        for v in order:
            t0 = time.perf_counter()
            steps[v](ids, y)
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[v].append(dt)
    base = statistics.median(times[variants[0]])
    rows = {}
    for v in variants:
        med = statistics.median(times[v])
        rows[v] = {"ms": round(med * 1e3, 3), "tokens_per_s": round(B * T / med), "speedup": round(base / med, 3)}
    return {"cell": cell, "threads": threads, "B": B, "T": T, "V": V, "H": H, "dtype": str(dtype).split(".")[-1],
            "rounds": rounds, "variants": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="gru,rnn")
    p.add_argument("--threads", default="2,1")
    p.add_argument("--variants", default="nn,fused-onehot,fused-ids,fused-ids-blas,fused-ids-tm")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--vocab", type=int, default=66)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--json", action="store_true", help="print one JSON line per (cell, threads)")
    a = p.parse_args(argv)
    variants = a.variants.split(",")
    dtype = getattr(torch, a.dtype)
    for cell in a.cells.split(","):
        for threads in (int(t) for t in a.threads.split(",")):
            res = bench(cell, variants, threads, a.batch, a.steps, a.vocab, a.hidden, a.rounds, a.warmup, dtype)
            if a.json:
                print(json.dumps(res), flush=True)
                continue
            print(f"{cell.upper()}-{a.hidden} B={a.batch} T={a.steps} V={a.vocab} {a.dtype}, {threads} thread(s), "
                  f"median of {a.rounds} interleaved steps:")
            for v, row in res["variants"].items():
                print(f"  {v:<14} {row['ms']:>8.2f} ms  {row['tokens_per_s']:>9,} tokens/s  x{row['speedup']:.2f}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
