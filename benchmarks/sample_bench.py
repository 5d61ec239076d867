"""Sampling speed: characters per second of each generation path, interleaved in one process.

Models are CharRNNs with torch's default random initialisation, in the shape of a trained one
(hidden 256, one layer, one-hot input, V = 65 as Tiny Shakespeare plus <unk>): a step costs the same
whatever the values, and no training is needed. Every measurement samples at temperature 0.8 from
the same prefix (`stream_after`, what predict.py runs); a timing includes what a predict.py run does
before its first character: the prefix warm-up and, on the stepper paths, making the stepper.

- ``module``: one module call per character, a softmax and a torch.multinomial (the first
  generation path), batch 1 only.
- ``numpy-before``: the NumPy stepper with Gumbel-max noise drawn by NumPy per row, the sampling
  path before the C++ steps (reproduced here: the temperature folded into the decoder, noise for
  64 steps drawn per row and chunk, then argmax(logits + noise) per step).
- ``numpy``: today's NumPy stepper (make_stepper(kernel="numpy"), the path where the C++ kernels
  cannot be built), with today's chooser.
- ``cpp``: the C++ generation steps (rnn_train/prediction/kernel_stepper.py), what predict.py
  takes wherever the kernels are built.
- ``cpp-bf16``: the same with `--precision bf16` (products on AMX tiles), where the CPU has them.

Runs are interleaved (every variant once per round, rounds repeated) and the median is reported,
with the CPU time per character beside it: the machine is shared and noisy, and a variant's
ratio to another in the same run is what to read, not its absolute rate. Each timing starts
`--settle` seconds after the one before: OpenBLAS's threads busy-wait for work for a while after
a NumPy path's last product (~0.1 s here), and a C++ path timed in that while shares its cores with
them (it measured 134k chars/s at N=32 with 14.8 CPU µs per character, against ~400k and ~5 µs
with the pause, on the Xeon of docs/prediction.md).

After the rest, and before the timing, the path runs once untimed for a few characters: on the
virtual machine of docs/prediction.md, memory left untouched for a while costs microseconds per
4 KiB page on its next touch, with no page fault counted (benchmarks/idle_pages.py: 0.01 µs a page
with no pause, 0.9-1.4 after 0.5 s of sleep; a torch add of [32, 256] after 1 s took
2.0-3.5 ms instead of ~30 µs). That is a cost of the rest, not of the path, and it weighed most on
the fastest path, whose run is the shortest: `--num-samples 32` on the C++ steps gave 386k-436k
chars/s without the short run and 519k-541k with it, in alternating runs (~10 ms of a 40 ms run).
So a timing is of a warm process, as in a server or a notebook sampling again; a one-shot
predict.py process pays its own start-up besides. `--no-retouch` times the path straight after the
rest, as this benchmark did before.

    python benchmarks/sample_bench.py                      # GRU, RNN, LSTM at batch 1; GRU for N = 1..32
    python benchmarks/sample_bench.py --cells lstm --batch-cell lstm
    python benchmarks/sample_bench.py --cells gru --batches 1,32 --rounds 9 --chars 60000
    python benchmarks/sample_bench.py --threads 1          # torch (and the C++ steps) on one thread
"""
from __future__ import annotations

import argparse
import os
import statistics
import string
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rnn_train.data.vocab import Vocab  # noqa: E402
from rnn_train.kernels.precision import fused_bf16_available  # noqa: E402
from rnn_train.model.charrnn import CharRNN  # noqa: E402
from rnn_train.prediction import kernel_stepper, stepper  # noqa: E402
from rnn_train.prediction.choose import SamplingOptions  # noqa: E402
from rnn_train.prediction.generate import encode_prefix, stream_after, warm_up  # noqa: E402

PREFIX = "the"
TEMPERATURE = 0.8
CHUNK = 64


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default="gru,rnn,lstm", help="cells timed at batch 1 (default gru,rnn,lstm)")
    ap.add_argument("--batches", default="1,2,4,8,16,32", help="numbers of samples for the batch table")
    ap.add_argument("--batch-cell", default="gru", choices=("rnn", "gru", "lstm"), help="the batch table's cell")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=65, help="characters besides <unk> (default 65)")
    ap.add_argument("--chars", type=int, default=20000, help="characters per timing (all samples together)")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds of rest before each timing, for the last path's threads to sleep (default 0.5)")
    ap.add_argument("--no-retouch", dest="retouch", action="store_false",
                    help="time each path straight after the rest, without its untimed short run (see the docstring)")
    ap.add_argument("--module-chars", type=int, default=2000, help="characters per timing of the module loop")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's, one per core)")
    return ap.parse_args()


@torch.no_grad()
def module_loop(model: CharRNN, vocab: Vocab, k: int, n: int) -> None:
    """The first path: one module call per character (batch 1)."""
    gen = torch.Generator().manual_seed(1)
    logits, state = warm_up(model, encode_prefix(vocab, PREFIX))
    for _ in range(k):
        masked = logits.clone()
        masked[0] = float("-inf")
        probs = torch.softmax(masked.float() / TEMPERATURE, dim=-1)
        idx = int(torch.multinomial(probs, 1, generator=gen))
        step, state = model(torch.tensor([[idx]]), state)
        logits = step[0, -1]


def numpy_before(model: CharRNN, vocab: Vocab, k: int, n: int) -> None:
    """The NumPy stepper with per-row Gumbel noise from NumPy, as sampling ran before the C++ steps."""
    logits, state = warm_up(model, encode_prefix(vocab, PREFIX))
    folded = _folded[id(model)]  # the temperature folded into the decoder, as that stepper did
    s = stepper.make_stepper(folded, n, kernel="numpy")
    s.load_state(state)
    first = logits.numpy().copy() / TEMPERATURE
    first[0] = stepper.UNK_LOGIT
    current = s.logits
    current[:] = first
    streams = [np.random.default_rng([1, i]) for i in range(n)]
    noise = np.empty((n, CHUNK, len(vocab)), np.float32)
    ids = np.empty(n, np.int64)
    for t in range(0, k, CHUNK):
        for i, rng in enumerate(streams):
            rng.standard_exponential(dtype=np.float32, out=noise[i])
        np.maximum(noise, np.finfo(np.float32).tiny, out=noise)
        np.log(noise, out=noise)
        np.negative(noise, out=noise)
        for j in range(min(CHUNK, k - t)):
            current += noise[:, j]
            np.argmax(current, axis=1, out=ids)
            current = s.step(ids)


def today(kernel: str, precision: str = "fp32"):
    def run(model: CharRNN, vocab: Vocab, k: int, n: int) -> None:
        logits, state = warm_up(model, encode_prefix(vocab, PREFIX))
        saved = stepper.make_stepper
        stepper_for = lambda *a, **kw: saved(*a, **kw, kernel=kernel)  # noqa: E731
        import rnn_train.prediction.generate as generate

        generate.make_stepper = stepper_for
        options = SamplingOptions(TEMPERATURE, seed=1, precision=precision)
        try:
            for _ in stream_after(model, vocab, logits, state, k, options, num_samples=n):
                pass
        finally:
            generate.make_stepper = saved
    return run


_folded: dict[int, CharRNN] = {}


RETOUCH_CHARS = 20


def timed(f, model: CharRNN, vocab: Vocab, k: int, n: int, settle: float = 0.0,
          retouch: bool = True) -> tuple[float, float]:
    time.sleep(settle)  # the previous path's spinning threads fall asleep (see the docstring)
    if retouch:
        f(model, vocab, RETOUCH_CHARS, n)  # the pages the rest left cold, touched again (see the docstring)
    wall, cpu = time.perf_counter(), time.process_time()
    f(model, vocab, k, n)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    vocab = Vocab.build(string.printable[:args.vocab])  # digits, letters, punctuation; <unk> added
    torch.manual_seed(0)
    cells = args.cells.split(",")
    models = {c: CharRNN(len(vocab), c, args.hidden).eval() for c in dict.fromkeys([*cells, args.batch_cell])}
    for model in models.values():
        folded = CharRNN(len(vocab), model.cell, args.hidden).eval()
        folded.load_state_dict(model.state_dict())
        with torch.no_grad():
            folded.decoder.weight /= TEMPERATURE
            folded.decoder.bias /= TEMPERATURE
        _folded[id(model)] = folded
    batches = [int(b) for b in args.batches.split(",")]
    cpp = kernel_stepper.supports(models[cells[0]])
    paths = {"module": module_loop, "numpy-before": numpy_before, "numpy": today("numpy")}
    if cpp:
        paths["cpp"] = today("cpp")
    if cpp and fused_bf16_available():
        paths["cpp-bf16"] = today("cpp", "bf16")
    print(f"H={args.hidden}, V={len(vocab)}, temperature {TEMPERATURE}, torch threads {torch.get_num_threads()}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, {args.rounds} rounds (medians), "
          f"{'an untimed short run after each rest' if args.retouch else 'no run between rest and timing'}; "
          f"C++ steps {'built' if cpp else 'NOT available'}; load average {os.getloadavg()[0]:.1f}")

    jobs = [(("1", c, p), paths[p], models[c], args.module_chars if p == "module" else args.chars, 1)
            for c in cells for p in paths]
    jobs += [(("N", n, p), paths[p], models[args.batch_cell], max(args.chars // n, 500), n)
             for n in batches for p in paths if p != "module"]
    for _, f, model, _, n in jobs:  # warm caches, lazy initialisation and the NumPy block sizes (stored once)
        f(model, vocab, 200, n)
    wall: dict = {key: [] for key, *_ in jobs}
    cpu: dict = {key: [] for key, *_ in jobs}
    for _ in range(args.rounds):
        for key, f, model, k, n in jobs:
            w, c = timed(f, model, vocab, k, n, settle=args.settle, retouch=args.retouch)
            wall[key].append(k * n / w)
            cpu[key].append(c / (k * n) * 1e6)

    def cell_text(key) -> str:
        return f"{statistics.median(wall[key]):>10,.0f} {statistics.median(cpu[key]):>6.1f}"

    head = "".join(f"{p:>18}" for p in paths)
    print("(each path: chars/s wall clock, then CPU microseconds per char)")
    print(f"\nbatch 1, chars/s and CPU us/char{' ' * 4}{head}     cpp / numpy-before")
    for c in cells:
        line = f"{c.upper()}-{args.hidden:<31}" + "".join(f" {cell_text(('1', c, p))}" for p in paths)
        if cpp:
            line += f" {statistics.median(wall[('1', c, 'cpp')]) / statistics.median(wall[('1', c, 'numpy-before')]):>9.2f}x"
        print(line)
    batch_paths = [p for p in paths if p != "module"]
    print(f"\n{args.batch_cell.upper()}, N samples as one batch   " + "".join(f"{p:>18}" for p in batch_paths)
          + "     cpp / numpy-before   cpp vs N=1")
    for n in batches:
        line = f"N={n:<35}" + "".join(f" {cell_text(('N', n, p))}" for p in batch_paths)
        if cpp:
            rate = statistics.median(wall[("N", n, "cpp")])
            line += (f" {rate / statistics.median(wall[('N', n, 'numpy-before')]):>9.2f}x"
                     f" {rate / statistics.median(wall[('N', batches[0], 'cpp')]):>13.2f}x")
        print(line)


if __name__ == "__main__":
    main()
