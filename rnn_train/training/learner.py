"""The part of a training step that depends on the backend, behind one typed interface.

The trainer drives a `Learner`; it never asks which one. `TorchLearner` is the ordinary backend (a
CharRNN, autograd, a torch optimiser); `teaching.numpy_backend.NumpyLearner` does the same update
with the hand-written NumPy BPTT. Both keep a CharRNN whose state_dict is what checkpoints hold,
so a run of either backend is predicted from, resumed and fine-tuned the same way.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from rnn_train.config import Config
from rnn_train.data.batching import eval_batches
from rnn_train.errors import UserError
from rnn_train.model.charrnn import CharRNN, State


@runtime_checkable
class Learner(Protocol):
    """What the trainer needs from a backend."""

    @property
    def kernel(self) -> str:
        """The training path of the recurrent layers, as logged in the run: "native", a fused path's
        label ("fused-cpp(...)", "fused-python(...)") or "numpy"."""
        ...

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next `train_step`."""
        ...

    def train_step(self, x: np.ndarray, y: np.ndarray, state: State | None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One update on ids X, targets Y [B, T] from `state` (None: zeros) -> (mean CE, global gradient
        norm before clipping, final state), as 0-dim tensors left on the device: no host sync."""
        ...

    def evaluate(self, data: np.ndarray, batch_size: int, num_steps: int) -> float:
        """Mean CE over a whole split, its streams read in order with the state carried from zero."""
        ...

    def torch_model(self) -> CharRNN:
        """The CharRNN holding the current weights (text samples, parameter count, loading weights)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """{"model": CharRNN state_dict, "optimizer": optimiser state_dict} as a checkpoint stores them."""
        ...

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore what `state_dict` gave (raises RuntimeError / KeyError / ValueError if it does not fit)."""
        ...


def make_optimizer(params: list[torch.nn.Parameter], cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


class TorchLearner:
    """A CharRNN and its optimiser; the ordinary backend."""

    def __init__(self, cfg: Config, vocab_size: int, device: torch.device):
        self.cfg, self.device, self.vocab_size = cfg, device, vocab_size
        self.model = CharRNN.from_config(vocab_size, cfg.model).to(device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, cfg)

    @property
    def kernel(self) -> str:
        # resolved (and on a new machine measured) at the batch shape this run trains with
        return self.model.training_kernel(self.cfg.data.batch_size, self.cfg.data.num_steps)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device, non_blocking=True)

    def train_step(self, x: np.ndarray, y: np.ndarray, state: State | None) -> tuple[torch.Tensor, torch.Tensor, State]:
        self.model.train()
        logits, state = self.model(self._tensor(x), state)  # [B, T, V]
        loss = F.cross_entropy(logits.reshape(-1, self.vocab_size), self._tensor(y).reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.train.clip_norm
        if clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None], foreach=True)
        self.optimizer.step()
        return loss.detach(), grad_norm.detach(), state

    @torch.no_grad()
    def evaluate(self, data: np.ndarray, batch_size: int, num_steps: int) -> float:
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count, state = 0, None
        for x, y in eval_batches(data, batch_size, num_steps):
            logits, state = self.model(self._tensor(x), state)
            total += F.cross_entropy(logits.reshape(-1, self.vocab_size), self._tensor(y).reshape(-1), reduction="sum")
            count += y.size
        self.model.train()
        return float(total) / max(count, 1)

    def torch_model(self) -> CharRNN:
        return self.model

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.model.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])


def make_learner(cfg: Config, vocab_size: int, device: torch.device) -> Learner:
    """The backend `model.backend` names; a model too large for memory is a UserError naming its size."""
    try:
        if cfg.model.backend == "numpy":
            from rnn_train.teaching.numpy_backend import NumpyLearner

            return NumpyLearner(cfg, vocab_size, device)
        return TorchLearner(cfg, vocab_size, device)
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and "alloc" not in str(e).lower() and "memory" not in str(e).lower():
            raise
        m = cfg.model
        raise UserError(f"not enough memory for the model (model.hidden_size={m.hidden_size}, "
                        f"model.num_layers={m.num_layers}, vocab {vocab_size}); make it smaller") from None
