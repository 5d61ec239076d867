"""The training scalars between two logging steps, summed on the device.

Why on the device: `float(loss)` after every update would make the host wait for the accelerator
at every step. The sums stay tensors and are read once per logging interval (`flush`), the one
host sync the loop needs. With several processes (DDP) that is also where the ranks' mean losses,
each over its own rows, are averaged into the global batch's (equal rows per rank); the gradient
norm needs no exchange, every rank clips the same averaged gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rnn_train.training.world import World


@dataclass
class LogMeans:
    """Means over one logging interval."""
    loss: float
    grad_norm: float
    clipped_fraction: float
    tokens_per_s: float


class LogWindow:
    def __init__(self, device: torch.device, clip_norm: float, world: World = World()):
        self.clip_norm, self.world = clip_norm, world
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.norm = torch.zeros((), dtype=torch.float64, device=device)
        self.clipped = torch.zeros((), dtype=torch.float64, device=device)
        self.steps, self.tokens, self.seconds = 0, 0, 0.0
        # over the whole run (this process's part of it): what TrainResult reports
        self.last: LogMeans | None = None
        self.clipped_total, self.steps_total = 0.0, 0

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """One update's mean loss and pre-clip gradient norm (0-dim tensors; no host sync)."""
        self.loss += loss
        self.norm += grad_norm
        if self.clip_norm > 0:
            self.clipped += (grad_norm > self.clip_norm)
        self.steps += 1

    def timed(self, tokens: int, seconds: float) -> None:
        """The update's tokens and its wall time (for tokens/s)."""
        self.tokens += tokens
        self.seconds += seconds

    def flush(self) -> LogMeans | None:
        """The interval's means (reading the device sums: a host sync; with several ranks, the one
        exchange of losses), then start a new interval; None for an empty interval. Every rank calls
        it at the same steps."""
        if not self.steps:
            return None
        clipped = float(self.clipped)
        means = LogMeans(float(self.world.mean(self.loss)) / self.steps, float(self.norm) / self.steps, clipped / self.steps,
                         self.tokens / max(self.seconds, 1e-9))
        self.clipped_total += clipped
        self.steps_total += self.steps
        self.last = means
        self.loss.zero_(), self.norm.zero_(), self.clipped.zero_()
        self.steps, self.tokens, self.seconds = 0, 0, 0.0
        return means

    SUMS = ("loss", "norm", "clipped", "steps", "tokens", "seconds", "clipped_total", "steps_total")
    """What a checkpoint keeps of the window (RunState.log): a resumed run logs the interval it was
    stopped in, and reports its clipped fraction, as the run that never stopped does."""
    LAST = ("last_loss", "last_grad_norm")
    """And the last logged means (NaN before the first), which the run's result reports: a resume
    that has no step left to train (stopped between its last checkpoint and metrics.json) reports
    them as the run that never stopped does. Checkpoints from before they were kept lack them."""

    def snapshot(self) -> dict[str, float]:
        """The window as plain numbers (with several ranks the loss sum is the ranks' mean: a
        collective, so every rank calls it at the same step, as checkpoints are saved)."""
        return {"loss": float(self.world.mean(self.loss)), "norm": float(self.norm), "clipped": float(self.clipped),
                "steps": self.steps, "tokens": self.tokens, "seconds": self.seconds,
                "clipped_total": self.clipped_total, "steps_total": self.steps_total,
                "last_loss": self.last_loss, "last_grad_norm": self.last_grad_norm}

    def restore(self, saved: dict[str, float]) -> None:
        """Go on from a `snapshot` ({} from a checkpoint that has none: an empty window)."""
        if not saved:
            return
        self.loss.fill_(saved["loss"]), self.norm.fill_(saved["norm"]), self.clipped.fill_(saved["clipped"])
        self.steps, self.tokens, self.seconds = int(saved["steps"]), int(saved["tokens"]), float(saved["seconds"])
        self.clipped_total, self.steps_total = float(saved["clipped_total"]), int(saved["steps_total"])
        if not math.isnan(saved.get("last_loss", math.nan)):
            self.last = LogMeans(saved["last_loss"], saved["last_grad_norm"], math.nan, math.nan)

    @property
    def last_loss(self) -> float:
        return self.last.loss if self.last else math.nan

    @property
    def last_grad_norm(self) -> float:
        return self.last.grad_norm if self.last else math.nan

    @property
    def run_clipped_fraction(self) -> float:
        """Share of the logged updates whose gradient was clipped."""
        return self.clipped_total / self.steps_total if self.steps_total else 0.0
