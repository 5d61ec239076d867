"""What touching memory again costs after the process has rested: a property of the machine.

On the virtual machine of docs/prediction.md, a page left untouched for a fraction of a second
costs microseconds on its next touch, with no page fault counted inside the machine; a benchmark
that rests between timings (sample_bench.py's --settle) charges that to the timing after the rest.
This reads one float per 4 KiB page of a buffer, once straight away and once after each pause, and
times a small torch op after the same pauses. On a machine without the effect every row reads
about the same.

    python benchmarks/idle_pages.py
    python benchmarks/idle_pages.py --mb 64 --pauses 0,0.5 --repeats 5
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=8, help="buffer size in MiB (default 8)")
    p.add_argument("--pauses", default="0,0.01,0.05,0.1,0.5,1", help="seconds of rest before each touch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--busy", action="store_true", help="rest by spinning in Python instead of sleeping")
    a = p.parse_args()
    torch.set_num_threads(1)
    buf = np.ones(a.mb << 20, np.uint8)
    per_page = buf[::PAGE]  # one byte of every page: a view, so reading it touches each page once
    x = torch.randn(32, 256)
    per_page.sum(), x + 1  # first touches out of the way
    print(f"{a.mb} MiB = {buf.size // PAGE} pages; rest by {'spinning' if a.busy else 'sleeping'}; "
          f"medians of {a.repeats} (page faults: the total over them)")
    print(f"{'pause, s':>9} {'us per page':>12} {'page faults':>12} {'torch add [32, 256], us':>24}")
    for pause in (float(v) for v in a.pauses.split(",")):
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


if __name__ == "__main__":
    main()
