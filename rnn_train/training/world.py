"""Which process of a run this is (rank `rank` of `size`), and the few things the ranks of a
data-parallel run (torchrun + DDP) must do together.

Why the trainer asks a World rather than torch.distributed: with one process (`python train.py`,
the tests, the sweep) every method here is the identity or a plain call, and no process group
exists; with several, each rank trains on its own rows of the same global batch and these
methods are the only places where ranks exchange anything besides DDP's gradient all-reduce:

    rows / share        this rank's block of a global batch's rows (training / evaluation)
    mean, sum_          a number summed over the ranks (logged loss, validation CE and count)
    agree_step          once per update: stop flag (Ctrl-C / SIGTERM on any rank) and the clock
    gather_state        the global hidden state [L, B, H] from every rank's rows (checkpoints)
    gather_objects      one picklable value per rank (the generator states of a checkpoint)
    from_writer         rank 0 computes (loads a checkpoint, checks the run directory), all receive
    node_first          local rank 0 of each machine first (preparing the corpus cache), then the rest

A user mistake found on one rank inside `from_writer` / `node_first` is raised on every rank, so
no rank waits forever for a peer that has already given up. Only rank 0 (`is_writer`) writes the
run directory and prints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np
import torch

from rnn_train.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank among the processes of this machine (its GPU index)
    local_size: int = 1  # processes on this machine (they share its cores)

    def __post_init__(self):
        if not 0 <= self.rank < self.size or not 0 <= self.local_rank < self.local_size:
            raise ValueError(f"rank {self.rank} of {self.size}, local {self.local_rank} of {self.local_size}")

    @property
    def is_writer(self) -> bool:
        """The one process that writes the run directory and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # -- rows ------------------------------------------------------------------------------------------
    def rows(self, batch: np.ndarray) -> np.ndarray:
        """This rank's contiguous block of rows of a global batch [B, T] -> [B / size, T] (a view).

        Contiguous blocks keep sequential partitioning intact: row b of batch i+1 continues row b of
        batch i, so each rank carries the hidden state of its own streams."""
        if self.size == 1:
            return batch  # (slicing a memory-mapped batch costs microseconds per step in NumPy's hooks)
        b = batch.shape[0]
        if b % self.size:
            raise ValueError(f"batch of {b} rows does not split over {self.size} processes")
        per = b // self.size
        return batch[self.rank * per:(self.rank + 1) * per]

    def share(self, n: int) -> slice:
        """This rank's block of n rows when n need not divide evenly (evaluation: a short split's
        batch has fewer rows); the first n % size ranks take one row more, a rank may get none."""
        per, extra = divmod(n, self.size)
        start = self.rank * per + min(self.rank, extra)
        return slice(start, start + per + (self.rank < extra))

    def state_rows(self, state):
        """This rank's rows of a global hidden state h [L, B, H] (or (h, c)); None stays None."""
        if state is None or self.size == 1:
            return state
        if isinstance(state, (tuple, list)):
            return tuple(self.state_rows(s) for s in state)
        b = state.shape[1]
        if b % self.size:
            raise ValueError(f"state of {b} rows does not split over {self.size} processes")
        per = b // self.size
        return state[:, self.rank * per:(self.rank + 1) * per].contiguous()

    # -- numbers -----------------------------------------------------------------------------------------
    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over the ranks, in place (every rank gets the total)."""
        if self.size > 1:
            torch.distributed.all_reduce(t)
        return t

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of `t` over the ranks (a new tensor; `t` itself is untouched)."""
        if self.size == 1:
            return t
        return self.sum_(t.detach().clone()) / self.size

    def agree_step(self, stop: bool, seconds: float) -> tuple[bool, float]:
        """After every update: stop if any rank was asked to, and one clock for all (the slowest
        rank's), so that limits such as train.max_time end every rank at the same step."""
        if self.size == 1:
            return stop, seconds
        t = torch.tensor([float(stop), seconds], dtype=torch.float64)  # CPU: gloo, no GPU sync
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t[0]), float(t[1])

    # -- tensors and objects -------------------------------------------------------------------------------
    def gather_state(self, state):
        """The global hidden state [L, B, H] (or (h, c)) from every rank's rows, on every rank."""
        if state is None or self.size == 1:
            return state
        if isinstance(state, (tuple, list)):
            return tuple(self.gather_state(s) for s in state)
        parts = [torch.empty_like(state) for _ in range(self.size)]
        torch.distributed.all_gather(parts, state.contiguous())
        return torch.cat(parts, dim=1)

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite `tensors` on every rank with rank 0's values."""
        if self.size > 1:
            for t in tensors:
                torch.distributed.broadcast(t, src=0)

    def gather_objects(self, value: Any) -> list[Any]:
        """[rank 0's value, rank 1's, ...] on every rank."""
        if self.size == 1:
            return [value]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    # -- doing things once ---------------------------------------------------------------------------------
    def agree(self, error: UserError | None) -> None:
        """Every rank reports its user error (or None); if any has one, every rank raises the first."""
        if self.size == 1:
            if error is not None:
                raise error
            return
        first = next((e for e in self.gather_objects(None if error is None else str(error)) if e is not None), None)
        if first is not None:
            raise UserError(first)

    def from_writer(self, fn: Callable[[], T]) -> T:
        """`fn()` run on rank 0 only; its value (picklable) or its UserError reaches every rank."""
        if self.size == 1:
            return fn()
        box: list[Any] = [None]
        if self.is_writer:
            try:
                box = [("ok", fn())]
            except UserError as e:
                box = [("error", str(e))]
        torch.distributed.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise UserError(value)
        return value

    def node_first(self, fn: Callable[[], T]) -> T:
        """`fn()` on each machine's local rank 0, then on its other ranks (which then find the corpus
        cache the first one prepared instead of preparing it again, all at once); a UserError on any
        rank is raised on all."""
        result: Any = None
        for turn in (True, False):
            error = None
            if (self.local_rank == 0) == turn:
                try:
                    result = fn()
                except UserError as e:
                    error = e
            self.agree(error)
            if self.size == 1:
                break
        return result
