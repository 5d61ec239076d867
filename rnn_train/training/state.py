"""RunState: everything that decides what a run does next, as plain data, and the one definition of
what a checkpoint (`last.pt`, `best.pt`) holds.

Why one object: exact resume needs every number the loop reads to survive a restart. Kept in one
dataclass, "what does a checkpoint hold?" has a single answer (`to_checkpoint`), reading one back
is its mirror (`from_checkpoint`), and a field added here cannot be forgotten by the other side.

A checkpoint is one dict of plain data and tensors (loadable with `torch.load(weights_only=True)`):

    model            the CharRNN state_dict (the NumPy backend writes the same keys)
    optimizer        the optimiser's state_dict ({} for the NumPy backend's plain SGD)
    config           the resolved config, a dict of sections
    vocab            the vocabulary as a list of characters, <unk> first
    step, epoch, batch_in_epoch     updates done; the epoch and the batches done in it
    tokens, train_seconds           training tokens read and seconds spent (validation excluded)
    best_val_loss, evals_since_best best validation loss so far; validations since (early stopping)
    val_loss         the latest validation loss (NaN before the first)
    plateau          reduce-on-plateau state: {best, bad_evals, scale}
    hidden           the carried hidden state of sequential partitioning (None otherwise): h [L, B, H]
                     or (h, c) for an LSTM, detached
    rng              the torch (and CUDA) generator states and Python's `random` state
    format, version  added by `model.checkpoint.save_checkpoint`

The batch order needs no state: epoch e's batches come from `epoch_rng(seed, e)`, so a resumed run
rebuilds that epoch and skips `batch_in_epoch` batches. The layout is version 1, unchanged since
the first release; `model.checkpoint` checks the version and is where a converter would go.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from rnn_train.model.charrnn import State, detach_state
from rnn_train.training.schedule import PlateauState, plateau_step


@dataclass
class RunState:
    step: int = 0  # updates done
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already trained on
    tokens: int = 0  # training targets read
    train_seconds: float = 0.0  # time in training steps (validation excluded)
    best_val_loss: float = math.inf
    evals_since_best: int = 0  # validations without a new best (early stopping)
    val_loss: float = math.nan  # the latest finite validation loss
    plateau: PlateauState = field(default_factory=PlateauState)
    hidden: State | None = None  # carried across batches in sequential partitioning, detached
    rng: dict[str, Any] = field(default_factory=dict)  # generator states at the last save / load

    # -- transitions (each a few lines; the loop calls them by name) ---------------------------
    def advance(self, tokens: int) -> None:
        """One update done, on `tokens` targets."""
        self.step += 1
        self.batch_in_epoch += 1
        self.tokens += tokens

    def end_epoch(self) -> None:
        """The epoch ran out of batches: the next starts at its first batch from a zero state."""
        self.epoch += 1
        self.batch_in_epoch = 0
        self.hidden = None

    def record_validation(self, val_loss: float, plateau_factor: float, plateau_patience: int) -> bool:
        """Book a finite validation loss: plateau schedule, best loss, patience count. True if a new best."""
        self.val_loss = val_loss
        self.plateau = plateau_step(self.plateau, val_loss, plateau_factor, plateau_patience)
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.evals_since_best = val_loss, 0
        else:
            self.evals_since_best += 1
        return improved

    # -- the checkpoint ----------------------------------------------------------------------------
    def to_checkpoint(self, weights: dict[str, Any], config: dict[str, Any], vocab: list[str]) -> dict[str, Any]:
        """The checkpoint dict (see the module docstring); `weights` is the learner's
        {"model": ..., "optimizer": ...}."""
        return {"model": weights["model"], "optimizer": weights["optimizer"], "plateau": self.plateau.to_dict(),
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "tokens": self.tokens, "train_seconds": self.train_seconds, "best_val_loss": self.best_val_loss,
                "evals_since_best": self.evals_since_best, "val_loss": self.val_loss, "config": config,
                "vocab": vocab, "rng": self.rng, "hidden": detach_state(self.hidden)}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> "RunState":
        """The run state a checkpoint was saved in (tensors where the checkpoint was mapped to)."""
        return cls(step=ckpt["step"], epoch=ckpt["epoch"], batch_in_epoch=ckpt["batch_in_epoch"],
                   tokens=ckpt["tokens"], train_seconds=ckpt["train_seconds"],
                   best_val_loss=ckpt["best_val_loss"], evals_since_best=ckpt["evals_since_best"],
                   val_loss=ckpt.get("val_loss", math.nan), plateau=PlateauState(**ckpt["plateau"]),
                   hidden=ckpt.get("hidden"), rng=ckpt["rng"])


def capture_rng(device: torch.device) -> dict[str, Any]:
    """The states of every generator a training step draws from (dropout: torch; CUDA on a GPU)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate((3, tuple(state["python"]), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def state_to(hidden: State | None, device: torch.device, dtype: torch.dtype) -> State | None:
    """A carried hidden state moved to the device and dtype the model computes in."""
    if hidden is None:
        return None
    if isinstance(hidden, (tuple, list)):
        return tuple(h.to(device, dtype) for h in hidden)  # type: ignore[return-value]
    return hidden.to(device, dtype)
