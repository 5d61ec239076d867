"""The Learner protocol: what the trainer needs from a backend, and nothing else.

A leaf of the package: the backends (training/learner.py's TorchLearner, teaching/numpy_backend.py's
NumpyLearner) implement it and the trainer reads it, without either importing the other.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol, runtime_checkable

import numpy as np
import torch

from rnn_train.data.batching import Batch
from rnn_train.model.charrnn import CharRNN, State


@runtime_checkable
class Learner(Protocol):
    """What the trainer needs from a backend."""

    @property
    def kernel(self) -> str:
        """The training path of the recurrent layers, as logged in the run: "native", a fused path's
        label ("fused-cpp(...)", "fused-python(...)") or "numpy"."""
        ...

    @property
    def precision(self) -> str:
        """The arithmetic of the training step's matrix products, as logged in the run: "fp32",
        "bf16" or "fp64" (rnn_train.kernels.precision)."""
        ...

    precision_note: str
    """One line for the user where the requested train.precision could not be had here, else ""."""

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next `train_step`."""
        ...

    def train_step(self, x: np.ndarray, y: np.ndarray, state: State | None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One update on ids X, targets Y [B, T] from `state` (None: zeros) -> (mean CE, global gradient
        norm before clipping, final state), as 0-dim tensors left on the device: no host sync."""
        ...

    def evaluate(self, batches: Iterable[Batch]) -> float:
        """Mean CE over a whole split's `eval_batches`: its streams read in order, the state carried
        from zero."""
        ...

    def torch_model(self) -> CharRNN:
        """The CharRNN holding the current weights (text samples, parameter count, loading weights)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """{"model": CharRNN state_dict, "optimizer": optimiser state_dict} as a checkpoint stores them."""
        ...

    def load_state_dict(self, d: dict[str, Any]) -> bool:
        """Restore what `state_dict` gave (raises RuntimeError / KeyError / ValueError if it does not
        fit); False where the optimiser's state was of another kind of optimiser and starts fresh."""
        ...
