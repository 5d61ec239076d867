"""Data-parallel training under torchrun: the process group's life, and what a config must allow.

    torchrun --standalone --nproc_per_node=N train.py --config ...          one machine, N processes
    torchrun --nnodes=M --nproc_per_node=N --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:PORT --rdzv_id=JOB train.py --config ...   M machines

torchrun starts the processes and tells each who it is through the environment (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE); `world_from_env` reads it, and `process_group` joins the ranks:
gloo for CPU tensors and, on a machine with CUDA, NCCL for CUDA tensors (one group serving both, so
the small CPU-side agreements never wait for the GPU). The model is wrapped in
DistributedDataParallel (training/learner.py), which averages the gradients in the backward pass.
Everything else the ranks do together is in training/world.py. Without torchrun (or with one
process) nothing here does anything: a plain `python train.py` is unchanged.

Why one process per rank and not threads or a pool: DDP is PyTorch's own engine for this, works
the same on CPUs, one GPU per process and several machines, and torchrun restarts nothing and hangs
on nothing: when a rank exits with an error it stops the others (see docs/distributed.md).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, NoReturn

import torch

from rnn_train.config import Config
from rnn_train.errors import UserError
from rnn_train.training.world import World


def world_from_env(env: dict[str, str] | None = None) -> World:
    """The World torchrun describes in the environment; rank 0 of 1 without torchrun."""
    env = os.environ if env is None else env
    size = int(env.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    local_size = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    return World(int(env["RANK"]), size, int(env.get("LOCAL_RANK", "0")), local_size)


def backend() -> str:
    """gloo on CPU; with CUDA also NCCL for CUDA tensors (gradients), gloo staying for CPU tensors."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def process_group(world: World) -> Iterator[None]:
    """Join the ranks for the duration (nothing with one process). torchrun's environment gives the
    rendezvous (MASTER_ADDR, MASTER_PORT). torch's default timeouts apply (30 minutes for gloo,
    10 for NCCL): a rank that waits for a peer doing a long first-time job (preparing a large
    corpus, measuring kernels) waits within them; a rank that dies ends the run at once (torchrun
    stops the others; a peer's closed socket fails a pending gloo call)."""
    if not world.distributed:
        yield
        return
    torch.distributed.init_process_group(backend(), rank=world.rank, world_size=world.size)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def leave(status: int) -> NoReturn:
    """End this rank now with `status`, after flushing what it printed, skipping the interpreter's
    shutdown (os._exit). Called once the process group is destroyed and the run directory closed.

    Why: once DDP has used a gloo process group, torch keeps the group, and its worker threads, alive
    after destroy_process_group (something in C++ still holds it). Such a thread may still be
    releasing the tensors of the last collective (a barrier's record of the work before it) when
    Python shuts down; it then needs the GIL, CPython ends a thread that asks for the GIL during
    shutdown by unwinding it, the unwind meets torch's C++ frames, and libstdc++ aborts the process
    ("terminate called without an active exception", SIGABRT): torchrun reports a finished run as
    failed. It happened in 2 of 44 two-rank jobs on a 2-core machine kept busy by other processes,
    and once in CI; none in 120 such jobs since this function exists (a core dump showed
    pt_gloo_runloop in ~AsyncBarrierWork -> decref_pyobject -> take_gil -> pthread_exit while the
    main thread was in Py_FinalizeEx). Nothing is lost by skipping the shutdown: checkpoints, event
    files and metrics are written and closed before this, and stdout/stderr are flushed here."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe must not change the status
            stream.flush()
    os._exit(status)


def check_world(cfg: Config, world: World, resuming: bool = False) -> None:
    """What a config must allow to run on `world.size` processes (one line naming the key; resuming,
    where the batch size is the run's own, the numbers of processes it allows)."""
    if not world.distributed:
        return
    if cfg.model.backend == "numpy":
        raise UserError(f"model.backend=numpy cannot train on {world.size} processes (the NumPy backend is "
                        f"single-process teaching code): use model.backend=torch, or run train.py without torchrun")
    b = cfg.data.batch_size
    if b % world.size and resuming:
        allowed = [n for n in range(1, b + 1) if b % n == 0][:4]
        raise UserError(f"data.batch_size={b}, the run's, does not split over {world.size} processes, and --resume "
                        f"keeps it: resume on {' or '.join(map(str, allowed))} process{'es' if b > 1 else ''} "
                        f"(torchrun --nproc_per_node N)")
    if b % world.size:
        lower, higher = b - b % world.size, b + world.size - b % world.size
        raise UserError(f"data.batch_size={b} does not split over {world.size} processes: each takes "
                        f"batch_size / {world.size} rows; use a multiple of {world.size} "
                        f"(e.g. {f'{lower} or {higher}' if lower else higher})")
