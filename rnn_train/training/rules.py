"""When the loop logs, validates and stops: pure functions of the run state and the config.

Why pure: these rules decide the shape of every run (how many updates, which steps are logged and
validated, why a run ended), and a rule is easiest to trust when it can be tabulated without
training anything (tests/test_trainer_steps.py). The loop in `trainer.py` only asks them.

The limits. `train.epochs`, `max_steps`, `max_tokens`, `max_time` (0 = off) and early stopping
(`train.patience` validations without a new best) are checked after every update and at the end
of every epoch; the first one reached stops the run and names itself in `TrainResult.stopped_by`.
A fixed budget (the sweep's `--budget`, the benchmark's `--seconds`) sets one of them and turns
every other off: `budget_overrides` is the one place that knows which keys that means.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rnn_train.config import Config
from rnn_train.data.batching import batches_per_epoch

if TYPE_CHECKING:  # importing the state would import torch: the sweep and bench plan without it
    from rnn_train.training.state import RunState

LIMIT_KEYS = ("train.epochs", "train.max_steps", "train.max_tokens", "train.max_time", "train.patience")
"""Every key that can end a run before the others; a budget sets all of them."""


def should_stop(state: RunState, cfg: Config) -> str:
    """The limit this state has reached ('max_steps', 'max_tokens', 'max_time', 'epochs',
    'early_stopping'), or '' to go on. Checked in this order, so a tie names the first."""
    t = cfg.train
    if t.max_steps and state.step >= t.max_steps:
        return "max_steps"
    if t.max_tokens and state.tokens >= t.max_tokens:
        return "max_tokens"
    if t.max_time and state.train_seconds >= t.max_time:
        return "max_time"
    if t.epochs and state.epoch >= t.epochs:
        return "epochs"
    if t.patience and state.evals_since_best >= t.patience:
        return "early_stopping"
    return ""


def should_log(step: int, cfg: Config) -> bool:
    """Training scalars are averaged over `log.log_every` updates and logged after update `step`
    (1-based: the count of updates done) when this is true."""
    return step % cfg.log.log_every == 0


def should_validate(step: int, cfg: Config) -> bool:
    """Validate after update `step` (every `train.eval_every` updates; 0 means at each epoch's end)."""
    return bool(cfg.train.eval_every) and step % cfg.train.eval_every == 0


def validates_each_epoch(cfg: Config) -> bool:
    """`train.eval_every: 0`: validate when an epoch runs out of batches instead."""
    return not cfg.train.eval_every


def planned_steps(cfg: Config, n_train: int) -> int:
    """Updates the run will make if no time limit or early stop cuts it (0 = unknown): the cosine
    schedule's length and the progress bar's total."""
    d, t = cfg.data, cfg.train
    per_epoch = batches_per_epoch(n_train, d.batch_size, d.num_steps, d.partition)
    limits = []
    if t.max_steps:
        limits.append(t.max_steps)
    if t.epochs:
        limits.append(t.epochs * per_epoch)
    if t.max_tokens:
        limits.append(math.ceil(t.max_tokens / (d.batch_size * d.num_steps)))
    return min(limits) if limits else 0


def budget_overrides(*, max_tokens: int = 0, max_time: float = 0.0) -> list[str]:
    """Dotted overrides that make one budget (tokens or seconds of training) the only limit of a run:
    every other key of LIMIT_KEYS set to 0, early stopping included."""
    if (max_tokens > 0) == (max_time > 0):
        raise ValueError("give exactly one of max_tokens and max_time")  # a bug in the caller
    return ["train.epochs=0", "train.max_steps=0", f"train.max_tokens={int(max_tokens)}",
            f"train.max_time={max_time:g}", "train.patience=0"]
