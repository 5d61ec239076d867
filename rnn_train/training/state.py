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
                     or (h, c) for an LSTM, detached; all B rows of the global batch however many
                     processes trained (each rank carries its block of rows; the trainer gathers
                     them to save and hands each rank its block on resume)
    rng              the torch (and CUDA) generator states and Python's `random` state (rank 0's;
                     with several ranks also each rank's under "ranks": see `restore_rng`)
    validated_at     the step of the latest validation: a run saved at its last step after validating
                     there is not validated again when --resume ends it (one val point per step); optional
    log              the log window's sums since the last logging step and over the run, and the last
                     logged means (training.logwindow.LogWindow.snapshot): a resumed run logs the
                     interval it was stopped in, and reports its clipped fraction and last training
                     loss, as an uninterrupted run; optional
    corpus_sha256    a digest of the corpus's contents (`data.dataset.corpus_digest`), added by the
                     trainer: --resume refuses text that changed; optional (older checkpoints lack it)
    workdir          the directory relative data.paths were read against, added by the trainer: explore,
                     gradflow and --resume started elsewhere look there for a path not found where they
                     run (`data.dataset.run_data`); optional
    precision        the arithmetic the step took ("fp32", "bf16", "fp64": what train.precision's
                     `auto` became), added by the trainer: --resume says when it now takes another,
                     since a resume is exact only within one; optional
    format, version  added by `model.checkpoint.save_checkpoint`

The batch order needs no state: epoch e's batches come from `epoch_rng(seed, e)`, so a resumed run
rebuilds that epoch and skips `batch_in_epoch` batches. The layout is version 1, unchanged since
the first release; `model.checkpoint` checks the version and is where a converter would go.
Nothing in it depends on how many processes trained: a run saved by N ranks resumes on M.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from rnn_train.model.charrnn import State, detach_state
from rnn_train.training.logwindow import LogWindow
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
    log: dict[str, float] = field(default_factory=dict)  # the log window's sums at the last save (LogWindow.SUMS)
    validated_at: int = -1  # the step of the latest validation (the end validates unless it is this one)

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
                "vocab": vocab, "rng": self.rng, "hidden": detach_state(self.hidden), "log": self.log,
                "validated_at": self.validated_at}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> "RunState":
        """The run state a checkpoint was saved in (tensors where the checkpoint was mapped to)."""
        return cls(step=ckpt["step"], epoch=ckpt["epoch"], batch_in_epoch=ckpt["batch_in_epoch"],
                   tokens=ckpt["tokens"], train_seconds=ckpt["train_seconds"],
                   best_val_loss=ckpt["best_val_loss"], evals_since_best=ckpt["evals_since_best"],
                   val_loss=ckpt.get("val_loss", math.nan), plateau=PlateauState(**ckpt["plateau"]),
                   hidden=ckpt.get("hidden"), rng=ckpt["rng"], log=_log_sums(ckpt.get("log", {})),
                   validated_at=int(ckpt.get("validated_at", -1)))


def _log_sums(saved: Any) -> dict[str, float]:
    """A checkpoint's log-window sums, checked ({} for a checkpoint from before they were kept); a
    TypeError or ValueError where they are not what LogWindow.snapshot writes (a damaged file)."""
    if saved == {}:
        return {}
    if not isinstance(saved, dict) or set(saved) not in (set(LogWindow.SUMS), {*LogWindow.SUMS, *LogWindow.LAST}):
        raise ValueError(f"log sums {saved!r:.80}")
    return {k: float(v) for k, v in saved.items()}


def capture_rng(device: torch.device) -> dict[str, Any]:
    """The states of every generator a training step draws from (dropout: torch; CUDA on a GPU)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def combine_rng(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """A checkpoint's generator states from every rank's `capture_rng`: rank 0's in the one-process
    layout, plus, with several ranks, each rank's torch (and CUDA) state under "ranks" (dropout
    draws per rank)."""
    rng = dict(per_rank[0])
    if len(per_rank) > 1:
        rng["ranks"] = [{k: v for k, v in r.items() if k != "python"} for r in per_rank]
    return rng


def restore_rng(state: dict[str, Any], device: torch.device, rank: int = 0, size: int = 1,
                reseed: int | None = None) -> None:
    """Restore the generators of rank `rank` of `size` from a checkpoint's states.

    Resumed on as many ranks as saved it, each rank continues its own streams. On another number
    of ranks, rank 0 continues the saved rank 0's, and every other rank draws from `reseed` (the
    caller derives it from the seed, the rank and the step): a run without dropout computes the
    same either way; one with dropout gets other, equally random masks on those rows."""
    saved = state.get("ranks", [state])
    mine = saved[rank] if len(saved) == size else (state if rank == 0 else None)
    random.setstate((3, tuple(state["python"]), None))
    if mine is None:
        torch.manual_seed(reseed if reseed is not None else 0)
        return
    torch.set_rng_state(mine["torch"].cpu())
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"].cpu(), device)
    elif device.type == "cuda":  # saved on the CPU: the GPU's dropout stream must not start again from step 0
        torch.cuda.manual_seed(reseed if reseed is not None else 0)


def state_to(hidden: State | None, device: torch.device, dtype: torch.dtype) -> State | None:
    """A carried hidden state moved to the device and dtype the model computes in."""
    if hidden is None:
        return None
    if isinstance(hidden, (tuple, list)):
        return tuple(h.to(device, dtype) for h in hidden)  # type: ignore[return-value]
    return hidden.to(device, dtype)
