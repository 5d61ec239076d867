"""How close a training step comes to the machine's GEMM-bound ceiling (float32 or bf16).

The ceiling of one update is the time its matrix products alone take, each at the best rate this
machine reaches *at that product's shape*: the update's multiply-adds, shape by shape, divided by
the GEMM rate measured at that shape. Everything else a step does (the gates, the loss, the
optimiser, Python) is over the ceiling. The products of one update of a one-hot-input CharRNN
(B rows, T steps, H units, G gate blocks, V symbols, L layers), as the fused path computes them:

    per layer, forward     T  x  [B, H] @ [H, G*H]          the step products
    per layer, backward  T-1  x  [B, G*H] @ [G*H, H]        dL/dh_{t-1} (none for t = 0: the carried state is detached)
    per layer            1    x  [G*H, T*B] @ [T*B, H]      dW_hh
    layers above the first: [T*B, H] @ [H, G*H] (input projection), [G*H, T*B] @ [T*B, H] (dW_ih),
                            [T*B, G*H] @ [G*H, H] (dx); the first layer's one-hot input is a gather
    decoder                [T*B, H] @ [H, V], [V, T*B] @ [T*B, H], [T*B, V] @ [V, H]

Rates are measured on ONE thread in CPU time (other processes on a shared machine do not inflate
it), as the best of torch.mm (MKL), oneDNN and the C++ kernels' float32 tiles (the step tiles of
benchmarks/tile_bench.py, the backward's and the cell's own forward one; the tiled weight
gradient) -- or, with --precision bf16, of oneDNN's bf16 GEMM (torch.mm on bf16 copies, casts not
counted) and the kernels' bf16_matmul / step products. Each candidate starts from the operands
as the step holds them: a tile packs its right operand with the kernels' own packer, once for the
products that share it (a loop's T step products share W_hh; a one-off product pays for its own
packing, as MKL's time includes its own), and a weight gradient starts from the deltas and the
states as the step leaves them, [T*B, .] each, so its tiled candidate is weight_grad (a tile on
panels would first need the deltas transposed: the ceiling left both copies out until 2026-12-06,
which made it stricter than any GEMM the machine has; docs/kernels.md).
The step it is compared with is rnn-train's TorchLearner step on the path `auto` picks (or
--variant), also 1 thread and CPU time, timed in turns with the products (medians of --rounds). A turn
of the step is one untimed step and then --burst consecutive timed steps, as a training run takes
them back to back. Why the untimed step: the first step after the products' timings starts with the
caches full of their operands and with its own pages untouched for that long, which this virtual
machine charges for (benchmarks/idle_pages.py). LSTM-256 took 22.3 ms for a single step timed that
way, 17.5-18.6 ms per step in bursts of 5, and 16.9-17.2 in bursts of 5 after an untimed step
(alternating runs). Each product is timed after two untimed calls alike.

With --threads N (N > 1) the step and the products run on N threads in wall time, and each
product may also be counted as shared perfectly among N cores: its best 1-thread rate on one
core's share (M/N rows or N/N columns), as if the N shares ran side by side at no cost. That
ceiling is below the 1-thread one halved where a share fits a core's cache and the whole does not
(LSTM-512: half of W_hh is 2 MB, one core's L2 here), so it bounds what the machine's cores
together could reach; no path reaches it.

    python benchmarks/ceiling.py --cell lstm --hidden 256
    python benchmarks/ceiling.py --cell lstm --hidden 512
    python benchmarks/ceiling.py --cell gru --hidden 512 --layers 2
    python benchmarks/ceiling.py --cell lstm --hidden 512 --precision bf16
    python benchmarks/ceiling.py --cell lstm --hidden 512 --profile 20   # and where the step's time goes
    python benchmarks/ceiling.py --cell lstm --hidden 512 --threads 2    # both cores of this machine
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from rnn_train.kernels import gemm  # noqa: E402
from rnn_train.kernels.build import extension  # noqa: E402
from rnn_train.model import cells  # noqa: E402
from rnn_train.runtime import keep_freed_memory  # noqa: E402


def update_products(cell: str, H: int, L: int, B: int, T: int, V: int) -> list[tuple]:
    """(what, count, M, K, N, b, uses) of every matrix product of one update (the module docstring's table).

    b says what the step holds as the right operand: "w^T" (x W^T, W [N, K]), "w" (d W, W [K, N])
    or "x" (a weight gradient Y^T X: Y [K, M] deltas and X [K, N] as the step made them, T*B rows
    each); uses: how many products share one operand (the step products share W_hh, packed once
    per loop), so a candidate may pack it once for all of them."""
    G = cells.get(cell).num_blocks
    out = []
    for k in range(L):
        out += [(f"layer {k} step forward", T, B, H, G * H, "w^T", T),
                (f"layer {k} step backward", T - 1, B, G * H, H, "w", T - 1),
                (f"layer {k} dW_hh", 1, G * H, T * B, H, "x", 1)]
        if k > 0:
            out += [(f"layer {k} input projection", 1, T * B, H, G * H, "w^T", 1),
                    (f"layer {k} dW_ih", 1, G * H, T * B, H, "x", 1), (f"layer {k} dx", 1, T * B, G * H, H, "w", 1)]
    out += [("decoder", 1, T * B, H, V, "w^T", 1), ("decoder dW", 1, V, T * B, H, "x", 1),
            ("decoder dx", 1, T * B, V, H, "w", 1)]
    return out


def clock(threads: int):
    """CPU time on one thread (other processes on a shared machine do not inflate it); wall time on
    more (CPU time would add up the threads, spinning included)."""
    return time.process_time if threads == 1 else time.perf_counter


def seconds_per_call(fn, threads: int, min_seconds: float = 0.05) -> float:
    """Seconds of one call of fn on `threads` intra-op threads (put back after): the lower quartile
    of 5 timings of enough calls to take min_seconds, by `clock(threads)`."""
    before, now = torch.get_num_threads(), clock(threads)
    torch.set_num_threads(threads)
    try:
        fn()
        t0 = now()
        fn()
        reps = max(1, int(min_seconds / max(now() - t0, 1e-6)))
        times = []
        for _ in range(5):
            t0 = now()
            for _ in range(reps):
                fn()
            times.append((now() - t0) / reps)
        return sorted(times)[1]
    finally:
        torch.set_num_threads(before)


def _packer(K: int, N: int, b: str, width: int, tiles):
    """The kernels' own packing (tiled.h) of a product's right operand into `width`-column tile
    panels, as a callable of the weight; None where the step has no such packer for it.

    "w^T" (W [N, K]): pack_forward's blocked transpose, which needs W = [G*K, K] (a step's or an
    input projection's weights; the panels hold the G gate blocks' columns interleaved, the same
    arithmetic for a tile); "w" (W [K, N]): pack_backward's column panels."""
    if N % width:
        return None
    if b == "w^T" and N % K == 0 and width % (N // K) == 0:
        return lambda w: tiles.pack_t(w, N // K, width // (N // K))
    if b == "w":
        return lambda w: tiles.pack_n(w, width)
    return None


def candidates(M: int, K: int, N: int, b: str, uses: int, precision: str, tiles, gates: int) -> dict:
    """name -> callable computing `uses` products [M, K] @ [K, N] by each backend available here,
    from the operands as the step holds them (`b`, update_products). A tile must have its right
    operand packed into panels: the call packs it once (the kernels' own packer) and then takes the
    `uses` products, so the packing is part of the rate, shared as the step shares it. For a weight
    gradient the tiled candidate is weight_grad, which reads the step's layout in place (a tile on
    panels would need the deltas transposed first)."""
    g = torch.Generator().manual_seed(0)
    if b == "x":
        y, x = torch.randn(K, M, generator=g), torch.randn(K, N, generator=g)  # y^T @ x
    else:
        a = torch.randn(M, K, generator=g)
        w = torch.randn(N, K, generator=g) if b == "w^T" else torch.randn(K, N, generator=g)
        wt = w if b == "w^T" else w.t()  # [N, K] as a view: a @ wt^T is the product

    def times(fn):
        def run():
            for _ in range(uses):
                fn()
        return run

    out = {}
    if precision == "fp32":
        if b == "x":
            out["torch.mm"] = times(lambda: torch.mm(y.t(), x))
        else:
            out["torch.mm"] = times(lambda: torch.mm(a, wt.t()))
        if gemm.onednn_available():
            out["onednn"] = times(lambda: gemm.weight_grad(y, x, gemm.ONEDNN)) if b == "x" \
                else times(lambda: gemm.linear(a, wt, gemm.ONEDNN))
        ops = extension()
        if ops is not None and b == "x":
            out["tiled weight_grad"] = times(lambda: ops.weight_grad(y, x))
        if tiles is not None and b != "x":
            for kind in ("forward", "backward"):
                gs = (gates,) if kind == "forward" else ()  # the forward's tile is the cell's (all its gates)
                width = getattr(tiles, f"{kind}_width")(*gs)
                pack = _packer(K, N, b, width, tiles)
                if pack is not None:
                    c, fn = torch.empty(M, N), getattr(tiles, kind)

                    def run(fn=fn, pack=pack, c=c, gs=gs):
                        panels = pack(w)
                        for _ in range(uses):
                            fn(a, panels, c, 1, *gs)
                    out[f"tiles ({kind})"] = run
    else:
        if b == "x":
            a, wt = y.t(), x.t()
        a, wt = a.contiguous(), wt.contiguous()  # the bf16 products take row-major operands
        ab, wb = a.bfloat16(), wt.bfloat16()
        out["torch.mm bf16"] = times(lambda: torch.mm(ab, wb.t()))
        ops = extension()
        if ops is not None and ops.bf16_available():
            out["bf16_matmul"] = times(lambda: ops.bf16_matmul(a, wt))
    return out


def tile_products():
    """benchmarks/tile_bench.py's extension: the kernels' float32 step tiles and packers, callable alone."""
    from torch.utils import cpp_extension

    import tile_bench
    from rnn_train.kernels.build import compile_flags

    return cpp_extension.load_inline("rnn_train_tile_bench", tile_bench.SOURCE,
                                     extra_cflags=[*compile_flags(), f"-I{tile_bench.CSRC}"], extra_ldflags=["-fopenmp"])


def split_candidates(M: int, K: int, N: int, b: str, uses: int, threads: int, precision: str, tiles,
                     gates: int) -> dict:
    """name -> (callable, 1) for a product shared perfectly among `threads` cores: one core's share, on one thread.

    The share's time is the whole product's time on `threads` cores that split it with no cost and no
    contention, so these bound from below what any multi-threaded product at the shape can take.
    """
    out = {}
    if threads > 1:
        for part, whole, (m, n) in (("rows", M, (M // threads, N)), ("columns", N, (M, N // threads))):
            if whole % threads == 0:
                for name, fn in candidates(m, K, n, b, uses, precision, tiles, gates).items():
                    out[f"{name}, {part} / {threads}"] = (fn, 1)
    return out


def step_runner(args, variant: str):
    """(one training step as a callable, its path's label)."""
    import train_speed

    overrides = [f"model.cell={args.cell}", f"model.hidden_size={args.hidden}", f"model.num_layers={args.layers}",
                 f"data.batch_size={args.batch}", f"data.num_steps={args.steps}", "model.embedding=one_hot",
                 "model.dropout=0", "train.optimizer=sgd", "train.lr=1.0", "train.clip_norm=1.0",
                 f"train.precision={args.precision if variant == 'auto' else 'fp32'}"]
    step, label = train_speed.pipeline_step(variant, str(ROOT / "configs" / "shakespeare_gru.yaml"), overrides,
                                            args.vocab, "blas")
    rng = np.random.default_rng(0)
    x = rng.integers(0, args.vocab, (args.batch, args.steps))
    y = rng.integers(0, args.vocab, (args.batch, args.steps))
    return (lambda: step(x, y)), label


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", default="lstm", choices=cells.names())
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="the products' arithmetic for the ceiling, and train.precision of the step")
    p.add_argument("--variant", default="auto", help="train_speed.py variant for the step (default: what auto picks)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the step and the products (more than 1: wall time, and the ceiling also "
                        "counts each product shared perfectly among them, each share timed on one thread)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--burst", type=int, default=5, help="consecutive steps per turn of the step (their mean is timed)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also print where the step's time goes: its N costliest torch ops (torch.profiler, self CPU "
                        "time per step over one burst; the C++ loops are one op each)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    now = clock(a.threads)
    keep_freed_memory()  # as a training run does (rnn_train.training.trainer.train): no fresh pages per step
    tiles = tile_products() if a.precision == "fp32" else None
    G = cells.get(a.cell).num_blocks
    products = [p for p in update_products(a.cell, a.hidden, a.layers, a.batch, a.steps, a.vocab) if p[1] > 0]
    best = {}  # (M, K, N, b, uses) -> (backend, callable, threads): the fastest way to those products, chosen first
    for _, _, *key in products:
        if tuple(key) not in best:
            fns = {name: (fn, a.threads) for name, fn in candidates(*key, a.precision, tiles, G).items()}
            fns.update(split_candidates(*key, a.threads, a.precision, tiles, G))
            timed = {name: seconds_per_call(fn, threads, 0.02) for name, (fn, threads) in fns.items()}
            name = min(timed, key=timed.get)
            best[tuple(key)] = (name, *fns[name])
    step_fn, label = step_runner(a, a.variant)
    step_fn()
    # then the step and the chosen products in turns, so that both see the same load
    seconds: dict = {key: [] for key in best}
    steps = []
    for _ in range(a.rounds):
        step_fn()  # untimed, as each product's first two calls are (see the docstring)
        t0 = now()
        for _ in range(a.burst):
            step_fn()
        steps.append((now() - t0) / a.burst)
        for key, (_, fn, threads) in best.items():
            seconds[key].append(seconds_per_call(fn, threads, 0.01))
    rows, total_ms, total_macs = [], 0.0, 0
    for what, count, M, K, N, b, uses in products:
        key = (M, K, N, b, uses)
        name = best[key][0]
        rate = uses * M * K * N / statistics.median(seconds[key])  # a call takes `uses` products
        ms = count * M * K * N / rate * 1e3
        total_ms += ms
        total_macs += count * M * K * N
        rows.append({"product": what, "count": count, "shape": f"[{M}x{K}]@[{K}x{N}]", "best": name,
                     "G_macs_per_s": round(rate / 1e9, 1), "ms": round(ms, 3)})
    step = statistics.median(steps)
    result = {"model": f"{a.cell.upper()}-{a.hidden} x{a.layers} B{a.batch} T{a.steps} V{a.vocab}",
              "precision": a.precision, "threads": a.threads, "products": rows, "G_macs": round(total_macs / 1e9, 3),
              "ceiling_ms": round(total_ms, 2), "step_ms": round(step * 1e3, 2), "path": label,
              "fraction_of_ceiling": round(total_ms / (step * 1e3), 3)}
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"{result['model']}, {a.precision}, "
          + ("1 thread, CPU time" if a.threads == 1 else f"{a.threads} threads, wall time"))
    for r in rows:
        print(f"  {r['product']:<28} {r['count']:>3} x {r['shape']:<24} {r['best']:<20} "
              f"{r['G_macs_per_s']:>7.1f} G mult-adds/s  {r['ms']:>8.3f} ms")
    print(f"  ceiling: {result['G_macs']} G multiply-adds in {result['ceiling_ms']} ms; the step: {result['step_ms']} ms "
          f"({label}) = {result['fraction_of_ceiling']:.0%} of the ceiling")
    if a.profile:
        print_profile(step_fn, a.burst, a.profile)
    return 0


def print_profile(step, burst: int, top: int) -> None:
    """The `top` torch ops of most self CPU time in `burst` steps, per step, with their input shapes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(burst):
            step()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) / burst / 1e3
    print(f"  where the step's time goes (torch.profiler, {total:.2f} ms of ops per step, self CPU time):")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        shapes = ", ".join(str(list(x)) for x in e.input_shapes if x)
        print(f"    {e.self_cpu_time_total / burst / 1e3:8.3f} ms  {e.count // burst:>3} x {e.key:<34} {shapes[:70]}")


if __name__ == "__main__":
    sys.exit(main())
