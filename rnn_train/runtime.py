"""Where a run computes: the device, the seeds and the CPU threads, each set in one place."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import random

import numpy as np
import torch

from rnn_train.errors import UserError


def set_seed(seed: int) -> None:
    """One call seeds every generator the pipeline uses: Python, NumPy's legacy global, torch (CPU+CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixed from several numbers (seed, rank[, step]): neighbouring inputs give
    unrelated streams, unlike seed + rank, which would make rank 1 of seed s replay rank 0 of s + 1."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def resolve_device(name: str, key: str = "train.device", local_rank: int = 0, local_size: int = 1) -> torch.device:
    """auto | cpu | cuda -> a device; `key` is how the user set it, for the error message.

    With several processes on a machine (torchrun --nproc_per_node), CUDA means one GPU per process:
    process `local_rank` takes cuda:`local_rank`, and a machine with fewer GPUs than processes is an
    error (two processes sharing a GPU would run at half speed each and could run out of memory)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"{key} is cuda but no CUDA device is available (use auto or cpu)")
    if local_size == 1:
        return torch.device("cuda")
    gpus = torch.cuda.device_count()
    if gpus < local_size:
        raise UserError(f"{key} is cuda with {local_size} processes on this machine, but it has {gpus} GPU"
                        f"{'s' if gpus != 1 else ''}: start at most {gpus} (torchrun --nproc_per_node={gpus})")
    return torch.device("cuda", local_rank)


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes the kernel could give this process now without swapping (Linux's MemAvailable), or
    None where that is unknown. Linux overcommits: an allocation far beyond it does not fail, the
    process grows until the machine swaps or kills it, so a command that sizes its work from the
    user's numbers checks them against this first."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def refuse_beyond_free(need: int, asked: str, fix: str) -> None:
    """One UserError where `need` bytes, what the user's numbers `asked` for ("--batch 8 x --steps 10
    needs"), exceed the memory this machine has free: "<asked> about X GiB, more than the Y GiB this
    machine has free; <fix>". Nothing where the free memory is unknown (not Linux)."""
    free = available_memory()
    if free is not None and need > free:
        raise UserError(f"{asked} about {need / 2**30:,.1f} GiB, more than the {free / 2**30:.1f} GiB this "
                        f"machine has free; {fix}")


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` says an allocation failed: NumPy's MemoryError, or the RuntimeError torch's
    allocator raises ("... failed to allocate ...", "not enough memory ...")."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and ("alloc" in text or "memory" in text))


def set_threads(threads: int, local_size: int = 1) -> None:
    """torch's CPU threads: `threads` when set (train.threads); else, with several processes on the
    machine, each takes its share of the cores (torchrun itself sets OMP_NUM_THREADS=1, which would
    leave all but N cores idle); a single process keeps torch's default."""
    if threads:
        torch.set_num_threads(threads)
    elif local_size > 1:
        torch.set_num_threads(max(1, available_cores() // local_size))


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse instead of handing them back to the OS.

    Why: by default a block above 128 KiB is its own mmap, returned to the OS when freed, and the
    heap's free top is trimmed. A training step allocates and frees the same multi-MB tensors
    (gates, states, deltas) every time, so each step then touches fresh pages: a median of 90.5
    page faults per GRU-256 B32 T35 step on the machine measured, 4.5 with this
    (benchmarks/page_faults.py, docs/kernels.md). The cost is that memory freed during a run is
    kept by the process until it ends. Does nothing (and returns False) where the C library is
    not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, 64 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))
