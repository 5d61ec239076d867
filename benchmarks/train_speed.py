"""Training-step speed of every kernel path against the textbook loop, interleaved in one process.

One step of each variant per round, in a rotating order, on the same random batches (sequential
partitioning: the state is carried and detached, as both pipelines do); the median step time of
each variant is reported with its speed-up over the reference. In-process interleaving is what
makes ratios usable on a shared, noisy machine; the end-to-end figure with data loading and
logging is `python -m rnn_train bench` (docs/kernels.md).

    python benchmarks/train_speed.py                                   # GRU-256, B=32, T=35, all paths
    python benchmarks/train_speed.py --cell lstm --threads 1 --clock cpu      # CPU time: for a busy machine
    python benchmarks/train_speed.py --cell gru --hidden 512 --layers 2 --variants reference,native,cpp-rows

Variants:
    reference    ../shared/bench/reference_loop.py's model and step (nn module, one-hot input,
                 SGD, clipping by hand), imported from that file
    native       rnn-train's TorchLearner step with model.kernel=native
    python       ... with the fused layer's Python loop
    cpp-rows     ... with the C++ loop, batch rows split over the threads
    cpp-units    ... with the C++ loop, hidden units split over the threads
    cpp-blas     ... with the C++ loop, BLAS threading each GEMM
    cpp-tiled-rows  ... with the C++ loop's tiled GEMMs (csrc/tiled.h), batch rows split over the threads
    cpp-tiled-units ... the same with hidden units (whole panels of W_hh) split over the threads
    cpp-tiled    ... the same on one thread block
    auto         ... with whatever model.kernel=auto and train.precision=--precision pick here
                 (measured on first use; printed)
A variant with ":bf16" appended computes its matrix products in bf16 (train.precision=bf16): the
fused C++ loop's bf16 products ("cpp-tiled:bf16", "cpp-tiled-rows:bf16"), or torch.autocast
around the nn module ("native:bf16"). The reference stays float32. A variant this machine cannot
run is left out with a note on stderr (any ":bf16" one on a CPU without bf16 instructions, a fused
":bf16" one without the C++ loop's AMX products, "python" for an LSTM), so one command measures
what each CPU class has.
A float32 variant with "+onednn" appended ("cpp-tiled-rows+onednn") computes the decoder's
products as a run does where the autotuner measured that faster (rnn_train.kernels.fused.onednn_linear);
without it the decoder is nn.Linear's.
The fused variants use gemm="blas" unless --gemm says otherwise.

    python benchmarks/train_speed.py --cell lstm --hidden 512 --variants cpp-tiled-rows,cpp-tiled-rows:bf16,auto
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rnn_train.config import load_config  # noqa: E402
from rnn_train.kernels.fused import FusedPath  # noqa: E402
from rnn_train.kernels.gemm import onednn_available  # noqa: E402
from rnn_train.kernels.precision import bf16_hardware, fused_bf16_available  # noqa: E402
from rnn_train.runtime import keep_freed_memory  # noqa: E402
from rnn_train.training.learner import TorchLearner  # noqa: E402

PATHS = {"native": None, "python": ("python", "blas", "blas"), "cpp-rows": ("cpp", "blas", "rows"),
         "cpp-units": ("cpp", "blas", "units"), "cpp-blas": ("cpp", "blas", "blas"),
         "cpp-tiled-rows": ("cpp", "tiled", "rows"), "cpp-tiled-units": ("cpp", "tiled", "units"),
         "cpp-tiled": ("cpp", "tiled", "blas")}


def reference_step(module_path: Path, cell: str, V: int, H: int, layers: int, lr: float):
    """The reference loop's own model and update, one batch at a time (its sequential mode)."""
    spec = importlib.util.spec_from_file_location("reference_loop", module_path)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    torch.manual_seed(0)
    net = ref.RNNModel(cell, V, H, layers)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    params = [p for p in net.parameters() if p.requires_grad]
    carry = {"state": None}

    def step(x: np.ndarray, y: np.ndarray):
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        state = carry["state"]
        if state is None:
            state = net.begin_state(x.shape[0])
        else:
            for s in state if isinstance(state, tuple) else (state,):
                s.detach_()
        out, state = net(x, state)
        loss = F.cross_entropy(out, y.T.reshape(-1).long()).mean()
        opt.zero_grad()
        loss.backward()
        ref.clip(params, 1.0)
        opt.step()
        carry["state"] = state
        return loss.item()

    return step


def parse_variant(variant: str) -> tuple[str, str, str]:
    """"cpp-tiled-rows+onednn:bf16" -> (path name, decoder suffix, precision suffix); "" where absent."""
    name, _, precision = variant.partition(":")
    name, _, decoder = name.partition("+")
    return name, decoder, precision


def pipeline_step(variant: str, config: str, overrides: list[str], V: int, gemm: str):
    """rnn-train's TorchLearner.train_step with the variant's training path pinned."""
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    learner = TorchLearner(cfg, V, torch.device("cpu"))
    model = learner.torch_model()
    name, decoder, precision = parse_variant(variant)
    if name != "auto":
        loop = PATHS[name]
        model.use_training_path(None if loop is None else FusedPath(loop[0], gemm, loop[1], loop[2]),
                                precision or "fp32", decoder or "blas")
    label = f"{model.training_kernel} {learner.precision}"
    carry = {"state": None}

    def step(x: np.ndarray, y: np.ndarray):
        state = carry["state"]
        if isinstance(state, tuple):
            state = tuple(s.detach() for s in state)
        elif state is not None:
            state = state.detach()
        loss, _, carry["state"] = learner.train_step(x, y, state)
        return loss.item()

    return step, label


def runnable(variant: str, cell: str) -> bool:
    """Whether this machine can run `variant`; a note on stderr where it cannot."""
    name, decoder, precision = parse_variant(variant)
    why = bf16_hardware(torch.device("cpu")) if precision == "bf16" else None  # oneDNN has no AVX2 bf16 LSTM
    if decoder and not onednn_available():
        why = "this torch build has no oneDNN linear for the decoder"
    if name == "python" and cell == "lstm":
        why = "the Python loop has no LSTM"
    elif not why and precision == "bf16" and PATHS.get(name) is not None and not fused_bf16_available():
        why = "the C++ loop's bf16 products need AMX-BF16 (and kernels built with it), which this machine lacks"
    if why:
        print(f"note: leaving out {variant}: {why}", file=sys.stderr)
    return why is None


def run(a) -> dict:
    torch.set_num_threads(a.threads)
    keep_freed_memory()  # as a training run does (rnn_train.training.trainer.train); the reference step shares it
    overrides = [f"model.cell={a.cell}", f"model.hidden_size={a.hidden}", f"model.num_layers={a.layers}",
                 f"data.batch_size={a.batch}", f"data.num_steps={a.steps}", "model.embedding=one_hot",
                 "model.dropout=0", "train.optimizer=sgd", "train.lr=1.0", "train.momentum=0", "train.clip_norm=1.0",
                 f"model.dtype={a.dtype}", f"train.precision={a.precision}"]
    variants = [v for v in a.variants.split(",") if runnable(v, a.cell)]
    if not variants:
        raise SystemExit("error: none of --variants runs on this machine (see the notes above)")
    steps, labels = {}, {}
    for v in variants:
        if v == "reference":
            steps[v], labels[v] = reference_step(Path(a.reference), a.cell, a.vocab, a.hidden, a.layers, 1.0), "reference"
        else:
            steps[v], labels[v] = pipeline_step(v, a.config, overrides, a.vocab, a.gemm)
    rng = np.random.default_rng(0)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(a.warmup + a.rounds):
        x = rng.integers(0, a.vocab, (a.batch, a.steps), dtype=np.int64)
        y = rng.integers(0, a.vocab, (a.batch, a.steps), dtype=np.int64)
        for v in variants[r % len(variants):] + variants[: r % len(variants)]:
            t0 = clock()
            steps[v](x, y)
            if r >= a.warmup:
                times[v].append(clock() - t0)
    base = statistics.median(times[variants[0]])
    rows = {}
    for v in variants:
        med = statistics.median(times[v])
        rows[v] = {"path": labels[v], "ms": round(med * 1e3, 2), "tokens_per_s": round(a.batch * a.steps / med),
                   "vs_first": round(base / med, 3)}
    return {"cell": a.cell, "hidden": a.hidden, "layers": a.layers, "batch": a.batch, "steps": a.steps,
            "threads": a.threads, "dtype": a.dtype, "rounds": a.rounds, "clock": a.clock, "variants": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", default="gru", choices=("rnn", "gru", "lstm"))
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--vocab", type=int, default=65, help="65: tinyshakespeare's characters")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--gemm", choices=("blas", "auto", "tiled", "auto-tiled"), default="blas",
                   help="the fused paths' all-steps GEMMs")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="train.precision of the 'auto' variant (default auto)")
    p.add_argument("--variants",
                   default="reference,native,python,cpp-rows,cpp-units,cpp-blas,cpp-tiled-rows,cpp-tiled-units")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--config", default=str(ROOT / "configs" / "shakespeare_gru.yaml"))
    p.add_argument("--reference", default=str(ROOT.parent / "shared" / "bench" / "reference_loop.py"))
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: process CPU time, which other processes on a busy machine do not inflate; "
                        "meaningful with --threads 1 only (it adds up the threads' time)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.clock == "cpu" and a.threads != 1:
        p.error("--clock cpu needs --threads 1")
    for v in a.variants.split(","):
        name, decoder, precision = parse_variant(v)
        if (name not in ("reference", "auto", *PATHS) or precision not in ("", "fp32", "bf16")
                or ("+" in v and (decoder != "onednn" or name in ("reference", "auto") or precision == "bf16"))):
            p.error(f"unknown variant {v!r}: one of reference, auto, {', '.join(PATHS)}, each with :bf16 or not "
                    "(or float32 with +onednn)")
    res = run(a)
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"{a.cell.upper()}-{a.hidden} x{a.layers} B={a.batch} T={a.steps} V={a.vocab} {a.dtype}, {a.threads} thread(s), "
          f"median {a.clock} time of {a.rounds} interleaved steps; speed-up over {a.variants.split(',')[0]}:")
    for v, row in res["variants"].items():
        print(f"  {v:<20} {row['ms']:>8.2f} ms  {row['tokens_per_s']:>8,} tokens/s  x{row['vs_first']:.2f}  {row['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
