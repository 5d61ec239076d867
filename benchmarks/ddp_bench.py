"""Training tokens/s of one process against data-parallel ranks (torchrun + DDP) on this machine.

Each variant is a real end-to-end run of train.py for a fixed number of updates on the same recipe
(the global batch stays the recipe's: 2 ranks train on B/2 rows each); the figure is the run's
own `tokens_per_s` from metrics.json (training steps only, validation excluded). The variants
run alternately, A B A B ..., and the median of each is reported with its ratio to the first.

    python benchmarks/ddp_bench.py                                      # GRU-256 B32 T35 shakespeare
    python benchmarks/ddp_bench.py --variants 1x2,2x1,1x1 --rounds 5 --steps 400
    python benchmarks/ddp_bench.py --kernel native                      # the same kernel everywhere

A variant PxT is P processes with T torch threads each (P > 1 runs under torchrun, gloo). Each run
picks its kernel as model.kernel says (auto: measured per machine, threads and per-rank batch
shape; printed), so the comparison is the one a user gets.

    python benchmarks/ddp_bench.py --comm          # what 2 ranks' exchanges cost per update, alone

--comm times, between 2 gloo ranks (1 thread each), the two exchanges an update makes: the
all-reduce of every gradient (float32, the recipe's parameter count: what DDP sends) and the
trainer's per-update agreement (2 float64), as medians over many repetitions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare" / "input.txt"
DEFAULT_CONFIG = ROOT / "configs" / "shakespeare_gru.yaml"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def corpus_override(args) -> list[str]:
    """data.paths=[--corpus] when given; the default recipe reads ../shared's Tiny Shakespeare."""
    corpus = args.corpus or (str(SHAKESPEARE) if Path(args.config).resolve() == DEFAULT_CONFIG else None)
    return [f"data.paths=[{corpus}]"] if corpus else []


def run_variant(variant: str, args, work: Path, round_no: int) -> dict:
    procs, threads = (int(v) for v in variant.split("x"))
    name = f"{variant}-{round_no}"
    overrides = [*corpus_override(args), f"train.max_steps={args.steps}", "train.epochs=0",
                 "train.eval_every=0", "data.val_fraction=0.01", f"train.threads={threads}",
                 f"model.kernel={args.kernel}", "log.sample_length=0", "log.tensorboard=false",
                 f"log.dir={work}", f"log.name={name}"]
    train = [str(ROOT / "train.py"), "--config", args.config, "--quiet", "--cache-dir", str(work / "cache"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if procs == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *train]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((work / name / "metrics.json").read_text())
    return {"variant": variant, "round": round_no, "tokens_per_s": metrics["tokens_per_s"], "kernel": metrics["kernel"],
            "steps": metrics["step"]}


def comm_worker(numel: int, reps: int) -> None:
    """Under torchrun: median seconds of an all-reduce of `numel` float32 and of the 2-float agreement."""
    import time

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    grads, flag = torch.randn(numel), torch.zeros(2, dtype=torch.float64)

    def median_seconds(t, op) -> float:
        times = []
        for i in range(reps + 10):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t, op=op)
            if i >= 10:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)
    out = {"gradient_floats": numel, "gradient_bytes": 4 * numel,
           "allreduce_gradients_ms": 1e3 * median_seconds(grads, dist.ReduceOp.SUM),
           "agree_step_ms": 1e3 * median_seconds(flag, dist.ReduceOp.MAX)}
    if dist.get_rank() == 0:
        print(json.dumps(out), flush=True)
    dist.destroy_process_group()


def measure_comm(args) -> None:
    sys.path.insert(0, str(ROOT))
    from rnn_train.config import load_config
    from rnn_train.data.dataset import prepare_data
    from rnn_train.model.charrnn import CharRNN, count_parameters

    cfg = load_config(args.config, corpus_override(args))
    vocab = len(prepare_data(cfg.data, None).vocab)
    numel = count_parameters(CharRNN.from_config(vocab, cfg.model))
    print(f"# {cpu_name()}, load {os.getloadavg()[0]:.2f}; {Path(args.config).name}: {numel:,} parameters "
          f"(vocab {vocab}), 2 gloo ranks on this machine", flush=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           "--comm-worker", str(numel)]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    print(done.stdout.strip())


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--comm-worker":
        return comm_worker(int(sys.argv[2]), reps=200)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--corpus", help="the recipe's corpus file (default: the recipe's; for the default "
                                     "recipe ../shared/corpora/tinyshakespeare/input.txt)")
    ap.add_argument("--variants", default="1x2,2x1", help="comma-separated PxT: P processes x T threads")
    ap.add_argument("--steps", type=int, default=300, help="updates per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kernel", default="auto", choices=["auto", "native", "fused"])
    ap.add_argument("--comm", action="store_true", help="time the per-update exchanges of 2 ranks instead")
    args = ap.parse_args()
    if args.comm:
        return measure_comm(args)
    variants = args.variants.split(",")
    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {Path(args.config).name}, "
          f"{args.steps} updates per run, kernel {args.kernel}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]  # rotate who goes first
            for v in order:
                row = run_variant(v, args, Path(tmp), r)
                rows.append(row)
                print(json.dumps(row), flush=True)
    base = None
    print(f"# load at the end {os.getloadavg()[0]:.2f}")
    print(f"{'variant':>8} {'median tok/s':>13} {'vs ' + variants[0]:>9}  kernel")
    for v in variants:
        runs = [row for row in rows if row["variant"] == v]
        med = statistics.median(row["tokens_per_s"] for row in runs)
        base = base or med
        print(f"{v:>8} {med:13,.0f} {med / base:9.2f}  {runs[-1]['kernel']}")


if __name__ == "__main__":
    main()
