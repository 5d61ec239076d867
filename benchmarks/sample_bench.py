"""Sampling speed: characters per second of the NumPy sampler against the per-character module loop.

Models are CharRNNs with torch's default random initialisation, in the shape of a trained one
(hidden 256, one layer, one-hot input, V = 65 as Tiny Shakespeare plus <unk>): a step costs the same
whatever the values, and no training is needed. Every measurement samples at temperature 0.8 from
the same prefix; the prefix warm-up is outside the timed part.

- ``module loop``: the previous generation path (one module call per character, an isfinite
  check, a softmax and a torch.multinomial), reproduced here as the baseline.
- ``numpy``: rnn_train.prediction (`stream_after`), batch 1, and batches of N samples.

Runs are interleaved (every variant once per round, rounds repeated) in one process and the median
is reported, because the machine is shared and noisy.

    python benchmarks/sample_bench.py                        # GRU, RNN, LSTM at batch 1; GRU for N = 1..32
    python benchmarks/sample_bench.py --cells lstm --batch-cell lstm          # LSTM at batch 1 and N = 1..32
    python benchmarks/sample_bench.py --cells gru --rounds 7 --chars 40000
    python benchmarks/sample_bench.py --blas-threads 1       # OpenBLAS on one thread (set before numpy loads)
"""
from __future__ import annotations

import argparse
import os
import statistics
import string
import sys
import time
from pathlib import Path


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default="gru,rnn,lstm", help="cells timed at batch 1 (default gru,rnn,lstm)")
    ap.add_argument("--batches", default="1,2,4,8,16,32", help="numbers of samples for the batch table")
    ap.add_argument("--batch-cell", default="gru", choices=("rnn", "gru", "lstm"), help="the batch table's cell")
    ap.add_argument("--compare-rows", type=int, default=4,
                    help="also time each batch with its GEMMs in fixed blocks of this many rows (the sampler's "
                         "choice before it was measured per machine: 4; 0 = off)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=65, help="characters besides <unk> (default 65)")
    ap.add_argument("--chars", type=int, default=20000, help="characters per sample per timing (numpy path)")
    ap.add_argument("--reference-chars", type=int, default=2000, help="characters per timing of the module loop")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--blas-threads", type=int, default=0,
                    help="OpenBLAS/OpenMP threads for NumPy (0 = leave the environment as it is)")
    return ap.parse_args()


ARGS = parse()
if ARGS.blas_threads:  # read by OpenBLAS when NumPy loads: must precede the imports below
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(ARGS.blas_threads)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rnn_train.data.vocab import Vocab  # noqa: E402
from rnn_train.model.charrnn import CharRNN  # noqa: E402
from rnn_train.prediction.choose import SamplingOptions  # noqa: E402
from rnn_train.prediction import stepper  # noqa: E402
from rnn_train.prediction.generate import encode_prefix, stream_after, warm_up  # noqa: E402

PREFIX = "the"
TEMPERATURE = 0.8


@torch.no_grad()
def module_loop(model: CharRNN, vocab: Vocab, k: int) -> float:
    """The previous path: seconds for k characters, one module call per character."""
    gen = torch.Generator().manual_seed(1)
    logits, state = warm_up(model, encode_prefix(vocab, PREFIX))
    start = time.perf_counter()
    for _ in range(k):
        if not torch.isfinite(logits[1:]).all():
            raise RuntimeError("not finite")
        masked = logits.clone()
        masked[0] = float("-inf")
        probs = torch.softmax(masked.float() / TEMPERATURE, dim=-1)
        idx = int(torch.multinomial(probs, 1, generator=gen))
        step, state = model(torch.tensor([[idx]]), state)
        logits = step[0, -1]
    return time.perf_counter() - start


def numpy_path(model: CharRNN, vocab: Vocab, k: int, n: int, rows: int = 0) -> float:
    """Seconds for n samples of k characters each, generated as one batch (GEMMs in blocks of
    `rows` rows, or 0: of the size measured for this machine, stepper.gemm_rows)."""
    logits, state = warm_up(model, encode_prefix(vocab, PREFIX))
    measured = stepper.gemm_rows
    if rows:
        stepper.gemm_rows = lambda model, batch: rows
    try:
        start = time.perf_counter()
        for _ in stream_after(model, vocab, logits, state, k, SamplingOptions(TEMPERATURE, seed=1), num_samples=n):
            pass
        return time.perf_counter() - start
    finally:
        stepper.gemm_rows = measured


def median_rate(times: list[float], chars: int) -> float:
    return chars / statistics.median(times)


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    vocab = Vocab.build(string.printable[:ARGS.vocab])  # digits, letters, punctuation; <unk> added
    torch.manual_seed(0)
    models = {c: CharRNN(len(vocab), c, ARGS.hidden).eval() for c in ARGS.cells.split(",")}
    batches = [int(b) for b in ARGS.batches.split(",")]
    print(f"H={ARGS.hidden}, V={len(vocab)}, temperature {TEMPERATURE}, torch threads {ARGS.threads}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, {ARGS.rounds} rounds (medians)")
    for model in models.values():  # warm caches and lazy initialisation
        numpy_path(model, vocab, 500, 1)
        module_loop(model, vocab, 100)
    many = models.get(ARGS.batch_cell) or CharRNN(len(vocab), ARGS.batch_cell, ARGS.hidden).eval()
    for n in batches:  # and each batch's block size, measured on first use per machine (stepper.gemm_rows)
        numpy_path(many, vocab, 100, n)

    ref: dict[str, list[float]] = {c: [] for c in models}
    new: dict[str, list[float]] = {c: [] for c in models}
    batch: dict[int, list[float]] = {n: [] for n in batches}
    fixed: dict[int, list[float]] = {n: [] for n in batches}
    for _ in range(ARGS.rounds):
        for cell, model in models.items():
            ref[cell].append(module_loop(model, vocab, ARGS.reference_chars))
            new[cell].append(numpy_path(model, vocab, ARGS.chars, 1))
        for n in batches:
            batch[n].append(numpy_path(many, vocab, max(ARGS.chars // n, 500), n))
            if ARGS.compare_rows:
                fixed[n].append(numpy_path(many, vocab, max(ARGS.chars // n, 500), n, ARGS.compare_rows))

    print("\nbatch 1            module loop chars/s   numpy chars/s   us/char   speed-up")
    for cell in models:
        a, b = median_rate(ref[cell], ARGS.reference_chars), median_rate(new[cell], ARGS.chars)
        print(f"{cell.upper()}-{ARGS.hidden:<12} {a:>20,.0f} {b:>15,.0f} {1e6 / b:>9.1f} {b / a:>9.1f}x")
    print(f"\n{ARGS.batch_cell.upper()}, N samples as one batch   chars/s   us/step   vs N=1   target 0.8*N   rows"
          + (f"   blocks of {ARGS.compare_rows}: chars/s" if ARGS.compare_rows else ""))
    one = median_rate(batch[batches[0]], max(ARGS.chars // batches[0], 500) * batches[0])
    for n in batches:
        chars = max(ARGS.chars // n, 500) * n
        rate = median_rate(batch[n], chars)
        line = (f"N={n:<28} {rate:>9,.0f} {1e6 * n / rate:>9.1f} {rate / one:>8.2f}x {0.8 * n:>10.1f}x "
                f"{min(stepper.gemm_rows(many, n), n):>6}")
        if ARGS.compare_rows:
            line += f" {median_rate(fixed[n], chars):>20,.0f}"
        print(line)


if __name__ == "__main__":
    main()
