"""Which process of a run this is: rank `rank` of `size` (one process today: rank 0 of 1).

Why the trainer already asks: with data-parallel training (torchrun) every rank trains on its own
rows of the same global batch, and only one rank writes checkpoints, events, metrics and console
lines. Written against this object from the start, the loop needs no restructuring for that.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    def __post_init__(self):
        if not 0 <= self.rank < self.size:
            raise ValueError(f"rank {self.rank} of {self.size}")  # a bug in the caller

    @property
    def is_writer(self) -> bool:
        """The one process that writes the run directory and prints."""
        return self.rank == 0

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
