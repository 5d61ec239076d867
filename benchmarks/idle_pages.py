"""What touching memory again costs after the process has rested: a property of the machine.

On the virtual machine of docs/prediction.md, a page left untouched for a fraction of a second
costs microseconds on its next touch, with no page fault counted inside the machine; a benchmark
that rests between timings (sample_bench.py's --settle) charges that to the timing after the rest.
This reads one byte of each 4 KiB page of a buffer, once straight away and once after each pause, and
times a small torch op after the same pauses. On a machine without the effect every row reads
about the same.

A training run rests nowhere, but each step touches every buffer of the step before, one step's time
later. `--step` times one training step (benchmarks/ceiling.py's, 1 thread, CPU time) after each
pause: how much the step's time grows with the time its pages have been left gives a rough idea of
what the machine charges a step with no pause at all, which a GEMM timed in a tight loop does not pay.

    python benchmarks/idle_pages.py
    python benchmarks/idle_pages.py --mb 64 --pauses 0,0.5 --repeats 5
    python benchmarks/idle_pages.py --step lstm:256 --pauses 0,0.05,0.15,0.4 --repeats 16
    python benchmarks/idle_pages.py --step gru:512:2 --pauses 0,0.05,0.15,0.4 --repeats 16
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
PAGE = 4096


def rest(seconds: float, busy: bool) -> None:
    """Sleep, or spin in Python (the CPU stays busy but touches almost no memory)."""
    if not busy:
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def faults() -> int:
    """Page faults (minor and major) this process has taken so far, as the machine's kernel counts them."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def pauses(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds separated by commas, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"a pause cannot be negative: {text!r}")
    return values


def step_shape(text: str) -> tuple[str, int, int]:
    """CELL:HIDDEN[:LAYERS] -> (cell, hidden, layers)."""
    from rnn_train.model import cells

    parts = text.split(":")
    try:
        if len(parts) not in (2, 3) or parts[0] not in cells.names():
            raise ValueError
        hidden, layers = int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
        if hidden < 1 or layers < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CELL:HIDDEN[:LAYERS] with CELL one of {', '.join(cells.names())} "
                                         f"and positive sizes, got {text!r}") from None
    return parts[0], hidden, layers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=positive, default=8, help="buffer size in MiB (default 8)")
    p.add_argument("--pauses", type=pauses, default="0,0.01,0.05,0.1,0.5,1", help="seconds of rest before each touch")
    p.add_argument("--repeats", type=positive, default=3)
    p.add_argument("--busy", action="store_true", help="rest by spinning in Python instead of sleeping")
    p.add_argument("--step", type=step_shape, metavar="CELL:HIDDEN[:LAYERS]",
                   help="time a training step (B32 T35 V65, float32) after each pause instead")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.step:
        time_steps(a)
        return
    buf = np.ones(a.mb << 20, np.uint8)
    per_page = buf[::PAGE]  # one byte of every page: a view, so reading it touches each page once
    x = torch.randn(32, 256)
    per_page.sum(), x + 1  # first touches out of the way
    print(f"{a.mb} MiB = {buf.size // PAGE} pages; rest by {'spinning' if a.busy else 'sleeping'}; "
          f"medians of {a.repeats} (page faults: the total over them)")
    print(f"{'pause, s':>9} {'us per page':>12} {'page faults':>12} {'torch add [32, 256], us':>24}")
    for pause in a.pauses:
        pages, adds, counted = [], [], 0
        for _ in range(a.repeats):
            rest(pause, a.busy)
            f0, t0 = faults(), time.perf_counter()
            per_page.sum()
            pages.append((time.perf_counter() - t0) / per_page.size * 1e6)
            counted += faults() - f0
            rest(pause, a.busy)
            t0 = time.perf_counter()
            x + 1
            adds.append((time.perf_counter() - t0) * 1e6)
        print(f"{pause:>9.2f} {statistics.median(pages):>12.3f} {counted:>12} {statistics.median(adds):>24.0f}")


def time_steps(a: argparse.Namespace) -> None:
    """The --step table: a training step's CPU time after each pause, the pauses taken in turns."""
    import ceiling
    from rnn_train.runtime import keep_freed_memory

    cell, hidden, layers = a.step
    keep_freed_memory()  # as a training run does
    shape = argparse.Namespace(cell=cell, hidden=hidden, layers=layers, batch=32, steps=35, vocab=65, precision="fp32")
    step, label = ceiling.step_runner(shape, "auto")
    for _ in range(3):
        step()
    seconds: dict = {pause: [] for pause in a.pauses}
    for _ in range(a.repeats):
        for pause in a.pauses:
            rest(pause, a.busy)
            t0 = time.process_time()
            step()
            seconds[pause].append(time.process_time() - t0)
    print(f"{cell.upper()}-{hidden} x{shape.layers}, {label}, 1 thread; medians of {a.repeats}")
    print(f"{'pause, s':>9} {'step, ms CPU':>13}")
    for pause in a.pauses:
        print(f"{pause:>9.2f} {statistics.median(seconds[pause]) * 1e3:>13.2f}")


if __name__ == "__main__":
    main()
